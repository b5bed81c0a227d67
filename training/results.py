"""A probe or fine-tune result folder: ``model.safetensors`` + ``result.json`` (what export reads)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from engines.cache import write_atomic
from engines.model import ResNetTagger
from training.recipe import Recipe

__all__ = ["RESULT_FILE", "MODEL_FILE", "save_result", "top_tags"]

RESULT_FILE = "result.json"
MODEL_FILE = "model.safetensors"


def save_result(
    out: Path,
    model: ResNetTagger,
    recipe: Recipe,
    tags: list[str],
    thresholds: list[float],
    metrics: dict,
    extra: dict,
) -> None:
    """Write the weights and ``result.json`` (tags, thresholds, metrics, recipe, model spec, extra)."""
    from safetensors.torch import save

    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_atomic(out / MODEL_FILE, save(state))
    result = {
        "tags": tags,
        "thresholds": thresholds,
        "metrics": metrics,
        "recipe": recipe.model_dump(mode="json"),
        "model": model.spec.model_dump(mode="json"),
        **extra,
    }
    write_atomic(out / RESULT_FILE, (json.dumps(result, indent=1) + "\n").encode())


def top_tags(probs: np.ndarray, names: list[str], tags: list[str], k: int = 5) -> list[dict]:
    """The ``k`` highest-scoring tags of each track."""
    return [
        {"track": n, "top": [[tags[j], round(float(p[j]), 3)] for j in np.argsort(-p)[:k]]}
        for n, p in zip(names, probs, strict=True)
    ]
