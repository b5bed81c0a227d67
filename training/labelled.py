"""The labelled data of a probe or fine-tune: train / valid / test tracks over one tag list.

Splits come from the corpora when they have them (a ``split`` column, ``train/ valid/ test/``
folders, separate ``data.valid`` / ``data.test`` corpora); what is missing is carved from the
training tracks, stratified by each track's rarest tag so every tag keeps examples on each side.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
import torch

from training.bank import AudioBank
from training.data import DataError
from training.decode import select_tags
from training.recipe import Recipe

__all__ = ["LabelledData", "build_labelled", "carve"]

log = logging.getLogger(__name__)


@dataclass
class LabelledData:
    """Attributes:
    bank: the training and validation tracks, labels over ``tags``.
    train, valid: indices into ``bank``.
    test_bank, test: the test tracks (``test_bank`` may be ``bank``).
    y_test: ``(len(test), T)`` labels; −1 where the test corpus does not label a tag.
    tags: the tag list (the model's outputs).
    classes: every labelled track has exactly one tag (folder-per-class): class metrics apply.
    """

    bank: AudioBank
    train: np.ndarray
    valid: np.ndarray
    test_bank: AudioBank
    test: np.ndarray
    y_test: np.ndarray
    tags: list[str]
    classes: bool

    def to(self, device) -> LabelledData:
        bank = self.bank.to(device)
        test_bank = bank if self.test_bank is self.bank else self.test_bank.to(device)
        return replace(self, bank=bank, test_bank=test_bank)

    def labels(self, idx: np.ndarray) -> np.ndarray:
        return self.bank.labels[torch.as_tensor(idx, device=self.bank.labels.device)].cpu().numpy()


def carve(idx: np.ndarray, fraction: float, labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``idx`` into (rest, carved ≈ ``fraction``), stratified by each track's rarest tag."""
    rng = np.random.default_rng(seed)
    lab = labels[idx] > 0.5
    counts = lab.sum(axis=0)
    strata = np.where(lab.any(axis=1), np.argmin(np.where(lab, counts, np.inf), axis=1), -1)
    carved = []
    for s in np.unique(strata):
        members = rng.permutation(idx[strata == s])
        k = int(round(len(members) * fraction))
        if k == 0 and len(members) >= 3:
            k = 1  # a small stratum still gets one example on the carved side
        carved += list(members[:k])
    if not carved and len(idx) >= 2:
        carved = [rng.choice(idx)]
    carved = np.sort(np.asarray(carved, dtype=np.int64))
    return np.setdiff1d(idx, carved), carved


def build_labelled(
    lab: AudioBank, valid: AudioBank | None, test: AudioBank | None, tags: list[str], recipe: Recipe
) -> LabelledData:
    """Assemble the splits; DataError when there is too little to train on."""
    d = recipe.data
    lab = select_tags(lab, tags)
    y = lab.labels.numpy()
    has = lab.split is not None
    tr = lab.indices("train") if has else np.arange(len(lab))
    va = lab.indices("valid") if has else np.array([], dtype=np.int64)
    te = lab.indices("test") if has else np.array([], dtype=np.int64)
    if valid is not None and len(va):
        log.info("data.valid given: the labelled corpus' own %d valid tracks join training", len(va))
        tr, va = np.sort(np.concatenate([tr, va])), np.array([], dtype=np.int64)
    if test is None and len(te) == 0:
        if d.test_fraction <= 0:
            raise DataError("no test data: give --test, a test split, or set data.test_fraction > 0")
        tr, te = carve(tr, d.test_fraction, y, recipe.seed + 1)
        log.info(
            "no test split: %d of the labelled tracks held out for testing (data.test_fraction)", len(te)
        )
    if valid is None and len(va) == 0:
        tr, va = carve(tr, d.valid_fraction, y, recipe.seed)
        log.info(
            "no valid split: %d of the training tracks used for validation (data.valid_fraction)", len(va)
        )
    if len(tr) < 2:
        raise DataError(f"the labelled corpus leaves only {len(tr)} training track(s)")
    bank = lab
    if valid is not None:
        bank = AudioBank.concat([lab, select_tags(valid, tags)])
        va = np.arange(len(lab), len(bank))
    if test is not None:
        test_bank, te = test, np.arange(len(test))
        y_test = -np.ones((len(test), len(tags)), dtype=np.float32)
        for j, t in enumerate(tags):
            if t in test.tags:
                y_test[:, j] = test.labels[:, test.tags.index(t)].cpu().numpy()
    else:
        test_bank, y_test = bank, y[te]
    classes = bool(((y > 0.5).sum(axis=1) == 1).all())
    return LabelledData(bank, tr, va, test_bank, te, y_test, list(tags), classes)
