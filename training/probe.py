"""Downstream stages: frozen-backbone MLP probe, full fine-tuning, limited labels, evaluation.

The probe is the ResNet's own ``embed`` (Linear → BN → ReLU) and ``head`` (Linear) layers — a
two-layer MLP — trained on the frozen convolutional trunk's pooled features, so a probed model is
a complete :class:`~engines.model.ResNetTagger` that drops straight into a bundle. Track-level
scores average the probabilities of ``crops_per_track`` evenly spaced windows.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engines.logmel_torch import LogMel
from engines.model import ResNetTagger
from training.augment import AugmentSpec, augment_mel, augment_wave
from training.bank import AudioBank
from training.loop import Dist, LoopSpec, StepOut, run_loop
from training.metrics import tag_metrics
from training.views import gather_crops, sample_views

__all__ = [
    "pooled_features",
    "crop_grid",
    "extract",
    "recalibrate_bn",
    "label_subset",
    "train_probe",
    "finetune",
    "predict_tracks",
]

log = logging.getLogger(__name__)


def pooled_features(model: ResNetTagger, mel: torch.Tensor) -> torch.Tensor:
    """The trunk's pooled features ``(B, 2C)``: :meth:`ResNetTagger.backbone` before ``embed``.

    tests/training/test_probe.py checks ``model.embed(pooled_features(m, x)) == model.backbone(x)``.
    """
    x = model.input_norm(mel.unsqueeze(1))
    x = model.stages(model.stem(x)).mean(dim=2)
    return torch.cat([x.mean(dim=2), x.amax(dim=2)], dim=1)


def crop_grid(bank: AudioBank, idx: np.ndarray, k: int, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``k`` evenly spaced window starts per track: (tracks, starts), each ``(len(idx)·k,)``."""
    t = torch.as_tensor(np.asarray(idx, dtype=np.int64), device=bank.device)
    max_start = (bank.lengths[t] - window).clamp(min=0).double()
    frac = (
        torch.linspace(0, 1, k, device=bank.device, dtype=torch.float64)
        if k > 1
        else torch.full((1,), 0.5, device=bank.device, dtype=torch.float64)
    )
    starts = (max_start[:, None] * frac[None, :]).long()
    return t[:, None].expand(-1, k).reshape(-1), starts.reshape(-1)


@torch.no_grad()
def extract(
    model: ResNetTagger,
    logmel: LogMel,
    bank: AudioBank,
    idx: np.ndarray,
    k: int,
    batch: int = 512,
    what: str = "pooled",
) -> torch.Tensor:
    """Per-crop outputs ``(len(idx), k, D)`` of the model in eval mode.

    ``what``: ``"pooled"`` trunk features, ``"embedding"`` backbone embeddings, ``"probs"`` tag probabilities.
    """
    model.eval()
    tracks, starts = crop_grid(bank, idx, k, logmel.spec.window_samples)
    outs = []
    for i in range(0, len(tracks), batch):
        mel = logmel(
            gather_crops(bank, tracks[i : i + batch], starts[i : i + batch], logmel.spec.window_samples)
        )
        if what == "pooled":
            outs.append(pooled_features(model, mel).float())
        elif what == "embedding":
            outs.append(model.backbone(mel).float())
        else:
            outs.append(torch.sigmoid(model(mel)[0].float()))
    return torch.cat(outs).view(len(idx), k, -1)


