"""Render the synthetic labelled corpus: procedural MIDI -> FluidSynth / TiMidity++ -> 16 kHz mono FLAC.

Usage::

    python -m training.corpora.synth --out data/synth_train \\
        --soundfont /usr/share/sounds/sf2/FluidR3_GM.sf2 --n 2400 --seconds 10 --seed 0 --workers 2
    # several soundfonts (clip i uses the (i mod k)-th) and the varied composer, for training:
    python -m training.corpora.synth --out data/synth_multi --soundfont fluidr3_gm \\
        --soundfont musescore_general --soundfont opl3 --composer varied --n 7200 --seed 10
    # the held-out test: a soundfont family and a composer configuration training never uses
    python -m training.corpora.synth --out data/synth_heldout --soundfont timgm6mb \\
        --composer heldout --n 600 --seed 11 --test
    # the same compositions re-arranged (the varied composer's draws from another seed): the
    # arrangement twins of consistency.twin (training/multitask)
    python -m training.corpora.synth --out data/synth_rearranged --soundfont fluidr3_gm \\
        --soundfont musescore_general --soundfont opl3 --composer varied --n 7200 --seed 10 --vary-seed 20

Soundfonts are named in :data:`SOUNDFONTS` (fetched from Debian with apt-get download when their
package is not installed) or given as files. Held-out soundfonts and the ``heldout`` composer are
refused without ``--test``. Most are SoundFont files played by FluidSynth (:class:`Renderer`);
``freepats`` is a GUS patch set played by the ``timidity`` binary (:class:`TimidityRenderer`, needs
``apt-get install timidity``); a ``.cfg`` file given by path is played by timidity too;
``sonivox`` is the Sonivox EAS library with its built-in wavetable (:class:`SonivoxRenderer`);
``tonejs`` plays recordings of real instruments from npm packages (:class:`TonejsRenderer`), and
only some programs: ``--fallback NAME`` plays the stems it cannot with training soundfont NAME
(recorded per stem in ``stem_soundfonts``) instead of leaving them silent.

``--stem-mix`` plays each stem with a soundfont drawn from the ``--soundfont`` list (a clip then
mixes sample families) and ``--stem-eq P`` gives each stem a training EQ move with probability P;
both are recorded per clip (``stem_soundfonts``, ``stem_eqs``). Neither moved the held-out
instrument numbers beyond what more clips did (reports/default_model.md, 2026-12-06).

Each track of a clip is rendered as its own stem (straight at 16 kHz; pitch checked),
scaled to a common RMS plus a small random offset so every tagged instrument is audible, then
mixed and scaled to the clip's level class. Output per clip: ``audio/<id>.flac``,
``midi/<id>.mid`` and ``meta/<id>.json``; ``tags.csv`` (path, tags, split, style, bpm, level,
soundfont, ...) is rewritten atomically as clips finish. Rendering is resumable: clips whose audio
exists are skipped, and every file is written to a temporary name and renamed.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import json
import multiprocessing as mp
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from engines.atomic import atomic_path, write_atomic
from training.corpora.sonivox import SonivoxRenderer
from training.corpora.synth_compose import COMPOSERS, FACTORS, TAGS, Clip, compose, vary
from training.corpora.timidity import NO_TIMIDITY, TimidityRenderer
from training.corpora.tonejs import TonejsRenderer, fetch_tonejs

__all__ = [
    "SOUNDFONTS",
    "SoundFont",
    "Renderer",
    "TimidityRenderer",
    "apply_codec",
    "apply_eq",
    "make_renderer",
    "render_clip",
    "resolve_soundfont",
    "stem_choices",
    "main",
]

SAMPLE_RATE = 16000
_FLUSH_S = 2.0  # silence rendered after each stem so reverb tails do not leak into the next
_SILENT_DB = -90.0  # a stem whose active level is below this (dBFS) is treated as missing


@dataclass(frozen=True)
class SoundFont:
    """A General MIDI soundfont from Debian: package, file inside it, sample family, use, renderer."""

    package: str
    path: str  # inside the package (and where it lies when the package is installed)
    family: str  # soundfonts of one family share samples: never split one family across train/test
    use: str  # "train" or "test" (held out: never rendered for training)
    # "fluidsynth" (path: .sf2/.sf3), "timidity" (path: a timidity .cfg), "sonivox" (path: the library)
    # or "tonejs" (package: npm, path: the folder of recordings under --data)
    renderer: str = "fluidsynth"
    extra: tuple[str, ...] = ()  # more files of the package the renderer reads (fnmatch patterns)


SOUNDFONTS: dict[str, SoundFont] = {
    "fluidr3_gm": SoundFont("fluid-soundfont-gm", "usr/share/sounds/sf2/FluidR3_GM.sf2", "fluid", "train"),
    # MuseScore General is derived from FluidR3 Mono: same family as fluidr3_gm, so training only
    "musescore_general": SoundFont(
        "musescore-general-soundfont", "usr/share/sounds/sf3/MuseScore_General.sf3", "fluid", "train"
    ),
    # FM synthesis rendered into samples: nothing in common with the sample-based fonts
    "opl3": SoundFont("opl3-soundfont", "usr/share/sounds/sf2/OPL-3_FM_128M.sf2", "opl3", "train"),
    # Held out. TimGM6mb and csound's sf_GMbank share samples: both are test-only.
    "timgm6mb": SoundFont("timgm6mb-soundfont", "usr/share/sounds/sf2/TimGM6mb.sf2", "timgm", "test"),
    "csound": SoundFont("csound-soundfont", "usr/share/sounds/sf2/sf_GMbank.sf2", "timgm", "test"),
    # GUS patches (Eric A. Welsh et al.) through TiMidity++: samples of their own, a third training
    # family. About half the GM programs are missing: those stems come out silent and lose their tag.
    "freepats": SoundFont(
        "freepats",
        "etc/timidity/freepats.cfg",
        "freepats",
        "train",
        renderer="timidity",
        extra=("usr/share/midi/freepats/*",),
    ),
    # The Sonivox EAS synthesiser (Android's General MIDI set): its wavetable is inside the
    # library, shared with no soundfont here, so a fourth training family. x86-64 build.
    "sonivox": SoundFont(
        "libsonivox3",
        "usr/lib/x86_64-linux-gnu/libsonivox.so.3.6.11.0",
        "sonivox",
        "train",
        renderer="sonivox",
    ),
    # Recordings of real instruments (tonejs-instruments, npm): a fifth training family, and the
    # only one not made for a General MIDI synthesiser. Plays 18 of the composer's programs.
    "tonejs": SoundFont("npm:tonejs-instrument-*-mp3", "npm/tonejs", "tonejs", "train", renderer="tonejs"),
}


def _renderer_kind(name: str, path: str | os.PathLike) -> str:
    """Which program plays soundfont ``name``: its :data:`SOUNDFONTS` entry's, else by file type."""
    if name in SOUNDFONTS:
        return SOUNDFONTS[name].renderer
    return "timidity" if Path(path).suffix == ".cfg" else "fluidsynth"


