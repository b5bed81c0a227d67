"""Not-music negatives: every category, deterministic per seed, levels and spectra as specified."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from training.corpora.not_music import (
    CATEGORIES,
    LEVELS_DB,
    NOISE_EXPONENT,
    clip,
    generate,
    have_espeak,
    level_db,
    main,
)
from training.data import load_table


def _categories():
    return [c for c in CATEGORIES if c != "speech" or have_espeak()]


def test_speech_needs_espeak():
    if not have_espeak():
        pytest.skip("espeak-ng not installed (Debian package espeak-ng): speech clips not tested")
    x = generate("speech", 0, 3, seconds=3.0)
    assert x.detail["voice"] and x.detail["text"]
    # speech has pauses: a good share of 20 ms frames are far quieter than the loudest ones
    frames = x.audio[: len(x.audio) // 320 * 320].reshape(-1, 320)
    p = np.mean(frames.astype(np.float64) ** 2, axis=1)
    assert np.mean(p < p.max() * 1e-3) > 0.05


@pytest.mark.parametrize("category", CATEGORIES)
def test_each_category_is_deterministic_and_labelled(category):
    if category == "speech" and not have_espeak():
        pytest.skip("espeak-ng not installed (Debian package espeak-ng)")
    a, b = generate(category, 7, 2, seconds=1.5), generate(category, 7, 2, seconds=1.5)
    assert a.category == category and a.audio.dtype == np.float32 and a.audio.shape == (24000,)
    assert np.array_equal(a.audio, b.audio) and a.detail == b.detail
    assert np.all(np.isfinite(a.audio)) and np.max(np.abs(a.audio)) <= 1.0
    if category != "silence":
        assert not np.array_equal(a.audio, generate(category, 8, 2, seconds=1.5).audio)  # seed matters
        assert not np.array_equal(a.audio, generate(category, 7, 3, seconds=1.5).audio)  # index matters


@pytest.mark.parametrize("category", CATEGORIES)
def test_levels_as_specified(category):
    if category == "speech" and not have_espeak():
        pytest.skip("espeak-ng not installed (Debian package espeak-ng)")
    for i in range(6):
        x = generate(category, 1, i, seconds=2.0).audio
        spec = LEVELS_DB[category]
        if category == "silence":
            assert not np.any(x)
        elif category == "random_bytes":  # full-scale uniform bytes: RMS 1/sqrt(3) = -4.8 dBFS
            assert abs(level_db(x, category) + 4.77) < 0.3
        else:
            lo, hi = spec
            assert lo - 0.01 <= level_db(x, category) <= hi + 0.01
            assert np.max(np.abs(x)) < 1.0


@pytest.mark.parametrize("category", sorted(NOISE_EXPONENT))
def test_noise_colours_have_their_spectral_slope(category):
    x = generate(category, 0, 0, seconds=8.0).audio.astype(np.float64)
    seg = x[: len(x) // 1024 * 1024].reshape(-1, 1024) * np.hanning(1024)
    power = np.mean(np.abs(np.fft.rfft(seg, axis=1)) ** 2, axis=0)
    f = np.fft.rfftfreq(1024, 1 / 16000)
    band = (f > 100) & (f < 6000)
    slope = np.polyfit(np.log10(f[band]), np.log10(power[band]), 1)[0]
    assert abs(slope - NOISE_EXPONENT[category]) < 0.25


def test_tone_is_at_its_frequency():
    x = generate("tone", 0, 1, seconds=2.0)  # index 1 is a single tone (see detail)
    (f0,) = x.detail["freqs_hz"]
    spec = np.abs(np.fft.rfft(x.audio * np.hanning(len(x.audio))))
    assert abs(np.fft.rfftfreq(len(x.audio), 1 / 16000)[np.argmax(spec)] - f0) < 1.0


def test_clip_cycles_through_categories():
    cats = _categories()
    seen = [clip(0, i, 0.5, tuple(cats)).category for i in range(len(cats))]
    assert seen == cats
    with pytest.raises(ValueError, match="unknown category"):
        generate("jazz", 0)


def test_cli_writes_a_loadable_corpus(tmp_path, capsys):
    n = 2 * len(CATEGORIES)
    args = ["--out", str(tmp_path), "--n", str(n), "--seconds", "0.5"]
    if not have_espeak():
        args.append("--no-speech")
    assert main(args) == 0
    table = load_table(tmp_path)
    rows = list(csv.DictReader((tmp_path / "tags.csv").open()))
    assert len(table) == n and set(table.tags) == {"not_music", *_categories()}
    assert {r["split"] for r in rows} == {"train", "valid"}
    first = (tmp_path / rows[0]["path"]).stat().st_mtime_ns
    assert main(args) == 0 and (tmp_path / rows[0]["path"]).stat().st_mtime_ns == first  # resumable
