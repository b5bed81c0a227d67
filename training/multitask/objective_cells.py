"""A bundle's objective and instrument ROC-AUC on several synthetic corpora, side by side.

    python -m training.multitask.objective_cells --bundle rt_tagger/default_model \\
        --corpus train_sf_train_composer=/work/data/cells/fr3_varied \\
        --corpus train_sf_heldout_composer=/work/data/cells/fr3_heldout ... --out cells.json

Why: the instrument units miss on the held-out soundfont *and* composer; corpora that change one
of the two at a time (rendered by ``training.corpora.synth`` with a new seed) tell which shift
costs what. The numbers are :func:`training.multitask.evaluate.evaluate`'s objective ones: macro
ROC-AUC over the objective units and over the instrument units, each clip's centred window.
``--windows K`` scores each clip by the mean of K evenly spaced windows instead (as ``rt-tagger
tag`` scores a file by its windows' mean). ``--by COLUMN`` adds the same numbers per value of a
column of the corpus table (``eq``, ``codec``, ``soundfont_name`` …): which variant of a factor
costs what. ``--bundle`` given several times scores the mean of their probabilities (an ensemble:
how far several runs together reach). A single-task bundle from before the multi-task model is
scored on the objective units its tags name (the same units, by name).

Is it the head or the embedding? ``--probe-folds K`` adds, per corpus, a K-fold cross-validated
logistic probe per unit on the first bundle's embeddings of that corpus's centred windows: what a
linear head fitted on the test soundfont itself would reach (a ceiling, never a model to ship).
``--refit-on NAME`` fits that head on corpus NAME's embeddings instead (a training-soundfont
corpus) and scores it on every other corpus: a head re-fitted with no access to the test sounds.
``--features`` fits those heads on other features of the same windows than the embedding: the
pooled last stage the embedding layer reads (``pooled``), a stage's channel means and standard
deviations over frequency and time (``stage2``, ``stage3``), or those and the embedding together
(``stage2+stage3+embedding``): whether what the embedding drops would carry to unheard sounds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

# the shipped model, by the repository's layout (training sits below the runtime package's layer)
SHIPPED = Path(__file__).resolve().parents[2] / "rt_tagger" / "default_model"
FEATURES = ("embedding", "pooled", "stage2", "stage3", "stage2+stage3+embedding")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m training.multitask.objective_cells", description=__doc__.splitlines()[0]
    )
    ap.add_argument(
        "--bundle",
        type=Path,
        action="append",
        help="a bundle (default: the shipped model); several: the mean of their probabilities",
    )
    ap.add_argument(
        "--corpus", action="append", required=True, metavar="NAME=PATH", help="a synthetic corpus"
    )
    ap.add_argument("--out", type=Path, required=True, help="results JSON")
    ap.add_argument(
        "--by", action="append", default=[], metavar="COLUMN", help="also per value of a table column"
    )
    ap.add_argument(
        "--windows",
        type=int,
        default=1,
        metavar="K",
        help="mean of K evenly spaced windows per clip (1: the centred one)",
    )
    ap.add_argument(
        "--probe-folds", type=int, default=0, metavar="K", help="add a K-fold linear probe per corpus"
    )
    ap.add_argument("--refit-on", metavar="NAME", help="add a linear head fitted on corpus NAME")
    ap.add_argument(
        "--features",
        choices=FEATURES,
        default="embedding",
        help="what the --probe-folds / --refit-on heads read (default: the embedding)",
    )
    a = ap.parse_args(argv)
    if a.windows < 1:
        ap.error("--windows takes a count of at least 1")
    if a.probe_folds == 1 or a.probe_folds < 0:
        ap.error("--probe-folds takes 0 (none) or at least 2 folds")
    a.bundle = a.bundle or [SHIPPED]
    corpora = [item.partition("=")[::2] for item in a.corpus]
    if not all(name and path for name, path in corpora):
        ap.error("--corpus takes NAME=PATH")
    if a.refit_on and (a.refit_on not in dict(corpora) or len(corpora) < 2):
        ap.error("--refit-on names one --corpus, and another corpus is needed to score the head on")
    from engines.errors import UserError

    try:
        return _run(a, corpora)
    except UserError as e:  # a missing bundle or corpus: one line, nothing written
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run(a: argparse.Namespace, corpora: list[tuple[str, str]]) -> int:
    from engines.atomic import write_json
    from engines.bundle import Bundle
    from engines.logmel_torch import LogMel
    from training.multitask import data as mt_data
    from training.provenance import git_commit, machine

    bundles = [Bundle.load(b) for b in a.bundle]
    specs = _units(bundles)
    objective = [s.name for s in specs if s.objective]
    for path, other in zip(a.bundle, bundles, strict=True):
        missing = [n for n in objective if n not in other.tags]
        if missing or other.manifest.frontend != bundles[0].manifest.frontend:
            why = f"has no {', '.join(missing[:3])} unit" if missing else f"front end is not {a.bundle[0]}'s"
            print(f"error: {path} {why}: not scored", file=sys.stderr)
            return 2
    models = [b.build_model().eval() for b in bundles]
    logmel = LogMel(bundles[0].manifest.frontend)
    results = {}
    embedded = {}  # corpus name → (first bundle's embeddings of the centred windows, targets)
    for name, path in corpora:
        corpus = mt_data.load_corpus(path)
        source = mt_data.clip_source(specs, corpus, logmel.spec.window_samples, music=True)
        probs = np.mean(
            [
                _as_units(_clip_probs(m, logmel, source, a.windows), b.tags, specs)
                for m, b in zip(models, bundles, strict=True)
            ],
            axis=0,
        )
        y = source.target.numpy()
        results[name] = {"corpus": path, **_cell(specs, probs, y, name)}
        if a.probe_folds or a.refit_on:
            embedded[name] = (window_features(models[0], logmel, source, a.features), y)
        if a.probe_folds > len(y):
            print(
                f"error: {path} has {len(y)} clips, fewer than --probe-folds {a.probe_folds}", file=sys.stderr
            )
            return 2
        if a.probe_folds:
            label = f"  {name}, linear probe ({a.probe_folds} folds)"
            results[name]["probe"] = _cell(specs, _cv_probe(specs, *embedded[name], a.probe_folds), y, label)
        for column in a.by:
            if column not in corpus.meta:
                print(f"error: {path} has no column {column!r}", file=sys.stderr)
                return 2
            values = np.asarray(corpus.meta[column])
            results[name][f"by_{column}"] = {
                str(v): _cell(specs, probs[values == v], y[values == v], f"  {column}={v or '(none)'}")
                for v in sorted(set(values))
            }
    if a.refit_on:
        head = _fit_head(specs, *embedded[a.refit_on])
        for name, (emb, y) in embedded.items():
            if name != a.refit_on:
                results[name]["refit"] = _cell(specs, head(emb), y, f"  {name}, head re-fit on {a.refit_on}")
    names = [b.manifest.name for b in bundles]
    doc = {"mode": "objective_cells", "created": time.strftime("%Y-%m-%d"), "bundle": " + ".join(names),
           "bundles": names, "windows_per_clip": a.windows,
           "window_frames": bundles[0].manifest.frontend.window_frames, "results": results}  # fmt: skip
    doc |= {
        "probe_folds": a.probe_folds,
        "head_features": a.features,
        "refit_on": a.refit_on,
        "machine": machine(),
        "git_commit": git_commit(),
    }
    write_json(a.out, doc)
    print(f"wrote {a.out}")
    return 0


def _units(bundles: list) -> list:
    """The units scored: the first multi-task bundle's, else the shipped model's (a single-task
    bundle from before, whose tags name the objective units, is scored on those)."""
    from training.multitask.vocab import bundle_specs, bundle_units

    for bundle in bundles:
        specs = bundle_specs(bundle)
        if specs is not None:
            return specs
    return bundle_units(SHIPPED)[1]


def _as_units(probs: np.ndarray, tags: list[str], specs: list) -> np.ndarray:
    """A bundle's probabilities ``(N, its tags)`` as ``(N, units)``, by name (0 where it has none)."""
    out = np.zeros((len(probs), len(specs)), np.float32)
    for j, s in enumerate(specs):
        if s.name in tags:
            out[:, j] = probs[:, tags.index(s.name)]
    return out