def resolve_soundfont(name_or_path: str, data: str | os.PathLike = "data") -> tuple[str, Path]:
    """``(name, file)`` of a soundfont given by :data:`SOUNDFONTS` name or by path.

    A named soundfont is used from ``/`` when its package is installed, else fetched with
    ``apt-get download`` into ``<data>/debian_music`` (see :func:`debian_music.fetch_package`).
    One played by timidity also needs the ``timidity`` binary installed (RuntimeError if not).
    """
    if name_or_path in SOUNDFONTS:
        name, path = name_or_path, None
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"soundfont not found: {name_or_path} (nor a name in {', '.join(SOUNDFONTS)})"
            )
        name = next((k for k, v in SOUNDFONTS.items() if v.path.endswith(path.name)), path.stem)
    if _renderer_kind(name, path or "") == "timidity" and shutil.which("timidity") is None:
        raise RuntimeError(NO_TIMIDITY)
    if path is not None:
        return name, path
    sf_ = SOUNDFONTS[name]
    if sf_.renderer == "tonejs":
        return name, fetch_tonejs(data)
    installed = Path("/") / sf_.path
    if installed.is_file():
        return name_or_path, installed
    from training.corpora.debian_music import fetch_package

    root = fetch_package(sf_.package, Path(data) / "debian_music", (sf_.path, *sf_.extra))
    if not (root / sf_.path).is_file():  # e.g. another architecture's library path
        raise FileNotFoundError(f"{sf_.package} as fetched has no {sf_.path}")
    return name_or_path, root / sf_.path


