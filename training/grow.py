"""Start a wider tagger from a narrower one's weights, computing exactly what the narrow one did.

The wide network keeps every channel of the narrow one where it was and adds new ones. The new
channels start from the wide network's own random init and read every input; the old channels'
weights on the new inputs start at zero, so at the start the old channels, the embedding and the
tags are the narrow network's, while the new channels are there for training to use (their
outgoing zeros get gradients as soon as the loss moves). A zero-init expansion, as in Net2Net's
"function-preserving" growth, without duplicating channels.

Only the channel counts may differ (``width``, with the same ``blocks``, ``embed_dim`` and head):
a ResNet whose stage ``i`` has ``width * 2**i`` channels.
"""

from __future__ import annotations

import torch

from engines.model import ResNetTagger

__all__ = ["grow_state"]


def _embed_input_index(narrow_c: int, wide_c: int) -> torch.Tensor:
    """Where the narrow embedding's inputs sit in the wide one: the pooled features are
    ``[mean over time (C), max over time (C)]``, so the narrow max block moves to ``wide_c``."""
    return torch.cat([torch.arange(narrow_c), wide_c + torch.arange(narrow_c)])


def grow_state(model: ResNetTagger, narrow: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``narrow`` (a narrower network's state, or part of it) laid into ``model`` (the wide
    network, freshly initialised): for each of its tensors, the wide tensor that computes what the
    narrow one did, plus the new channels described above.

    Raises ``ValueError`` when a tensor has no wide counterpart or is larger than it.
    """
    wide = model.state_dict()
    narrow_c = narrow["embed.0.weight"].shape[1] // 2 if "embed.0.weight" in narrow else 0
    out: dict[str, torch.Tensor] = {}
    for key, n in narrow.items():
        if key not in wide:
            raise ValueError(f"grow: {key} is not in the wide model")
        w = wide[key]
        if n.dim() != w.dim() or any(a > b for a, b in zip(n.shape, w.shape, strict=True)):
            raise ValueError(f"grow: {key} is {tuple(n.shape)}, larger than the wide {tuple(w.shape)}")
        if n.shape == w.shape:
            g = n.clone()
        elif key == "embed.0.weight":  # Linear(2C → embed_dim): old rows read only the old features
            g = w.clone()
            g[: n.shape[0]] = 0
            g[: n.shape[0], _embed_input_index(narrow_c, model.feature_dim)] = n
        elif n.dim() >= 2:  # conv (out, in, k, k): old outputs read zeros from the new inputs
            g = w.clone()
            g[: n.shape[0]] = 0
            g[: n.shape[0], : n.shape[1]] = n
        else:  # BatchNorm weight / bias / running statistics of the old channels
            g = w.clone()
            g[: n.shape[0]] = n
        out[key] = g
    return out
