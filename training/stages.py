"""The stages over checked data: pretrain, probe, fine-tune, evaluate.

Corpora arrive decoded and split (training.data_check → :class:`~training.labelled.LabelledData`).
Probe and fine-tune share their start (a model, optionally from a pretrained backbone, and the
log-mel front end) and their end (thresholds calibrated on valid, metrics on test, the result
folder written by training.results); what cannot be calibrated or scored is said, not hidden.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from engines.logmel_torch import LogMel
from engines.model import ResNetTagger
from training.bank import AudioBank
from training.data import DataError
from training.labelled import LabelledData
from training.loop import Dist
from training.metrics import calibrate_thresholds, scored_metrics, unscorable
from training.pretrain import load_backbone, model_spec, pretrain
from training.probe import extract, finetune, label_subset, predict_tracks, recalibrate_bn, train_probe
from training.recipe import Recipe
from training.results import save_result, top_tags

__all__ = ["run_pretrain", "run_probe", "run_finetune", "evaluate_model", "warn_skipped"]

log = logging.getLogger(__name__)


def run_pretrain(
    recipe: Recipe, bank: AudioBank, out: Path, dist: Dist, resume: bool = True, progress: bool = True
) -> dict:
    return pretrain(recipe, bank.to(dist.device), out, dist, resume=resume, progress=progress)


def _new_model(recipe: Recipe, tags: list[str], backbone: str | None, device) -> ResNetTagger:
    torch.manual_seed(recipe.seed)
    model = ResNetTagger(model_spec(recipe, len(tags)))
    if backbone:
        p = Path(backbone)
        if p.is_dir():
            p = p / "backbone.safetensors"
        if not p.is_file():
            raise DataError(f"pretrained backbone not found: {p}")
        load_backbone(model, p)
    return model.to(device)


def _start(recipe: Recipe, data: LabelledData, backbone: str | None, dist: Dist):
    """What probe and fine-tune begin with: the data on the device, a model, the front end."""
    data = data.to(dist.device)
    return data, _new_model(recipe, data.tags, backbone, dist.device), LogMel(recipe.frontend).to(dist.device)


def warn_skipped(metrics: dict, where: str) -> None:
    """Say which tags the metrics leave out (no positive or no negative track, or not labelled)."""
    if metrics["skipped"]:
        log.warning(
            "%s: %d tag(s) left out of the metrics (no positive or no negative track, or not labelled "
            "there): %s",
            where,
            len(metrics["skipped"]),
            ", ".join(metrics["skipped"]),
        )


def _finish(
    stage: str, model, logmel, recipe: Recipe, data: LabelledData, out: Path, dist: Dist, summary: dict
):
    """Calibrate thresholds on valid, write the result folder; returns the thresholds."""
    k = recipe.probe.crops_per_track
    probs_va, _ = predict_tracks(model, logmel, data.bank, data.valid, k)
    y_va = data.labels(data.valid)
    thresholds = calibrate_thresholds(y_va, probs_va)
    left = [data.tags[j] for j in unscorable(y_va)]
    if left:
        log.warning(
            "%s: threshold left at 0.5 for %d tag(s) without a positive and a negative valid track: %s",
            stage,
            len(left),
            ", ".join(left),
        )
    summary["valid"] = scored_metrics(y_va, probs_va, data.tags, data.classes)
    if dist.is_main:
        save_result(out, model, recipe, data.tags, thresholds, {"test": summary["test"]}, {stage: summary})
    return thresholds


def run_probe(
    recipe: Recipe, data: LabelledData, backbone: str | None, out: Path, dist: Dist, progress: bool = True
) -> dict:
    """Frozen-backbone MLP probes at each label fraction; the largest one is saved as the result model."""
    t0 = time.perf_counter()
    data, model, logmel = _start(recipe, data, backbone, dist)
    gen = torch.Generator(device=dist.device)
    gen.manual_seed(recipe.seed)
    k = recipe.probe.crops_per_track
    recalibrate_bn(model, logmel, data.bank, data.train, gen, k, progress=progress)
    f_tr, f_va = (extract(model, logmel, data.bank, i, k) for i in (data.train, data.valid))
    f_te = extract(model, logmel, data.test_bank, data.test, k)
    y_tr = torch.as_tensor(data.labels(data.train), device=dist.device)
    y_va = torch.as_tensor(data.labels(data.valid), device=dist.device)
    runs = []
    for frac in recipe.probe.label_fractions:
        sub = np.searchsorted(data.train, label_subset(data.train, frac, recipe.seed))
        if frac < 1 and len(sub) < recipe.probe.min_tracks:
            log.info(
                "probe: %g of the labels is %d tracks (< probe.min_tracks = %d): skipped",
                frac,
                len(sub),
                recipe.probe.min_tracks,
            )
            continue
        runs.append((f"{frac:g}", sub, None, recipe.probe.loop))
    if recipe.jetatag.enabled:
        from training.jetatag import JetatagAux, fit_tag_autoencoder

        cfg = recipe.jetatag
        ae = fit_tag_autoencoder(y_tr, cfg.tag_dim, seed=recipe.seed)
        aux = JetatagAux(ae, recipe.model.embed_dim, cfg.tag_dim, cfg.weight)
        runs.append(("1+jetatag", np.arange(len(data.train)), aux, cfg.loop))
    results, kept = {}, None
    for name, sub, aux, loop in runs:
        m = _new_model(recipe, data.tags, None, dist.device)
        m.load_state_dict(model.state_dict())
        pos = torch.as_tensor(sub, device=dist.device)
        loop = loop.model_copy(update={"seed": recipe.seed})
        valid, _ = train_probe(
            m,
            f_tr[pos],
            y_tr[pos],
            f_va,
            y_va,
            data.tags,
            loop,
            out / f"probe_{name}",
            dist,
            progress,
            aux=aux,
        )
        with torch.no_grad():
            logits = m.head(m.embed(f_te.reshape(-1, f_te.shape[-1]))).float()
            p = torch.sigmoid(logits).view(f_te.shape[0], f_te.shape[1], -1).mean(1).cpu().numpy()
        test = scored_metrics(data.y_test, p, data.tags, data.classes)
        results[name] = {"tracks": len(sub), "valid_roc_auc": valid["roc_auc"], "test": test}
        log.info(
            "probe %s labels (%d tracks): test ROC-AUC %.4f PR-AUC %.4f",
            name,
            len(sub),
            test["roc_auc"],
            test["pr_auc"],
        )
        if aux is None:
            kept = (m, test)
    if kept is None:
        raise DataError("probe: every label fraction was skipped; add 1.0 to probe.label_fractions")
    warn_skipped(kept[1], "probe test")
    summary = {"stage": "probe", "backbone": backbone or "random-init", "fractions": results, "test": kept[1]}
    _finish("probe", kept[0], logmel, recipe, data, out, dist, summary)
    summary["seconds"] = time.perf_counter() - t0
    return summary


def run_finetune(
    recipe: Recipe,
    data: LabelledData,
    backbone: str | None,
    out: Path,
    dist: Dist,
    resume: bool = True,
    progress: bool = True,
    real: AudioBank | None = None,
) -> dict:
    """Full fine-tuning on the train split; thresholds on valid; metrics on test."""
    t0 = time.perf_counter()
    data, model, logmel = _start(recipe, data, backbone, dist)
    cfg, k = recipe.finetune, recipe.probe.crops_per_track
    loop = cfg.loop.model_copy(update={"seed": recipe.seed})
    finetune(
        model,
        logmel,
        data.bank,
        data.train,
        data.valid,
        loop,
        cfg.augment,
        cfg.backbone_lr_scale,
        k,
        out,
        dist,
        resume,
        progress,
    )
    probs_te, emb_te = predict_tracks(model, logmel, data.test_bank, data.test, k)
    test = scored_metrics(data.y_test, probs_te, data.tags, data.classes)
    warn_skipped(test, "finetune test")
    summary = {"stage": "finetune", "backbone": backbone or "random-init", "test": test}
    if real is not None:
        real = real.to(dist.device)
        probs_real, _ = predict_tracks(model, logmel, real, np.arange(len(real)), 16)
        summary["real_top_tags"] = top_tags(probs_real, real.names, data.tags)
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            out / "test_embeddings.npz",
            emb=emb_te,
            labels=data.y_test,
            tags=np.array(data.tags),
            probs=probs_te,
        )
    _finish("finetune", model, logmel, recipe, data, out, dist, summary)
    summary["seconds"] = time.perf_counter() - t0
    return summary


def evaluate_model(model: ResNetTagger, tags: list[str], recipe: Recipe, bank: AudioBank, dist: Dist) -> dict:
    """Track-level metrics of a model on a labelled corpus (tags matched by name)."""
    bank = bank.to(dist.device)
    y = -np.ones((len(bank), len(tags)), dtype=np.float32)
    for j, t in enumerate(tags):
        if t in bank.tags:
            y[:, j] = bank.labels[:, bank.tags.index(t)].cpu().numpy()
    classes = bool((bank.labels.sum(dim=1) == 1).all())
    logmel = LogMel(recipe.frontend).to(dist.device)
    probs, _ = predict_tracks(
        model.to(dist.device), logmel, bank, np.arange(len(bank)), recipe.probe.crops_per_track
    )
    return scored_metrics(y, probs, tags, classes)
