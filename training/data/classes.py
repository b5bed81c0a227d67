"""Folder-per-class corpora (``<class>/<file>``) and unlabelled folders of audio."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from training.data.table import AUDIO_EXTS, DataError, TrackTable

__all__ = ["load_classes", "load_unlabelled", "audio_files"]


def audio_files(folder: Path) -> list[Path]:
    """Audio files under ``folder`` (recursive, sorted, hidden and temporary files skipped)."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in AUDIO_EXTS and p.is_file() and not any(s.startswith(".") for s in p.parts[-1:])
    )


def load_classes(source: str | Path) -> TrackTable:
    """One sub-folder per class; every audio file below it gets that single tag."""
    source = Path(source)
    if not source.is_dir():
        raise DataError(f"{source}: not a folder")
    classes = sorted(d.name for d in source.iterdir() if d.is_dir() and not d.name.startswith("."))
    paths: list[str] = []
    label_idx: list[int] = []
    empty = []
    for j, c in enumerate(classes):
        files = audio_files(source / c)
        if not files:
            empty.append(c)
        paths += [str(p.relative_to(source)) for p in files]
        label_idx += [j] * len(files)
    classes_used = [c for c in classes if c not in empty]
    if not classes_used:
        raise DataError(f"{source}: no class folders with audio files")
    remap = {classes.index(c): k for k, c in enumerate(classes_used)}
    labels = np.zeros((len(paths), len(classes_used)), np.uint8)
    labels[np.arange(len(paths)), [remap[j] for j in label_idx]] = 1
    return TrackTable(source, paths, classes_used, labels, None, {}, "classes")


def load_unlabelled(source: str | Path, check: bool = True) -> TrackTable:
    """Audio without labels: ``tracks.csv`` (a ``path`` column) when present, else every audio file."""
    source = Path(source)
    table = source / "tracks.csv"
    if table.is_file():
        with table.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        if not rows or "path" not in rows[0]:
            raise DataError(f"{table}: needs a path column and at least one row")
        paths = [r["path"] for r in rows]
        meta = {k: [r[k] for r in rows] for k in rows[0] if k != "path"}
    elif source.is_dir():
        paths = [str(p.relative_to(source)) for p in audio_files(source)]
        meta = {}
    else:
        raise DataError(f"{source}: not a folder")
    if not paths:
        raise DataError(f"{source}: no audio files")
    out = TrackTable(source, paths, [], np.zeros((len(paths), 0), np.uint8), None, meta, "unlabelled")
    if check:
        out.check_files(str(table if table.is_file() else source))
    return out
