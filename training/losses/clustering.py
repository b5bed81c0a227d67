"""Clustering pretext in the DINO style [0]: the student matches the EMA teacher's prototype
assignments; the teacher's outputs are centred (a running mean, kept as a buffer) and sharpened
(low temperature), which together prevent collapse.

[0] Caron et al., Emerging Properties in Self-Supervised Vision Transformers, 2021.
    https://arxiv.org/abs/2104.14294
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.losses._checks import check_pair

__all__ = ["DINOLoss", "teacher_targets"]


def teacher_targets(teacher_out: torch.Tensor, center: torch.Tensor, temperature: float) -> torch.Tensor:
    """Centred, sharpened teacher distribution over prototypes, ``(B, K)``, no gradient."""
    return F.softmax((teacher_out.detach().float() - center) / temperature, dim=-1)


class DINOLoss(nn.Module):
    """Cross entropy between teacher targets of one view and student predictions of the other.

    Args:
        output_dim: number of prototypes ``K``.
        teacher_temp: teacher sharpening temperature (Default: ``0.04``).
        student_temp: student temperature (Default: ``0.1``).
        center_momentum: EMA momentum of the center (Default: ``0.9``).

    >>> loss_fn = DINOLoss(output_dim=64)
    >>> loss = loss_fn(torch.randn(8, 64), torch.randn(8, 64), torch.randn(8, 64), torch.randn(8, 64))
    """

    def __init__(
        self,
        output_dim: int,
        teacher_temp: float = 0.04,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
    ) -> None:
        super().__init__()
        if teacher_temp <= 0 or student_temp <= 0:
            raise ValueError("temperatures must be positive")
        self.teacher_temp, self.student_temp, self.center_momentum = (
            teacher_temp,
            student_temp,
            center_momentum,
        )
        self.register_buffer("center", torch.zeros(1, output_dim))

    def forward(
        self, s_a: torch.Tensor, s_b: torch.Tensor, t_a: torch.Tensor, t_b: torch.Tensor
    ) -> torch.Tensor:
        """Args: s_*: student outputs ``(B, K)``; t_*: teacher outputs ``(B, K)`` of views a and b.

        Updates the center from the teacher outputs after computing the loss (training mode only).
        """
        check_pair(s_a, s_b, min_batch=1)
        check_pair(t_a, t_b, min_batch=1)
        if s_a.shape[1] != self.center.shape[1]:
            raise ValueError(f"expected {self.center.shape[1]} prototypes, got {s_a.shape[1]}")
        ta = teacher_targets(t_a, self.center, self.teacher_temp)
        tb = teacher_targets(t_b, self.center, self.teacher_temp)
        la = -(tb * F.log_softmax(s_a.float() / self.student_temp, dim=-1)).sum(-1).mean()
        lb = -(ta * F.log_softmax(s_b.float() / self.student_temp, dim=-1)).sum(-1).mean()
        if self.training:
            self.update_center(torch.cat([t_a, t_b]))
        return 0.5 * (la + lb)

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        """EMA of the teacher's batch mean (averaged over processes under DDP)."""
        batch_center = teacher_out.float().mean(dim=0, keepdim=True)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(batch_center)
            batch_center /= torch.distributed.get_world_size()
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)
