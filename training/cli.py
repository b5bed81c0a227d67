"""`rt-tagger train …`: all | pretrain | probe | finetune | evaluate | export-bundle | compare | recipe.

Data comes from ``--pretrain DIR…``, ``--labelled DIR|CSV``, ``--valid`` and ``--test`` (or the
recipe's ``[data]``); every corpus is checked before any stage starts. The recipe is a TOML file
(``--recipe``; ``--small`` for the CPU-sized one; chosen by data size otherwise) with flags on top;
``--set section.field=value`` overrides any field; ``train recipe`` prints the result. Ctrl-C
saves a checkpoint and prints the command that resumes. Runs on a CPU, one GPU, or several GPUs
under torchrun. Guide: docs/training.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
from pathlib import Path

from engines.errors import UserError, UserErrorParser

__all__ = ["main"]

log = logging.getLogger("training")


class CLIError(UserError):
    """Bad command-line usage."""


def _common(
    p: argparse.ArgumentParser, data: tuple[str, ...] = ("pretrain", "labelled", "valid", "test")
) -> None:
    p.add_argument("--recipe", default=None, help="TOML recipe (default: chosen by --small or data size)")
    p.add_argument("--small", action="store_true", help="the CPU-sized recipe, configs/train_small.toml")
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
    p.add_argument("--workers", type=int, default=0, help="audio decoding threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    if "pretrain" in data:
        p.add_argument(
            "--pretrain", nargs="+", metavar="DIR", help="unlabelled audio (default: the labelled audio)"
        )
    if "labelled" in data:
        p.add_argument(
            "--labelled", metavar="DIR|CSV", help="folder of class folders, or a folder / CSV with tags"
        )
    if "valid" in data:
        p.add_argument("--valid", metavar="DIR|CSV", help="validation corpus (default: split or carved)")
    if "test" in data:
        p.add_argument("--test", metavar="DIR|CSV", help="test corpus (default: split or carved)")


def _outputs(p: argparse.ArgumentParser, export: bool = True, resume: bool = True) -> None:
    p.add_argument("--out", required=True, help="run folder (checkpoints, results, plots)")
    if export:
        p.add_argument("--export", default=None, metavar="BUNDLE", help="also write a model bundle here")
        p.add_argument("--name", default=None, help="the bundle's name (default: the --out folder's name)")
    if resume:
        p.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")


def _parser() -> argparse.ArgumentParser:
    ap = UserErrorParser(prog="rt-tagger train", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=UserErrorParser)
    p = sub.add_parser("all", help="pretrain → probes (pretrained and random-init) → fine-tune → bundle")
    _common(p)
    p.add_argument("--pretext", default=None)
    p.add_argument("--steps", type=int, default=None, help="pretraining steps")
    _outputs(p)
    p.add_argument("--no-random-probe", action="store_true", help="skip the random-init baseline probe")
    p = sub.add_parser("pretrain", help="self-supervised pretraining with one pretext")
    _common(p, ("pretrain", "labelled"))
    p.add_argument("--pretext", default=None, help="contrastive | byol | clustering | barlow_twins | vicreg")
    p.add_argument("--steps", type=int, default=None)
    _outputs(p, export=False)
    for name, helptext in (("probe", "frozen-backbone MLP probes"), ("finetune", "full fine-tuning")):
        p = sub.add_parser(name, help=helptext)
        _common(p, ("labelled", "valid", "test"))
        p.add_argument(
            "--backbone",
            default=None,
            help="pretrain run folder or backbone.safetensors (omitted: random init)",
        )
        if name == "finetune":
            p.add_argument("--steps", type=int, default=None)
        _outputs(p, resume=name == "finetune")
    p = sub.add_parser("evaluate", help="metrics of a bundle on a labelled corpus")
    _common(p, ("test",))
    p.add_argument("--data", dest="test_alias", default=None, help="same as --test")
    p.add_argument("--bundle", required=True)
    p.add_argument("--split", default=None, help="only this split of the corpus")
    p.add_argument("--json", default=None, help="write the metrics here")
    p.add_argument("--confusion", default=None, metavar="PNG", help="confusion matrix (classes only)")
    p = sub.add_parser("export-bundle", help="turn a probe/finetune result folder into a bundle")
    p.add_argument("--result", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--name", default=None, help="bundle name (default: the --out folder's name)")
    p.add_argument("--overwrite", action="store_true")
    p = sub.add_parser("compare", help="all pretexts for the same budget, then probes (the comparison table)")
    _common(p)
    p.add_argument("--pretexts", default="contrastive,byol,clustering,barlow_twins,vicreg")
    p.add_argument("--steps", type=int, default=None, help="pretraining steps per pretext")
    p.add_argument(
        "--seconds-per-pretext", type=float, default=0.0, help="calibrate one step count for this budget"
    )
    p.add_argument("--out", required=True)
    p = sub.add_parser("recipe", help="print the resolved recipe (TOML) and exit")
    _common(p)
    p.add_argument("--pretext", default=None)
    p.add_argument("--steps", type=int, default=None)
    return ap


def _header(text: str) -> None:
    log.info("──── %s ────", text)


def _export(result_dir: Path, bundle: str, recipe_path, name: str) -> None:
    from training.export import export_bundle

    b = export_bundle(
        result_dir,
        bundle,
        name=name,
        overwrite=True,
        extra_provenance={"recipe_file": str(recipe_path) if recipe_path else None},
    )
    print(f"bundle written: {b.path} (name {name!r}, {len(b.tags)} tags)")


def _brief(summary: dict) -> dict:
    if "fractions" in summary:
        return {f: r["test"]["roc_auc"] for f, r in summary["fractions"].items()}
    brief = {"test_roc_auc": summary["test"]["roc_auc"], "test_pr_auc": summary["test"]["pr_auc"]}
    if "classes" in summary["test"]:
        brief["test_accuracy"] = summary["test"]["classes"]["accuracy"]
    return brief


def main(argv: list[str] | None = None) -> int:
    argv = list(argv or [])
    args = _parser().parse_args(argv)
    if args.cmd == "export-bundle":
        from training.export import export_bundle

        name = args.name or Path(args.out).resolve().name
        b = export_bundle(args.result, args.out, name=name, overwrite=args.overwrite)
        print(f"bundle written: {b.path} (name {name!r}, {len(b.tags)} tags)")
        return 0
    if args.cmd == "evaluate":
        args.test = args.test or args.test_alias
        if not args.test:
            raise CLIError("rt-tagger train evaluate: give the labelled corpus with --test DIR|CSV")
    from training.loop import Interrupted
    from training.recipe_args import resolve_recipe

    recipe, recipe_path = resolve_recipe(args, "finetune" if args.cmd == "finetune" else "pretrain")
    if args.cmd == "recipe":
        from training.recipe import dump_toml

        print(f"# resolved from {recipe_path} and the flags given\n" + dump_toml(recipe), end="")
        return 0
    try:
        return _run(args, recipe, recipe_path)
    except Interrupted as e:
        again = [a for a in argv if a != "--no-resume"]
        raise Interrupted(f"{e}; resume with: rt-tagger train {shlex.join(again)}") from None


def _run(args, recipe, recipe_path) -> int:
    from training import stages
    from training.data_check import check_data
    from training.loop import setup_distributed
    from training.plots import plot_stage

    dist = setup_distributed(recipe.device)
    progress = not args.no_progress
    if args.cmd == "evaluate":
        return _evaluate(args, recipe, dist)
    if args.cmd == "compare":
        from training.compare import run_compare

        pretexts = [p.strip() for p in args.pretexts.split(",") if p.strip()]
        data = check_data(recipe, {"pretrain", "labelled"}, args.workers)
        run_compare(recipe, data, pretexts, Path(args.out), dist, progress, args.seconds_per_pretext)
        return 0
    needs = {"all": {"pretrain", "labelled", "real"}, "pretrain": {"pretrain"}, "probe": {"labelled"}}
    data = check_data(recipe, needs.get(args.cmd, {"labelled", "real"}), args.workers)
    out = Path(args.out)
    resume = not getattr(args, "no_resume", False)
    pretext, steps = recipe.pretrain.pretext, recipe.pretrain.loop.steps
    if args.cmd == "pretrain":
        _header(f"pretrain: {pretext}, {steps} steps on {len(data.pretrain)} tracks")
        summary = stages.run_pretrain(recipe, data.pretrain, out, dist, resume, progress)
        if dist.is_main:
            plot_stage(out, out, "pretrain", f"pretrain: {pretext}")
            print(
                json.dumps({k: summary[k] for k in ("pretext", "steps", "views_per_s", "final")}, default=str)
            )
        return 0
    backbone = None if args.cmd != "all" else str(out / "pretrain")
    result_dir = out / "finetune" if args.cmd == "all" else out
    summary = {}
    if args.cmd == "all":
        _header(f"pretrain: {pretext}, {steps} steps on {len(data.pretrain)} tracks")
        summary["pretrain"] = stages.run_pretrain(
            recipe, data.pretrain, out / "pretrain", dist, resume, progress
        )
    else:
        backbone = None if args.backbone in (None, "", "random") else args.backbone
    if args.cmd in ("all", "probe"):
        label = "pretrained backbone" if backbone else "random-init backbone"
        _header(f"probe: {label} {backbone or ''}".rstrip())
        summary["probe"] = stages.run_probe(
            recipe, data.labelled, backbone, out / "probe" if args.cmd == "all" else out, dist, progress
        )
        result_dir = out if args.cmd == "probe" else result_dir
    if args.cmd == "all" and not args.no_random_probe:
        _header("probe: random-init backbone (the baseline the pretrained probe should beat)")
        summary["probe_random"] = stages.run_probe(
            recipe, data.labelled, None, out / "probe_random", dist, progress
        )
    if args.cmd in ("all", "finetune"):
        fdir = out / "finetune" if args.cmd == "all" else out
        _header(f"finetune: {recipe.finetune.loop.steps} steps from {backbone or 'a random-init backbone'}")
        summary["finetune"] = stages.run_finetune(
            recipe, data.labelled, backbone, fdir, dist, resume, progress, data.real
        )
    if not dist.is_main:
        return 0
    if args.cmd == "all":
        plot_stage(out / "pretrain", out, "pretrain", f"pretrain: {pretext}")
        (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    if "finetune" in summary:
        plot_stage(result_dir, out, "finetune", "fine-tune", recipe.seed)
    names = {
        "probe": "probe (pretrained)" if backbone else "probe (random-init)",
        "probe_random": "probe (random-init baseline)",
    }
    print(json.dumps({names.get(k, k): _brief(v) for k, v in summary.items() if k != "pretrain"}))
    if args.export:
        _export(result_dir, args.export, recipe_path, args.name or Path(args.out).resolve().name)
    return 0


def _evaluate(args, recipe, dist) -> int:
    from engines.bundle import Bundle
    from training.data_check import check_data
    from training.plots import plot_confusion
    from training.stages import evaluate_model, warn_skipped

    bundle = Bundle.load(args.bundle)
    recipe = recipe.model_copy(update={"frontend": bundle.frontend})
    bank = check_data(recipe, {"evaluate"}, args.workers).test
    if args.split:
        bank = bank.subset(bank.indices(args.split))
    metrics = evaluate_model(bundle.build_model(), bundle.tags, recipe, bank, dist)
    warn_skipped(metrics, "evaluate")
    if args.json:
        Path(args.json).write_text(json.dumps(metrics, indent=1) + "\n")
    brief = {k: metrics[k] for k in ("roc_auc", "pr_auc", "n", "skipped")}
    if "classes" in metrics:
        cls = metrics["classes"]
        png = args.confusion or (
            str(Path(args.json).with_suffix("")) + "_confusion.png" if args.json else None
        )
        if png:
            plot_confusion(cls, Path(png))
            log.info("confusion matrix: %s", png)
        brief.update(
            accuracy=cls["accuracy"],
            macro_f1=cls["macro_f1"],
            f1={t: m["f1"] for t, m in cls["per_class"].items()},
        )
    print(json.dumps(brief))
    return 0
