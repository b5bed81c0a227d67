"""The five pretexts, each a small module pairing the ResNet backbone with its heads and loss.

``forward(mels)`` takes the log-mel views ``[(B, n_mels, frames), ...]`` (V ≥ 2) and returns the
loss averaged over all view pairs plus the first view's backbone embeddings (for the collapse
indicators). ``after_step(step, total)`` updates EMA teachers where the method has one. The
tagging head of the ResNet is frozen during pretraining; heads here never enter a bundle.
"""

from __future__ import annotations

import copy
import itertools

import torch
from torch import nn

from engines.model import ResNetTagger
from training.ema import cosine_momentum, update_momentum
from training.heads import (
    BarlowTwinsProjectionHead,
    BYOLPredictionHead,
    BYOLProjectionHead,
    DINOProjectionHead,
    SimCLRProjectionHead,
    VICRegProjectionHead,
)
from training.losses import BarlowTwinsLoss, BYOLLoss, DINOLoss, NTXentLoss, VICRegLoss

__all__ = ["PRETEXTS", "Pretext", "build_pretext"]


class _Encoder(nn.Module):
    """Backbone embedding followed by a head (the online or the EMA branch)."""

    def __init__(self, model: ResNetTagger, head: nn.Module) -> None:
        super().__init__()
        self.model, self.head = model, head

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.model.backbone(mel)
        return emb, self.head(emb)


class Pretext(nn.Module):
    """Base: a joint-embedding method over V views; subclasses define ``pair_loss``."""

    name = "base"

    def __init__(self, model: ResNetTagger, head: nn.Module) -> None:
        super().__init__()
        model.head.requires_grad_(False)  # the tagging head is trained downstream
        self.online = _Encoder(model, head)

    @property
    def model(self) -> ResNetTagger:
        return self.online.model

    def encode(self, mels: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One backbone pass over all views stacked: embeddings of view 0 and each view's head output."""
        emb, out = self.online(torch.cat(mels))
        return emb[: mels[0].shape[0]], list(out.chunk(len(mels)))

    def pair_loss(self, outs: list[torch.Tensor], i: int, j: int, extra: dict) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, mels: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if len(mels) < 2:
            raise ValueError(f"{self.name} needs at least 2 views, got {len(mels)}")
        emb, outs = self.encode(mels)
        extra = self.extra_outputs(mels)
        pairs = list(itertools.combinations(range(len(mels)), 2))
        loss = sum(self.pair_loss(outs, i, j, extra) for i, j in pairs) / len(pairs)
        return loss, emb

    def extra_outputs(self, mels: list[torch.Tensor]) -> dict:
        return {}

    def after_step(self, step: int, total: int) -> None:
        pass


class Contrastive(Pretext):
    """SimCLR-style NT-Xent over a projection head."""

    name = "contrastive"

    def __init__(self, model: ResNetTagger, temperature: float = 0.1, proj_dim: int = 128) -> None:
        super().__init__(model, SimCLRProjectionHead(model.spec.embed_dim, 512, proj_dim))
        self.loss = NTXentLoss(temperature)

    def pair_loss(self, outs, i, j, extra):
        return self.loss(outs[i], outs[j])


class _Teacher(Pretext):
    """Methods with an EMA teacher (BYOL, DINO-style clustering)."""

    def __init__(self, model: ResNetTagger, head: nn.Module, m_start: float) -> None:
        super().__init__(model, head)
        self.teacher = copy.deepcopy(self.online).requires_grad_(False)
        self.m_start = m_start

    def extra_outputs(self, mels):
        with torch.no_grad():
            self.teacher.train(self.online.training)
            _, t = self.teacher(torch.cat(mels))
        return {"teacher": list(t.chunk(len(mels)))}

    def after_step(self, step: int, total: int) -> None:
        update_momentum(self.online, self.teacher, cosine_momentum(step, total, self.m_start, 1.0))


class BYOL(_Teacher):
    """BYOL: online projector + predictor regress the EMA target's projection."""

    name = "byol"

    def __init__(
        self, model: ResNetTagger, proj_dim: int = 256, hidden: int = 1024, m_start: float = 0.99
    ) -> None:
        super().__init__(model, BYOLProjectionHead(model.spec.embed_dim, hidden, proj_dim), m_start)
        self.predictor = BYOLPredictionHead(proj_dim, hidden, proj_dim)
        self.loss = BYOLLoss()

    def pair_loss(self, outs, i, j, extra):
        t = extra["teacher"]
        return self.loss(self.predictor(outs[i]), self.predictor(outs[j]), t[i], t[j])


class Clustering(_Teacher):
    """DINO-style: the student matches the centred, sharpened teacher prototypes."""

    name = "clustering"

    def __init__(
        self,
        model: ResNetTagger,
        n_prototypes: int = 1024,
        teacher_temp: float = 0.04,
        m_start: float = 0.996,
        center_momentum: float = 0.9,
    ) -> None:
        super().__init__(model, DINOProjectionHead(model.spec.embed_dim, 1024, 256, n_prototypes), m_start)
        self.loss = DINOLoss(n_prototypes, teacher_temp=teacher_temp, center_momentum=center_momentum)

    def pair_loss(self, outs, i, j, extra):
        t = extra["teacher"]
        self.loss.train(self.training)
        return self.loss(outs[i], outs[j], t[i], t[j])


class BarlowTwins(Pretext):
    name = "barlow_twins"

    def __init__(self, model: ResNetTagger, proj_dim: int = 1024, lambda_param: float = 5e-3) -> None:
        super().__init__(model, BarlowTwinsProjectionHead(model.spec.embed_dim, proj_dim, proj_dim))
        self.loss = BarlowTwinsLoss(lambda_param)

    def pair_loss(self, outs, i, j, extra):
        return self.loss(outs[i], outs[j])


class VICReg(Pretext):
    name = "vicreg"

    def __init__(self, model: ResNetTagger, proj_dim: int = 1024) -> None:
        super().__init__(model, VICRegProjectionHead(model.spec.embed_dim, proj_dim, proj_dim))
        self.loss = VICRegLoss()

    def pair_loss(self, outs, i, j, extra):
        return self.loss(outs[i], outs[j])


PRETEXTS: dict[str, type[Pretext]] = {c.name: c for c in (Contrastive, BYOL, Clustering, BarlowTwins, VICReg)}


def build_pretext(name: str, model: ResNetTagger, **kwargs) -> Pretext:
    """The pretext ``name`` around ``model`` (keyword arguments go to its constructor)."""
    if name not in PRETEXTS:
        raise KeyError(name)
    return PRETEXTS[name](model, **kwargs)
