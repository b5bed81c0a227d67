"""Exponential moving average of weights (BYOL / DINO teachers), as a free function."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["update_momentum", "cosine_momentum"]


@torch.no_grad()
def update_momentum(model: nn.Module, model_ema: nn.Module, m: float) -> None:
    """``ema ← m · ema + (1 − m) · model`` for parameters; buffers (BN statistics) are copied."""
    for p_ema, p in zip(model_ema.parameters(), model.parameters(), strict=True):
        p_ema.mul_(m).add_(p.detach(), alpha=1 - m)
    for b_ema, b in zip(model_ema.buffers(), model.buffers(), strict=True):
        b_ema.copy_(b)


def cosine_momentum(step: int, total: int, start: float = 0.99, end: float = 1.0) -> float:
    """BYOL's schedule: momentum rises from ``start`` to ``end`` along a half cosine."""
    if total <= 0:
        return end
    t = min(step, total) / total
    return end - (end - start) * (math.cos(math.pi * t) + 1) / 2
