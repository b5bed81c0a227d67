"""``python -m training.teachers label`` as a user runs it: real files, a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from training.teachers.musicnn import weights_path

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "teachers"


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "training.teachers", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )


@pytest.mark.skipif(not weights_path("MTT_musicnn").is_file(), reason="converted musicnn weights missing")
def test_label_writes_windows_and_counts_a_bad_file(tmp_path):
    ref = np.load(FIXTURES / "musicnn_reference.npz")
    stereo = tmp_path / "clip.wav"  # stereo: the CLI mixes to mono (and resamples other rates)
    x = ref["audio_int16"].astype(np.float32) / 32768
    sf.write(str(stereo), np.stack([x, x], axis=1), 16000)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio")
    out = tmp_path / "labels.npz"
    res = _run("label", "--teacher", "musicnn-mtt", str(stereo), str(bad), "--out", str(out), "--hop", "0.5")
    assert res.returncode == 1, res.stderr  # labels written, the unreadable file reported
    assert "bad.wav" in res.stderr
    z = np.load(out)
    meta = json.loads(str(z["meta"]))
    assert meta["skipped_files"] == [str(bad)]
    assert list(z["files"]) == [str(stereo)]
    # rt-tagger's default window (192 frames = 49408 samples) every 31 frames over 64000 samples
    assert meta["grid"] == {"length_samples": 49408, "hop_samples": 7936}
    assert z["musicnn-mtt.probs"].shape == (2, 50) and list(z["musicnn-mtt.tags"])[:3] == [
        "guitar",
        "classical",
        "slow",
    ]
    assert np.allclose(z["musicnn-mtt.times"], [[0, 3.088], [0.496, 3.584]])
    assert (z["musicnn-mtt.file_index"] == 0).all()
    assert ((z["musicnn-mtt.probs"] > 0) & (z["musicnn-mtt.probs"] < 1)).all()


def test_unknown_teacher_is_one_line_and_exit_2(tmp_path):
    res = _run("label", "--teacher", "nope", str(tmp_path / "x.wav"), "--out", str(tmp_path / "o.npz"))
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "unknown teacher 'nope'" in lines[0], res.stderr


def test_out_must_be_npz(tmp_path):
    res = _run("label", "--teacher", "musicnn-mtt", "x.wav", "--out", str(tmp_path / "o.json"))
    assert res.returncode == 2 and "--out must end in .npz" in res.stderr


def test_cuda_without_a_gpu_is_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is available here")
    res = _run(
        "label", "--teacher", "musicnn-mtt", "x.wav", "--out", str(tmp_path / "o.npz"), "--device", "cuda"
    )
    assert res.returncode == 2 and "no CUDA GPU" in res.stderr
