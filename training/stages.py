"""The CLI's stages as functions: load corpora, pretrain, probe, fine-tune, evaluate, export.

Corpora are read through training.data (folder + tags table, MagnaTagATune, MTG-Jamendo,
folder-per-class) or, on the GPU machine, from packs made by training.corpora.pack; either way
they become one :class:`~training.bank.AudioBank` on the training device.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from engines.logmel_torch import LogMel
from engines.model import ResNetTagger
from training.bank import AudioBank
from training.data import DataError, read_audio
from training.loop import Dist
from training.metrics import calibrate_thresholds, tag_metrics
from training.pretrain import load_backbone, model_spec, pretrain
from training.probe import extract, finetune, label_subset, predict_tracks, recalibrate_bn, train_probe
from training.recipe import Recipe

__all__ = [
    "DataError",
    "load_bank",
    "labelled_splits",
    "run_pretrain",
    "run_probe",
    "run_finetune",
    "evaluate_model",
    "git_commit",
    "top_tags",
]

log = logging.getLogger(__name__)
RESULT_FILE = "result.json"
MODEL_FILE = "model.safetensors"


def _open_table(path: Path):
    """The corpus' TrackTable through training.data (any supported layout)."""
    from training.data import load_table

    return load_table(path)


_BANKS: dict[
    tuple, AudioBank
] = {}  # decoded corpora of this process, so stages run in one process decode once


def load_bank(path: str | Path, recipe: Recipe, workers: int = 0, need_labels: bool = False) -> AudioBank:
    """Decode a corpus (directory with a tags table, or a pack) into an AudioBank on the CPU."""
    path = Path(path)
    spec = recipe.frontend
    key = (str(path.resolve()), spec.sample_rate, spec.window_samples, recipe.data.max_seconds)
    if key not in _BANKS:
        _BANKS[key] = _decode_bank(path, recipe, workers)
    bank = _BANKS[key]
    if need_labels:
        if bank.labels is None or not bank.tags:
            raise DataError(f"corpus {path} has no tag labels")
        if float(bank.labels.sum()) == 0:
            raise DataError(f"corpus {path}: every tag column is empty")
    return bank


def _decode_bank(path: Path, recipe: Recipe, workers: int) -> AudioBank:
    spec = recipe.frontend
    if not path.exists():
        raise DataError(f"corpus not found: {path}")
    if (path / "pack.json").exists():
        from training.corpora.pack import load_packed

        table, waves = load_packed(path, workers or os.cpu_count() or 1)
    else:
        table = _open_table(path)
        root = Path(table.root)
        missing = [p for p in table.paths if not (root / p).is_file()]
        if missing:
            raise DataError(
                f"{len(missing)} audio file(s) referenced by {path} are missing, e.g. {root / missing[0]}"
            )
        if workers > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(workers) as ex:
                waves = list(ex.map(lambda p: read_audio(root / p, spec.sample_rate), table.paths))
        else:
            waves = [read_audio(root / p, spec.sample_rate) for p in table.paths]
    if recipe.data.max_seconds > 0:
        cap = int(recipe.data.max_seconds * spec.sample_rate)
        waves = [w[:cap] for w in waves]
    labels = getattr(table, "labels", None)
    tags = list(getattr(table, "tags", []) or [])
    if not tags:
        labels = None
    split = getattr(table, "split", None)
    return AudioBank.from_arrays(
        waves,
        spec.sample_rate,
        spec.window_samples,
        names=[str(p) for p in table.paths],
        labels=labels,
        tags=tags,
        split=split,
    )


