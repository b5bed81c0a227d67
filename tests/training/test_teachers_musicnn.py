"""The PyTorch musicnn port against TensorFlow's outputs stored by scripts/convert_musicnn.py.

CI has no TensorFlow: the fixture holds a synthetic clip, the log-mel musicnn's own
``batch_data`` computed from it (numpy 1.x) and the TF graph's outputs for both models.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from training.teachers.base import WindowGrid
from training.teachers.musicnn import (
    MODELS,
    PATCH_FRAMES,
    PUBLISHED_EXAMPLE,
    MusicnnTeacher,
    load_musicnn,
    musicnn_logmel,
    weights_path,
)

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "teachers"
EXAMPLE_NAME = PUBLISHED_EXAMPLE["file"]

pytestmark = pytest.mark.skipif(
    not all(weights_path(m).is_file() for m in MODELS),
    reason="converted musicnn weights missing: run scripts/convert_musicnn.py in musicnn's environment",
)


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(FIXTURES / "musicnn_reference.npz"))


@pytest.fixture(scope="module")
def audio(ref):
    return ref["audio_int16"].astype(np.float32) / 32768


@pytest.mark.parametrize("model", MODELS)
def test_port_equals_tensorflow_graph(ref, model):
    net, tags = load_musicnn(model)
    assert len(tags) == 50
    for patch, frames in (("p187", slice(0, 187)), ("p64", slice(187, 251))):
        x = torch.from_numpy(ref["logmel"][None, frames])
        with torch.inference_mode():
            logits, penultimate = net(x, with_penultimate=True)
        for name, got in (
            ("logits", logits),
            ("sigmoid", torch.sigmoid(logits)),
            ("penultimate", penultimate),
        ):
            want = ref[f"{model}.{patch}.{name}"]
            err = float(np.abs(got.numpy() - want).max())
            assert err < 1e-4, f"{model} {patch} {name}: max |torch - tf| = {err:.2e}"


def test_front_end_equals_musicnn_batch_data(ref, audio):
    got = musicnn_logmel(audio)
    assert got.shape == ref["logmel"].shape == (1 + len(audio) // 256, 96)
    diff = np.abs(got - ref["logmel"])
    # bit-exact here; allow one float16 step (4e-4 in log10) on a few bins for other FFT builds
    assert diff.max() < 1e-3 and diff.mean() < 1e-5, (diff.max(), diff.mean())


def test_front_end_product_is_float32_not_float16():
    # musicnn 0.1.0 under numpy >= 2 computes 10000 * mel in float16: inf above mel power ~6.55
    t = np.arange(16000 * 2) / 16000
    loud = (0.9 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    logmel = musicnn_logmel(loud)
    assert np.isfinite(logmel).all()
    assert logmel.max() > np.log10(10000 * 6.55 + 1) + 0.5


def test_front_end_equals_librosa_formula():
    librosa = pytest.importorskip("librosa", reason="librosa (dev extra) not installed")
    x = np.random.default_rng(1).standard_normal(16000 * 3).astype(np.float32) * 0.3
    mel = librosa.feature.melspectrogram(y=x, sr=16000, hop_length=256, n_fft=512, n_mels=96).T
    want = np.log10(np.float32(10000) * mel.astype(np.float16).astype(np.float32) + np.float32(1))
    assert np.abs(musicnn_logmel(x) - want).max() < 1e-3


def test_teacher_native_patch_end_to_end(ref, audio):
    teacher = MusicnnTeacher("MTT_musicnn")
    out = teacher.predict(audio)
    assert out.probs.shape == (1, 50) and out.tags == teacher.tags  # 251 frames: one 187-frame patch
    assert np.abs(out.probs[0] - ref["MTT_musicnn.p187.sigmoid"][0]).max() < 1e-4
    assert np.allclose(out.times[0], [0.0, PATCH_FRAMES * 256 / 16000])


def test_teacher_on_a_grid_uses_the_centred_patch(ref, audio):
    teacher = MusicnnTeacher("MTT_musicnn")
    grid = WindowGrid(length=51200, hop=6400)  # 3.2-s windows every 0.4 s over the 4-s clip
    out = teacher.predict(audio, grid)
    assert out.probs.shape == (grid.count(len(audio)), 50) == (3, 50)
    first = (grid.starts(len(audio)) + (grid.length - PATCH_FRAMES * 256) // 2) // 256
    with torch.inference_mode():
        want = torch.sigmoid(
            teacher.net(torch.from_numpy(np.stack([ref["logmel"][f : f + 187] for f in first])))
        )
    assert np.abs(out.probs - want.numpy()).max() < 1e-5
    assert np.allclose(out.times, [[0.0, 3.2], [0.4, 3.6], [0.8, 4.0]])


def _example_path() -> Path | None:
    for p in (os.environ.get("RT_TAGGER_MUSICNN_EXAMPLE"), ROOT / "data" / "musicnn_example" / EXAMPLE_NAME):
        if p and Path(p).is_file():
            return Path(p)
    return None


@pytest.mark.skipif(
    _example_path() is None,
    reason=f"musicnn's example {EXAMPLE_NAME} is only in its git repository (not in the wheel or sdist); "
    "set RT_TAGGER_MUSICNN_EXAMPLE or put it in data/musicnn_example/",
)
def test_published_example_is_reproduced():
    from training.data.audio import read_audio

    ex = np.load(FIXTURES / "musicnn_example.npz")
    audio = read_audio(_example_path(), 16000)
    means = {}
    for model in MODELS:
        out = MusicnnTeacher(model).predict(audio)
        tf_taggram = ex[f"{model}.taggram"]
        assert out.probs.shape == tf_taggram.shape == (9, 50)
        assert np.abs(out.probs - tf_taggram).max() < 1e-4, model
        means[model] = (out.probs.mean(axis=0), out.tags)
    mean, tags = means["MTT_musicnn"]
    order = [tags[i] for i in np.argsort(-mean)]
    assert order[:10] == PUBLISHED_EXAMPLE["top10"]
    for tag, value in PUBLISHED_EXAMPLE["top3_values"].items():
        assert round(float(mean[tags.index(tag)]), 4) == value