@torch.no_grad()
def recalibrate_bn(
    model: ResNetTagger,
    logmel: LogMel,
    bank: AudioBank,
    idx: np.ndarray,
    gen: torch.Generator,
    crops_per_track: int = 8,
    max_crops: int = 5120,
    batch: int = 256,
    progress: bool = True,
) -> None:
    """Re-estimate BatchNorm statistics on clean crops of ``idx`` (cumulative average).

    A random-init network's BN statistics are meaningless (the input is in dB, far from zero
    mean), so both the random baseline and pretrained backbones are recalibrated the same way.
    The number of crops follows the data: ``crops_per_track`` per track, at most ``max_crops``.
    """
    from tqdm import tqdm

    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    pool = torch.as_tensor(np.asarray(idx, dtype=np.int64), device=bank.device)
    total = min(max_crops, max(2, crops_per_track * len(pool)))
    sizes = [min(batch, total - i) for i in range(0, total, batch)]
    for n in tqdm(sizes, desc="BatchNorm statistics", disable=not progress, leave=False, mininterval=1.0):
        pick = pool[torch.randint(len(pool), (n,), generator=gen, device=gen.device).to(bank.device)]
        views, _ = sample_views(bank, n, 1, logmel.spec.window_samples, 0, gen, tracks=pick)
        model.backbone(logmel(views[0]))
    for m in bns:
        m.momentum = 0.1
    model.eval()


