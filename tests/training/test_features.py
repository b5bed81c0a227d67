"""`rt-tagger features`: values, storage types, settings guard, and resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from engines.frontend import FrontEndSpec, logmel_numpy
from rt_tagger.cli import main as cli_main
from training.data import DataError
from training.features import extract

REPO = Path(__file__).resolve().parents[2]
FIX = REPO / "tests" / "fixtures"


def _corpus(root: Path, n: int, seconds: float = 2.0) -> Path:
    rng = np.random.default_rng(0)
    (root / "audio").mkdir(parents=True)
    lines = ["path,tags"]
    t = np.arange(int(seconds * 16000)) / 16000
    for i in range(n):
        x = 0.2 * np.sin(2 * np.pi * (100 + 7 * i) * t) + 0.01 * rng.standard_normal(len(t))
        sf.write(root / f"audio/t{i:03d}.wav", x.astype(np.float32), 16000)
        lines.append(f"audio/t{i:03d}.wav,{'low' if i % 2 else 'high'}")
    (root / "tags.csv").write_text("\n".join(lines) + "\n")
    return root


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted((out / "feats").rglob("*.npy"))}


def test_values_shapes_and_dtypes(tmp_path):
    spec = FrontEndSpec()
    m16 = extract(FIX / "data_folder_csv", tmp_path / "f16", seconds=1.0, progress=False)
    m32 = extract(FIX / "data_folder_csv", tmp_path / "f32", seconds=1.0, dtype="float32", progress=False)
    assert m16["n_frames"] == spec.frames_for(16000) and m16["tags"] == [
        "bass",
        "drums",
        "fast",
        "piano",
        "slow",
    ]
    for e16, e32 in zip(m16["tracks"], m32["tracks"], strict=True):
        a16 = np.load(tmp_path / "f16" / e16["features"])
        a32 = np.load(tmp_path / "f32" / e32["features"])
        assert a16.dtype == np.float16 and a32.dtype == np.float32
        assert a32.shape == (spec.n_mels, m16["n_frames"])
        # the 0.3-s fixture is zero-padded to 1 s; compare with the numpy reference front end
        from training.data import crop_or_pad, read_audio

        ref = logmel_numpy(crop_or_pad(read_audio(FIX / "data_folder_csv" / e32["path"], 16000), 16000), spec)
        loud = ref > ref.max() - 60.0  # fp32 vs fp64 rounding dominates far below the peak
        assert np.max(np.abs(a32 - ref)[loud]) < 1e-2
        assert np.max(np.abs(a16.astype(np.float32) - a32)) < 0.1
    assert m16["tracks"][1]["split"] == "valid"


def test_other_settings_refused(tmp_path):
    extract(FIX / "data_classes", tmp_path, seconds=0.5, progress=False)
    with pytest.raises(DataError, match="other settings"):
        extract(FIX / "data_classes", tmp_path, seconds=1.0, progress=False)


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    rc = cli_main(["features", str(tmp_path / "absent"), "--out", str(tmp_path / "o"), "--workers", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "corpus not found" in err[0]


def test_resume_after_kill_equals_uninterrupted(tmp_path):
    src = _corpus(tmp_path / "src", 150)
    ref = tmp_path / "ref"
    extract(src, ref, seconds=2.0, workers=1, progress=False)

    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "training.features",
        str(src),
        "--out",
        str(out),
        "--seconds",
        "2",
        "--workers",
        "1",
        "--quiet",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        feats = out / "feats" / "audio"
        done = len(os.listdir(feats)) if feats.exists() else 0
        if done >= 5:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    proc.wait()
    if proc.returncode != -signal.SIGKILL:
        pytest.skip(f"the run ended (rc {proc.returncode}) before it could be killed mid-way")
    assert not (out / "manifest.json").exists()  # written last: the killed run is visibly incomplete
    partial = len(_files(out))
    assert 0 < partial < 150

    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert _files(out) == _files(ref)
    assert json.loads((out / "manifest.json").read_text()) == json.loads((ref / "manifest.json").read_text())
    assert not list(out.rglob("*.tmp"))
