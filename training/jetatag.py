"""Optional joint tag embedding stage (the JETATAG idea): a tag autoencoder learns a space where
co-occurring tags sit together; a projection head pulls each audio embedding to the code of its
own tags. Used as an auxiliary objective of the probe, so the shipped predictor stays the ResNet's
own head and the bundle format does not change. The probe stage reports the result with and
without it, side by side.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.heads import ProjectionHead

__all__ = ["TagAutoencoder", "JetatagAux", "fit_tag_autoencoder"]


class TagAutoencoder(nn.Module):
    """Multi-hot tags ``(B, T)`` → unit-norm code ``(B, d)`` → tag logits ``(B, T)``."""

    def __init__(self, n_tags: int, tag_dim: int = 64, hidden: int = 256) -> None:
        super().__init__()
        self.enc = ProjectionHead([(n_tags, hidden, False, True), (hidden, tag_dim, False, False)])
        self.dec = ProjectionHead([(tag_dim, hidden, False, True), (hidden, n_tags, False, False)])

    def encode(self, y: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.enc(y), dim=-1)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.dec(self.encode(y))


def fit_tag_autoencoder(
    y: torch.Tensor, tag_dim: int, steps: int = 500, lr: float = 3e-3, seed: int = 0
) -> TagAutoencoder:
    """Train the autoencoder to reconstruct the training label vectors (with tag dropout, so the
    code has to use co-occurrence), then freeze it."""
    g = torch.Generator(device=y.device).manual_seed(seed)
    torch.manual_seed(seed)
    ae = TagAutoencoder(y.shape[1], tag_dim).to(y.device)
    opt = torch.optim.Adam(ae.parameters(), lr=lr)
    for _ in range(steps):
        batch = y[torch.randint(len(y), (min(256, len(y)),), generator=g, device=y.device)]
        keep = (torch.rand(batch.shape, generator=g, device=y.device) > 0.2).float()
        loss = F.binary_cross_entropy_with_logits(ae(batch * keep), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return ae.eval().requires_grad_(False)


class JetatagAux(nn.Module):
    """Auxiliary loss ``aux(audio_embedding, labels)``: cosine alignment of the projected audio
    embedding with the frozen tag code, plus tag reconstruction through the frozen decoder."""

    def __init__(self, ae: TagAutoencoder, embed_dim: int, tag_dim: int, weight: float = 1.0) -> None:
        super().__init__()
        self.ae = ae
        self.proj = ProjectionHead([(embed_dim, 256, True, True), (256, tag_dim, False, False)])
        self.weight = weight

    def forward(self, emb: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z_audio = F.normalize(self.proj(emb).float(), dim=-1)
        with torch.no_grad():
            z_tags = self.ae.encode(y)
        align = (2 - 2 * (z_audio * z_tags).sum(-1)).mean()
        recon = F.binary_cross_entropy_with_logits(self.ae.dec(z_audio), y)
        return self.weight * (align + recon)
