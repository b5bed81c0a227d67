"""VICReg loss [0]: invariance, variance and covariance terms.

[0] Bardes et al., VICReg: Variance-Invariance-Covariance Regularization for Self-Supervised
    Learning, 2022. https://arxiv.org/abs/2105.04906
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.losses._checks import check_pair

__all__ = ["VICRegLoss", "invariance_loss", "variance_loss", "covariance_loss"]


def invariance_loss(z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
    """Mean squared distance between the two views."""
    return F.mse_loss(z_a, z_b)


def variance_loss(z: torch.Tensor, gamma: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """Hinge on each feature's standard deviation over the batch (keeps it above ``gamma``)."""
    std = torch.sqrt(z.var(dim=0) + eps)
    return F.relu(gamma - std).mean()


def covariance_loss(z: torch.Tensor) -> torch.Tensor:
    """Sum of squared off-diagonal covariances over the feature count."""
    b, d = z.shape
    z = z - z.mean(dim=0)
    cov = torch.einsum("bi,bj->ij", z, z) / (b - 1)  # b: batch, i/j: features
    off = cov.pow(2).sum() - torch.diagonal(cov).pow(2).sum()
    return off / d


class VICRegLoss(nn.Module):
    """Weighted sum of the three terms with the paper's defaults (25, 25, 1).

    >>> loss = VICRegLoss()(torch.randn(8, 32), torch.randn(8, 32))
    """

    def __init__(
        self,
        lambda_param: float = 25.0,
        mu_param: float = 25.0,
        nu_param: float = 1.0,
        gamma: float = 1.0,
        eps: float = 1e-4,
    ) -> None:
        super().__init__()
        self.lambda_param, self.mu_param, self.nu_param = lambda_param, mu_param, nu_param
        self.gamma, self.eps = gamma, eps

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        check_pair(z_a, z_b)
        z_a, z_b = z_a.float(), z_b.float()
        inv = invariance_loss(z_a, z_b)
        var = 0.5 * (variance_loss(z_a, self.gamma, self.eps) + variance_loss(z_b, self.gamma, self.eps))
        cov = covariance_loss(z_a) + covariance_loss(z_b)
        return self.lambda_param * inv + self.mu_param * var + self.nu_param * cov
