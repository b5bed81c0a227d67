"""Corpora decoded into :class:`~training.bank.AudioBank`s, once per process.

A corpus is a folder that training.data can read (or a pack made by training.corpora.pack). The
decoded audio is cached per (corpus, sample rate, window, crop length), so stages that run in one
process (``train all``, ``train compare``) decode each corpus once. Tag selection happens on the
cached bank (:func:`select_tags`), so dropping tags never decodes again.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from training.bank import AudioBank
from training.data import DataError, TrackTable, load_table, read_audio
from training.recipe import Recipe

__all__ = ["open_table", "decode", "select_tags", "is_pack"]

_BANKS: dict[tuple, tuple[TrackTable, AudioBank]] = {}


def is_pack(path: Path) -> bool:
    return (Path(path) / "pack.json").exists()


def open_table(path: str | Path) -> TrackTable:
    """The corpus' track table (any training.data layout, or a pack's own table)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"corpus not found: {path}")
    if is_pack(path):
        return decode(path, None)[0]
    return load_table(path)


def decode(path: str | Path, recipe: Recipe | None, workers: int = 0) -> tuple[TrackTable, AudioBank]:
    """Decode every track of a corpus (cached); DataError lists the files that cannot be decoded."""
    path = Path(path)
    spec = (recipe or Recipe()).frontend
    max_s = recipe.data.max_seconds if recipe else 0.0
    key = (str(path.resolve()), spec.sample_rate, spec.window_samples, max_s)
    if key not in _BANKS:
        _BANKS[key] = _decode(path, spec.sample_rate, spec.window_samples, max_s, workers)
    return _BANKS[key]


def _decode(path: Path, rate: int, window: int, max_s: float, workers: int) -> tuple[TrackTable, AudioBank]:
    if is_pack(path):
        from training.corpora.pack import load_packed

        table, waves = load_packed(path, workers or os.cpu_count() or 1)
    else:
        table = load_table(path)
        files = [table.audio_path(i) for i in range(len(table))]
        waves, bad = [], []

        def read(f: Path) -> np.ndarray | None:
            try:
                return read_audio(f, rate)
            except DataError as e:
                bad.append(str(e))
                return None

        if workers > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(workers) as ex:
                waves = list(ex.map(read, files))
        else:
            waves = [read(f) for f in files]
        if bad:
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise DataError(f"{len(bad)} file(s) cannot be decoded: {bad[0]}{more}")
    if max_s > 0:
        cap = int(max_s * rate)
        waves = [w[:cap] for w in waves]
    bank = AudioBank.from_arrays(
        waves,
        rate,
        window,
        names=[str(p) for p in table.paths],
        labels=table.labels if table.tags else None,
        tags=list(table.tags),
        split=table.split,
    )
    return table, bank


def select_tags(bank: AudioBank, tags: list[str]) -> AudioBank:
    """``bank`` with its label columns re-ordered to ``tags`` (missing tags become 0 columns)."""
    labels = torch.zeros((len(bank), len(tags)), dtype=torch.float32)
    if bank.labels is not None:
        for j, t in enumerate(tags):
            if t in bank.tags:
                labels[:, j] = bank.labels[:, bank.tags.index(t)].cpu()
    return AudioBank(
        bank.audio, bank.offsets, bank.lengths, bank.sample_rate, bank.names, labels, list(tags), bank.split
    )
