"""Contrastive NT-Xent loss (SimCLR [0]).

[0] Chen et al., A Simple Framework for Contrastive Learning of Visual Representations, 2020.
    https://arxiv.org/abs/2002.05709
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.losses._checks import check_pair

__all__ = ["NTXentLoss", "similarity_logits"]


def similarity_logits(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cosine similarities of all ``2B`` embeddings with each other over ``temperature``, self-pairs masked.

    Returns:
        ``(2B, 2B)`` logits; row ``i`` holds sample ``i`` against every other sample.
    """
    z = F.normalize(torch.cat([z_a, z_b]).float(), dim=1)
    logits = z @ z.T / temperature  # (2B, 2B): n, m index all samples of both views
    eye = torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
    return logits.masked_fill(eye, float("-inf"))


class NTXentLoss(nn.Module):
    """Normalised temperature-scaled cross entropy over two views.

    Each sample's positive is the other view of the same track; the other ``2B - 2`` samples of the
    batch are its negatives.

    Args:
        temperature: softmax temperature (Default: ``0.1``).

    >>> loss_fn = NTXentLoss()
    >>> loss = loss_fn(torch.randn(8, 32), torch.randn(8, 32))
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        if temperature < 1e-8:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        """Args: z_a, z_b: projections of the two views, ``(B, D)``. Returns the scalar loss."""
        check_pair(z_a, z_b)
        b = z_a.shape[0]
        logits = similarity_logits(z_a, z_b, self.temperature)
        target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z_a.device)
        return F.cross_entropy(logits, target)
