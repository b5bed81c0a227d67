"""Recorded instruments (the tonejs-instruments samples, from npm) as a renderer of the synthetic corpus.

Every other training source is a General MIDI synthesiser (FluidR3 and MuseScore General share
samples, OPL-3 is FM, freepats and Sonivox EAS are small wavetables). These are recordings of real
instruments, one per note or every few semitones, edited for consistency by N. P. Brosowsky from
public-domain sources (samples CC-BY 3.0 per the upstream README; the npm packages declare MIT:
DATA_LICENSES.md), so a sample family unlike any soundfont here.

:class:`TonejsRenderer` has the interface of :class:`training.corpora.synth.Renderer` (``sr``,
``set_reverb``, ``render_stem``, ``close``) and is a plain sampler: each note plays the recording
nearest its pitch, resampled to the exact pitch (at most a few semitones), held for the note's
length then released, scaled by velocity. Only the programs in :data:`PROGRAMS` have recordings;
:meth:`TonejsRenderer.plays` says which, and a stem it cannot play comes out silent (the corpus CLI's
``--fallback`` names a training soundfont to play those stems instead). The reverb is a decaying
noise tail set by the clip's reverb parameters, as the soundfonts' synthesisers have their own.

The packages are fetched once with ``npm pack`` (:func:`fetch_tonejs`) into ``<data>/npm/tonejs``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tarfile
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf

__all__ = ["PACKAGES", "PROGRAMS", "TonejsRenderer", "fetch_tonejs"]

# npm package tonejs-instrument-<name>-mp3, pinned
PACKAGES: dict[str, str] = {
    "piano": "1.1.2",
    "guitar-nylon": "1.1.1",
    "guitar-acoustic": "1.1.2",
    "guitar-electric": "1.1.1",
    "contrabass": "1.1.2",
    "bass-electric": "1.1.2",
    "violin": "1.1.1",
    "cello": "1.1.1",
    "harp": "1.1.1",
    "trumpet": "1.1.2",
    "trombone": "1.1.2",
    "french-horn": "1.1.2",
    "saxophone": "1.1.2",
    "flute": "1.1.2",
    "organ": "1.1.1",
}

# GM program -> the recordings that play it (several: played together, e.g. a brass section).
# Programs of the composer (synth_compose.INSTRUMENTS) with no recording here are absent: electric
# piano, harpsichord, marimba, distorted guitar, string ensembles, choir, sitar, synths, synth bass
# and the drum kits.
PROGRAMS: dict[int, tuple[str, ...]] = {
    0: ("piano",),
    1: ("piano",),
    16: ("organ",),
    19: ("organ",),
    24: ("guitar-nylon",),
    25: ("guitar-acoustic",),
    27: ("guitar-electric",),
    32: ("contrabass",),
    33: ("bass-electric",),
    34: ("bass-electric",),
    40: ("violin",),
    42: ("cello",),
    46: ("harp",),
    56: ("trumpet",),
    61: ("trumpet", "trombone", "french-horn"),
    65: ("saxophone",),
    66: ("saxophone",),
    73: ("flute",),
}

_NOTE = re.compile(r"^([A-G])(s?)(\d)\.mp3$")  # "Cs3.mp3" = C#3 (A4 = MIDI 69); "F2 v2.mp3" skipped
_SEMITONE = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
_MAX_SHIFT = 6  # semitones a recording may be moved; a note farther from every recording is skipped
_RELEASE_S = 0.25  # fade after a note's end
NO_NPM = (
    "the npm binary is not installed (the tonejs samples come from the npm registry): apt-get install npm"
)


def fetch_tonejs(data: str | Path, names: tuple[str, ...] = tuple(PACKAGES)) -> Path:
    """The folder holding one sub-folder of mp3 files per instrument of ``names``, fetched once.

    Raises:
        RuntimeError: npm is missing or a package cannot be fetched.
    """
    root = Path(data) / "npm" / "tonejs"
    for name in names:
        folder = root / name
        if any(folder.glob("*.mp3")):
            continue
        if shutil.which("npm") is None:
            raise RuntimeError(NO_NPM)
        spec = f"tonejs-instrument-{name}-mp3@{PACKAGES[name]}"
        root.mkdir(parents=True, exist_ok=True)
        got = subprocess.run(
            ["npm", "pack", "--silent", spec], cwd=root, capture_output=True, text=True, timeout=600
        )
        tgz = (
            root / got.stdout.strip().splitlines()[-1] if got.returncode == 0 and got.stdout.strip() else None
        )
        if tgz is None or not tgz.is_file():
            raise RuntimeError(f"npm pack {spec} failed: {(got.stderr or got.stdout).strip()[-300:]}")
        tmp = root / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        with tarfile.open(tgz) as tar:
            tar.extractall(tmp, filter="data")
        (tmp / "package").rename(folder)
        shutil.rmtree(tmp)
        tgz.unlink()
    return root


def note_number(file_name: str) -> int | None:
    """MIDI note of a sample file name ("Cs3.mp3" -> 49), None for alternates and other files."""
    m = _NOTE.match(file_name)
    if m is None:
        return None
    letter, sharp, octave = m.groups()
    return 12 * (int(octave) + 1) + _SEMITONE[letter] + (1 if sharp else 0)


class TonejsRenderer:
    """A sampler over the tonejs-instruments recordings in ``root`` (:func:`fetch_tonejs`)."""

    def __init__(self, root: str | Path, sample_rate: int) -> None:
        self.sr = sample_rate
        self.root = Path(root)
        missing = sorted(
            {n for names in PROGRAMS.values() for n in names if not any((self.root / n).glob("*.mp3"))}
        )
        if missing:
            raise RuntimeError(f"{self.root}: no recordings of {', '.join(missing)} (fetch_tonejs)")
        self._banks: dict[str, dict[int, np.ndarray]] = {}
        self.set_reverb(0.5, 0.5, 0.0, 0.2)

    def plays(self, program: int, is_drum: bool) -> bool:
        return not is_drum and program in PROGRAMS

    def _bank(self, name: str) -> dict[int, np.ndarray]:
        """Note -> recording at the corpus rate (decoded once per process)."""
        if name not in self._banks:
            from scipy.signal import resample_poly

            bank = {}
            for path in sorted((self.root / name).glob("*.mp3")):
                key = note_number(path.name)
                if key is None:
                    continue
                x, sr = sf.read(path, dtype="float32", always_2d=True)
                g = gcd(self.sr, sr)
                y = resample_poly(x.mean(axis=1), self.sr // g, sr // g).astype(np.float32)
                # the mp3 decoder's delay and any lead-in: each note starts at its onset
                start = int(np.argmax(np.abs(y) > 0.01 * np.abs(y).max()))
                bank[key] = y[max(0, start - 16) :]
            self._banks[name] = bank
        return self._banks[name]

    def _note(self, name: str, pitch: int, n: int) -> np.ndarray | None:
        """The recording nearest ``pitch`` moved to it, at most ``n`` samples; None when out of range."""
        bank = self._bank(name)
        key = min(bank, key=lambda k: (abs(k - pitch), k))
        if abs(key - pitch) > _MAX_SHIFT:
            return None
        x = bank[key]
        rate = 2.0 ** ((pitch - key) / 12.0)  # read faster to play higher
        at = np.arange(0.0, len(x) - 1, rate)[:n]
        return np.interp(at, np.arange(len(x)), x).astype(np.float32)

    def render_stem(self, notes: list, program: int, is_drum: bool, n_samples: int) -> np.ndarray:
        """Render one track's notes (pretty_midi Notes) alone; returns ``n_samples`` mono samples."""
        out = np.zeros(n_samples, np.float32)
        if not self.plays(program, is_drum):
            return out
        release = int(_RELEASE_S * self.sr)
        for nt in notes:
            on = int(round(nt.start * self.sr))
            if on >= n_samples:
                continue
            held = max(1, int(round((nt.end - nt.start) * self.sr)))
            length = min(held + release, n_samples - on)
            env = np.ones(length, np.float32)
            if length > held:
                env[held:] = np.linspace(1.0, 0.0, length - held, dtype=np.float32) ** 2
            gain = (nt.velocity / 127.0) ** 1.5
            for name in PROGRAMS[program]:
                y = self._note(name, nt.pitch, length)
                if y is not None:
                    out[on : on + len(y)] += gain * env[: len(y)] * y
        return self._reverberate(out)

    def set_reverb(self, room: float, damp: float, width: float, level: float) -> None:
        """Reverb for the next stems, from FluidSynth's parameters (0-1); ``width`` is not used (mono).

        The tail is a decaying noise (RT60 0.3-2.5 s by room, darker with damp), made here once for
        all the stems of a clip; ``level`` is its wet gain.
        """
        from scipy.signal import lfilter

        del width
        self.wet = float(np.clip(level, 0.0, 1.0))
        rt60 = 0.3 + 2.2 * float(np.clip(room, 0.0, 1.0))
        t = np.arange(int(min(rt60, 2.5) * self.sr)) / self.sr
        ir = np.random.default_rng(0).standard_normal(len(t)) * np.exp(-6.9 * t / rt60)
        a = 0.2 + 0.7 * float(np.clip(damp, 0.0, 1.0))  # one-pole low-pass: damping dulls the tail
        ir = lfilter([1.0 - a], [1.0, -a], ir)
        self.ir = (ir / (np.sqrt(np.sum(ir**2)) + 1e-12)).astype(np.float32)

    def _reverberate(self, x: np.ndarray) -> np.ndarray:
        from scipy.signal import fftconvolve

        if self.wet <= 0.0 or not np.any(x):
            return x
        return (x + self.wet * fftconvolve(x, self.ir)[: len(x)]).astype(np.float32)

    def close(self) -> None:
        self._banks.clear()
