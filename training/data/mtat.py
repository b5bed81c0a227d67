"""MagnaTagATune layout: ``annotations_final.csv`` (tab-separated) + clip folders ``0``..``f``.

The table has ``clip_id``, 188 one-hot tag columns and ``mp3_path`` (e.g.
``f/american_bach_soloists-....mp3``). Split by folder, the common convention: ``0``-``b``
train, ``c`` valid, ``d``-``f`` test.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.data.folder import read_rows
from training.data.table import DataError, TrackTable

__all__ = ["load_mtat", "TABLE"]

TABLE = "annotations_final.csv"
_SPLIT = {**{c: "train" for c in "0123456789ab"}, "c": "valid", **{c: "test" for c in "def"}}


def load_mtat(source: str | Path, top_n: int | None = None, check: bool = True) -> TrackTable:
    """Load MagnaTagATune from ``source`` (the folder holding the table and clip folders).

    Args:
        source: dataset folder.
        top_n: keep only the ``top_n`` most frequent tags (50 is the usual benchmark).
        check: verify every referenced mp3 exists.
    """
    source = Path(source)
    table = source / TABLE
    if not table.is_file():
        raise DataError(f"{source}: not a MagnaTagATune folder (no {TABLE})")
    header, rows, delim = read_rows(table)
    if delim != "\t":
        raise DataError(f"{table}: expected a tab-separated table")
    low = [h.lower() for h in header]
    if "clip_id" not in low or "mp3_path" not in low:
        raise DataError(f"{table}: needs clip_id and mp3_path columns")
    cid, pcol = low.index("clip_id"), low.index("mp3_path")
    tag_cols = [j for j in range(len(header)) if j not in (cid, pcol)]
    if not tag_cols:
        raise DataError(f"{table}: no tag columns")
    for j in tag_cols:
        if not header[j]:
            raise DataError(f"{table}: tag column {j + 1} has an empty name")
    try:
        labels = np.array([[int(r[j] or 0) for j in tag_cols] for r in rows], dtype=np.uint8)
    except ValueError as e:
        raise DataError(f"{table}: tag values must be 0/1 ({e})") from None
    if labels.size == 0 or not labels.any():
        raise DataError(f"{table}: every tag column is empty")
    tags = [header[j] for j in tag_cols]
    if top_n:
        keep = np.argsort(-labels.sum(axis=0), kind="stable")[:top_n]
        keep.sort()
        tags, labels = [tags[j] for j in keep], labels[:, keep]
    paths, split = [], []
    for n, r in enumerate(rows, start=2):
        p = r[pcol].strip()
        if not p:
            raise DataError(f"{table} line {n} (clip {r[cid]}): empty mp3_path")
        folder = p.split("/", 1)[0].lower()
        if folder not in _SPLIT:
            raise DataError(f"{table} line {n}: mp3_path {p!r} is not in a clip folder 0-f")
        if check and not (source / p).is_file():
            raise DataError(f"{table} line {n} (clip {r[cid]}): audio file missing: {source / p}")
        paths.append(p)
        split.append(_SPLIT[folder])
    meta = {"clip_id": [r[cid] for r in rows]}
    return TrackTable(source, paths, tags, labels, split, meta, "mtat")
