"""Tagging metrics (scikit-learn), threshold calibration, and collapse indicators for SSL.

Macro numbers average over tags whose evaluation set holds both positives and negatives; tags
that do not (or that the evaluation corpus does not label at all) are listed in ``skipped``
rather than silently dropped. When the tags are mutually exclusive classes, :func:`class_metrics`
adds accuracy, per-class precision / recall / F1 and the confusion matrix.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

__all__ = [
    "tag_metrics",
    "scored_metrics",
    "class_metrics",
    "calibrate_thresholds",
    "unscorable",
    "embedding_std",
    "effective_rank",
]


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


def scored_metrics(y_true: np.ndarray, y_score: np.ndarray, tags: list[str], classes: bool = False) -> dict:
    """:func:`tag_metrics` where labels of −1 mean "this corpus does not label the tag" (skipped too);
    with ``classes``, also :func:`class_metrics` under ``"classes"``."""
    y_true = np.asarray(y_true)
    known = [j for j in range(len(tags)) if (y_true[:, j] >= 0).all()]
    m = tag_metrics(y_true[:, known], np.asarray(y_score)[:, known], [tags[j] for j in known])
    m["skipped"] = [tags[j] for j in range(len(tags)) if j not in known] + m["skipped"]
    if classes:
        m["classes"] = class_metrics(y_true, y_score, tags)
    return m


def class_metrics(y_true: np.ndarray, y_score: np.ndarray, tags: list[str]) -> dict:
    """Accuracy, per-class F1 and confusion matrix when each track has exactly one tag (a class).

    Tracks without exactly one known positive are not counted; the prediction is the top score.
    """
    y_true = np.asarray(y_true)
    rows = np.flatnonzero((y_true > 0.5).sum(axis=1) == 1)
    truth = np.argmax(y_true[rows] > 0.5, axis=1)
    pred = np.argmax(np.asarray(y_score)[rows], axis=1)
    n = len(tags)
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (truth, pred), 1)
    per_class = {}
    for j, tag in enumerate(tags):
        tp, support, predicted = int(cm[j, j]), int(cm[j].sum()), int(cm[:, j].sum())
        prec = tp / predicted if predicted else 0.0
        rec = tp / support if support else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        per_class[tag] = {"precision": prec, "recall": rec, "f1": f1, "support": support}
    scored = [m["f1"] for m in per_class.values() if m["support"]]
    return {
        "accuracy": float((truth == pred).mean()) if len(rows) else float("nan"),
        "macro_f1": float(np.mean(scored)) if scored else float("nan"),
        "per_class": per_class,
        "confusion": cm.tolist(),
        "labels": list(tags),
        "n": int(len(rows)),
    }


def unscorable(y_true: np.ndarray) -> list[int]:
    """Columns without both a positive and a negative (no threshold or AUC can be fitted there)."""
    y = np.asarray(y_true) > 0.5
    return [j for j in range(y.shape[1]) if not y[:, j].any() or y[:, j].all()]


def calibrate_thresholds(y_true: np.ndarray, y_score: np.ndarray, default: float = 0.5) -> list[float]:
    """Per-tag threshold maximising F1 on validation data (``default`` where a tag has no positives)."""
    skip = set(unscorable(y_true))
    y_true = np.asarray(y_true) > 0.5
    out = []
    for j in range(y_true.shape[1]):
        if j in skip:
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
