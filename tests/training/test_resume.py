"""A pretraining run killed mid-way (SIGKILL) or interrupted with Ctrl-C (SIGINT) and resumed ends
with the same weights as an uninterrupted run; Ctrl-C prints the command that resumes."""

from __future__ import annotations

import json
import os
import shlex
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


PRETEXT = "byol"  # EMA teacher + predictor: the most state to restore


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    corpus = make_corpus(root / "corpus")
    recipe = write_recipe(root / "r.toml", corpus)
    whole = root / "whole"
    subprocess.run(
        _cmd(recipe, whole, PRETEXT), check=True, env=_env(), cwd=ROOT, capture_output=True, timeout=300
    )
    return recipe, whole


def _start_and_stop_mid_way(cmd: list[str], out: Path, sig: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        cmd, env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    marker = out / "ckpt.json"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if marker.exists() and json.loads(marker.read_text())["step"] >= 8:
            break
        time.sleep(0.01)
    if proc.poll() is not None:
        pytest.fail(f"the run ended (rc {proc.returncode}) before it could be stopped mid-way; raise STEPS")
    proc.send_signal(sig)
    proc.wait(timeout=60)
    return proc


def _same_weights_and_history(whole: Path, resumed: Path) -> None:
    a = load_file(str(whole / "backbone.safetensors"))
    b = load_file(str(resumed / "backbone.safetensors"))
    assert a.keys() == b.keys()
    diff = [k for k in a if not (a[k] == b[k]).all()]
    assert not diff, f"weights differ after resume: {diff[:5]}"
    ha = json.loads((whole / "history.json").read_text())
    hb = json.loads((resumed / "history.json").read_text())
    assert [h["loss"] for h in ha] == [h["loss"] for h in hb]


def test_resume_after_kill_equals_uninterrupted(tmp_path, uninterrupted):
    recipe, whole = uninterrupted
    killed = tmp_path / "killed"
    _start_and_stop_mid_way(_cmd(recipe, killed, PRETEXT), killed, signal.SIGKILL)
    at = json.loads((killed / "ckpt.json").read_text())["step"]
    assert 0 < at < STEPS, at
    assert not (killed / "backbone.safetensors").exists()

    res = subprocess.run(
        _cmd(recipe, killed, PRETEXT), env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"resumed from {killed / 'ckpt.pt'} at step {at} of {STEPS}" in res.stderr
    _same_weights_and_history(whole, killed)


def test_ctrl_c_saves_and_prints_the_command_that_resumes(tmp_path, uninterrupted):
    recipe, whole = uninterrupted
    out = tmp_path / "interrupted"
    proc = _start_and_stop_mid_way(_cmd(recipe, out, PRETEXT), out, signal.SIGINT)
    err = proc.stderr.read()
    assert proc.returncode == 130, err[-2000:]
    last = err.strip().splitlines()[-1]
    at = json.loads((out / "ckpt.json").read_text())["step"]
    assert 8 <= at < STEPS
    assert last.startswith(f"rt-tagger: error: pretrain[{PRETEXT}] interrupted at step {at} of {STEPS}; ")
    assert f"checkpoint saved in {out / 'ckpt.pt'}; resume with: rt-tagger train pretrain " in last
    command = shlex.split(last.split("resume with: ", 1)[1])
    assert command[:3] == ["rt-tagger", "train", "pretrain"]
    res = subprocess.run(
        [sys.executable, "-m", "rt_tagger.cli", *command[1:]],
        env=_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"resumed from {out / 'ckpt.pt'} at step {at} of {STEPS}" in res.stderr
    _same_weights_and_history(whole, out)
