"""The tagger network: a ResNet over log-mel giving an embedding and tag logits.

The architecture is described by :class:`ModelSpec`, which every bundle stores, so the runtime can
rebuild the network and load the safetensors weights without any training code.
Default (width 32, blocks 2-2-2-2, 96×192 input): ≈2.8 M parameters, ≈0.2 GFLOP per window.
"""

from __future__ import annotations

import torch
from torch import nn

from engines.model_spec import ModelSpec

__all__ = ["ModelSpec", "ResNetTagger", "BasicBlock"]


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + self.shortcut(x))


class ResNetTagger(nn.Module):
    """Log-mel ``(B, n_mels, frames)`` in dB → ``(logits (B, n_tags), embedding (B, embed_dim))``."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        w = spec.width
        # Input normalisation is learned (BatchNorm over the dB values) so bundles need no stats.
        self.input_norm = nn.BatchNorm2d(1)
        self.stem = nn.Sequential(
            nn.Conv2d(1, w, 3, 2, 1, bias=False),
            nn.BatchNorm2d(w),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        stages = []
        c_in = w
        for i, n_blocks in enumerate(spec.blocks):
            c_out = w * 2**i
            layers = [BasicBlock(c_in, c_out, 1 if i == 0 else 2)]
            layers += [BasicBlock(c_out, c_out, 1) for _ in range(n_blocks - 1)]
            stages.append(nn.Sequential(*layers))
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.feature_dim = c_in
        self.embed = nn.Sequential(
            nn.Linear(2 * c_in, spec.embed_dim), nn.BatchNorm1d(spec.embed_dim), nn.ReLU(inplace=True)
        )
        self.head = nn.Linear(spec.embed_dim, spec.n_tags)

    def backbone(self, mel: torch.Tensor) -> torch.Tensor:
        """Log-mel → pooled embedding ``(B, embed_dim)``."""
        x = self.input_norm(mel.unsqueeze(1))
        x = self.stages(self.stem(x))
        x = x.mean(dim=2)  # over frequency → (B, C, T)
        x = torch.cat([x.mean(dim=2), x.amax(dim=2)], dim=1)
        return self.embed(x)

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.backbone(mel)
        return self.head(emb), emb