def labelled_splits(bank: AudioBank, recipe: Recipe) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of (train, valid, test) in the labelled corpus; valid carved from train if absent."""
    if bank.split is None:
        tr, te = np.arange(len(bank)), np.array([], dtype=np.int64)
        va = np.array([], dtype=np.int64)
    else:
        tr, va, te = bank.indices("train"), bank.indices("valid"), bank.indices("test")
    if len(va) == 0:
        rng = np.random.default_rng(recipe.seed)
        perm = rng.permutation(tr)
        n_va = max(1, int(round(len(tr) * recipe.data.valid_fraction)))
        va, tr = np.sort(perm[:n_va]), np.sort(perm[n_va:])
    if len(tr) < 2:
        raise DataError(f"the labelled corpus has only {len(tr)} training track(s)")
    return tr, va, te


def _aligned(bank: AudioBank, tags: list[str]) -> np.ndarray:
    """``bank``'s labels re-ordered to ``tags`` (columns for tags it lacks are −1: not scored)."""
    out = -np.ones((len(bank), len(tags)), dtype=np.float32)
    lab = bank.labels.cpu().numpy()
    for j, t in enumerate(tags):
        if t in bank.tags:
            out[:, j] = lab[:, bank.tags.index(t)]
    return out


def _scored(y: np.ndarray, p: np.ndarray, tags: list[str]) -> dict:
    keep = [j for j in range(len(tags)) if (y[:, j] >= 0).all()]
    return tag_metrics(y[:, keep], p[:, keep], [tags[j] for j in keep])


def git_commit() -> str:
    """The commit the code ran from: ``RT_TAGGER_COMMIT`` when set (copies of the tree without
    history, e.g. on a GPU machine), else ``git rev-parse`` (+dirty when training/engines/configs
    have local changes), else "unknown"."""
    import re

    env = os.environ.get("RT_TAGGER_COMMIT", "")
    if re.fullmatch(r"[0-9a-f]{40}", env):
        return env
    try:
        root = Path(__file__).resolve().parents[1]
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        if not re.fullmatch(r"[0-9a-f]{40}", sha):
            return "unknown"
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "training", "engines", "configs"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_pretrain(
    recipe: Recipe,
    out: Path,
    dist: Dist,
    workers: int = 0,
    resume: bool = True,
    progress: bool = True,
    banks: list[AudioBank] | None = None,
) -> dict:
    if banks is None:
        if not recipe.data.pretrain:
            raise DataError("no pretraining corpora: set data.pretrain in the recipe")
        banks = [load_bank(p, recipe, workers) for p in recipe.data.pretrain]
    bank = AudioBank.concat(banks).to(dist.device)
    return pretrain(recipe, bank, out, dist, resume=resume, progress=progress)


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


def save_result(
    out: Path,
    model: ResNetTagger,
    recipe: Recipe,
    tags: list[str],
    thresholds: list[float],
    metrics: dict,
    extra: dict,
) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(out / MODEL_FILE)
    )
    result = {
        "tags": tags,
        "thresholds": thresholds,
        "metrics": metrics,
        "recipe": recipe.model_dump(mode="json"),
        "model": model.spec.model_dump(mode="json"),
        **extra,
    }
    tmp = out / f".{RESULT_FILE}.tmp"
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, out / RESULT_FILE)


def top_tags(probs: np.ndarray, names: list[str], tags: list[str], k: int = 5) -> list[dict]:
    return [
        {"track": n, "top": [[tags[j], round(float(p[j]), 3)] for j in np.argsort(-p)[:k]]}
        for n, p in zip(names, probs, strict=True)
    ]


def _load_labelled(recipe: Recipe, dist: Dist, workers: int, banks: dict | None):
    banks = banks or {}
    if not recipe.data.labelled and "labelled" not in banks:
        raise DataError("no labelled corpus: set data.labelled in the recipe")
    lab = banks.get("labelled") or load_bank(recipe.data.labelled, recipe, workers, need_labels=True)
    lab = lab.to(dist.device)
    tr, va, te = labelled_splits(lab, recipe)
    test = banks.get("test")
    if test is None and recipe.data.test:
        test = load_bank(recipe.data.test, recipe, workers, need_labels=True)
    if test is not None:
        test = test.to(dist.device)
        te_idx = np.arange(len(test))
    else:
        if len(te) == 0:
            raise DataError("no test data: set data.test or give the labelled corpus a test split")
        test, te_idx = lab, te
    return lab, tr, va, test, te_idx


