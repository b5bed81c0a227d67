"""Bundle export: a probe / fine-tune result directory → a model bundle (engines.bundle).

The manifest carries tags, calibrated thresholds, metrics and provenance (data sources, recipe,
git commit, seeds, machine) so a shipped model says how it was made.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from engines.bundle import Bundle, Manifest, save_bundle
from engines.errors import UserError
from engines.frontend import FrontEndSpec
from engines.model import ModelSpec, ResNetTagger

__all__ = ["ExportError", "export_bundle"]


class ExportError(UserError):
    """A result directory that cannot become a bundle."""


def export_bundle(
    result_dir: str | Path,
    out: str | Path,
    name: str = "rt-tagger",
    overwrite: bool = False,
    extra_provenance: dict | None = None,
) -> Bundle:
    """Write the bundle for ``result_dir`` (``model.safetensors`` + ``result.json``) at ``out``."""
    from safetensors.torch import load_file

    from training.provenance import git_commit, machine

    result_dir = Path(result_dir)
    rpath, wpath = result_dir / "result.json", result_dir / "model.safetensors"
    if not rpath.is_file() or not wpath.is_file():
        raise ExportError(f"{result_dir} is not a training result (needs result.json and model.safetensors)")
    result = json.loads(rpath.read_text())
    spec = ModelSpec.model_validate(result["model"])
    model = ResNetTagger(spec)
    try:
        model.load_state_dict(load_file(str(wpath)), strict=True)
    except RuntimeError as e:
        raise ExportError(f"weights in {wpath} do not fit the model spec: {str(e).splitlines()[0]}") from None
    recipe = result["recipe"]
    provenance = {
        "data_sources": recipe.get("data", {}),
        "recipe": recipe,
        "git_commit": git_commit(),
        "seeds": {"recipe_seed": recipe.get("seed")},
        "stages": {k: result[k] for k in ("pretrain", "probe", "finetune") if k in result},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine()["host"],
        **(extra_provenance or {}),
    }
    manifest = Manifest(
        name=name,
        frontend=FrontEndSpec.model_validate(recipe["frontend"]),
        model=spec,
        tags=result["tags"],
        thresholds=result["thresholds"],
        metrics=result.get("metrics", {}),
        provenance=provenance,
    )
    return save_bundle(out, model.eval(), manifest, overwrite=overwrite)
