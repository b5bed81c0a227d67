"""MTG-Jamendo layout: ``autotagging*.tsv`` + an audio tree of folders ``00``..``99``.

Table columns (tab-separated): ``TRACK_ID ARTIST_ID ALBUM_ID PATH DURATION TAGS``, where the tags
of a track take one column each (``genre---rock``, ``mood/theme---happy``, ``instrument---piano``).
``PATH`` is relative to the audio root (``14/214.mp3``); the low-quality release names files
``14/214.low.mp3`` and is accepted too. When split files ``splits/split-<k>/<table>-train.tsv``,
``-validation.tsv``, ``-test.tsv`` sit beside the table, they give the split.
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np

from training.data.table import DataError, TrackTable

__all__ = ["load_jamendo", "find_table"]

_COLUMNS = ["TRACK_ID", "ARTIST_ID", "ALBUM_ID", "PATH", "DURATION"]
_SPLIT_FILES = {"train": "train", "validation": "valid", "test": "test"}


def find_table(source: Path) -> Path:
    """The autotagging table in ``source`` (or ``source/data``)."""
    for folder in (source, source / "data"):
        if (folder / "autotagging.tsv").is_file():
            return folder / "autotagging.tsv"
        found = [
            p for p in sorted(folder.glob("autotagging*.tsv")) if not p.stem.endswith(tuple(_SPLIT_FILES))
        ]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise DataError(f"{folder}: several MTG-Jamendo tables ({names}); choose one with table=")
    raise DataError(f"{source}: not an MTG-Jamendo folder (no autotagging*.tsv)")


def _read(table: Path) -> list[list[str]]:
    try:
        with table.open(newline="", encoding="utf-8") as fh:
            rows = [
                r for r in csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE) if any(c.strip() for c in r)
            ]
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {table}: {e}") from None
    if not rows or [c.strip().upper() for c in rows[0][:5]] != _COLUMNS:
        raise DataError(f"{table}: header must start with {' '.join(_COLUMNS)} TAGS")
    return rows[1:]


def _resolve(root: Path, rel: str) -> str | None:
    if (root / rel).is_file():
        return rel
    low = rel[: -len(".mp3")] + ".low.mp3" if rel.endswith(".mp3") else None
    if low and (root / low).is_file():
        return low
    return None


def load_jamendo(
    source: str | Path,
    table: str | Path | None = None,
    audio_root: str | Path | None = None,
    split_index: int = 0,
    check: bool = True,
) -> TrackTable:
    """Load an MTG-Jamendo autotagging table and its audio tree.

    Args:
        source: dataset folder.
        table: which ``autotagging*.tsv`` (default: ``autotagging.tsv`` or the only one).
        audio_root: folder holding ``00``..``99`` (default: ``source/audio`` or ``source``).
        split_index: which ``splits/split-<k>`` to take the split from, when present.
        check: verify every referenced audio file exists.
    """
    source = Path(source)
    tpath = Path(table) if table else find_table(source)
    if not tpath.is_absolute() and not tpath.exists():
        tpath = source / tpath
    rows = _read(tpath)
    if not rows:
        raise DataError(f"{tpath}: no tracks")
    roots = [Path(audio_root)] if audio_root else [source / "audio", source]
    root = next((r for r in roots if _resolve(r, rows[0][3].strip())), roots[0])
    per_row: list[list[str]] = []
    paths: list[str] = []
    for n, r in enumerate(rows, start=2):
        tags = [t.strip() for t in r[5:] if t.strip()]
        if not tags:
            raise DataError(f"{tpath} line {n} ({r[0]}): empty tag columns")
        per_row.append(tags)
        rel = r[3].strip()
        found = _resolve(root, rel) if check else rel
        if found is None:
            raise DataError(f"{tpath} line {n} ({r[0]}): audio file missing: {root / rel}")
        paths.append(found)
    vocab = sorted({t for tags in per_row for t in tags})
    index = {t: j for j, t in enumerate(vocab)}
    labels = np.zeros((len(rows), len(vocab)), np.uint8)
    for i, tags in enumerate(per_row):
        labels[i, [index[t] for t in tags]] = 1
    meta = {k.lower(): [r[j] for r in rows] for j, k in enumerate(_COLUMNS) if k != "PATH"}
    out = TrackTable(root, paths, vocab, labels, None, meta, "jamendo")
    return _apply_splits(out, tpath, split_index)


def _apply_splits(t: TrackTable, tpath: Path, k: int) -> TrackTable:
    folder = next(
        (
            d / f"split-{k}"
            for d in (tpath.parent / "splits", tpath.parent.parent / "splits")
            if (d / f"split-{k}").is_dir()
        ),
        None,
    )
    if folder is None:
        return t
    which: dict[str, str] = {}
    for suffix, name in _SPLIT_FILES.items():
        f = folder / f"{tpath.stem}-{suffix}.tsv"
        if not f.is_file():
            return t  # incomplete split set: leave the split to the caller
        which.update({r[0].strip(): name for r in _read(f)})
    keep = [i for i, tid in enumerate(t.meta["track_id"]) if tid in which]
    if len(keep) < len(t):
        warnings.warn(
            f"{len(t) - len(keep)} track(s) of {tpath.name} are in no split file of {folder}; dropped",
            stacklevel=3,
        )
    t = t.subset(keep)
    t.split = [which[tid] for tid in t.meta["track_id"]]
    return t
