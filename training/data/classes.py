"""Folder-per-class corpora (``<class>/<file>`` or ``<split>/<class>/<file>``) and unlabelled folders.

With split folders (``train/``, ``valid/``, ``test/``; also ``validation``, ``val``, ``dev``) the
class folders sit inside each, and the classes are the union over the splits.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from training.data.folder import other_tables
from training.data.table import _SPLITS, AUDIO_EXTS, DataError, TrackTable

__all__ = ["load_classes", "load_unlabelled", "audio_files"]


def audio_files(folder: Path) -> list[Path]:
    """Audio files under ``folder`` (recursive, sorted, hidden and temporary files skipped)."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in AUDIO_EXTS and p.is_file() and not any(s.startswith(".") for s in p.parts[-1:])
    )


def _subfolders(folder: Path) -> list[str]:
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def split_folders(source: Path) -> dict[str, str]:
    """``{folder name: split}`` when every sub-folder of ``source`` is a split name (train/valid/test)."""
    subs = _subfolders(source)
    if subs and all(s.lower() in _SPLITS for s in subs) and any(_SPLITS[s.lower()] == "train" for s in subs):
        return {s: _SPLITS[s.lower()] for s in subs}
    return {}


def load_classes(source: str | Path) -> TrackTable:
    """One sub-folder per class (optionally inside train/valid/test folders); one tag per file."""
    source = Path(source)
    if not source.is_dir():
        raise DataError(f"{source}: not a folder")
    splits = split_folders(source) or {"": None}
    classes = sorted({c for s in splits for c in _subfolders(source / s)})
    paths: list[str] = []
    label_idx: list[int] = []
    split: list[str] = []
    per_class = dict.fromkeys(classes, 0)
    for folder, name in splits.items():
        for j, c in enumerate(classes):
            files = audio_files(source / folder / c) if (source / folder / c).is_dir() else []
            per_class[c] += len(files)
            paths += [str(p.relative_to(source)) for p in files]
            label_idx += [j] * len(files)
            split += [name] * len(files)
    empty = [c for c, n in per_class.items() if n == 0]
    classes_used = [c for c in classes if c not in empty]
    if not classes_used:
        raise DataError(f"{source}: no class folders with audio files")
    remap = {classes.index(c): k for k, c in enumerate(classes_used)}
    labels = np.zeros((len(paths), len(classes_used)), np.uint8)
    labels[np.arange(len(paths)), [remap[j] for j in label_idx]] = 1
    notes = [f"class folder(s) without audio left out: {', '.join(empty)}"] if empty else []
    notes += [
        f"{p.name} ignored: a tags table must be named tags.csv (or pass the table itself)"
        for p in other_tables(source)
    ]
    has_split = split_folders(source) != {}
    return TrackTable(source, paths, classes_used, labels, split if has_split else None, {}, "classes", notes)


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
