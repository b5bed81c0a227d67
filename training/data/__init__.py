"""Corpus loaders. Every layout becomes a :class:`TrackTable` (paths, tag vocabulary, multi-hot labels).

Layouts: ``folder`` (audio + tags CSV/TSV), ``mtat`` (MagnaTagATune), ``jamendo`` (MTG-Jamendo),
``classes`` (folder per class), ``unlabelled`` (folder of audio or ``tracks.csv``).
:func:`load_table` detects the layout when it is not given.
"""

from __future__ import annotations

from pathlib import Path

from training.data.audio import crop_or_pad, read_audio, resample
from training.data.classes import audio_files, load_classes, load_unlabelled
from training.data.folder import TABLE_NAMES, load_folder, other_tables
from training.data.jamendo import load_jamendo
from training.data.mtat import load_mtat
from training.data.table import DataError, TrackTable

__all__ = [
    "FORMATS",
    "DataError",
    "TrackTable",
    "detect_format",
    "load_table",
    "load_folder",
    "load_mtat",
    "load_jamendo",
    "load_classes",
    "load_unlabelled",
    "read_audio",
    "resample",
    "crop_or_pad",
]

FORMATS = ("folder", "mtat", "jamendo", "classes", "unlabelled")


def detect_format(source: str | Path) -> str:
    """Guess a corpus' layout from the files in it."""
    source = Path(source)
    if not source.exists():
        raise DataError(f"corpus not found: {source}")
    if source.is_file():
        if source.suffix.lower() in (".csv", ".tsv"):
            return "mtat" if source.name == "annotations_final.csv" else "folder"
        raise DataError(f"{source}: unknown corpus format (a file, but not a CSV/TSV table)")
    if (source / "manifest.json").is_file() and (source / "feats").is_dir():
        raise DataError(
            f"{source} is `rt-tagger features` output (log-mel for other tools); training decodes "
            "audio itself: point at the audio corpus the features were made from"
        )
    if (source / "annotations_final.csv").is_file():
        return "mtat"
    if any(source.glob("autotagging*.tsv")) or any((source / "data").glob("autotagging*.tsv")):
        return "jamendo"
    if any((source / n).is_file() for n in TABLE_NAMES) or len(other_tables(source)) == 1:
        return "folder"
    if (source / "tracks.csv").is_file():
        return "unlabelled"
    subdirs = [d for d in source.iterdir() if d.is_dir() and not d.name.startswith(".")]
    top_audio = [
        p
        for p in source.iterdir()
        if p.is_file() and p.suffix.lower() in (".wav", ".flac", ".ogg", ".mp3", ".opus")
    ]
    if subdirs and not top_audio and any(audio_files(d) for d in subdirs):
        return "classes"
    if top_audio or audio_files(source):
        return "unlabelled"
    raise DataError(f"{source}: unknown corpus format (no tags table, no audio files)")


def load_table(source: str | Path, format: str | None = None, **kwargs) -> TrackTable:
    """Load a corpus in ``format`` (detected when ``None``); kwargs go to that format's loader."""
    fmt = format or detect_format(source)
    loaders = {
        "folder": load_folder,
        "mtat": load_mtat,
        "jamendo": load_jamendo,
        "classes": load_classes,
        "unlabelled": load_unlabelled,
    }
    if fmt not in loaders:
        raise DataError(f"unknown corpus format {fmt!r} (expected one of {', '.join(FORMATS)})")
    return loaders[fmt](source, **kwargs)