def run_probe(
    recipe: Recipe,
    backbone: str | None,
    out: Path,
    dist: Dist,
    workers: int = 0,
    progress: bool = True,
    banks: dict | None = None,
) -> dict:
    """Frozen-backbone MLP probes at each label fraction; the 100 % probe is saved as the result model."""
    t0 = time.perf_counter()
    lab, tr, va, test, te_idx = _load_labelled(recipe, dist, workers, banks)
    tags = lab.tags
    model = _new_model(recipe, tags, backbone, dist.device)
    logmel = LogMel(recipe.frontend).to(dist.device)
    gen = torch.Generator(device=dist.device)
    gen.manual_seed(recipe.seed)
    recalibrate_bn(model, logmel, lab, tr, gen)
    k = recipe.probe.crops_per_track
    f_tr, f_va, f_te = (extract(model, logmel, b, i, k) for b, i in ((lab, tr), (lab, va), (test, te_idx)))
    y_all = lab.labels
    y_te = (
        _aligned(test, tags)[te_idx] if test is not lab else lab.labels[torch.as_tensor(te_idx)].cpu().numpy()
    )
    results, best_model = {}, None
    for frac in recipe.probe.label_fractions:
        sub = label_subset(tr, frac, recipe.seed)
        pos = torch.as_tensor(np.searchsorted(tr, sub), device=dist.device)
        m = _new_model(recipe, tags, None, dist.device)
        m.load_state_dict(model.state_dict())
        loop = recipe.probe.loop.model_copy(update={"seed": recipe.seed})
        valid, _ = train_probe(
            m,
            f_tr[pos],
            y_all[torch.as_tensor(tr)][pos.cpu()].to(dist.device),
            f_va,
            y_all[torch.as_tensor(va)].to(dist.device),
            tags,
            loop,
            out / f"probe_{frac:g}",
            dist,
            progress,
        )
        with torch.no_grad():
            p = (
                torch.sigmoid(m.head(m.embed(f_te.reshape(-1, f_te.shape[-1]))).float())
                .view(f_te.shape[0], f_te.shape[1], -1)
                .mean(1)
                .cpu()
                .numpy()
            )
        results[f"{frac:g}"] = {
            "tracks": len(sub),
            "valid_roc_auc": valid["roc_auc"],
            "test": _scored(y_te, p, tags),
        }
        log.info(
            "probe %s labels (%d tracks): test ROC-AUC %.4f PR-AUC %.4f",
            f"{frac:g}",
            len(sub),
            results[f"{frac:g}"]["test"]["roc_auc"],
            results[f"{frac:g}"]["test"]["pr_auc"],
        )
        best_model = m
    if recipe.jetatag.enabled:
        from training.jetatag import JetatagAux, fit_tag_autoencoder

        cfg = recipe.jetatag
        y_tr = y_all[torch.as_tensor(tr)].to(dist.device)
        ae = fit_tag_autoencoder(y_tr, cfg.tag_dim, seed=recipe.seed)
        m = _new_model(recipe, tags, None, dist.device)
        m.load_state_dict(model.state_dict())
        aux = JetatagAux(ae, recipe.model.embed_dim, cfg.tag_dim, cfg.weight)
        loop = cfg.loop.model_copy(update={"seed": recipe.seed})
        valid, _ = train_probe(
            m,
            f_tr,
            y_tr,
            f_va,
            y_all[torch.as_tensor(va)].to(dist.device),
            tags,
            loop,
            out / "probe_jetatag",
            dist,
            progress,
            aux=aux,
        )
        with torch.no_grad():
            p = (
                torch.sigmoid(m.head(m.embed(f_te.reshape(-1, f_te.shape[-1]))).float())
                .view(f_te.shape[0], f_te.shape[1], -1)
                .mean(1)
                .cpu()
                .numpy()
            )
        results["1+jetatag"] = {
            "tracks": len(tr),
            "valid_roc_auc": valid["roc_auc"],
            "test": _scored(y_te, p, tags),
        }
        log.info(
            "probe 1+jetatag: test ROC-AUC %.4f PR-AUC %.4f",
            results["1+jetatag"]["test"]["roc_auc"],
            results["1+jetatag"]["test"]["pr_auc"],
        )
    probs_va, _ = predict_tracks(best_model, logmel, lab, va, k)
    thresholds = calibrate_thresholds(lab.labels[torch.as_tensor(va)].cpu().numpy(), probs_va)
    summary = {
        "stage": "probe",
        "backbone": backbone or "random-init",
        "fractions": results,
        "seconds": time.perf_counter() - t0,
    }
    if dist.is_main:
        save_result(
            out,
            best_model,
            recipe,
            tags,
            thresholds,
            {"test": results[f"{recipe.probe.label_fractions[-1]:g}"]["test"]},
            {"probe": summary},
        )
    return summary


