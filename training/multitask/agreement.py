"""A run's agreement with its teachers on the windows it trained on, the valid and the test split.

    python -m training.multitask.agreement --run /work/runs/lite16 \\
        --recipe configs/train_multitask_lite.toml --out bench/results/agreement_lite16.json

The same numbers as the evaluation (mean per-tag Spearman, macro ROC-AUC against the teacher's
``p >= BINARISE_AT``, vocals ROC-AUC) on each real split (the recipe's corpora; relative paths from ``--data-root``), so that a gap between the training
packages and held-out packages (the student does not carry over) can be told from a student
that does not fit even what it trained on. The run folder holds ``model.safetensors``,
``vocab.json`` and ``labels_real_{train,valid,test}.npz``; the corpora are the recipe's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m training.multitask.agreement", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--run", type=Path, required=True, help="a trained run folder")
    ap.add_argument("--recipe", type=Path, required=True, help="the run's recipe (its corpora and crops)")
    ap.add_argument(
        "--data-root", type=Path, default=Path("."), help="where the recipe's relative corpus paths start"
    )
    ap.add_argument("--train-every", type=int, default=4, help="score every n-th training window")
    ap.add_argument("--out", type=Path, required=True, help="results JSON")
    a = ap.parse_args(argv)
    import torch
    from safetensors.torch import load_file

    from engines.logmel_torch import LogMel
    from training.multitask import data as mt_data
    from training.multitask.evaluate import _teacher_agreement, _vocals_auc, predict
    from training.multitask.pipeline import _model, load_multitask_recipe
    from training.multitask.vocab import build_vocab

    recipe = load_multitask_recipe(a.recipe)
    specs = build_vocab(json.loads((a.run / "vocab.json").read_text())["kept"])
    model = _model(recipe, len(specs))
    model.load_state_dict(load_file(str(a.run / "model.safetensors")))
    logmel = LogMel(recipe.frontend)
    d = recipe.data
    splits = {
        "train": (d.real_train, d.real_train_seconds, a.train_every),
        "valid": (d.real_valid, d.real_eval_seconds, 1),
        "test": (d.real_test, d.real_eval_seconds, 1),
    }
    results = {}
    for split, (path, seconds, every) in splits.items():
        path = a.data_root / path  # an absolute path stays as it is
        corpus = mt_data.load_corpus(path, centre_seconds=seconds)
        labels = mt_data.load_labels(a.run / f"labels_real_{split}.npz")
        keep = np.arange(0, len(labels["track"]), every)
        labels = mt_data.take_windows(labels, keep)
        probs = predict(
            model.eval(), logmel, mt_data.real_source(specs, corpus, labels, recipe.frontend.window_samples)
        )
        target, _ = mt_data.real_targets(specs, labels)
        per_tag, rhos, aucs = _teacher_agreement(specs, probs, target)
        results[split] = {
            "corpus": str(path), "windows": int(len(keep)), "mean_spearman": float(np.mean(rhos)),
            "macro_roc_auc": float(np.mean(aucs)), "vocals_roc_auc": _vocals_auc(specs, probs, target),
            "spearman_per_tag": {k: v["spearman"] for k, v in per_tag.items()},
        }  # fmt: skip
        r = results[split]
        print(f"{split}: {r['windows']} windows, Spearman {r['mean_spearman']:.3f}, "
              f"ROC-AUC {r['macro_roc_auc']:.3f}, vocals {r['vocals_roc_auc']}", flush=True)  # fmt: skip
    doc = {
        "mode": "teacher_agreement_by_split", "created": time.strftime("%Y-%m-%d"),
        "settings": {"run": str(a.run), "recipe": str(a.recipe), "train_every": a.train_every,
                     "torch_threads": torch.get_num_threads()},
        "results": results,
    }  # fmt: skip
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
