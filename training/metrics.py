"""Tagging metrics (scikit-learn), threshold calibration, and collapse indicators for SSL.

Macro numbers average over tags whose evaluation set holds both positives and negatives; tags
that do not are listed in ``skipped`` rather than silently scored.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

__all__ = ["tag_metrics", "calibrate_thresholds", "embedding_std", "effective_rank"]


def tag_metrics(y_true: np.ndarray, y_score: np.ndarray, tags: list[str]) -> dict:
    """Per-tag and macro ROC-AUC and PR-AUC (average precision).

    Args:
        y_true: ``(N, T)`` binary labels.
        y_score: ``(N, T)`` scores (probabilities).
        tags: ``T`` tag names.

    Returns:
        ``{"roc_auc": macro, "pr_auc": macro, "per_tag": {tag: {...}}, "skipped": [...], "n": N}``.
    """
    y_true = np.asarray(y_true) > 0.5
    y_score = np.asarray(y_score, dtype=np.float64)
    per_tag, skipped = {}, []
    for j, tag in enumerate(tags):
        pos = int(y_true[:, j].sum())
        if pos == 0 or pos == len(y_true):
            skipped.append(tag)
            continue
        per_tag[tag] = {
            "roc_auc": float(roc_auc_score(y_true[:, j], y_score[:, j])),
            "pr_auc": float(average_precision_score(y_true[:, j], y_score[:, j])),
            "positives": pos,
        }
    if not per_tag:
        return {
            "roc_auc": float("nan"),
            "pr_auc": float("nan"),
            "per_tag": {},
            "skipped": skipped,
            "n": len(y_true),
        }
    return {
        "roc_auc": float(np.mean([m["roc_auc"] for m in per_tag.values()])),
        "pr_auc": float(np.mean([m["pr_auc"] for m in per_tag.values()])),
        "per_tag": per_tag,
        "skipped": skipped,
        "n": len(y_true),
    }


def calibrate_thresholds(y_true: np.ndarray, y_score: np.ndarray, default: float = 0.5) -> list[float]:
    """Per-tag threshold maximising F1 on validation data (``default`` where a tag has no positives)."""
    y_true = np.asarray(y_true) > 0.5
    out = []
    for j in range(y_true.shape[1]):
        if not y_true[:, j].any() or y_true[:, j].all():
            out.append(default)
            continue
        prec, rec, thr = precision_recall_curve(y_true[:, j], y_score[:, j])
        f1 = 2 * prec[:-1] * rec[:-1] / np.maximum(prec[:-1] + rec[:-1], 1e-12)
        out.append(float(np.clip(thr[int(np.argmax(f1))], 1e-4, 1 - 1e-4)))
    return out


@torch.no_grad()
def embedding_std(emb: torch.Tensor) -> float:
    """Mean per-dimension std of L2-normalised embeddings: → 0 on collapse, ≈ 1/√D when healthy."""
    z = torch.nn.functional.normalize(emb.float(), dim=1)
    return float(z.std(dim=0).mean())


@torch.no_grad()
def effective_rank(emb: torch.Tensor, eps: float = 1e-7) -> float:
    """exp(entropy) of the normalised singular values (RankMe): 1 on collapse, up to min(B, D)."""
    s = torch.linalg.svdvals(emb.float())
    p = s / (s.sum() + eps) + eps
    return float(torch.exp(-(p * p.log()).sum()))
