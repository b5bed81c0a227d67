"""Masked, per-group binary cross-entropy: one loss for hard labels, soft targets and distillation.

For a unit with a hard label (objective tags, music) the target is 0/1; for a distilled unit it is
the teacher's probability (BCE against a soft target = distillation with temperature 1). Units a
window's source does not label have mask 0 and add nothing. Each group's loss is the mean over its
labelled (window, unit) pairs, so a group's weight does not depend on how many units it has or how
often it is labelled in a batch; the total is the weighted sum over groups present in the batch.

With ``logit_mse`` > 0 a soft target (strictly between 0 and 1: a teacher's probability) also adds
that weight times the squared error between the logit and the target's log-odds. Why: BCE's
gradient is ``sigmoid(z) - p``, which hardly separates a teacher's 0.01 from its 0.05, yet most
windows of a genre tag sit in that range and the distilled tags are scored by rank (Spearman); in
log-odds those differ by 1.6.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["group_index", "masked_group_bce", "binary_js", "soft_bce", "SOFT_EPS"]

SOFT_EPS = 1e-3  # soft targets are clamped to [SOFT_EPS, 1 - SOFT_EPS] before their log-odds


def group_index(groups: list[str]) -> tuple[list[str], torch.Tensor]:
    """``(names, index)``: the distinct groups in first-seen order and each unit's group number."""
    names = list(dict.fromkeys(groups))
    return names, torch.tensor([names.index(g) for g in groups], dtype=torch.int64)


def masked_group_bce(
    logits: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    unit_group: torch.Tensor,
    group_weight: torch.Tensor,
    logit_mse: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted sum over groups of the mean BCE over labelled pairs.

    Args:
        logits, target, mask: ``(B, T)``; ``mask`` 1 where labelled, 0 elsewhere.
        unit_group: ``(T,)`` group number of each unit.
        group_weight: ``(G,)`` weight of each group.
        logit_mse: weight of the log-odds squared error on soft targets (0: BCE only).

    Returns:
        (total loss, per-group mean losses ``(G,)``, NaN for a group without labels in the batch).
    """
    z, p = logits.float(), target.float()
    per = F.binary_cross_entropy_with_logits(z, p, reduction="none")
    if logit_mse > 0:
        soft = (p > 0) & (p < 1)
        odds = torch.logit(p.clamp(SOFT_EPS, 1 - SOFT_EPS))
        per = per + logit_mse * torch.where(soft, (z - odds) ** 2, torch.zeros_like(z))
    per = per * mask
    n_groups = group_weight.shape[0]
    onehot = F.one_hot(unit_group.to(logits.device), n_groups).float()  # (T, G)
    loss_sum = per.sum(dim=0) @ onehot  # (G,)
    count = mask.sum(dim=0) @ onehot
    mean = loss_sum / count.clamp_min(1.0)
    present = count > 0
    total = (mean * group_weight.to(mean.device) * present).sum()
    return total, torch.where(present, mean, torch.full_like(mean, float("nan")))


def binary_js(logits_a: torch.Tensor, logits_b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean Jensen-Shannon divergence (nats, at most ln 2) between the per-unit Bernoulli outputs
    of two views of the same windows, over the pairs where ``mask`` is 1; 0 without any.

    Both views take gradients (as AugMix's consistency term, Hendrycks et al. 2020): each is pulled
    to their mixture, so what a channel changes in a window stops changing the tags."""
    a, b = logits_a.float(), logits_b.float()
    p, q = torch.sigmoid(a), torch.sigmoid(b)
    m = 0.5 * (p + q)
    log_m, log_1m = torch.log(m.clamp_min(1e-7)), torch.log((1 - m).clamp_min(1e-7))

    def kl_to_m(z: torch.Tensor, pz: torch.Tensor) -> torch.Tensor:  # KL(Bernoulli(pz) || Bernoulli(m))
        return pz * (F.logsigmoid(z) - log_m) + (1 - pz) * (F.logsigmoid(-z) - log_1m)

    js = 0.5 * (kl_to_m(a, p) + kl_to_m(b, q))
    return (js * mask).sum() / mask.sum().clamp_min(1.0)


def soft_bce(logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of the student's outputs against a teacher model's probabilities on
    the same inputs, over every window and unit (knowledge distillation at temperature 1, Hinton et
    al. 2015); its gradient is ``sigmoid(z) - sigmoid(t)``, 0 where the two agree."""
    return F.binary_cross_entropy_with_logits(logits.float(), torch.sigmoid(teacher_logits.float()))