def run_finetune(
    recipe: Recipe,
    backbone: str | None,
    out: Path,
    dist: Dist,
    workers: int = 0,
    resume: bool = True,
    progress: bool = True,
    banks: dict | None = None,
) -> dict:
    """Full fine-tuning on the labelled train split; thresholds on valid; metrics on test."""
    t0 = time.perf_counter()
    lab, tr, va, test, te_idx = _load_labelled(recipe, dist, workers, banks)
    tags = lab.tags
    model = _new_model(recipe, tags, backbone, dist.device)
    logmel = LogMel(recipe.frontend).to(dist.device)
    cfg = recipe.finetune
    k = recipe.probe.crops_per_track
    loop = cfg.loop.model_copy(update={"seed": recipe.seed})
    valid, history = finetune(
        model, logmel, lab, tr, va, loop, cfg.augment, cfg.backbone_lr_scale, k, out, dist, resume, progress
    )
    probs_va, _ = predict_tracks(model, logmel, lab, va, k)
    thresholds = calibrate_thresholds(lab.labels[torch.as_tensor(va)].cpu().numpy(), probs_va)
    probs_te, emb_te = predict_tracks(model, logmel, test, te_idx, k)
    y_te = _aligned(test, tags)[te_idx]
    test_m = _scored(y_te, probs_te, tags)
    valid_m = tag_metrics(lab.labels[torch.as_tensor(va)].cpu().numpy(), probs_va, tags)
    summary = {
        "stage": "finetune",
        "backbone": backbone or "random-init",
        "valid": valid_m,
        "test": test_m,
        "seconds": time.perf_counter() - t0,
    }
    if recipe.data.real or (banks and "real" in banks):
        real = (banks or {}).get("real") or load_bank(recipe.data.real, recipe, workers)
        real = real.to(dist.device)
        probs_real, _ = predict_tracks(model, logmel, real, np.arange(len(real)), 16)
        summary["real_top_tags"] = top_tags(probs_real, real.names, tags)
    if dist.is_main:
        np.savez_compressed(
            out / "test_embeddings.npz", emb=emb_te, labels=y_te, tags=np.array(tags), probs=probs_te
        )
        save_result(
            out,
            model,
            recipe,
            tags,
            thresholds,
            {"test": test_m, "valid": {"roc_auc": valid_m["roc_auc"], "pr_auc": valid_m["pr_auc"]}},
            {"finetune": summary},
        )
    return summary


def evaluate_model(
    model: ResNetTagger,
    tags: list[str],
    recipe: Recipe,
    corpus: str | Path,
    dist: Dist,
    workers: int = 0,
    split: str | None = None,
) -> dict:
    """Track-level metrics of a model on a labelled corpus (tags matched by name)."""
    bank = load_bank(corpus, recipe, workers, need_labels=True).to(dist.device)
    idx = bank.indices(split) if split else np.arange(len(bank))
    logmel = LogMel(recipe.frontend).to(dist.device)
    probs, _ = predict_tracks(model.to(dist.device), logmel, bank, idx, recipe.probe.crops_per_track)
    return _scored(_aligned(bank, tags)[idx], probs, tags)
