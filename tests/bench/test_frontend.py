from .conftest import run_bench


def test_frontend_mode_compares_all_three(tiny_bundle, tmp_path, capsys):
    doc = run_bench(["frontend", "--bundle", str(tiny_bundle.path), "--seconds", "4"], tmp_path, capsys)
    by = {r["impl"]: r for r in doc["results"]}
    assert set(by) == {"numba", "librosa", "torchaudio"}, doc["notes"]
    assert by["torchaudio"]["max_abs_db_diff"] == 0.0  # it is the reference
    assert "consume_array" in by["numba"]["mode"]  # the call the pipeline makes
    # the runtime and training share one definition: DESIGN.md's 1e-3 dB, against both references
    assert by["numba"]["max_abs_db_diff"] <= 1e-3 and by["numba"]["max_abs_db_diff_f64"] <= 1e-3
    for r in by.values():
        assert r["n"] >= 6 and r["frames_compared"] > 100 and r["max_abs_db_diff"] < 1.0
