import pytest

from bench.common import BenchError
from bench.peers import MUSICNN_VENV

from .conftest import run_bench


def test_peers_mode_side_by_side(tiny_bundle, tmp_path, capsys):
    if not (MUSICNN_VENV / "bin" / "python").is_file():
        pytest.skip(f"musicnn environment not at {MUSICNN_VENV}: create it with scripts/setup_musicnn_env.sh")
    from bench.frontend import DEMO

    doc = run_bench(
        ["peers", str(DEMO), "--bundle", str(tiny_bundle.path), "--reps", "1", "--views", "warm"],
        tmp_path,
        capsys,
    )
    (row,) = doc["results"]
    assert row["view"] == "warm" and row["rt_tagger_s"] > 0 and row["musicnn_s"] > 0
    assert row["speedup"] == pytest.approx(row["musicnn_s"] / row["rt_tagger_s"])
    assert row["top3"]["musicnn_windows"] >= 5 and len(row["top3"]["musicnn"]) == 3


def test_peers_without_musicnn_is_one_clear_error(tmp_path, capsys):
    from bench.cli import main

    with pytest.raises(
        BenchError, match=r"musicnn environment not found at .*nowhere: run scripts/setup_musicnn_env.sh"
    ):
        main(["peers", "--musicnn-venv", str(tmp_path / "nowhere"), "--no-save"])
