"""BYOL loss [0]: the online predictor regresses the EMA target's projection of the other view.

[0] Grill et al., Bootstrap Your Own Latent, 2020. https://arxiv.org/abs/2006.07733
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.losses._checks import check_pair

__all__ = ["BYOLLoss", "regression_term"]


def regression_term(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``2 - 2 cos(p, z)`` averaged over the batch; ``z`` is treated as a constant target."""
    return (2 - 2 * F.cosine_similarity(p.float(), z.detach().float(), dim=1)).mean()


class BYOLLoss(nn.Module):
    """Symmetric BYOL loss over two views.

    >>> loss_fn = BYOLLoss()
    >>> p_a, p_b, z_a, z_b = (torch.randn(8, 16) for _ in range(4))
    >>> loss = loss_fn(p_a, p_b, z_a, z_b)
    """

    def forward(
        self, p_a: torch.Tensor, p_b: torch.Tensor, z_a: torch.Tensor, z_b: torch.Tensor
    ) -> torch.Tensor:
        """Args:
        p_a, p_b: online predictions of views a and b, ``(B, D)``.
        z_a, z_b: target (EMA) projections of views a and b, ``(B, D)``.
        """
        check_pair(p_a, p_b, min_batch=1)
        check_pair(z_a, z_b, min_batch=1)
        return 0.5 * (regression_term(p_a, z_b) + regression_term(p_b, z_a))
