"""The tagger architecture as data: what every bundle stores so the network can be rebuilt.

Kept apart from :mod:`engines.model` so that reading a bundle's manifest does not import torch
(about 600 MB of resident memory, which the ONNX Runtime path never needs).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ModelSpec"]


class ModelSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    arch: str = Field("resnet", pattern="^resnet$")
    width: int = Field(32, gt=0, description="channels of the first stage; doubled at each stage")
    blocks: tuple[int, ...] = Field((2, 2, 2, 2), min_length=1)
    embed_dim: int = Field(256, gt=0)
    n_tags: int = Field(..., gt=0)
