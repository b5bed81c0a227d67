"""Negatives for the music / not-music head: clips that are not music, with a category label.

Usage::

    python -m training.corpora.not_music --out data/not_music --n 2400 --seconds 4 --seed 0

Categories (:data:`CATEGORIES`): pure and dual tones, chirps (linear and exponential sweeps),
noise of four colours (white, pink, brown, blue), clicks (regular or random impulse trains),
speech (espeak-ng, random voices, speeds, pitches, English sentences or made-up syllables),
digital silence, near-silence (faint noise or dither), DC offset with mains hum, and random bytes
read as audio. Every clip is 16 kHz mono float32 and a pure function of ``(seed, index)``; its
RMS level lies in the range :data:`LEVELS_DB` gives for its category (digital silence is exactly
zero, random bytes keep the level they have). The CLI writes ``audio/<id>.flac`` and
``tags.csv`` (path, tags = ``not_music;<category>``, split, category, rms_db, detail); clips
with ``index % 10 == 9`` are ``valid``, ``--test`` marks all of them ``test`` (use another seed).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf

from engines.atomic import atomic_path

__all__ = [
    "CATEGORIES",
    "LEVELS_DB",
    "NotMusicClip",
    "clip",
    "coloured_noise",
    "generate",
    "have_espeak",
    "level_db",
    "main",
]

SAMPLE_RATE = 16000

CATEGORIES: tuple[str, ...] = (
    "tone",
    "chirp",
    "noise_white",
    "noise_pink",
    "noise_brown",
    "noise_blue",
    "clicks",
    "speech",
    "silence",
    "near_silence",
    "hum",
    "random_bytes",
)

# Level range (dBFS) each category is scaled into: RMS, except for clicks, whose level is their
# peak (a sparse impulse train has almost no RMS). None: the level the signal has by nature.
# The upper ends keep every peak below full scale (Gaussian noise peaks ~13 dB above its RMS).
LEVELS_DB: dict[str, tuple[float, float] | None] = {
    "tone": (-40.0, -8.0),
    "chirp": (-40.0, -8.0),
    "noise_white": (-50.0, -18.0),
    "noise_pink": (-50.0, -18.0),
    "noise_brown": (-50.0, -18.0),
    "noise_blue": (-50.0, -18.0),
    "clicks": (-40.0, -3.0),
    "speech": (-45.0, -20.0),
    "silence": None,  # exactly zero
    "near_silence": (-100.0, -65.0),
    "hum": (-55.0, -20.0),
    "random_bytes": None,  # full-scale noise, whatever the bytes give
}

# Noise colour -> exponent of the power spectrum, P(f) ~ f ** exponent.
NOISE_EXPONENT = {"noise_white": 0.0, "noise_pink": -1.0, "noise_brown": -2.0, "noise_blue": 1.0}


@dataclass
class NotMusicClip:
    """One generated clip and how it was made."""

    audio: np.ndarray  # (samples,) float32
    category: str
    detail: dict = field(default_factory=dict)


def _rms_db(x: np.ndarray) -> float:
    return 10.0 * float(np.log10(np.mean(np.square(x, dtype=np.float64)) + 1e-30))


PEAK_LEVEL = frozenset({"clicks"})  # categories whose LEVELS_DB range is a peak level


def level_db(x: np.ndarray, category: str) -> float:
    """The level :data:`LEVELS_DB` specifies for ``category``: RMS, or peak for clicks (dBFS)."""
    if category in PEAK_LEVEL:
        return 20.0 * float(np.log10(np.max(np.abs(x)) + 1e-30))
    return _rms_db(x)


def _tone(rng: np.random.Generator, n: int, sr: int) -> tuple[np.ndarray, dict]:
    t = np.arange(n) / sr
    freqs = [float(np.exp(rng.uniform(np.log(40.0), np.log(7000.0))))]
    if rng.random() < 0.3:  # dual tone (telephone-like)
        freqs.append(float(freqs[0] * rng.uniform(1.1, 1.9)))
    x = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)) for f in freqs)
    return np.asarray(x), {"freqs_hz": [round(f, 1) for f in freqs]}


def _chirp(rng: np.random.Generator, n: int, sr: int) -> tuple[np.ndarray, dict]:
    f0, f1 = np.exp(rng.uniform(np.log(30.0), np.log(7500.0), size=2))
    kind = "exponential" if rng.random() < 0.5 else "linear"
    sweeps = int(rng.integers(1, 4))  # the sweep repeats this many times over the clip
    seg = -(-n // sweeps)
    t = np.arange(seg) / sr
    dur = seg / sr
    if kind == "linear":
        phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * dur))
    else:
        k = np.log(f1 / f0) / dur
        phase = 2 * np.pi * f0 * (np.exp(k * t) - 1) / k if abs(k) > 1e-9 else 2 * np.pi * f0 * t
    x = np.tile(np.sin(phase), sweeps)[:n]
    return x, {"kind": kind, "f0_hz": round(float(f0), 1), "f1_hz": round(float(f1), 1), "sweeps": sweeps}


def coloured_noise(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Gaussian noise whose power spectrum goes as ``f ** exponent`` (0 white, -1 pink, -2 brown, 1 blue)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0  # keep DC finite; it is removed below
    spec *= f ** (exponent / 2.0)
    spec[0] = 0.0
    return np.fft.irfft(spec, n)


def _noise(category: str) -> Callable[[np.random.Generator, int, int], tuple[np.ndarray, dict]]:
    def make(rng: np.random.Generator, n: int, sr: int) -> tuple[np.ndarray, dict]:
        return coloured_noise(rng, n, NOISE_EXPONENT[category]), {"exponent": NOISE_EXPONENT[category]}

    return make


def _clicks(rng: np.random.Generator, n: int, sr: int) -> tuple[np.ndarray, dict]:
    rate = float(np.exp(rng.uniform(np.log(0.5), np.log(200.0))))  # clicks per second
    regular = bool(rng.random() < 0.5)
    if regular:
        at = np.arange(rng.uniform(0, 1 / rate), n / sr, 1 / rate)
    else:
        at = np.cumsum(rng.exponential(1 / rate, size=int(rate * n / sr * 2) + 4))
        at = at[at < n / sr]
    x = np.zeros(n)
    idx = (at * sr).astype(int)
    x[idx] = rng.choice([-1.0, 1.0], size=len(idx)) * rng.uniform(0.5, 1.0, size=len(idx))
    width = int(rng.integers(1, 40))  # from a one-sample impulse to a short decaying tick
    if width > 1:
        x = np.convolve(x, np.exp(-np.arange(width) / (width / 4)), mode="same")
    if not np.any(x):  # a very slow random train may miss the clip: one click at least
        x[int(rng.integers(n))] = 1.0
    return x, {"rate_hz": round(rate, 2), "regular": regular, "width": width}


_SENTENCES = (
    "The weather report says rain will move in from the west tonight.",
    "Please remember to switch off the lights when you leave the room.",
    "Our next train to the city centre departs from platform four.",
    "She opened the window and listened to the traffic outside.",
    "Numbers one two three four five six seven eight nine ten.",
    "Welcome back, the meeting will start in a few minutes.",
    "He said the package would arrive on Tuesday morning.",
    "Turn left at the second crossing and keep going straight.",
)
_VOICES = ("en", "en-us", "de", "fr", "es", "it", "pt", "nl", "pl", "sv", "ru", "hi", "cmn")
_VARIANTS = ("", "+m1", "+m3", "+f1", "+f2", "+f4", "+croak", "+whisper")


def have_espeak() -> bool:
    """Whether espeak-ng (Debian package espeak-ng) is on PATH."""
    return shutil.which("espeak-ng") is not None


def _babble(rng: np.random.Generator) -> str:
    """Made-up words of consonant-vowel syllables: pronounceable by every espeak voice."""
    cons, vows = "bdfgklmnprstvz", "aeiou"
    words = [
        "".join(
            cons[rng.integers(len(cons))] + vows[rng.integers(len(vows))] for _ in range(rng.integers(1, 4))
        )
        for _ in range(int(rng.integers(6, 16)))
    ]
    return " ".join(words) + "."


def _speech(rng: np.random.Generator, n: int, sr: int) -> tuple[np.ndarray, dict]:
    if not have_espeak():
        raise RuntimeError("speech needs espeak-ng (Debian package espeak-ng)")
    voice = str(rng.choice(_VOICES)) + str(rng.choice(_VARIANTS))
    text = str(rng.choice(_SENTENCES)) if rng.random() < 0.5 else _babble(rng)
    speed, pitch = int(rng.integers(110, 230)), int(rng.integers(10, 90))
    out = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
        capture_output=True,
        check=True,
    ).stdout
    # espeak-ng streams a 44-byte WAV header with placeholder sizes, then 16-bit mono at 22050 Hz.
    rate = int.from_bytes(out[24:28], "little")
    pcm = np.frombuffer(out[44 : 44 + (len(out) - 44) // 2 * 2], "<i2").astype(np.float64) / 32768.0
    g = gcd(rate, sr)
    from scipy.signal import resample_poly

    pcm = resample_poly(pcm, sr // g, rate // g)
    x = np.zeros(n)
    if len(pcm) >= n:
        x[:] = pcm[:n]
    else:  # speech starts somewhere in the clip; silence around it as in real recordings
        start = int(rng.integers(0, n - len(pcm) + 1))
        x[start : start + len(pcm)] = pcm
    return x, {"voice": voice, "speed": speed, "pitch": pitch, "text": text}


def _silence(rng: np.random.Generator, n: int, sr: int) -> tuple[np.ndarray, dict]:
    return np.zeros(n), {}


def _near_silence(rng: np.random.Generator, n: int, sr: int) -> tuple[np.ndarray, dict]:
    kind = str(rng.choice(["white", "pink", "dither"]))
    if kind == "dither":  # +-1 LSB of 16-bit: what a silent digital input often carries
        x = rng.integers(-1, 2, size=n).astype(np.float64) / 32768.0
    else:
        x = coloured_noise(rng, n, 0.0 if kind == "white" else -1.0)
    return x, {"kind": kind}


def _hum(rng: np.random.Generator, n: int, sr: int) -> tuple[np.ndarray, dict]:
    t = np.arange(n) / sr
    mains = float(rng.choice([50.0, 60.0]))
    x = sum(
        rng.uniform(0.05, 1.0) / k * np.sin(2 * np.pi * mains * k * t + rng.uniform(0, 2 * np.pi))
        for k in range(1, 8)
    )
    dc = float(rng.uniform(-1.0, 1.0))  # DC offset relative to the hum's amplitude
    return np.asarray(x) + dc, {"mains_hz": mains, "dc": round(dc, 3)}


def _random_bytes(rng: np.random.Generator, n: int, sr: int) -> tuple[np.ndarray, dict]:
    fmt = str(rng.choice(["s16le", "u8", "s16be"]))
    if fmt == "u8":
        x = (rng.integers(0, 256, size=n, dtype=np.uint8).astype(np.float64) - 128.0) / 128.0
    else:
        raw = rng.bytes(2 * n)
        x = np.frombuffer(raw, "<i2" if fmt == "s16le" else ">i2").astype(np.float64) / 32768.0
    return x, {"format": fmt}


_MAKERS: dict[str, Callable[[np.random.Generator, int, int], tuple[np.ndarray, dict]]] = {
    "tone": _tone,
    "chirp": _chirp,
    **{c: _noise(c) for c in NOISE_EXPONENT},
    "clicks": _clicks,
    "speech": _speech,
    "silence": _silence,
    "near_silence": _near_silence,
    "hum": _hum,
    "random_bytes": _random_bytes,
}


def generate(
    category: str, seed: int, index: int = 0, seconds: float = 4.0, sample_rate: int = SAMPLE_RATE
) -> NotMusicClip:
    """One clip of ``category``; a pure function of its arguments.

    Raises:
        ValueError: unknown category.
        RuntimeError: speech without espeak-ng.
    """
    if category not in _MAKERS:
        raise ValueError(f"unknown category {category!r} (expected one of {', '.join(CATEGORIES)})")
    rng = np.random.default_rng([seed, index, CATEGORIES.index(category)])
    n = int(round(seconds * sample_rate))
    x, detail = _MAKERS[category](rng, n, sample_rate)
    levels = LEVELS_DB[category]
    if levels is not None:
        target = float(rng.uniform(*levels))
        x = x * 10.0 ** ((target - level_db(x, category)) / 20.0)
        detail["target_db"] = round(target, 2)
    return NotMusicClip(np.asarray(x, np.float32), category, detail)


def clip(
    seed: int, index: int, seconds: float = 4.0, categories: tuple[str, ...] = CATEGORIES
) -> NotMusicClip:
    """Clip ``index`` of a corpus: categories take turns, so every category is equally common."""
    return generate(categories[index % len(categories)], seed, index, seconds)


def _split(index: int, test: bool) -> str:
    if test:
        return "test"
    return "valid" if index % 10 == 9 else "train"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m training.corpora.not_music", description=__doc__.splitlines()[0]
    )
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--n", type=int, default=2400, help="number of clips")
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test", action="store_true", help="mark every clip split=test (held-out set)")
    p.add_argument("--no-speech", action="store_true", help="leave out speech (no espeak-ng needed)")
    a = p.parse_args(argv)
    categories = tuple(c for c in CATEGORIES if not (a.no_speech and c == "speech"))
    if "speech" in categories and not have_espeak():
        print("error: espeak-ng not found (apt-get install espeak-ng, or pass --no-speech)", file=sys.stderr)
        return 2
    (a.out / "audio").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(a.n):
        c = clip(a.seed, i, a.seconds, categories)
        name = f"audio/notmusic_{i:06d}.flac"
        dst = a.out / name
        if not dst.exists():
            # FLAC 24-bit keeps near-silence (down to -100 dBFS) above the quantisation floor.
            with atomic_path(dst) as tmp:
                sf.write(tmp, c.audio, SAMPLE_RATE, format="FLAC", subtype="PCM_24")
        rows.append(
            {
                "path": name,
                "tags": f"not_music;{c.category}",
                "split": _split(i, a.test),
                "category": c.category,
                "rms_db": f"{_rms_db(c.audio):.2f}" if np.any(c.audio) else "-inf",
                "detail": json.dumps(c.detail, sort_keys=True),
            }
        )
    with atomic_path(a.out / "tags.csv") as tmp, tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"{len(rows)} clips ({len(rows) * a.seconds / 3600:.2f} h) -> {a.out / 'tags.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
