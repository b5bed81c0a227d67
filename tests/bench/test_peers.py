import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.peers import MUSICNN_VENV

from .conftest import run_bench

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "rt_tagger.cli", "bench", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )


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
    # the PyTorch port tags the same patches as musicnn's TensorFlow graph
    assert row["musicnn_port_s"] > 0 and row["top3"]["port_top3_equal"], row["top3"]
    for (tag_tf, p_tf), (tag_pt, p_pt) in zip(
        row["top3"]["musicnn"], row["top3"]["musicnn_port"], strict=True
    ):
        assert tag_tf == tag_pt and abs(p_tf - p_pt) <= 2e-4  # both rounded to 4 decimals


def test_peers_without_musicnn_is_one_clear_error(tmp_path):
    res = _cli("peers", "--musicnn-venv", str(tmp_path / "nowhere"), "--no-save")
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "setup_musicnn_env.sh" in lines[0], res.stderr


def test_peers_refuses_a_musicnn_environment_with_numpy_2(tmp_path):
    # a stand-in environment whose python is this one (numpy >= 2): the bench must refuse it
    import numpy

    if int(numpy.__version__.split(".")[0]) < 2:
        pytest.skip(f"this interpreter has numpy {numpy.__version__}; the check needs numpy >= 2 here")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    shim = venv / "bin" / "python"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    shim.chmod(0o755)
    res = _cli("peers", "--musicnn-venv", str(venv), "--no-save")
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "numpy" in lines[0] and "numpy < 2" in lines[0], res.stderr


def test_peers_checks_the_published_example():
    from bench.common import BenchError
    from bench.peers import _check_example
    from training.teachers.musicnn import PUBLISHED_EXAMPLE

    good = [[t, PUBLISHED_EXAMPLE["top3_values"].get(t, 0.01)] for t in PUBLISHED_EXAMPLE["top10"]]
    assert _check_example(good, "env")["reproduced"] is True
    # what musicnn 0.1.0 gives under numpy >= 2 looks like this: other tags, other values
    broken = [["guitar", 0.41], ["classical", 0.33], ["indian", 0.2], *good[3:]]
    with pytest.raises(BenchError, match="does not reproduce"):
        _check_example(broken, "env")
