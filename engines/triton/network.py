"""The tagger network as a few fused Triton kernels: NHWC, fp16/bf16, BatchNorm folded.

cuDNN runs every convolution, BatchNorm, ReLU and residual add of this narrow network (32–256
channels) as its own kernel, and at large batch those passes over memory, not the tensor cores,
set the speed. Here the stem is one kernel (kernels_stem.py), every other convolution is one
implicit GEMM with bias, residual, ReLU and the 1×1 shortcut fused (kernels_conv.py), and the
pooled tail and the two linear layers run in torch, in float32 (a few MB at any batch).

Which launch configuration each layer uses is a :class:`~engines.triton.tiles.TilePlan`, chosen
per batch size by :func:`engines.triton.tune.tune_plan` and cached by the backend
(:mod:`engines.triton.backend`).
"""

from __future__ import annotations

import torch

from engines.triton.launch import conv_cudnn, conv_nhwc, stem_nhwc
from engines.triton.packing import (
    FoldedBlock,
    fold_resnet,
    oihw_weight,
    pack_shortcut,
    pack_weight,
    stem_rows_weight,
)
from engines.triton.tiles import CUDNN, TILE_CANDIDATES, TilePlan

__all__ = ["FusedResNet"]


class FusedResNet:
    """A ``ResNetTagger`` run by the fused kernels; call it with log-mel ``(B, n_mels, frames)``.

    Returns ``(logits, embedding)`` in float32, like the torch model. The input may be float32 or
    the network's dtype: the stem converts as it loads. ``plan`` (default: every layer's default
    tile) says which configuration each layer launches with.

    Args:
        model: a ``ResNetTagger``; its width must be a multiple of 16 (``tl.dot``'s smallest tile side).
        device: where the weights go (``"cuda"``, or ``"cpu"`` under Triton's interpreter).
        dtype: the activations' dtype (bf16/fp16 on a GPU; float32 in the interpreter).
        cudnn_candidates: also prepare the weights that :data:`~engines.triton.tiles.CUDNN` needs.
        stem_precision: the stem's operand precision (default: :func:`~engines.triton.launch.stem_precision`).
    """

    def __init__(
        self,
        model,
        device,
        dtype: torch.dtype = torch.bfloat16,
        cudnn_candidates: bool = False,
        stem_precision: str | None = None,
    ) -> None:
        if model.spec.width % 16:
            # tl.dot needs every tile side ≥ 16, and channels come in width × 2^i
            raise ValueError(
                f"fused Triton kernels need a model width that is a multiple of 16, not {model.spec.width}"
            )
        folded = fold_resnet(model.eval())
        self.dtype = dtype
        self.plan = TilePlan()

        def to_k(t):  # kernel-side weights
            return t.to(device, dtype).contiguous()

        def to_f(t):  # biases, the stem's weight, the tail
            return t.to(device, torch.float32).contiguous()

        self.norm_scale, self.norm_shift = folded["norm"]
        stem_w = torch.zeros(16, folded["stem"][0].shape[1], dtype=torch.float64)
        stem_w[:9] = folded["stem"][0]  # taps padded to the tensor cores' K of 16
        self.stem_w, self.stem_b = to_f(stem_w), to_f(folded["stem"][1])
        self.stem_w_rows = to_f(stem_rows_weight(stem_w))
        self.blocks = [
            FoldedBlock(
                to_k(b.w1), to_f(b.b1), to_k(b.w2), to_f(b.b2), b.stride, None if b.ws is None else to_k(b.ws)
            )
            for b in folded["blocks"]
        ]
        # Every block's weights for every pack a candidate tile uses, made now so that nothing is
        # computed while a CUDA graph is being captured: packed[i][pack] = (w1, b1, w2, b2, ws).
        # Packing only copies and zero-fills, so it works on the kernel-side tensors.
        self.packed = [
            {
                pack: (
                    pack_weight(b.w1, 3, b.stride, pack),
                    b.b1.repeat(pack),
                    pack_weight(b.w2, 3, 1, pack),
                    b.b2.repeat(pack),
                    None if b.ws is None else pack_shortcut(b.ws, pack),
                )
                for pack in sorted({1} | {t.pack for t in TILE_CANDIDATES})
            }
            for b in self.blocks
        ]
        self.emb_w, self.emb_b = (to_f(t) for t in folded["embed"])
        self.head_w, self.head_b = (to_f(t) for t in folded["head"])
        self.stem_precision = stem_precision
        # The CUDNN candidate's weights: (C_out, C_in, k, k) channels_last, biases in the activations' dtype.
        self.cudnn = None
        if cudnn_candidates:

            def to_4d(w, k):
                return oihw_weight(w, k).to(device, dtype).to(memory_format=torch.channels_last)

            self.cudnn = [
                {
                    "w1": to_4d(b.w1, 3),
                    "b1": b.b1.to(device, dtype),
                    "w2": to_4d(b.w2, 3),
                    "b2": b.b2.to(device, dtype),
                    "ws": None if b.ws is None else to_4d(b.ws, 1),
                }
                for b in folded["blocks"]
            ]

    def stem(self, mel: torch.Tensor, config: tuple[int, int, str] | None = None) -> torch.Tensor:
        config = config or self.plan.stem
        return stem_nhwc(
            mel.contiguous(),
            self.stem_w_rows if config[2] == "rows" else self.stem_w,
            self.stem_b,
            self.norm_scale,
            self.norm_shift,
            self.dtype,
            config,
            self.stem_precision,
        )

    def _need_cudnn(self, tile) -> None:
        if tile == CUDNN and self.cudnn is None:
            raise ValueError("this plan uses cuDNN candidates: build FusedResNet with cudnn_candidates=True")

    def conv1(self, i: int, y: torch.Tensor, tile) -> torch.Tensor:
        """Block ``i``'s first convolution (bias, ReLU) with ``tile`` (a Tile, CUDNN or None)."""
        blk = self.blocks[i]
        self._need_cudnn(tile)
        if tile == CUDNN:
            c = self.cudnn[i]
            return conv_cudnn(y, c["w1"], c["b1"], blk.stride)
        w1, b1, _, _, _ = self.packed[i][tile.pack if tile else 1]
        return conv_nhwc(y, w1, b1, 3, blk.stride, tile=tile)

    def conv2(self, i: int, h: torch.Tensor, y: torch.Tensor, tile) -> torch.Tensor:
        """Block ``i``'s second convolution plus its residual (``y``) or projected shortcut."""
        blk = self.blocks[i]
        self._need_cudnn(tile)
        if tile == CUDNN:
            c = self.cudnn[i]
            if blk.ws is None:
                return conv_cudnn(h, c["w2"], c["b2"], 1, residual=y)
            return conv_cudnn(h, c["w2"], c["b2"], 1, shortcut=(y, c["ws"], blk.stride))
        _, _, w2, b2, ws = self.packed[i][tile.pack if tile else 1]
        if ws is None:
            return conv_nhwc(h, w2, b2, 3, 1, residual=y, tile=tile)
        return conv_nhwc(h, w2, b2, 3, 1, shortcut=(y, ws, blk.stride), tile=tile)

    def __call__(self, mel: torch.Tensor, plan: TilePlan | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        plan = plan or self.plan
        y = self.stem(mel, plan.stem)
        for i in range(len(self.blocks)):
            y = self.conv2(i, self.conv1(i, y, plan.conv(i, 0)), y, plan.conv(i, 1))
        f = y.mean(dim=1, dtype=torch.float32)  # over frequency → (B, T, C), no float32 copy of y
        z = torch.cat([f.mean(dim=1), f.amax(dim=1)], dim=1)
        emb = torch.relu(z @ self.emb_w.T + self.emb_b)
        return emb @ self.head_w.T + self.head_b, emb
