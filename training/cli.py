"""`rt-tagger train …`: pretrain | probe | finetune | evaluate | export-bundle | compare.

Every stage reads a TOML recipe (``--recipe``, default configs/train_default.toml) and takes
flags on top; ``--set section.field=value`` overrides any recipe field. Runs on CPU for tiny
runs, on a GPU when there is one, and on several GPUs when launched with torchrun.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from engines.errors import UserError

__all__ = ["main"]

log = logging.getLogger("training")
DEFAULT_RECIPE = Path(__file__).resolve().parent / "configs" / "train_default.toml"  # configs/ links to it


class CLIError(UserError):
    """Bad command-line usage."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line through the UserError path instead of argparse's exit(2)
        raise CLIError(f"{self.prog}: {message}")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--recipe", default=None, help=f"TOML recipe (default: {DEFAULT_RECIPE.name} when it exists)"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override a recipe field",
    )
    p.add_argument("--device", default=None, help="auto | cpu | cuda[:N] (default: the recipe's)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--workers", type=int, default=0, help="audio decoding workers")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")


def _parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="rt-tagger train", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    p = sub.add_parser("pretrain", help="self-supervised pretraining with one pretext")
    _common(p)
    p.add_argument("--pretext", default=None, help="contrastive | byol | clustering | barlow_twins | vicreg")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--out", required=True, help="run directory (checkpoints, backbone.safetensors)")
    p.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    for name, helptext in (
        ("probe", "frozen-backbone MLP probes (label fractions from the recipe)"),
        ("finetune", "full fine-tuning"),
    ):
        p = sub.add_parser(name, help=helptext)
        _common(p)
        p.add_argument(
            "--backbone",
            default=None,
            help="pretrain run directory or backbone.safetensors ('random' or omitted: random init)",
        )
        p.add_argument("--out", required=True)
        p.add_argument("--export", default=None, metavar="BUNDLE", help="also write a model bundle here")
        if name == "finetune":
            p.add_argument("--steps", type=int, default=None)
            p.add_argument("--no-resume", action="store_true")
    p = sub.add_parser("evaluate", help="metrics of a bundle on a labelled corpus")
    _common(p)
    p.add_argument("--bundle", required=True)
    p.add_argument("--data", required=True, help="labelled corpus")
    p.add_argument("--split", default=None, help="only this split of the corpus")
    p.add_argument("--json", default=None, help="write the metrics here")
    p = sub.add_parser("export-bundle", help="turn a probe/finetune result directory into a bundle")
    p.add_argument("--result", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--name", default="rt-tagger")
    p.add_argument("--overwrite", action="store_true")
    p = sub.add_parser(
        "all", help="pretrain → probes (pretrained and random-init) → fine-tune → bundle, one process"
    )
    _common(p)
    p.add_argument("--pretext", default=None)
    p.add_argument("--steps", type=int, default=None, help="pretraining steps")
    p.add_argument("--out", required=True, help="run directory (pretrain/, probe/, probe_random/, finetune/)")
    p.add_argument("--export", default=None, metavar="BUNDLE")
    p.add_argument("--no-random-probe", action="store_true")
    p = sub.add_parser("compare", help="all pretexts for the same budget, then probes (the comparison table)")
    _common(p)
    p.add_argument("--pretexts", default="contrastive,byol,clustering,barlow_twins,vicreg")
    p.add_argument(
        "--steps", type=int, default=None, help="pretraining steps per pretext (default: the recipe's)"
    )
    p.add_argument(
        "--seconds-per-pretext",
        type=float,
        default=0.0,
        help="calibrate one step count that fits this budget",
    )
    p.add_argument("--out", required=True)
    return ap


def _recipe(args):
    from training.recipe import load_recipe

    path = args.recipe
    if path is None and DEFAULT_RECIPE.exists():
        path = DEFAULT_RECIPE
    overrides = list(args.overrides)
    if args.device:
        overrides.append(f'device="{args.device}"')
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if getattr(args, "pretext", None):
        overrides.append(f'pretrain.pretext="{args.pretext}"')
    if getattr(args, "steps", None) is not None:
        section = "finetune" if args.cmd == "finetune" else "pretrain"  # all / compare: pretraining steps
        overrides.append(f"{section}.loop.steps={args.steps}")
    recipe = load_recipe(path, overrides)
    from training.pretexts import PRETEXTS

    if recipe.pretrain.pretext not in PRETEXTS:
        raise CLIError(f"unknown pretext {recipe.pretrain.pretext!r}; choose from: {', '.join(PRETEXTS)}")
    return recipe, path


def _backbone(arg: str | None) -> str | None:
    return None if arg in (None, "", "random") else arg


def _export(result_dir: Path, bundle: str, recipe_path, name: str) -> None:
    from training.export import export_bundle

    b = export_bundle(
        result_dir,
        bundle,
        name=name,
        overwrite=True,
        extra_provenance={"recipe_file": str(recipe_path) if recipe_path else None},
    )
    print(f"bundle written: {b.path}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "export-bundle":
        from training.export import export_bundle

        b = export_bundle(args.result, args.out, name=args.name, overwrite=args.overwrite)
        print(f"bundle written: {b.path} ({len(b.tags)} tags)")
        return 0
    recipe, recipe_path = _recipe(args)
    from training.loop import setup_distributed

    dist = setup_distributed(recipe.device)
    progress = not args.no_progress
    if args.cmd == "pretrain":
        from training.plots import plot_curves
        from training.stages import run_pretrain

        out = Path(args.out)
        summary = run_pretrain(recipe, out, dist, args.workers, resume=not args.no_resume, progress=progress)
        if dist.is_main:
            plot_curves(
                json.loads((out / "history.json").read_text()),
                out / "pretrain_curves.png",
                f"pretrain: {recipe.pretrain.pretext}",
            )
            print(
                json.dumps(
                    {k: summary[k] for k in ("pretext", "steps", "views_per_s", "gpu_util_mean", "final")},
                    default=str,
                )
            )
        return 0
    if args.cmd in ("probe", "finetune"):
        from training import stages

        out = Path(args.out)
        if args.cmd == "probe":
            summary = stages.run_probe(recipe, _backbone(args.backbone), out, dist, args.workers, progress)
            brief = {f: r["test"]["roc_auc"] for f, r in summary["fractions"].items()}
        else:
            summary = stages.run_finetune(
                recipe, _backbone(args.backbone), out, dist, args.workers, not args.no_resume, progress
            )
            brief = {"test_roc_auc": summary["test"]["roc_auc"], "test_pr_auc": summary["test"]["pr_auc"]}
            if dist.is_main:
                from training.plots import plot_curves, plot_embedding_map

                plot_curves(
                    json.loads((out / "history.json").read_text()), out / "finetune_curves.png", "fine-tune"
                )
                plot_embedding_map(out / "test_embeddings.npz", out / "embedding_map.png", seed=recipe.seed)
        if dist.is_main:
            print(json.dumps(brief))
            if args.export:
                _export(out, args.export, recipe_path, recipe.name)
        return 0
    if args.cmd == "evaluate":
        from engines.bundle import Bundle
        from training.stages import evaluate_model

        bundle = Bundle.load(args.bundle)
        recipe = recipe.model_copy(update={"frontend": bundle.frontend})
        metrics = evaluate_model(
            bundle.build_model(), bundle.tags, recipe, args.data, dist, args.workers, args.split
        )
        text = json.dumps(metrics, indent=1)
        if args.json:
            Path(args.json).write_text(text + "\n")
        print(
            json.dumps(
                {
                    "roc_auc": metrics["roc_auc"],
                    "pr_auc": metrics["pr_auc"],
                    "n": metrics["n"],
                    "skipped": metrics["skipped"],
                }
            )
        )
        return 0
    if args.cmd == "all":
        return _run_all(args, recipe, recipe_path, dist, progress)
    if args.cmd == "compare":
        from training.compare import run_compare

        run_compare(
            recipe,
            [p.strip() for p in args.pretexts.split(",") if p.strip()],
            Path(args.out),
            dist,
            args.workers,
            progress,
            args.seconds_per_pretext,
        )
        return 0
    raise CLIError(f"unknown command {args.cmd}")


def _run_all(args, recipe, recipe_path, dist, progress: bool) -> int:
    """The whole recipe in one process (each corpus decoded once): what trains the default model."""
    from training import stages
    from training.plots import plot_curves, plot_embedding_map

    out = Path(args.out)
    pre = stages.run_pretrain(recipe, out / "pretrain", dist, args.workers, resume=True, progress=progress)
    summary = {"pretrain": pre}
    if dist.is_main:
        plot_curves(
            json.loads((out / "pretrain" / "history.json").read_text()),
            out / "pretrain_curves.png",
            f"pretrain: {recipe.pretrain.pretext}",
        )
    summary["probe"] = stages.run_probe(
        recipe, str(out / "pretrain"), out / "probe", dist, args.workers, progress
    )
    if not args.no_random_probe:
        summary["probe_random"] = stages.run_probe(
            recipe, None, out / "probe_random", dist, args.workers, progress
        )
    summary["finetune"] = stages.run_finetune(
        recipe, str(out / "pretrain"), out / "finetune", dist, args.workers, True, progress
    )
    if dist.is_main:
        plot_curves(
            json.loads((out / "finetune" / "history.json").read_text()),
            out / "finetune_curves.png",
            "fine-tune",
        )
        plot_embedding_map(
            out / "finetune" / "test_embeddings.npz", out / "embedding_map.png", seed=recipe.seed
        )
        (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
        brief = {
            k: {f: r["test"]["roc_auc"] for f, r in v["fractions"].items()}
            for k, v in summary.items()
            if k.startswith("probe")
        }
        brief["finetune"] = {
            "test_roc_auc": summary["finetune"]["test"]["roc_auc"],
            "test_pr_auc": summary["finetune"]["test"]["pr_auc"],
        }
        print(json.dumps(brief))
        if args.export:
            _export(out / "finetune", args.export, recipe_path, recipe.name)
    return 0
