"""Where the model bundle shipped inside the package lives.

The training stage writes ``manifest.json`` and ``weights.safetensors`` into
``rt_tagger/default_model/``; ``python -m engines.seal rt_tagger/default_model --ship-runtime`` then
adds the CPU runtime's ONNX graph and front-end constants under ``compiled/``, sealed in the
manifest, so a fresh install tags on ONNX Runtime with no export and no torch import. pyproject.toml's
package data ships all of them (by name), so everything works offline. Until that bundle exists,
commands that need it say so plainly instead of guessing.

A second, smaller bundle ships beside it for small CPUs: ``--bundle lite``
(``rt_tagger/lite_model/``, the same tags at width 16, about a quarter of the compute;
configs/train_multitask_lite.toml, numbers in reports/default_model.md). A folder of that name in
the working directory wins over the shipped one.
"""

from __future__ import annotations

from pathlib import Path

from engines.bundle import MANIFEST_FILE, Bundle, BundleError

__all__ = ["SHIPPED_BUNDLES", "default_bundle_path", "DefaultModelMissing", "resolve_bundle", "load_bundle"]

# bundles shipped inside the package, by the name --bundle accepts
SHIPPED_BUNDLES = {"default": "default_model", "lite": "lite_model"}


class DefaultModelMissing(BundleError):
    """The install has no default bundle yet."""


def default_bundle_path() -> Path:
    """The package directory that holds the shipped default bundle (it may not exist yet)."""
    return Path(__file__).resolve().parent / "default_model"


def resolve_bundle(path: str | Path | None) -> Path:
    """The bundle to use: ``path`` when given (a shipped bundle's name, unless a folder of that name
    exists), else the shipped default (which must exist)."""
    if path is not None:
        if str(path) in SHIPPED_BUNDLES and not Path(path).exists():
            return Path(__file__).resolve().parent / SHIPPED_BUNDLES[str(path)]
        return Path(path)
    default = default_bundle_path()
    if not (default / MANIFEST_FILE).is_file():
        raise DefaultModelMissing(
            f"the default model is not in this install yet ({default} has no {MANIFEST_FILE}): "
            "pass --bundle PATH to a model bundle"
        )
    return default


def load_bundle(path: str | Path | None) -> Bundle:
    """Load and verify the given bundle, or the shipped default."""
    return Bundle.load(resolve_bundle(path))
