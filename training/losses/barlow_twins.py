"""Barlow Twins loss [0]: the views' cross-correlation matrix is pushed towards the identity.

[0] Zbontar et al., Barlow Twins: Self-Supervised Learning via Redundancy Reduction, 2021.
    https://arxiv.org/abs/2103.03230
"""

from __future__ import annotations

import torch
from torch import nn

from training.losses._checks import check_pair

__all__ = ["BarlowTwinsLoss", "cross_correlation"]


def cross_correlation(z_a: torch.Tensor, z_b: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Cross-correlation ``(D, D)`` of the batch-standardised views (b: batch, i/j: features)."""
    z_a = z_a.float()
    z_b = z_b.float()
    z_a = (z_a - z_a.mean(0)) / (z_a.std(0) + eps)
    z_b = (z_b - z_b.mean(0)) / (z_b.std(0) + eps)
    return torch.einsum("bi,bj->ij", z_a, z_b) / z_a.shape[0]


class BarlowTwinsLoss(nn.Module):
    """Invariance (diagonal → 1) plus ``lambda_param`` × redundancy reduction (off-diagonal → 0).

    Args:
        lambda_param: weight of the off-diagonal term (Default: ``5e-3``).

    >>> loss = BarlowTwinsLoss()(torch.randn(8, 32), torch.randn(8, 32))
    """

    def __init__(self, lambda_param: float = 5e-3) -> None:
        super().__init__()
        self.lambda_param = lambda_param

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        check_pair(z_a, z_b)
        c = cross_correlation(z_a, z_b)
        on_diag = (torch.diagonal(c) - 1).pow(2).sum()
        off_diag = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
        return on_diag + self.lambda_param * off_diag
