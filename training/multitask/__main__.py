"""``python -m training.multitask``: label, train, calibrate, evaluate and export the multi-task model."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from engines.errors import UserError


def main(argv: list[str] | None = None) -> int:
    from training.multitask.pipeline import load_multitask_recipe, run

    ap = argparse.ArgumentParser(prog="python -m training.multitask", description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", type=Path, default=Path("configs/train_multitask.toml"))
    ap.add_argument(
        "--out", type=Path, required=True, help="run folder (steps already done there are skipped)"
    )
    ap.add_argument("--export", type=Path, default=None, help="write the bundle here")
    ap.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override, e.g. loop.steps=100"
    )
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--debug", action="store_true")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        metrics = run(load_multitask_recipe(a.recipe, a.set), a.out, a.export, progress=not a.no_progress)
    except UserError as e:
        if a.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = {k: v for k, v in metrics.items() if k not in ("on_rates",)}
    summary["distilled"] = {k: v for k, v in metrics["distilled"].items() if k != "per_tag"}
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
