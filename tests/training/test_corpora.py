"""Corpus builders: synthetic composition and rendering, Debian music discovery, Opus packs."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from training.corpora.synth_compose import FAST_BPM, INSTRUMENTS, LEVELS, SLOW_BPM, STYLES, TAGS, compose
from training.data import load_table

SF2 = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
FIX = Path(__file__).resolve().parents[1] / "fixtures"


def _need_fluidsynth():
    try:
        import fluidsynth  # noqa: F401
    except (ImportError, OSError) as e:
        pytest.skip(f"pyfluidsynth/libfluidsynth not available: {e}")
    if not SF2.is_file():
        pytest.skip(f"soundfont {SF2} not installed (apt package fluid-soundfont-gm)")


def test_compose_is_deterministic():
    a, b, c = compose(0, 5), compose(0, 5), compose(0, 6)
    notes = lambda clip: [(n.start, n.pitch, n.velocity) for i in clip.midi.instruments for n in i.notes]  # noqa: E731
    assert notes(a) == notes(b) and a.tags == b.tags
    assert notes(a) != notes(c)


def test_tags_follow_construction():
    assert len(TAGS) <= 40 and len(set(TAGS)) == len(TAGS)
    program_to_tag = {}
    for name, inst in INSTRUMENTS.items():
        for p in inst.programs:
            program_to_tag.setdefault(p, name)
    for i in range(300):
        clip = compose(3, i)
        tags = set(clip.tags)
        assert tags <= set(TAGS)
        melodic = [t for t in clip.midi.instruments if not t.is_drum]
        assert 2 <= len(melodic) <= 4
        assert {t.name for t in melodic} == tags & set(INSTRUMENTS)
        for t in melodic:  # the program played is one of the tag's programs (bass: any bass program)
            assert t.program in INSTRUMENTS[t.name].programs or t.name == "bass" and 32 <= t.program <= 39
        has_drums = any(t.is_drum for t in clip.midi.instruments)
        assert ("drums" in tags) == has_drums and ("no_drums" in tags) == (not has_drums)
        assert ("slow" in tags) == (clip.bpm < SLOW_BPM) and ("fast" in tags) == (clip.bpm > FAST_BPM)
        assert ("loud" in tags) == (clip.level == "loud") and ("quiet" in tags) == (clip.level == "quiet")
        assert clip.style in tags and len(tags & set(STYLES)) == 1
        lo, hi = LEVELS[clip.level][1]
        assert lo <= clip.target_rms_db <= hi
        assert any(len(t.notes) > 0 for t in melodic)


def test_renderer_pitch_at_16k():
    _need_fluidsynth()
    import pretty_midi

    from training.corpora.synth import Renderer

    r = Renderer(SF2)
    try:
        note = pretty_midi.Note(velocity=100, pitch=69, start=0.0, end=1.0)
        x = r.render_stem([note], program=0, is_drum=False, n_samples=16000)
    finally:
        r.close()
    seg = x[3200:] * np.hanning(len(x) - 3200)
    spec = np.abs(np.fft.rfft(seg, 8 * len(seg)))
    freqs = np.fft.rfftfreq(8 * len(seg), 1 / 16000)
    assert abs(freqs[np.argmax(spec)] - 440.0) < 3.0


def test_synth_cli_renders_resumes_and_loads(tmp_path):
    _need_fluidsynth()
    from training.corpora.synth import main

    out = tmp_path / "synth"
    args = ["--out", str(out), "--soundfont", str(SF2), "--n", "3", "--seconds", "2", "--workers", "1"]
    assert main(args) == 0
    table = load_table(out)
    assert len(table) == 3 and set(table.tags) <= set(TAGS)
    rows = list(csv.DictReader((out / "tags.csv").open()))
    for i, row in enumerate(rows):
        audio, sr = sf.read(out / row["path"], dtype="float32")
        assert sr == 16000 and audio.shape == (32000,)
        rms_db = 10 * np.log10(np.mean(audio.astype(np.float64) ** 2))
        lo, hi = LEVELS[row["level"]][1]
        assert lo - 1.5 <= rms_db <= hi + 0.5  # the soft limiter may only lower loud clips a little
        assert row["tags"] == ";".join(compose(0, i, 2.0).tags)  # every stem audible: no tag dropped
    first = out / rows[0]["path"]
    stamp = first.stat().st_mtime_ns
    assert main(args) == 0  # resume: finished clips are skipped, not re-rendered
    assert first.stat().st_mtime_ns == stamp
    assert not list(out.rglob("*.tmp"))


def test_pack_round_trip(tmp_path):
    from training.corpora.pack import load_packed, load_packs, main, roundtrip_error
    from training.data import read_audio

    assert (
        main(
            [
                "--corpus",
                str(FIX / "data_folder_csv"),
                "--corpus",
                str(FIX / "data_unlabelled"),
                "--out",
                str(tmp_path),
                "--max-mib",
                "1",
                "--workers",
                "1",
                "--sample",
                "1",
            ]
        )
        == 0
    )
    src = load_table(FIX / "data_folder_csv")
    table, waves = load_packed(tmp_path / "data_folder_csv", workers=2)
    assert table.paths == src.paths and table.tags == src.tags and table.split == src.split
    assert np.array_equal(table.labels, src.labels) and table.meta["style"] == src.meta["style"]
    for i, w in enumerate(waves):
        ref = read_audio(src.audio_path(i), 16000)
        assert w.dtype == np.float32 and len(w) == len(ref)
        assert np.corrcoef(w, ref)[0, 1] > 0.95  # the decoded audio is aligned with the source
    both = load_packs(tmp_path)
    assert set(both) == {"data_folder_csv", "data_unlabelled"}
    assert both["data_unlabelled"][0].labels.shape == (2, 0)
    tone = read_audio(FIX / "data_classes/piano/p1.wav", 16000)
    assert roundtrip_error(np.tile(tone, 10), 32) < 3.0


def test_debian_music_discovery_and_conversion(tmp_path):
    from training.corpora import debian_music as dm

    root = tmp_path / "usr/share/games/x/music"
    root.mkdir(parents=True)
    t = np.arange(44100 * 20) / 44100
    sf.write(root / "theme.ogg", np.stack([np.sin(2 * np.pi * 220 * t)] * 2, 1) * 0.3, 44100)
    sf.write(root / "theme_fast.ogg", np.zeros(44100 * 20), 44100)  # a sped-up duplicate: skipped
    sources = {
        "x-music": dm.Source((str(root),), "GPL-2+", (("theme", "CC0"),)),
        "absent": dm.Source(("/nonexistent",), "?"),
    }
    found, missing = dm.find_tracks(sources)
    assert [(p, f.name, lic) for p, f, lic in found] == [("x-music", "theme.ogg", "CC0")] and missing == [
        "absent"
    ]
    audio = dm.load_mono_16k(root / "theme.ogg")
    assert abs(len(audio) - 16000 * 20) <= 2 and audio.dtype == np.float32
