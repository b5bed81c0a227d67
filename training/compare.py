"""The pretext comparison: every pretext pretrained for the same number of steps on the same
backbone and data, then probed at each label fraction, next to a random-init backbone probe."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from training.data_check import RunData
from training.loop import Dist
from training.pretexts import PRETEXTS
from training.recipe import Recipe, RecipeError

__all__ = ["run_compare"]

log = logging.getLogger(__name__)


def run_compare(
    recipe: Recipe,
    data: RunData,
    pretexts: list[str],
    out: Path,
    dist: Dist,
    progress: bool = True,
    seconds_per_pretext: float = 0.0,
) -> dict:
    """Writes ``out/compare.json`` (and a bar chart) and returns it; ``data`` from training.data_check."""
    from training import stages
    from training.plots import plot_compare

    bad = [p for p in pretexts if p not in PRETEXTS]
    if bad:
        raise RecipeError(f"unknown pretext {bad[0]!r}; choose from: {', '.join(PRETEXTS)}")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    pre_bank = data.pretrain.to(dist.device)
    load_s = time.perf_counter() - t0
    rows = []

    def probe_row(name: str, backbone: str | None, pre_summary: dict | None) -> None:
        s = stages.run_probe(recipe, data.labelled, backbone, out / name / "probe", dist, progress)
        row = {
            "name": name,
            "pretrain": pre_summary,
            "probe": {
                f: {**r["test"], "valid_roc_auc": r["valid_roc_auc"]} for f, r in s["fractions"].items()
            },
        }
        rows.append(row)
        _write(out, rows, load_s)

    from training.pretrain import pretrain

    def with_pretext(name: str, **loop) -> Recipe:
        pre = recipe.pretrain.model_copy(
            update={"pretext": name, "loop": recipe.pretrain.loop.model_copy(update=loop)}
        )
        return recipe.model_copy(update={"pretrain": pre})

    steps = recipe.pretrain.loop.steps
    if seconds_per_pretext:
        # Same budget for every pretext: the step count the slowest one finishes in the time given.
        per_step = {}
        for name in pretexts:
            s = pretrain(
                with_pretext(name, steps=20, log_every=5, ckpt_every=0, warmup_steps=5),
                pre_bank,
                out / "calibrate" / name,
                dist,
                resume=False,
                progress=False,
            )
            per_step[name] = s["batch_size"] * s["n_views"] / s["views_per_s"]
        steps = max(50, int(seconds_per_pretext / max(per_step.values())))
        log.info(
            "compare: %d steps per pretext (seconds per step: %s)",
            steps,
            {k: round(v, 4) for k, v in per_step.items()},
        )
    probe_row("random-init", None, None)
    for name in pretexts:
        summary = pretrain(
            with_pretext(name, steps=steps), pre_bank, out / name, dist, resume=True, progress=progress
        )
        probe_row(name, str(out / name), summary)
    if dist.is_main:
        plot_compare(rows, out / "compare.png")
    return {"rows": rows}


def _write(out: Path, rows: list[dict], load_s: float) -> None:
    slim = []
    for r in rows:
        slim.append(
            {
                "name": r["name"],
                "pretrain": r["pretrain"],
                "probe": {
                    f: {
                        "roc_auc": m["roc_auc"],
                        "pr_auc": m["pr_auc"],
                        "valid_roc_auc": m["valid_roc_auc"],
                        "per_tag": m["per_tag"],
                    }
                    for f, m in r["probe"].items()
                },
            }
        )
    (out / "compare.json").write_text(json.dumps({"load_seconds": load_s, "rows": slim}, indent=1) + "\n")
    log.info(
        "compare: %s",
        " | ".join(
            f"{r['name']}: " + ", ".join(f"{f}={m['roc_auc']:.3f}" for f, m in r["probe"].items())
            for r in rows
        ),
    )
