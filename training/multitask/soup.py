"""``python -m training.multitask.soup OUT RUN…``: average the weights of runs that share a start.

A "uniform soup" (Wortsman et al., 2022): runs fine-tuned from the same backbone with the same
seed (so the same head initialisation) but different recipe options or data seeds (``data_seed``:
other batches from the same start) stay in one basin of the loss, and the mean of their weights is
a model too, scoring about as well as the runs or better.
Here (reports/default_model.md, "Freepats, seeds and soups"): the soup of four seed-0 runs scored
above each of them on the valid and the test packages; the soup of three seed-1 runs, near their
mean. Runs with different seeds start their heads elsewhere and their mean lost 0.12 Spearman, so
they are refused.

Each RUN is a result folder as ``gpu_run.sh`` brings back (``selected.safetensors``, else
``bundle/weights.safetensors`` or ``last.safetensors``; ``result.json``, with the vocabulary or
beside ``vocab.json``); OUT gets ``bundle/weights.safetensors``, ``vocab.json`` and ``result.json``
(which lists the ingredients),
ready for ``eval_original.sh OUT RUN_DIR --export BUNDLE``, which calibrates and scores the soup.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engines.errors import UserError

__all__ = ["average_weights", "main"]


# the weights a result folder holds, in the order eval_original.sh takes them: those the valid split
# picked, a bundle (results from before 2026-12-04), else the last step's
WEIGHTS = ("selected.safetensors", "bundle/weights.safetensors", "last.safetensors")


def _read_run(folder: Path) -> tuple[dict, dict, dict]:
    """``(weights, vocab, recipe)`` of one result folder (the vocabulary from ``vocab.json``, else
    ``result.json``'s, as ``gpu_run.sh`` now brings it)."""
    from safetensors.torch import load_file

    result_path = folder / "result.json"
    weights = next((folder / w for w in WEIGHTS if (folder / w).is_file()), None)
    if weights is None or not result_path.is_file():
        missing = "result.json" if weights else " or ".join(WEIGHTS)
        raise UserError(f"{folder}: no {missing} (a result folder of gpu_run.sh?)")
    result = json.loads(result_path.read_text())
    vocab_path = folder / "vocab.json"
    vocab = json.loads(vocab_path.read_text()) if vocab_path.is_file() else result.get("vocab")
    if vocab is None:
        raise UserError(f"{folder}: no vocab.json and no vocabulary in result.json")
    return load_file(weights), vocab, result["recipe"]


def average_weights(states: list[dict]) -> dict:
    """The element-wise mean of same-shaped state dicts (float64 sums); integer buffers from the first."""
    first = states[0]
    for i, s in enumerate(states[1:], 2):
        if s.keys() != first.keys() or any(s[k].shape != first[k].shape for k in first):
            raise UserError(f"ingredient {i} has other tensors than ingredient 1: not the same model")
    out = {}
    for k, v in first.items():
        if v.is_floating_point():
            out[k] = (sum(s[k].double() for s in states) / len(states)).to(v.dtype).contiguous()
        else:  # e.g. BatchNorm's num_batches_tracked: a count, not a parameter
            out[k] = v.clone()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m training.multitask.soup", description=__doc__.splitlines()[0]
    )
    ap.add_argument(
        "out", type=Path, help="folder to write (bundle/weights.safetensors, vocab.json, result.json)"
    )
    ap.add_argument("runs", type=Path, nargs="+", help="result folders of runs with one seed and backbone")
    a = ap.parse_args(argv)
    try:
        if len(a.runs) < 2:
            raise UserError("a soup needs at least two runs")
        runs = [_read_run(r) for r in a.runs]
        vocab, recipe = runs[0][1], runs[0][2]
        for folder, (_, v, r) in zip(a.runs[1:], runs[1:], strict=True):
            if v != vocab:
                raise UserError(f"{folder}: another vocabulary than {a.runs[0]}")
            if r["seed"] != recipe["seed"] or r.get("init_from") != recipe.get("init_from"):
                raise UserError(
                    f"{folder}: seed {r['seed']} / backbone {r.get('init_from')} differ from {a.runs[0]}'s "
                    f"({recipe['seed']} / {recipe.get('init_from')}): runs from other starts do not average"
                )
        soup = average_weights([w for w, _, _ in runs])
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from safetensors.torch import save_file

    (a.out / "bundle").mkdir(parents=True, exist_ok=True)
    save_file(soup, a.out / "bundle" / "weights.safetensors")
    (a.out / "vocab.json").write_text(json.dumps(vocab, indent=1))
    result = {
        "recipe": recipe,
        "soup_of": [{"run": str(p), "name": r["name"]} for p, (_, _, r) in zip(a.runs, runs, strict=True)],
    }
    (a.out / "result.json").write_text(json.dumps(result, indent=1))
    print(f"{a.out}: the mean of {len(runs)} runs ({', '.join(r['name'] for _, _, r in runs)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
