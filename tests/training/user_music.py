"""A user's own music, the way a user lays it out: real audio cut from the demo clip.

The demo clip (Wesnoth's "Traveling Minstrels", rt_tagger/demo/) is cut into short excerpts; each
class is a real audible treatment of them (``bright``: as recorded; ``muffled``: low-passed;
``noisy``: with hiss), so a few training steps can tell them apart. Files are written as OGG,
FLAC and WAV like a real collection.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

DEMO = Path(__file__).resolve().parents[2] / "rt_tagger" / "demo" / "demo.ogg"
CLASSES = ("bright", "muffled", "noisy")
EXTS = (".ogg", ".flac", ".wav")


def _treat(x: np.ndarray, kind: str, sr: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "muffled":  # one-pole low-pass around 400 Hz, run as a cumulative filter in numpy
        from scipy.signal import lfilter

        a = np.exp(-2 * np.pi * 400 / sr)
        x = lfilter([1 - a], [1, -a], lfilter([1 - a], [1, -a], x))
    elif kind == "noisy":
        x = x + 0.05 * rng.standard_normal(len(x))
    return np.clip(x, -1, 1).astype(np.float32)


def excerpts(n: int, seconds: float, seed: int = 0) -> tuple[list[np.ndarray], int]:
    """``n`` mono excerpts of the demo clip at random offsets."""
    audio, sr = sf.read(str(DEMO), dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    rng = np.random.default_rng(seed)
    length = int(seconds * sr)
    starts = rng.integers(0, len(audio) - length, n)
    return [audio[s : s + length] for s in starts], sr


def write_tracks(folder: Path, kinds: list[str], seconds: float = 5.0, seed: int = 0) -> list[Path]:
    """One file per entry of ``kinds`` under ``folder`` (class treatment applied); returns the paths."""
    clips, sr = excerpts(len(kinds), seconds, seed)
    rng = np.random.default_rng(seed + 1)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (clip, kind) in enumerate(zip(clips, kinds, strict=True)):
        path = folder / f"track_{seed}_{i:02d}{EXTS[i % len(EXTS)]}"
        sf.write(path, _treat(clip, kind, sr, rng), sr)
        paths.append(path)
    return paths


def class_folders(root: Path, per_class: dict[str, int], seconds: float = 5.0, seed: int = 0) -> Path:
    """``root/<class>/track…`` (folder per class)."""
    for j, (kind, n) in enumerate(per_class.items()):
        write_tracks(root / kind, [kind] * n, seconds, seed + 10 * j)
    return root


def csv_collection(root: Path, per_class: int = 10, seconds: float = 5.0, seed: int = 0) -> Path:
    """``root/songs/…`` plus ``root/my_tags.csv`` (a non-standard name) with one-hot columns:
    the three classes, ``vocals`` (0 everywhere: a constant column) and ``ambient`` (one track)."""
    kinds = [k for k in CLASSES for _ in range(per_class)]
    paths = write_tracks(root / "songs", kinds, seconds, seed)
    lines = ["file,bright,muffled,noisy,vocals,ambient"]
    for i, (p, kind) in enumerate(zip(paths, kinds, strict=True)):
        hot = ",".join("1" if kind == c else "0" for c in CLASSES)
        lines.append(f"songs/{p.name},{hot},0,{1 if i == 0 else 0}")
    (root / "my_tags.csv").write_text("\n".join(lines) + "\n")
    return root
