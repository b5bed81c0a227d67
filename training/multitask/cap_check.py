"""Does a capped unit's on-rate hold on packages the cap never saw? Simulated on non-test splits.

    python -m training.multitask.cap_check --bundle B --corpus /work/data/real_valid:45 \\
        --corpus /work/data/real:60 --out cap_check.json

The objective-only units (instruments no teacher names, drums, tempo, dynamics) are raised to be on
in at most ``MAX_REAL_ON_RATE`` of some real windows (:func:`training.multitask.evaluate.calibrate`),
and the issue's rule reads their on-rate on the test packages, which are others. Each draw sets the
cap on the windows of K random packages and reads the on-rate on 8 other packages (the test split's
size); per unit and K: the median and 90th percentile of that rate and the share of draws over
60 %. Only the corpora named are read: give it the training and valid splits, never the test split.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HELD_PACKAGES = 8
OVER = 0.6


def simulate(
    probs: np.ndarray, package: np.ndarray, k: int, draws: int, seed: int = 0, held: int = HELD_PACKAGES
) -> dict[str, float | int]:
    """On-rates over ``draws`` of (cap on ``k`` packages, rate on ``held`` others) of one unit."""
    from training.multitask.evaluate import MAX_REAL_ON_RATE

    names = np.unique(package)
    if k + held > len(names):
        raise ValueError(f"{k} + {held} packages asked, {len(names)} given")
    rng = np.random.default_rng(seed)
    rates = np.empty(draws)
    for i in range(draws):
        order = rng.permutation(names)
        cap = np.quantile(probs[np.isin(package, order[:k])], 1 - MAX_REAL_ON_RATE)
        rates[i] = np.mean(probs[np.isin(package, order[k : k + held])] >= cap)
    return {
        "cap_packages": k, "held_packages": held, "draws": draws, "median": float(np.median(rates)),
        "p90": float(np.quantile(rates, 0.9)), "share_over_60pct": float(np.mean(rates > OVER)),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m training.multitask.cap_check", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--bundle", type=Path, default=Path("rt_tagger/default_model"))
    ap.add_argument(
        "--corpus",
        action="append",
        required=True,
        help="PATH[:CENTRE_SECONDS], a non-test real split; repeatable",
    )
    ap.add_argument("--held-packages", type=int, default=HELD_PACKAGES, help="packages the rate is read on")
    ap.add_argument(
        "--cap-packages", type=int, action="append", help="K (default: 5 and all but the held ones)"
    )
    ap.add_argument("--draws", type=int, default=400)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    from engines.errors import UserError

    try:
        return _run(a)
    except (UserError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run(a: argparse.Namespace) -> int:
    import torch

    from engines.atomic import write_json
    from engines.logmel_torch import LogMel
    from training.multitask import data as mt_data
    from training.multitask.evaluate import predict
    from training.multitask.vocab import bundle_units
    from training.teachers.base import WindowGrid

    bundle, specs = bundle_units(a.bundle)
    model = bundle.build_model().eval()
    fe = bundle.manifest.frontend
    logmel = LogMel(fe)
    grid = WindowGrid(fe.window_samples, fe.sample_rate)  # the teachers' 1-s hop
    probs, package = [], []
    for spec in a.corpus:
        path, _, centre = spec.partition(":")
        corpus = mt_data.load_corpus(path, centre_seconds=float(centre or 0))
        if "source_package" not in corpus.meta:
            raise ValueError(f"{path}: its tracks.csv has no source_package column")
        source = mt_data.grid_source(len(specs), corpus, grid)
        probs.append(predict(model, logmel, source))
        package += [corpus.meta["source_package"][t] for t in source.tracks.tolist()]
        print(f"{path}: {len(source)} windows", flush=True)
    p, pk = np.concatenate(probs), np.asarray(package)
    n_pk = len(np.unique(pk))
    ks = a.cap_packages or [5, n_pk - a.held_packages]
    thr = np.asarray(bundle.manifest.thresholds)
    units = {}
    for j, s in enumerate(specs):
        if s.music or s.distilled:  # only the capped units (as calibrate decides)
            continue
        on = p[:, j] >= thr[j]
        units[s.name] = {
            "on_rate_at_bundle_threshold": float(np.mean(on)),
            "on_rate_by_package": {k: round(float(np.mean(on[pk == k])), 4) for k in np.unique(pk).tolist()},
            "draws": [simulate(p[:, j], pk, k, a.draws, held=a.held_packages) for k in ks],
        }
        row = "; ".join(f"K={d['cap_packages']}: p90 {d['p90']:.2f}, >60 % in {d['share_over_60pct']:.1%}"
                        for d in units[s.name]["draws"])  # fmt: skip
        print(f"{s.name}: {row}")
    doc = {
        "mode": "cap_check", "created": time.strftime("%Y-%m-%d"), "bundle": bundle.manifest.name,
        "settings": {"corpora": a.corpus, "packages": n_pk, "windows": len(p), "held_packages": a.held_packages,
                     "torch_threads": torch.get_num_threads()},
        "units": units,
    }  # fmt: skip
    write_json(a.out, doc)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
