"""The common result of every corpus loader: :class:`TrackTable`, plus the data error type."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engines.errors import UserError

__all__ = ["DataError", "TrackTable", "AUDIO_EXTS", "normalise_split"]

AUDIO_EXTS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aif", ".aiff")

_SPLITS = {
    "train": "train",
    "training": "train",
    "valid": "valid",
    "validation": "valid",
    "val": "valid",
    "dev": "valid",
    "test": "test",
    "testing": "test",
}


class DataError(UserError):
    """A corpus the user pointed at is malformed: missing or unreadable audio, bad table, bad layout."""


def normalise_split(value: str, where: str) -> str:
    """``train``/``valid``/``test`` from common spellings; DataError naming ``where`` otherwise."""
    key = value.strip().lower()
    if key not in _SPLITS:
        raise DataError(f"{where}: unknown split {value!r} (expected train, valid or test)")
    return _SPLITS[key]


@dataclass
class TrackTable:
    """A corpus: audio paths (relative to ``root``), tag vocabulary and multi-hot labels.

    Attributes:
        root: folder the paths are relative to.
        paths: one relative audio path per track.
        tags: tag vocabulary (column order of ``labels``); empty for unlabelled corpora.
        labels: ``uint8`` array ``(n_tracks, n_tags)``; zero columns for unlabelled corpora.
        split: optional ``train``/``valid``/``test`` per track.
        meta: extra per-track columns from the source table (e.g. style, bpm, artist).
        format: the layout it was read from (folder, mtat, jamendo, classes, unlabelled).
        notes: things the loader decided that the user should hear about (printed as warnings).
    """

    root: Path
    paths: list[str]
    tags: list[str]
    labels: np.ndarray
    split: list[str] | None = None
    meta: dict[str, list[str]] = field(default_factory=dict)
    format: str = "folder"
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.labels = np.asarray(self.labels, dtype=np.uint8).reshape(len(self.paths), len(self.tags))
        if self.split is not None and len(self.split) != len(self.paths):
            raise ValueError("split must have one entry per track")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def labelled(self) -> bool:
        return len(self.tags) > 0

    def audio_path(self, i: int) -> Path:
        return self.root / self.paths[i]

    def indices(self, split: str) -> np.ndarray:
        """Track indices of one split (all tracks when the corpus has no split column)."""
        if self.split is None:
            return np.arange(len(self))
        return np.array([i for i, s in enumerate(self.split) if s == split], dtype=np.int64)

    def subset(self, idx: np.ndarray | list[int]) -> TrackTable:
        """A new table with the tracks ``idx`` (same vocabulary)."""
        idx = [int(i) for i in idx]
        return TrackTable(
            root=self.root,
            paths=[self.paths[i] for i in idx],
            tags=list(self.tags),
            labels=self.labels[idx],
            split=None if self.split is None else [self.split[i] for i in idx],
            meta={k: [v[i] for i in idx] for k, v in self.meta.items()},
            format=self.format,
            notes=list(self.notes),
        )

    def with_tags(self, keep: list[int]) -> TrackTable:
        """The same tracks with only the tag columns ``keep``."""
        return TrackTable(
            self.root,
            self.paths,
            [self.tags[j] for j in keep],
            self.labels[:, keep],
            self.split,
            self.meta,
            self.format,
            list(self.notes),
        )

    def check_files(self, where: str | None = None) -> None:
        """Raise DataError naming the first referenced audio file that does not exist."""
        for i, p in enumerate(self.paths):
            if not (self.root / p).is_file():
                src = where or str(self.root)
                raise DataError(f"{src}: track {i + 1} refers to missing audio file {self.root / p}")

    def tag_counts(self) -> dict[str, int]:
        return dict(zip(self.tags, (int(c) for c in self.labels.sum(axis=0)), strict=True))