def _clip_probs(model, logmel, source, windows: int) -> np.ndarray:
    """Each clip's probabilities: its centred window's (``windows == 1``), else the mean of
    ``windows`` windows from the clip's start to its end."""

    from training.multitask.evaluate import predict

    if windows == 1:
        return predict(model, logmel, source)
    room = (source.bank.lengths[source.tracks] - logmel.spec.window_samples).clamp(min=0).cpu()
    fractions = np.linspace(0.0, 1.0, windows)
    return np.mean([predict(model, logmel, source, starts=(room * f).long()) for f in fractions], axis=0)


def window_features(model, logmel, source, kind: str = "embedding") -> np.ndarray:
    """``(N, D)`` features of each example's evaluation window (see ``--features``), read from the
    network's stages by forward hooks while :func:`~training.multitask.evaluate.predict` runs."""
    import torch

    from training.multitask.evaluate import predict

    parts: dict[str, list] = {"stage2": [], "stage3": [], "pooled": []}

    def keep_stage(stage: int):
        def hook(_module, _inputs, out: torch.Tensor) -> None:
            x = out.float()
            parts[f"stage{stage}"].append(torch.cat([x.mean((2, 3)), x.std((2, 3))], 1).cpu())

        return hook

    def keep_pooled(_module, inputs: tuple) -> None:
        parts["pooled"].append(inputs[0].float().cpu())  # the backbone's pooling, as the embedding reads it

    wanted = kind.split("+")  # only the parts this kind reads are hooked
    # every bundle so far has four stages (blocks 2-2-2-2, the lite model included)
    hooks = [model.stages[i].register_forward_hook(keep_stage(i)) for i in (2, 3) if f"stage{i}" in wanted]
    if "pooled" in wanted:
        hooks.append(model.embed.register_forward_pre_hook(keep_pooled))
    try:
        emb = predict(model, logmel, source, embeddings=True)[1]
    finally:
        for h in hooks:
            h.remove()
    got = {k: torch.cat(v).numpy() for k, v in parts.items() if v} | {"embedding": emb}
    return np.concatenate([got[part] for part in wanted], axis=1)


