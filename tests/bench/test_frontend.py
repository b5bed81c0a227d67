from .conftest import run_bench


def test_frontend_mode_compares_all_three(tiny_bundle, tmp_path, capsys):
    doc = run_bench(["frontend", "--bundle", str(tiny_bundle.path), "--seconds", "4"], tmp_path, capsys)
    by = {r["impl"]: r for r in doc["results"]}
    assert set(by) == {"numba", "librosa", "torchaudio"}, doc["notes"]
    assert by["torchaudio"]["max_abs_db_diff"] == 0.0  # it is the reference
    for r in by.values():
        assert r["n"] >= 6 and r["frames_compared"] > 100 and r["max_abs_db_diff"] < 1.0