def check_renderer(name: str, path: str | os.PathLike) -> None:
    """Open and close the renderer of ``name`` once, so a soundfont that cannot be played fails here
    with one line (RuntimeError), not in every pool worker, which would be restarted without end."""
    try:
        make_renderer(name, path).close()
    except (ImportError, OSError, RuntimeError) as e:
        raise RuntimeError(f"cannot play soundfont {name} ({path}): {e}") from None


class Renderer:
    """A FluidSynth instance with one soundfont loaded, reused for many clips."""

    def __init__(self, soundfont: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> None:
        import fluidsynth  # optional dependency (extra "synth")

        self.sr = sample_rate
        self.fs = fluidsynth
        self.synth = fluidsynth.Synth(gain=0.5, samplerate=float(sample_rate))
        self.synth.setting("synth.reverb.active", 1)
        self.synth.setting("synth.chorus.active", 1)
        self.sfid = self.synth.sfload(str(soundfont))
        if self.sfid < 0:
            raise RuntimeError(f"FluidSynth could not load soundfont {soundfont}")
        self._write = fluidsynth._fl.fluid_synth_write_float
        self._write.argtypes = [ctypes.c_void_p, ctypes.c_int] + [
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_int,
        ] * 2
        self._write.restype = ctypes.c_int

    def _samples(self, n: int) -> np.ndarray:
        """Next ``n`` mono float32 samples (mean of left and right)."""
        left = np.zeros(n, np.float32)
        right = np.zeros(n, np.float32)
        if n > 0:
            self._write(self.synth.synth, n, left.ctypes.data, 0, 1, right.ctypes.data, 0, 1)
        return 0.5 * (left + right)

    def render_stem(self, notes: list, program: int, is_drum: bool, n_samples: int) -> np.ndarray:
        """Render one track's notes (pretty_midi Notes) alone; returns ``n_samples`` mono samples."""
        chan = 9 if is_drum else 0
        if self.synth.program_select(chan, self.sfid, 128 if is_drum else 0, program) != 0:
            self.synth.program_select(chan, self.sfid, 128 if is_drum else 0, 0)  # kit missing: standard
        events = []
        for nt in notes:
            on = int(round(nt.start * self.sr))
            off = int(round(nt.end * self.sr))
            events.append((on, 1, nt.pitch, nt.velocity))
            events.append((max(off, on + 1), 0, nt.pitch, 0))
        events.sort(key=lambda e: (e[0], e[1]))  # note-offs before note-ons at the same sample
        out = np.zeros(n_samples, np.float32)
        pos = 0
        for at, kind, key, vel in events:
            at = min(at, n_samples)
            if at > pos:
                out[pos:at] = self._samples(at - pos)
                pos = at
            if pos >= n_samples:
                break
            if kind:
                self.synth.noteon(chan, key, vel)
            else:
                self.synth.noteoff(chan, key)
        if pos < n_samples:
            out[pos:] = self._samples(n_samples - pos)
        self.synth.all_sounds_off(chan)
        self.synth.system_reset()
        self._samples(int(_FLUSH_S * self.sr))
        return out

    def set_reverb(self, room: float, damp: float, width: float, level: float) -> None:
        """FluidSynth's reverb for the next stems: room size, damping, width, wet level (0-1 each)."""
        self.synth.set_reverb(room, damp, width, level)

    def close(self) -> None:
        self.synth.delete()


AnyRenderer = Renderer | TimidityRenderer | SonivoxRenderer | TonejsRenderer


def plays(renderer: AnyRenderer, program: int, is_drum: bool) -> bool:
    """Whether ``renderer`` has a sound for this program: only the recordings say they lack one (the
    synthesisers are taken to play every program; a program freepats lacks comes out silent)."""
    return renderer.plays(program, is_drum) if isinstance(renderer, TonejsRenderer) else True


def make_renderer(name: str, path: str | os.PathLike) -> AnyRenderer:
    """The renderer that plays soundfont ``name`` (a :data:`SOUNDFONTS` name or a file's stem) from ``path``."""
    kind = _renderer_kind(name, path)
    if kind == "sonivox":
        return SonivoxRenderer(path, SAMPLE_RATE)
    if kind == "tonejs":
        return TonejsRenderer(path, SAMPLE_RATE)
    return TimidityRenderer(path, SAMPLE_RATE) if kind == "timidity" else Renderer(path)


def _rms_db(x: np.ndarray) -> float:
    return 10.0 * float(np.log10(np.mean(np.square(x, dtype=np.float64)) + 1e-20))


def _active_db(x: np.ndarray, frame: int = 1024) -> float:
    """Mean power (dB) over the frames where the stem actually plays (within 30 dB of its peak frame).

    Sparse stems (a few drum hits, a short melody) are levelled by how loud they are when they
    sound, not diluted by their rests, so they are neither buried nor blown up by the mix.
    """
    n = len(x) // frame
    if n == 0:
        return _rms_db(x)
    p = np.mean(np.square(x[: n * frame].reshape(n, frame), dtype=np.float64), axis=1)
    if not p.max() > 0.0:  # digital silence (timidity: a program the patch set lacks): no frame plays
        return _rms_db(x)
    active = p[p > p.max() * 1e-3]
    return 10.0 * float(np.log10(active.mean() + 1e-20))


def _biquad(kind: str, f0: float, gain_db: float, q: float, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """RBJ audio-EQ-cookbook biquad coefficients (b, a)."""
    a_ = 10.0 ** (gain_db / 40.0)
    w = 2 * np.pi * f0 / sr
    alpha = np.sin(w) / (2 * q)
    c = np.cos(w)
    if kind == "peak":
        b = [1 + alpha * a_, -2 * c, 1 - alpha * a_]
        a = [1 + alpha / a_, -2 * c, 1 - alpha / a_]
    else:
        sq = 2 * np.sqrt(a_) * alpha
        sign = 1 if kind == "low_shelf" else -1
        b = [
            a_ * ((a_ + 1) - sign * (a_ - 1) * c + sq),
            sign * 2 * a_ * ((a_ - 1) - sign * (a_ + 1) * c),
            a_ * ((a_ + 1) - sign * (a_ - 1) * c - sq),
        ]
        a = [
            (a_ + 1) + sign * (a_ - 1) * c + sq,
            -sign * 2 * ((a_ - 1) + sign * (a_ + 1) * c),
            (a_ + 1) + sign * (a_ - 1) * c - sq,
        ]
    return np.asarray(b) / a[0], np.asarray(a) / a[0]


def apply_eq(x: np.ndarray, kind: str, rng: np.random.Generator, sr: int) -> np.ndarray:
    """One EQ move on the mix: peak / low_shelf / high_shelf (training), band_limit / tilt (held out)."""
    from scipy.signal import butter, lfilter, sosfilt

    if kind == "peak":
        b, a = _biquad("peak", rng.uniform(150, 6000), rng.uniform(-9, 9), rng.uniform(0.7, 2.0), sr)
    elif kind == "low_shelf":
        b, a = _biquad("low_shelf", rng.uniform(80, 400), rng.uniform(-9, 9), 0.707, sr)
    elif kind == "high_shelf":
        b, a = _biquad("high_shelf", rng.uniform(2000, 6000), rng.uniform(-9, 9), 0.707, sr)
    elif kind == "band_limit":  # a small speaker: no lows, no highs
        sos = butter(4, [rng.uniform(150, 500), rng.uniform(2500, 5000)], "bandpass", fs=sr, output="sos")
        return sosfilt(sos, x)
    elif kind == "tilt":  # first-order pre-emphasis (bright) or its inverse (dull)
        k = rng.uniform(0.5, 0.95)
        b, a = ([1.0, -k], [1.0]) if rng.random() < 0.5 else ([1.0 - k], [1.0, -k])
    else:
        raise ValueError(f"unknown eq {kind!r}")
    return lfilter(b, a, x)


def apply_codec(x: np.ndarray, kind: str, rng: np.random.Generator, sr: int) -> np.ndarray:
    """A lossy round trip: opus / mp3 (training), telephone / bitcrush (held out); same length out."""
    import io

    n = len(x)
    if kind == "opus":
        from training.corpora.pack import decode, encode_opus

        y = decode(encode_opus(x.astype(np.float32), rng.uniform(8, 32), sr))
    elif kind == "mp3":
        buf = io.BytesIO()
        sf.write(
            buf,
            x.astype(np.float32),
            sr,
            format="MP3",
            subtype="MPEG_LAYER_III",
            compression_level=rng.uniform(0.4, 1.0),
        )
        y, _ = sf.read(io.BytesIO(buf.getvalue()), dtype="float32", always_2d=True)
        y = y.mean(axis=1)
    elif kind == "telephone":  # 8 kHz G.711 mu-law
        from scipy.signal import resample_poly

        lo = np.clip(resample_poly(x, 1, 2), -1, 1)
        mu = 255.0
        q = np.round(np.sign(lo) * np.log1p(mu * np.abs(lo)) / np.log1p(mu) * 127) / 127
        y = resample_poly(np.sign(q) * np.expm1(np.abs(q) * np.log1p(mu)) / mu, 2, 1)
    elif kind == "bitcrush":  # few bits and a sample-and-hold rate reduction
        bits, hold = int(rng.integers(5, 9)), int(rng.integers(2, 4))
        levels = 2 ** (bits - 1)
        y = np.repeat(np.round(x[::hold] * levels) / levels, hold)
    else:
        raise ValueError(f"unknown codec {kind!r}")
    out = np.zeros(n)
    out[: min(n, len(y))] = y[:n]
    return out


class SilentClipError(RuntimeError):
    """Every stem of a clip came out silent (a patch set that lacks all of its programs)."""


STEM_EQS = ("peak", "low_shelf", "high_shelf")  # the training EQ moves; band_limit and tilt stay held out


def render_clip(
    renderer: AnyRenderer,
    clip: Clip,
    seconds: float,
    stem_renderers: list[AnyRenderer] | None = None,
    stem_eqs: list[tuple[str, int]] | None = None,
) -> tuple[np.ndarray, list[str], dict]:
    """Render ``clip`` to a mono float32 mix.

    ``stem_renderers`` plays each stem with its own renderer (one sample family per instrument
    instead of one per clip); ``stem_eqs`` gives each stem an EQ move of :data:`STEM_EQS` and its
    seed (``("", 0)`` for none) before mixing, so an instrument's spectral envelope varies beyond
    what one soundfont has.

    Returns:
        (audio, tags, info): tags drop any instrument whose stem came out silent (honest labels).

    Raises:
        SilentClipError: when every stem is silent (nothing to label).
    """
    n = int(round(seconds * renderer.sr))
    stems = clip.midi.instruments
    players = stem_renderers or [renderer] * len(stems)
    eqs = stem_eqs or [("", 0)] * len(stems)
    room, damp, width, level = clip.reverb
    for r in {id(r): r for r in players}.values():
        r.set_reverb(room, damp, width, level)
    mix = np.zeros(n, np.float64)
    silent: list[str] = []
    stem_db: list[float] = []
    for inst, gain_db, player, (eq, eq_seed) in zip(stems, clip.stem_gain_db, players, eqs, strict=True):
        stem = player.render_stem(inst.notes, inst.program, inst.is_drum, n)
        if eq:
            stem = apply_eq(stem.astype(np.float64), eq, np.random.default_rng(eq_seed), renderer.sr)
        level_db = _active_db(stem)
        stem_db.append(round(level_db, 1))
        if level_db < _SILENT_DB:
            silent.append(inst.name)
            continue
        mix += stem.astype(np.float64) * 10.0 ** ((gain_db - level_db) / 20.0)
    if not np.any(mix):
        raise SilentClipError(f"clip {clip.index}: every stem is silent")
    if clip.post.get("eq"):
        mix = apply_eq(mix, clip.post["eq"], np.random.default_rng(clip.post["seed"]), renderer.sr)
    mix *= 10.0 ** ((clip.target_rms_db - _rms_db(mix)) / 20.0)
    peak = float(np.max(np.abs(mix)))
    if peak > 0.95:  # soft-limit peaks instead of scaling the whole clip down (keeps the level class)
        mix = 0.95 * np.tanh(mix / 0.95)
    if clip.post.get("codec"):  # after the codec, back to the level class (a band limit loses level)
        mix = apply_codec(mix, clip.post["codec"], np.random.default_rng(clip.post["seed"] + 1), renderer.sr)
        mix *= 10.0 ** ((clip.target_rms_db - _rms_db(mix)) / 20.0)
        if np.max(np.abs(mix)) > 0.95:
            mix = 0.95 * np.tanh(mix / 0.95)
    tags = [t for t in clip.tags if t not in silent or t == "drums"]
    if "drums" in silent:
        tags = [t for t in tags if t != "drums"] + ["no_drums"]
    info = {
        "stem_rms_db": stem_db,
        "silent": silent,
        "rms_db": round(_rms_db(mix), 2),
        "peak": round(peak, 3),
    }
    return mix.astype(np.float32), tags, info


def clip_id(index: int) -> str:
    return f"synth_{index:06d}"


def _split(index: int, test: bool) -> str:
    if test:
        return "test"
    return "valid" if index % 10 == 9 else "train"


# Worker state: one renderer per soundfont per process (loading a soundfont takes 0.2-3 s).
_R: dict[str, AnyRenderer] = {}
_ARGS: dict = {}


def _init_worker(args: dict) -> None:
    global _R, _ARGS
    if args.get("nice"):
        os.nice(args["nice"])
    _ARGS = args
    _R = {name: make_renderer(name, path) for name, path in args["soundfonts"]}
    if args["fallback"] and args["fallback"] not in _R:
        _R[args["fallback"]] = make_renderer(args["fallback"], args["fallback_path"])


def stem_choices(
    clip: Clip, seed: int, index: int, names: list[str], stem_eq: float
) -> list[tuple[str, tuple[str, int]]]:
    """Per stem: the soundfont of ``names`` that plays it (``--stem-mix``) and its EQ move and seed
    (an EQ with probability ``stem_eq``; ``--stem-eq``).

    A pure function of its arguments, so a resumed render draws the same.
    """
    rng = np.random.default_rng([seed, index, 1206])
    out = []
    for _ in clip.midi.instruments:
        name = names[int(rng.integers(len(names)))]
        eq = str(rng.choice(STEM_EQS)) if rng.random() < stem_eq else ""
        out.append((name, (eq, int(rng.integers(2**31)))))
    return out


def _work(index: int) -> dict | None:
    """Render clip ``index`` (or read it back when done); None when every stem came out silent."""
    assert _R
    out = Path(_ARGS["out"])
    cid = clip_id(index)
    sf_name, sf_path = _ARGS["soundfonts"][index % len(_ARGS["soundfonts"])]
    audio_path = out / "audio" / f"{cid}.flac"
    meta_path = out / "meta" / f"{cid}.json"
    if audio_path.exists() and meta_path.exists():
        return json.loads(meta_path.read_text())
    t0 = time.perf_counter()
    clip = compose(_ARGS["seed"], index, _ARGS["seconds"], any_pool=_ARGS["any_pool"])
    if _ARGS["composer"] != "default":
        vary(clip, _ARGS["composer"], _ARGS["vary_seed"], frozenset(_ARGS["skip"]))
    stems = stem_choices(clip, _ARGS["seed"], index, [n for n, _ in _ARGS["soundfonts"]], _ARGS["stem_eq"])
    players = [n for n, _ in stems] if _ARGS["stem_mix"] else [sf_name] * len(stems)
    fallback = _ARGS["fallback"]
    if fallback:  # a stem the clip's source has no sound for is played by the fallback soundfont
        insts = clip.midi.instruments
        players = [
            n if plays(_R[n], i.program, i.is_drum) else fallback for n, i in zip(players, insts, strict=True)
        ]
    per_stem = _ARGS["stem_mix"] or bool(fallback)
    try:
        audio, tags, info = render_clip(
            _R[sf_name],
            clip,
            _ARGS["seconds"],
            [_R[n] for n in players] if per_stem else None,
            [e for _, e in stems],
        )
    except SilentClipError:  # freepats lacks every program of the clip: no clip (tried again on resume)
        return None
    row = {
        "path": f"audio/{cid}.flac",
        "tags": ";".join(tags),
        "split": _split(index, _ARGS["test"]),
        "style": clip.style,
        "bpm": f"{clip.bpm:.1f}",
        "level": clip.level,
        "rms_db": str(info["rms_db"]),
        "instruments": ";".join(f"{i.name}:{i.program}" for i in clip.midi.instruments),
        "soundfont": Path(sf_path).name,
        "soundfont_name": "stem_mix" if _ARGS["stem_mix"] else sf_name,  # per stem: stem_soundfonts
        "composer": _ARGS["composer"],
        "seed": str(_ARGS["seed"]),
        "vary_seed": str(_ARGS["vary_seed"]),
        "index": str(index),
        **clip.meta,
        "silent_stems": ";".join(info["silent"]),
        "stem_soundfonts": ";".join(players) if per_stem else "",
        "stem_eqs": ";".join(eq for _, (eq, _) in stems) if _ARGS["stem_eq"] else "",
        "render_s": f"{time.perf_counter() - t0:.3f}",
    }
    with atomic_path(out / "midi" / f"{cid}.mid") as tmp:
        clip.midi.write(str(tmp))
    write_atomic(meta_path, json.dumps(row))
    with atomic_path(audio_path) as tmp:  # audio last: its existence marks the clip done
        sf.write(tmp, audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return row


_FIRST = ["path", "tags", "split", "style", "bpm", "level"]


def write_table(out: Path, rows: list[dict]) -> None:
    """Write ``tags.csv`` atomically, rows sorted by clip index."""
    rows = sorted(rows, key=lambda r: int(r["index"]))
    cols = _FIRST + sorted({k for r in rows for k in r} - set(_FIRST))
    with atomic_path(out / "tags.csv") as tmp, tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)


def _held_out(soundfonts: list[str], composer: str) -> str:
    """Why this render would leak held-out test material into training ("" when it would not)."""
    names = [n for n in soundfonts if n in SOUNDFONTS and SOUNDFONTS[n].use == "test"]
    names += ["composer heldout"] if composer == "heldout" else []
    return f"{', '.join(names)} is held out for testing: render it only with --test" if names else ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.corpora.synth", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument(
        "--soundfont",
        action="append",
        required=True,
        help="soundfont name (" + ", ".join(SOUNDFONTS) + ") or file; repeat to alternate clip by clip",
    )
    p.add_argument("--composer", default="default", help="composer configuration: " + ", ".join(COMPOSERS))
    p.add_argument("--data", type=Path, default=Path("data"), help="cache for soundfonts fetched from Debian")
    p.add_argument("--n", type=int, default=2400, help="number of clips")
    p.add_argument("--start", type=int, default=0, help="first clip index")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--vary-seed",
        type=int,
        default=None,
        help="seed of the composer configuration's draws (voicings, octaves, articulation, mix, reverb, "
        "EQ, codec; default --seed): another value re-arranges --seed's compositions, tags unchanged",
    )
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--nice", type=int, default=0, help="niceness increment for worker processes")
    p.add_argument("--test", action="store_true", help="mark every clip split=test (held-out set)")
    p.add_argument(
        "--stem-mix",
        action="store_true",
        help="each stem played by a soundfont drawn from --soundfont (not one soundfont per clip)",
    )
    p.add_argument(
        "--stem-eq",
        type=float,
        default=0.0,
        metavar="P",
        help="each stem gets a random EQ move (" + ", ".join(STEM_EQS) + ") with probability P",
    )
    p.add_argument(
        "--fallback",
        default="",
        metavar="NAME",
        help="a stem the clip's soundfont has no sound for (tonejs lacks many programs) is played by "
        "this training soundfont instead of coming out silent; recorded per stem in stem_soundfonts",
    )
    p.add_argument(
        "--any-pool",
        type=float,
        default=0.0,
        metavar="P",
        help="a clip's melodic instruments come from every instrument, not its style's pool, with "
        "probability P (the table's pool column): instrument units cannot lean on the style",
    )
    p.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=FACTORS,
        help="leave this factor of the composer configuration out (drawn, not applied: an ablation); repeatable",
    )
    a = p.parse_args(argv)
    if a.composer not in COMPOSERS:
        print(
            f"error: unknown composer {a.composer!r} (expected one of {', '.join(COMPOSERS)})",
            file=sys.stderr,
        )
        return 2
    if not 0.0 <= a.stem_eq <= 1.0:
        print(f"error: --stem-eq is a probability, got {a.stem_eq}", file=sys.stderr)
        return 2
    if not 0.0 <= a.any_pool <= 1.0:
        print(f"error: --any-pool is a probability, got {a.any_pool}", file=sys.stderr)
        return 2
    if a.skip and a.composer == "default":
        print("error: --skip ablates a composer configuration: give --composer", file=sys.stderr)
        return 2
    if a.vary_seed is not None and a.composer == "default":
        print("error: --vary-seed draws a composer configuration's choices: give --composer", file=sys.stderr)
        return 2
    sources = [*a.soundfont, *([a.fallback] if a.fallback else [])]
    if not a.test and _held_out(sources, a.composer):  # before any download
        print(f"error: {_held_out(sources, a.composer)}", file=sys.stderr)
        return 2
    try:
        soundfonts = [resolve_soundfont(x, a.data) for x in a.soundfont]
        fallback = resolve_soundfont(a.fallback, a.data) if a.fallback else None
        if fallback is not None:
            check_renderer(*fallback)
        for name, path in soundfonts:
            check_renderer(name, path)
    except (FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    named = [n for n, _ in soundfonts] + ([fallback[0]] if fallback else [])
    if not a.test and _held_out(named, a.composer):  # a held-out font given by path
        print(f"error: {_held_out(named, a.composer)}", file=sys.stderr)
        return 2
    for sub in ("audio", "midi", "meta"):
        (a.out / sub).mkdir(parents=True, exist_ok=True)
    (a.out / "vocabulary.txt").write_text("\n".join(TAGS) + "\n")
    args = {
        "out": str(a.out),
        "soundfonts": [(n, str(p)) for n, p in soundfonts],
        "fallback": fallback[0] if fallback else "",
        "fallback_path": str(fallback[1]) if fallback else "",
        "composer": a.composer,
        "skip": sorted(a.skip),
        "seed": a.seed,
        "vary_seed": a.seed if a.vary_seed is None else a.vary_seed,
        "seconds": a.seconds,
        "test": a.test,
        "nice": a.nice,
        "stem_mix": a.stem_mix,
        "stem_eq": a.stem_eq,
        "any_pool": a.any_pool,
    }
    indices = list(range(a.start, a.start + a.n))
    rows: list[dict] = []
    skipped = 0
    t0 = time.perf_counter()
    from tqdm import tqdm

    ctx = mp.get_context("spawn")  # fresh FluidSynth per worker, no forked C state
    with ctx.Pool(a.workers, initializer=_init_worker, initargs=(args,)) as pool:
        for i, row in enumerate(
            tqdm(pool.imap(_work, indices, chunksize=4), total=len(indices), mininterval=5)
        ):
            if row is None:
                skipped += 1
            else:
                rows.append(row)
            if (i + 1) % 100 == 0:
                write_table(a.out, rows)
        pool.close()  # workers exit normally, not terminated: their renderers' temporary folders go
        pool.join()
    # Final table: every finished clip in the folder (earlier runs with other --start included).
    rows = [json.loads(m.read_text()) for m in sorted((a.out / "meta").glob("*.json"))]
    rows = [r for r in rows if (a.out / r["path"]).exists()]
    write_table(a.out, rows)
    dt = time.perf_counter() - t0
    print(f"{len(rows)} clips ({len(rows) * a.seconds / 3600:.2f} h) in {dt:.0f} s -> {a.out / 'tags.csv'}")
    if skipped:
        print(f"{skipped} clips skipped: every stem silent with this soundfont", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
