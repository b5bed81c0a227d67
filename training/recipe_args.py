"""From command-line flags to a :class:`~training.recipe.Recipe`.

Which recipe: ``--recipe FILE``; else ``--small`` (configs/train_small.toml, a CPU-sized recipe);
else, when the data comes from flags, the small recipe below :data:`SMALL_TRACKS` labelled
tracks and the default model's recipe above; else the default model's recipe with its own data.
With a built-in recipe, corpora given by flags replace the recipe's corpora entirely (your data,
never the default model's). Then flags (``--labelled``, ``--steps``...), then ``--set``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from training.data import DataError
from training.recipe import Recipe, RecipeError, load_recipe, loop_warnings

__all__ = ["resolve_recipe", "DEFAULT_RECIPE", "SMALL_RECIPE", "SMALL_TRACKS", "DATA_FIELDS"]

log = logging.getLogger("training")
CONFIGS = Path(__file__).resolve().parent / "configs"  # shipped in the package; configs/ links here
DEFAULT_RECIPE = CONFIGS / "train_default.toml"
SMALL_RECIPE = CONFIGS / "train_small.toml"
SMALL_TRACKS = 1000
DATA_FIELDS = ("pretrain", "labelled", "valid", "test")


def _track_count(path: str) -> int:
    from training.decode import open_table

    try:
        return len(open_table(path))
    except DataError:
        return 0  # reported with every other data problem by training.data_check


def _choose(args: argparse.Namespace, data: dict) -> tuple[Path, bool]:
    """(recipe path, whether it is a built-in one)."""
    if args.recipe:
        if args.small:
            raise RecipeError("give --recipe FILE or --small, not both")
        return Path(args.recipe), False
    if args.small:
        return SMALL_RECIPE, True
    if data.get("labelled") or data.get("pretrain"):
        first = data.get("labelled") or data["pretrain"][0]
        n = _track_count(first)
        path = SMALL_RECIPE if n < SMALL_TRACKS else DEFAULT_RECIPE
        log.info(
            "recipe: %s (%d tracks %s %d; --recipe FILE or --small to choose)",
            path.name,
            n,
            "<" if n < SMALL_TRACKS else ">=",
            SMALL_TRACKS,
        )
        return path, True
    return DEFAULT_RECIPE, True


def resolve_recipe(args: argparse.Namespace, steps_section: str = "pretrain") -> tuple[Recipe, Path]:
    """The recipe a command runs with; prints the warnings about it (e.g. warm-up ≥ steps)."""
    data = {f: getattr(args, f) for f in DATA_FIELDS if getattr(args, f, None)}
    path, builtin = _choose(args, data)
    flags: dict = {}
    if builtin and data:
        flags.update({f"data.{f}": ("--" + f, [] if f == "pretrain" else "") for f in (*DATA_FIELDS, "real")})
    flags.update({f"data.{f}": ("--" + f, v) for f, v in data.items()})
    if getattr(args, "device", None):
        flags["device"] = ("--device", args.device)
    if getattr(args, "seed", None) is not None:
        flags["seed"] = ("--seed", args.seed)
    if getattr(args, "pretext", None):
        flags["pretrain.pretext"] = ("--pretext", args.pretext)
    if getattr(args, "steps", None) is not None:
        flags[f"{steps_section}.loop.steps"] = ("--steps", args.steps)
    recipe = load_recipe(path, list(getattr(args, "overrides", [])), flags)
    from training.pretexts import PRETEXTS

    if recipe.pretrain.pretext not in PRETEXTS:
        raise RecipeError(f"unknown pretext {recipe.pretrain.pretext!r}; choose from: {', '.join(PRETEXTS)}")
    for warning in loop_warnings(recipe):
        log.warning(warning)
    return recipe, path
