"""Masked, per-group binary cross-entropy: one loss for hard labels, soft targets and distillation.

For a unit with a hard label (objective tags, music) the target is 0/1; for a distilled unit it is
the teacher's probability (BCE against a soft target = distillation with temperature 1). Units a
window's source does not label have mask 0 and add nothing. Each group's loss is the mean over its
labelled (window, unit) pairs, so a group's weight does not depend on how many units it has or how
often it is labelled in a batch; the total is the weighted sum over groups present in the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["group_index", "masked_group_bce"]


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted sum over groups of the mean BCE over labelled pairs.

    Args:
        logits, target, mask: ``(B, T)``; ``mask`` 1 where labelled, 0 elsewhere.
        unit_group: ``(T,)`` group number of each unit.
        group_weight: ``(G,)`` weight of each group.

    Returns:
        (total loss, per-group mean losses ``(G,)``, NaN for a group without labels in the batch).
    """
    per = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none") * mask
    n_groups = group_weight.shape[0]
    onehot = F.one_hot(unit_group.to(logits.device), n_groups).float()  # (T, G)
    loss_sum = per.sum(dim=0) @ onehot  # (G,)
    count = mask.sum(dim=0) @ onehot
    mean = loss_sum / count.clamp_min(1.0)
    present = count > 0
    total = (mean * group_weight.to(mean.device) * present).sum()
    return total, torch.where(present, mean, torch.full_like(mean, float("nan")))
