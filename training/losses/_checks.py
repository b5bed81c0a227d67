"""Input checks shared by the losses: degenerate batches fail loudly instead of returning NaN."""

from __future__ import annotations

import torch

__all__ = ["check_pair"]


def check_pair(z_a: torch.Tensor, z_b: torch.Tensor, min_batch: int = 2) -> None:
    """Both views must be ``(B, D)`` with the same shape and ``B >= min_batch``."""
    if z_a.ndim != 2 or z_b.ndim != 2:
        raise ValueError(
            f"expected (batch, dim) tensors, got shapes {tuple(z_a.shape)} and {tuple(z_b.shape)}"
        )
    if z_a.shape != z_b.shape:
        raise ValueError(f"view shapes differ: {tuple(z_a.shape)} vs {tuple(z_b.shape)}")
    if z_a.shape[0] < min_batch:
        raise ValueError(f"batch size {z_a.shape[0]} is too small; this loss needs at least {min_batch}")
