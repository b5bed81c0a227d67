"""Every corpus a run needs, checked before any stage starts.

Two passes over ``data.pretrain``, ``data.labelled``, ``data.valid``, ``data.test`` and
``data.real``: first the tables (the corpus exists, its layout, the referenced files, the tags),
then the audio (every file decodes). Each pass collects all problems and raises one
:class:`~training.data.DataError` naming each one's field and flag, so a run never fails minutes
in on a path typo. What the loader decided (the layout, the tags, tags left out) is printed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from training.bank import AudioBank
from training.data import DataError, TrackTable
from training.decode import decode, open_table
from training.labelled import LabelledData, build_labelled
from training.recipe import Recipe

__all__ = ["RunData", "check_data", "usable_tags", "describe"]

log = logging.getLogger(__name__)
FLAGS = {"pretrain": "--pretrain", "labelled": "--labelled", "valid": "--valid", "test": "--test"}
LAYOUTS = {
    "folder": "folder + tags table",
    "classes": "folder per class",
    "mtat": "MagnaTagATune",
    "jamendo": "MTG-Jamendo",
    "unlabelled": "unlabelled audio",
}


@dataclass
class RunData:
    pretrain: AudioBank | None = None
    labelled: LabelledData | None = None
    real: AudioBank | None = None
    test: AudioBank | None = None  # ``train evaluate``: the corpus to score


def _where(field: str) -> str:
    key = field.split("[")[0]
    flag = FLAGS.get(key)
    return f"data.{field}" + (f" ({flag})" if flag else "")


def usable_tags(table: TrackTable, min_tracks: int) -> tuple[list[str], list[str]]:
    """Tags worth training on, and a warning for each one left out (constant or too rare)."""
    n = len(table)
    keep, warnings = [], []
    for tag, count in table.tag_counts().items():
        if count == 0:
            warnings.append(f"tag {tag!r} is on no track (an empty column): left out")
        elif count == n:
            warnings.append(f"tag {tag!r} is on every track (nothing to tell apart): left out")
        elif count < min_tracks:
            warnings.append(
                f"tag {tag!r} has {count} track(s), fewer than data.min_tracks_per_tag = {min_tracks}: left out"
            )
        else:
            keep.append(tag)
    return keep, warnings


def describe(table: TrackTable) -> str:
    """One line: layout, track count, splits and the tags with their track counts."""
    text = f"{LAYOUTS.get(table.format, table.format)}, {len(table)} tracks"
    if table.split is not None:
        parts = [f"{s} {table.split.count(s)}" for s in ("train", "valid", "test") if s in table.split]
        text += f" ({', '.join(parts)})"
    if table.tags:
        counts = table.tag_counts()
        shown = ", ".join(f"{t} {c}" for t, c in list(counts.items())[:24])
        text += f"; {len(counts)} tags: {shown}" + (" ..." if len(counts) > 24 else "")
    return text


def _sources(recipe: Recipe, needs: set[str]) -> tuple[list[tuple[str, str]], list[str]]:
    d, problems, out = recipe.data, [], []
    if needs & {"labelled", "evaluate"}:
        if not d.labelled and "labelled" in needs:
            problems.append(
                "data.labelled (--labelled): not set; give a folder of class folders, a folder with "
                "tags.csv, or the CSV itself"
            )
        out += [(f, getattr(d, f)) for f in ("labelled", "valid", "test") if getattr(d, f)]
    if "pretrain" in needs:
        out += [(f"pretrain[{i}]", p) for i, p in enumerate(d.pretrain)]
        if not d.pretrain and not d.labelled:
            problems.append("data.pretrain (--pretrain): not set, and no --labelled corpus to pretrain on")
        elif not d.pretrain and "labelled" not in needs:
            out.append(("labelled", d.labelled))  # pretraining on the labelled corpus' audio
    if "real" in needs and d.real:
        out.append(("real", d.real))
    return out, problems


def check_data(recipe: Recipe, needs: set[str], workers: int = 0) -> RunData:
    """Check, decode and assemble the corpora the stages in ``needs`` use.

    ``needs`` holds ``"pretrain"``, ``"labelled"`` (probe / fine-tune), ``"real"`` (fine-tune's
    top-tag report) or ``"evaluate"`` (only ``data.test``).
    """
    sources, problems = _sources(recipe, needs)
    tables: dict[str, TrackTable] = {}
    for field, path in sources:
        try:
            tables[field] = open_table(path)
        except DataError as e:
            problems.append(f"{_where(field)}: {e}")
    tags: list[str] = []
    for field, table in tables.items():
        log.info("data.%s = %s: %s", field, sources_path(sources, field), describe(table))
        for note in table.notes:
            log.warning("data.%s: %s", field, note)
        if field in ("labelled", "valid", "test") and not table.tags:
            problems.append(
                f"{_where(field)}: no tags found ({LAYOUTS.get(table.format, table.format)}); a labelled "
                "corpus is a folder of class folders or a folder with a tags table (tags.csv)"
            )
    if "labelled" in tables and tables["labelled"].tags:
        tags, warnings = usable_tags(tables["labelled"], recipe.data.min_tracks_per_tag)
        for w in warnings:
            log.warning("data.labelled: %s", w)
        if not tags:
            problems.append(f"{_where('labelled')}: no usable tags left (see the warnings above)")
        for field in ("valid", "test"):
            extra = sorted(set(tables[field].tags) - set(tags)) if field in tables else []
            if extra:
                log.warning("data.%s: tags not trained on, ignored: %s", field, ", ".join(extra))
    if problems:
        raise DataError(f"{len(problems)} data problem(s): " + "; ".join(problems))
    banks: dict[str, AudioBank] = {}
    for field, path in sources:
        try:
            banks[field] = decode(path, recipe, workers)[1]
        except DataError as e:
            problems.append(f"{_where(field)}: {e}")
    if problems:
        raise DataError(f"{len(problems)} data problem(s): " + "; ".join(problems))
    return _assemble(recipe, needs, banks, tags)


def sources_path(sources: list[tuple[str, str]], field: str) -> str:
    return next(p for f, p in sources if f == field)


def _assemble(recipe: Recipe, needs: set[str], banks: dict[str, AudioBank], tags: list[str]) -> RunData:
    out = RunData(real=banks.get("real"), test=banks.get("test") if "evaluate" in needs else None)
    if "labelled" in needs:
        try:
            out.labelled = build_labelled(
                banks["labelled"], banks.get("valid"), banks.get("test"), tags, recipe
            )
        except DataError as e:
            raise DataError(f"{_where('labelled')}: {e}") from None
    if "pretrain" in needs:
        pre = [b for f, b in banks.items() if f.startswith("pretrain[")]
        if not pre:
            lab = out.labelled
            keep = np.concatenate([lab.train, lab.valid]) if lab else np.arange(len(banks["labelled"]))
            log.info(
                "no --pretrain corpus: pretraining on the labelled train and valid audio (%d tracks)",
                len(keep),
            )
            pre = [(lab.bank if lab else banks["labelled"]).subset(np.sort(keep))]
        out.pretrain = AudioBank.concat(pre)
    return out
