"""A folder of audio plus a tags table (CSV or TSV).

Accepted tables (delimiter detected from the header line: tab, comma or semicolon):

- a path column (``path``, ``file``, ``filename``, ``audio``, ``clip`` or ``mp3_path``) and a
  ``tags`` (or ``labels``) column holding ``;``- or ``,``-separated tags;
- or a path column plus one-hot tag columns (every value 0/1, empty counts as 0);
- optional ``split`` column (train/valid/test); other columns are kept as metadata.

The table is one of :data:`TABLE_NAMES` inside the folder, or any ``.csv``/``.tsv`` passed
directly; a folder holding exactly one other table with a path column uses it, with a note.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from training.data.table import DataError, TrackTable, normalise_split

__all__ = ["load_folder", "read_rows", "other_tables", "PATH_COLUMNS", "TABLE_NAMES"]

PATH_COLUMNS = ("path", "file", "filename", "audio", "clip", "mp3_path", "audio_path")
TAG_COLUMNS = ("tags", "labels", "tag", "label")
TABLE_NAMES = ("tags.csv", "tags.tsv", "labels.csv", "labels.tsv", "metadata.csv", "annotations.csv")
_ONE_HOT = {"", "0", "1", "0.0", "1.0", "true", "false"}


def read_rows(table: Path) -> tuple[list[str], list[list[str]], str]:
    """Header, rows and delimiter of a CSV/TSV file; DataError when it cannot be a table."""
    try:
        text = table.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read table {table}: {e}") from None
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise DataError(f"{table}: empty table")
    head = lines[0]
    delim = "\t" if "\t" in head else "," if "," in head else ";" if ";" in head else None
    if delim is None:
        raise DataError(
            f"{table}: cannot tell the delimiter (expected tab, comma or semicolon in the header)"
        )
    rows = list(csv.reader(lines, delimiter=delim))
    header = [h.strip() for h in rows[0]]
    body = [r for r in rows[1:] if any(c.strip() for c in r)]
    for n, r in enumerate(body, start=2):
        if len(r) != len(header):
            raise DataError(f"{table} line {n}: {len(r)} fields, header has {len(header)}")
    return header, body, delim


def _column(header: list[str], names: tuple[str, ...]) -> int | None:
    low = [h.lower() for h in header]
    for name in names:
        if name in low:
            return low.index(name)
    return None


def other_tables(folder: Path) -> list[Path]:
    """Top-level CSV/TSV files of ``folder`` with a path column that are not standard table names."""
    found = []
    for p in sorted(folder.glob("*")):
        if p.suffix.lower() in (".csv", ".tsv") and p.name not in TABLE_NAMES and p.name != "tracks.csv":
            try:
                header, _, _ = read_rows(p)
            except DataError:
                continue
            if _column(header, PATH_COLUMNS) is not None:
                found.append(p)
    return found


def load_folder(source: str | Path, table: str | Path | None = None, check: bool = True) -> TrackTable:
    """Load a folder of audio with a tags table.

    Args:
        source: the folder (paths in the table are relative to it) or the table file itself.
        table: table file, if not one of :data:`TABLE_NAMES` inside ``source``.
        check: verify every referenced audio file exists.

    Raises:
        DataError: no table, no path column, empty tags, missing audio (naming the row).
    """
    source = Path(source)
    if table is None and source.is_file():
        source, table = source.parent, source
    notes = []
    if table is None:
        found = [source / n for n in TABLE_NAMES if (source / n).is_file()]
        if not found:
            others = other_tables(source)
            if len(others) != 1:
                raise DataError(f"{source}: no tags table (looked for {', '.join(TABLE_NAMES)})")
            found = others
            notes.append(f"tags table {others[0].name} used (not a standard name: {', '.join(TABLE_NAMES)})")
        table = found[0]
    table = Path(table)
    if not table.is_absolute() and not table.exists():
        table = source / table
    header, rows, delim = read_rows(table)
    pcol = _column(header, PATH_COLUMNS)
    if pcol is None:
        raise DataError(f"{table}: no path column (expected one of {', '.join(PATH_COLUMNS)})")
    tcol = _column(header, TAG_COLUMNS)
    scol = _column(header, ("split",))
    if not rows:
        raise DataError(f"{table}: no rows")

    if tcol is not None:
        cells = [r[tcol].strip() for r in rows]
        # Inside a comma-separated file tags must be ';'-separated; in a TSV either works.
        sep = ";" if delim == "," or any(";" in c for c in cells) else ","
        per_row = [[t.strip() for t in c.split(sep) if t.strip()] for c in cells]
        for n, (r, tags) in enumerate(zip(rows, per_row, strict=True), start=2):
            if not tags:
                raise DataError(f"{table} line {n} ({r[pcol]}): empty tags")
        vocab = sorted({t for tags in per_row for t in tags})
        index = {t: j for j, t in enumerate(vocab)}
        labels = np.zeros((len(rows), len(vocab)), np.uint8)
        for i, tags in enumerate(per_row):
            labels[i, [index[t] for t in tags]] = 1
        meta_cols = [j for j in range(len(header)) if j not in (pcol, tcol, scol)]
    else:
        skip = {pcol, scol}
        hot = [
            j
            for j in range(len(header))
            if j not in skip and all(r[j].strip().lower() in _ONE_HOT for r in rows)
        ]
        if not hot:
            raise DataError(f"{table}: no tags column and no one-hot (0/1) tag columns")
        for j in hot:
            if not header[j]:
                raise DataError(f"{table}: tag column {j + 1} has an empty name")
        vocab = [header[j] for j in hot]
        labels = np.array(
            [[r[j].strip().lower() in ("1", "1.0", "true") for j in hot] for r in rows], dtype=np.uint8
        )
        if not labels.any():
            raise DataError(f"{table}: every tag column is empty")
        meta_cols = [j for j in range(len(header)) if j not in skip and j not in hot]

    split = None
    if scol is not None:
        split = [normalise_split(r[scol], f"{table} line {n}") for n, r in enumerate(rows, start=2)]
    paths = [r[pcol].strip() for r in rows]
    if check:
        for n, p in enumerate(paths, start=2):
            if not (source / p).is_file():
                raise DataError(f"{table} line {n}: audio file missing: {source / p}")
    meta = {header[j]: [r[j] for r in rows] for j in meta_cols if header[j]}
    return TrackTable(source, paths, vocab, labels, split, meta, "folder", notes)