def _fit_head(specs: list, emb: np.ndarray, y: np.ndarray):
    """One logistic regression per objective unit on ``emb`` (its strength by 3-fold CV on ``emb``
    alone); returns ``emb → (N, units)`` probabilities (0 for the other units, 0.5 for a unit with
    one class only in ``y``)."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    fits = {}
    for j, s in enumerate(specs):
        yes = y[:, j] > 0.5
        if s.objective and 3 <= yes.sum() <= len(yes) - 3:
            fits[j] = make_pipeline(
                StandardScaler(), LogisticRegressionCV(Cs=[1e-3, 1e-2, 1e-1, 1.0], cv=3, max_iter=1000)
            )
            fits[j].fit(emb, yes)

    def head(x: np.ndarray) -> np.ndarray:
        out = np.zeros((len(x), len(specs)), np.float32)
        for j, s in enumerate(specs):
            if s.objective:
                out[:, j] = fits[j].predict_proba(x)[:, 1] if j in fits else 0.5
        return out

    return head


def _cv_probe(specs: list, emb: np.ndarray, y: np.ndarray, folds: int) -> np.ndarray:
    """Out-of-fold probabilities of heads fitted by :func:`_fit_head` on the other folds."""
    from sklearn.model_selection import KFold

    out = np.zeros((len(emb), len(specs)), np.float32)
    for fit, held in KFold(folds, shuffle=True, random_state=0).split(emb):
        out[held] = _fit_head(specs, emb[fit], y[fit])(emb[held])
    return out


def _cell(specs: list, probs: np.ndarray, y: np.ndarray, label: str) -> dict:
    from training.multitask.evaluate import objective_metrics

    obj, ins = objective_metrics(specs, probs, y)
    print(f"{label}: {len(y)} clips, objective {obj['roc_auc']:.3f}, instruments {ins['roc_auc']:.3f}")
    return {
        "clips": len(y), "objective_macro_roc_auc": obj["roc_auc"], "instrument_macro_roc_auc": ins["roc_auc"],
        "per_tag": {k: round(v["roc_auc"], 4) for k, v in obj["per_tag"].items()},
    }  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
