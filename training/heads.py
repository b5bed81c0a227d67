"""Projection and prediction heads of the pretexts (lightly's ProjectionHead layout).

Heads sit on top of :meth:`engines.model.ResNetTagger.backbone`; they are used only during
pretraining and are never saved in a model bundle.
"""

from __future__ import annotations

from torch import nn

__all__ = [
    "ProjectionHead",
    "SimCLRProjectionHead",
    "BYOLProjectionHead",
    "BYOLPredictionHead",
    "DINOProjectionHead",
    "BarlowTwinsProjectionHead",
    "VICRegProjectionHead",
]


class ProjectionHead(nn.Module):
    """A stack of ``(in, out, batch_norm, activation)`` blocks, each Linear → [BN] → [act]."""

    def __init__(self, blocks: list[tuple[int, int, bool, bool]]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for d_in, d_out, batch_norm, activation in blocks:
            layers.append(nn.Linear(d_in, d_out, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(d_out))
            if activation:
                layers.append(nn.ReLU(inplace=True))
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)


class SimCLRProjectionHead(ProjectionHead):
    """SimCLR: 2-layer MLP with BN, ending without activation."""

    def __init__(self, d_in: int, hidden: int = 512, d_out: int = 128) -> None:
        super().__init__([(d_in, hidden, True, True), (hidden, d_out, False, False)])


class BYOLProjectionHead(ProjectionHead):
    """BYOL: Linear → BN → ReLU → Linear."""

    def __init__(self, d_in: int, hidden: int = 1024, d_out: int = 256) -> None:
        super().__init__([(d_in, hidden, True, True), (hidden, d_out, False, False)])


class BYOLPredictionHead(BYOLProjectionHead):
    """BYOL's predictor has the projector's shape, from projection space to itself."""

    def __init__(self, d_in: int = 256, hidden: int = 1024, d_out: int = 256) -> None:
        super().__init__(d_in, hidden, d_out)


class DINOProjectionHead(nn.Module):
    """DINO: 3-layer MLP to a bottleneck, L2 normalisation, then a weight-normalised prototype layer."""

    def __init__(
        self, d_in: int, hidden: int = 1024, bottleneck: int = 256, n_prototypes: int = 1024
    ) -> None:
        super().__init__()
        self.mlp = ProjectionHead(
            [(d_in, hidden, False, True), (hidden, hidden, False, True), (hidden, bottleneck, False, False)]
        )
        self.prototypes = nn.utils.parametrizations.weight_norm(
            nn.Linear(bottleneck, n_prototypes, bias=False)
        )

    def forward(self, x):
        return self.prototypes(nn.functional.normalize(self.mlp(x), dim=-1))


class BarlowTwinsProjectionHead(ProjectionHead):
    """Barlow Twins: three Linear layers, BN + ReLU between them."""

    def __init__(self, d_in: int, hidden: int = 1024, d_out: int = 1024) -> None:
        super().__init__(
            [(d_in, hidden, True, True), (hidden, hidden, True, True), (hidden, d_out, False, False)]
        )


class VICRegProjectionHead(BarlowTwinsProjectionHead):
    """VICReg's expander has the Barlow Twins projector's shape."""
