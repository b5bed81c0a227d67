"""A pretraining run killed mid-way (SIGKILL) and resumed ends with the same weights as an
uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.training.corpus_fixture import make_corpus, write_recipe

ROOT = Path(__file__).resolve().parents[2]
STEPS = 40


def _cmd(recipe: Path, out: Path, pretext: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "rt_tagger.cli",
        "train",
        "pretrain",
        "--recipe",
        str(recipe),
        "--pretext",
        pretext,
        "--out",
        str(out),
        "--no-progress",
        "--set",
        f"pretrain.loop.steps={STEPS}",
        "--set",
        "pretrain.loop.ckpt_every=4",
        "--set",
        "pretrain.loop.log_every=4",
    ]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return env


@pytest.mark.parametrize("pretext", ["byol"])  # EMA teacher + predictor: the most state to restore
def test_resume_after_kill_equals_uninterrupted(tmp_path, pretext):
    corpus = make_corpus(tmp_path / "corpus")
    recipe = write_recipe(tmp_path / "r.toml", corpus)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(
        _cmd(recipe, whole, pretext), check=True, env=_env(), cwd=ROOT, capture_output=True, timeout=300
    )

    proc = subprocess.Popen(
        _cmd(recipe, killed, pretext),
        env=_env(),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    marker = killed / "ckpt.json"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if marker.exists() and json.loads(marker.read_text())["step"] >= 8:
            break
        time.sleep(0.01)
    if proc.poll() is not None:
        pytest.fail(f"the run ended (rc {proc.returncode}) before it could be killed mid-way; raise STEPS")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    at = json.loads(marker.read_text())["step"]
    assert 0 < at < STEPS, at
    assert not (killed / "backbone.safetensors").exists()

    res = subprocess.run(
        _cmd(recipe, killed, pretext), env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resumed from" in res.stderr
    a = load_file(str(whole / "backbone.safetensors"))
    b = load_file(str(killed / "backbone.safetensors"))
    assert a.keys() == b.keys()
    diff = [k for k in a if not (a[k] == b[k]).all()]
    assert not diff, f"weights differ after resume: {diff[:5]}"
    ha = json.loads((whole / "history.json").read_text())
    hb = json.loads((killed / "history.json").read_text())
    assert [h["loss"] for h in ha] == [h["loss"] for h in hb]