def label_subset(idx: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A seeded random ``fraction`` of ``idx`` (at least 2 tracks)."""
    if fraction >= 1:
        return np.asarray(idx)
    rng = np.random.default_rng(seed)
    n = max(2, int(round(len(idx) * fraction)))
    return np.sort(rng.choice(np.asarray(idx), size=min(n, len(idx)), replace=False))


class _ProbeHead(nn.Module):
    """The model's ``embed`` + ``head`` as an MLP over pooled features (shares the parameters)."""

    def __init__(self, model: ResNetTagger, aux: nn.Module | None = None) -> None:
        super().__init__()
        self.embed, self.head, self.aux = model.embed, model.head, aux

    def forward(self, feats: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.embed(feats)
        logits = self.head(emb)
        loss = F.binary_cross_entropy_with_logits(logits.float(), labels) if labels is not None else logits
        if labels is not None and self.aux is not None:
            loss = loss + self.aux(emb, labels)  # an auxiliary objective (e.g. JETATAG) on the embedding
        return loss


def _track_scores(probs: torch.Tensor) -> np.ndarray:
    return probs.mean(dim=1).cpu().numpy()


def train_probe(
    model: ResNetTagger,
    feats_tr: torch.Tensor,
    y_tr: torch.Tensor,
    feats_va: torch.Tensor,
    y_va: torch.Tensor,
    tags: list[str],
    loop: LoopSpec,
    out_dir: Path,
    dist: Dist,
    progress: bool = True,
    aux: nn.Module | None = None,
) -> tuple[dict, list[dict]]:
    """Train ``model.embed`` + ``model.head`` on frozen features; keeps the best valid ROC-AUC state.

    Args:
        feats_tr: ``(n, k, D)`` pooled features of the labelled training tracks (k crops each).
        y_tr: ``(n, T)`` labels. feats_va, y_va: the same for validation.
        aux: optional module ``aux(embedding, labels) -> loss`` trained alongside (JETATAG).
    Returns:
        (best validation metrics, loop history).
    """
    probe = _ProbeHead(model, aux).to(dist.device)
    n, k, d = feats_tr.shape
    flat = feats_tr.reshape(n * k, d)
    best = {"roc_auc": -1.0}
    best_state = copy.deepcopy(probe.state_dict())

    def step_fn(fwd, gen):
        pick = torch.randint(n * k, (loop.batch_size,), generator=gen, device=gen.device).to(flat.device)
        return StepOut(fwd(flat[pick], y_tr[pick // k]), n_views=len(pick))

    def eval_fn(step):
        nonlocal best, best_state
        with torch.no_grad():
            p = torch.sigmoid(probe(feats_va.reshape(-1, d)).float()).view(
                feats_va.shape[0], feats_va.shape[1], -1
            )
        m = tag_metrics(y_va.cpu().numpy(), _track_scores(p), tags)
        if m["roc_auc"] > best["roc_auc"]:
            best, best_state = m, copy.deepcopy(probe.state_dict())
        return {"valid_roc_auc": m["roc_auc"], "valid_pr_auc": m["pr_auc"]}

    history = run_loop(
        probe, step_fn, loop, out_dir, dist, eval_fn=eval_fn, resume=False, desc="probe", progress=progress
    )
    probe.load_state_dict(best_state)
    return best, history


def finetune(
    model: ResNetTagger,
    logmel: LogMel,
    bank: AudioBank,
    train_idx: np.ndarray,
    valid_idx: np.ndarray,
    loop: LoopSpec,
    augment: AugmentSpec,
    backbone_lr_scale: float,
    crops_per_track: int,
    out_dir: Path,
    dist: Dist,
    resume: bool = True,
    progress: bool = True,
) -> tuple[dict, list[dict]]:
    """Train the whole model on random (augmented) crops of the labelled tracks with BCE.

    Evaluates on validation every ``loop.eval_every`` steps and keeps the best weights
    (``out_dir/best.safetensors``, so a resumed run keeps them too), loaded back at the end.
    """
    from safetensors.torch import load_file, save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    best_path = out_dir / "best.safetensors"
    model.head.requires_grad_(True)
    model.to(dist.device)
    pool = torch.as_tensor(np.asarray(train_idx, dtype=np.int64), device=bank.device)
    per_rank = max(2, loop.batch_size // dist.world)
    window = logmel.spec.window_samples
    labels = bank.labels
    best = {"roc_auc": -1.0}

    def step_fn(fwd, gen):
        pick = pool[torch.randint(len(pool), (per_rank,), generator=gen, device=gen.device).to(bank.device)]
        views, _ = sample_views(bank, per_rank, 1, window, 0, gen, augment.pitch_semitones, tracks=pick)
        mel = augment_mel(logmel(augment_wave(views[0], bank, augment, gen)), augment, gen)
        logits, emb = fwd(mel)
        return StepOut(
            F.binary_cross_entropy_with_logits(logits.float(), labels[pick]), emb, n_views=per_rank
        )

    def eval_fn(step):
        nonlocal best
        probs, _ = predict_tracks(model, logmel, bank, valid_idx, crops_per_track)
        m = tag_metrics(labels[torch.as_tensor(valid_idx)].cpu().numpy(), probs, bank.tags)
        prev = max([h.get("valid_roc_auc", -1.0) for h in history_ref] + [best["roc_auc"]])
        if m["roc_auc"] > prev and dist.is_main:
            save_file(
                {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(best_path)
            )
        best = m if m["roc_auc"] > best["roc_auc"] else best
        return {"valid_roc_auc": m["roc_auc"], "valid_pr_auc": m["pr_auc"]}

    history_ref: list[dict] = []
    if resume and (out_dir / "history.json").exists():
        import json

        history_ref = json.loads((out_dir / "history.json").read_text())

    def scale(name: str) -> float:
        return 1.0 if name.startswith(("head.", "embed.")) else backbone_lr_scale

    history = run_loop(
        model,
        step_fn,
        loop,
        out_dir,
        dist,
        eval_fn=eval_fn,
        lr_scale=scale,
        resume=resume,
        desc="finetune",
        progress=progress,
    )
    if best_path.exists():
        model.load_state_dict(load_file(str(best_path), device=str(dist.device)))
    evals = [h for h in history if "valid_roc_auc" in h]
    return {"valid_roc_auc": max((h["valid_roc_auc"] for h in evals), default=float("nan"))}, history


def predict_tracks(
    model: ResNetTagger, logmel: LogMel, bank: AudioBank, idx: np.ndarray, k: int, batch: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """Track-level probabilities ``(n, T)`` (mean over ``k`` crops) and embeddings ``(n, D)``."""
    model.eval()
    tracks, starts = crop_grid(bank, idx, k, logmel.spec.window_samples)
    probs, embs = [], []
    with torch.no_grad():
        for i in range(0, len(tracks), batch):
            mel = logmel(
                gather_crops(bank, tracks[i : i + batch], starts[i : i + batch], logmel.spec.window_samples)
            )
            logits, emb = model(mel)
            probs.append(torch.sigmoid(logits.float()))
            embs.append(emb.float())
    p = torch.cat(probs).view(len(idx), k, -1).mean(1)
    e = torch.cat(embs).view(len(idx), k, -1).mean(1)
    return p.cpu().numpy(), e.cpu().numpy()
