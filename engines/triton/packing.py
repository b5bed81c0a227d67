"""A ``ResNetTagger``'s weights laid out for the fused kernels: BatchNorm folded, taps packed.

Folding happens in float64 (:func:`fold_resnet`), before any cast to the kernels' half precision,
so nothing is rounded twice. The layouts:

- a convolution weight is ``(k²·C_in, C_out)``, rows in (kernel row, kernel column, input channel)
  order, the K order of :func:`engines.triton.kernels_conv.conv_kernel`;
- :func:`pack_weight` / :func:`pack_shortcut` widen it for tiles that compute ``pack`` adjacent
  output pixels per GEMM row;
- the stem's weight is ``(16, C)`` (9 taps padded to the tensor cores' K of 16), or
  :func:`stem_rows_weight` of that for the ``rows`` stem kernel;
- :func:`oihw_weight` turns a kernel-side weight back into torch's layout for the cuDNN candidate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "FoldedBlock",
    "fold_resnet",
    "oihw_weight",
    "pack_weight",
    "pack_shortcut",
    "stem_rows_weight",
]


def _bn_affine(bn) -> tuple[torch.Tensor, torch.Tensor]:
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    return scale, bn.bias.double() - bn.running_mean.double() * scale


def _fold_conv(conv, bn) -> tuple[torch.Tensor, torch.Tensor]:
    """Conv + BatchNorm → (weight (k²·C_in, C_out), bias (C_out)), folded in float64."""
    scale, shift = _bn_affine(bn)
    w = conv.weight.double() * scale[:, None, None, None]  # (C_out, C_in, k, k)
    c_out, c_in, k, _ = w.shape
    return w.permute(2, 3, 1, 0).reshape(k * k * c_in, c_out), shift


@dataclass
class FoldedBlock:
    w1: torch.Tensor
    b1: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor
    stride: int
    ws: torch.Tensor | None  # 1×1 shortcut weight (C_in, C_out), its bias already in b2


def fold_resnet(model) -> dict:
    """Every parameter of a ``ResNetTagger`` in eval mode, BatchNorm folded (float64 tensors)."""
    norm_scale, norm_shift = _bn_affine(model.input_norm)
    stem_w, stem_b = _fold_conv(model.stem[0], model.stem[1])
    blocks = []
    for stage in model.stages:
        for blk in stage:
            w1, b1 = _fold_conv(blk.conv1, blk.bn1)
            w2, b2 = _fold_conv(blk.conv2, blk.bn2)
            ws = None
            if not isinstance(blk.shortcut, torch.nn.Identity):
                ws, bs = _fold_conv(blk.shortcut[0], blk.shortcut[1])
                b2 = b2 + bs
            blocks.append(FoldedBlock(w1, b1, w2, b2, blk.conv1.stride[0], ws))
    lin, bn = model.embed[0], model.embed[1]
    scale, shift = _bn_affine(bn)
    emb_w = lin.weight.double() * scale[:, None]
    emb_b = lin.bias.double() * scale + shift
    return {
        "norm": (float(norm_scale.item()), float(norm_shift.item())),
        "stem": (stem_w, stem_b),
        "blocks": blocks,
        "embed": (emb_w, emb_b),
        "head": (model.head.weight.double(), model.head.bias.double()),
    }


def oihw_weight(w: torch.Tensor, k: int) -> torch.Tensor:
    """A kernel-side weight ``(k²·C_in, C_out)`` back in torch's ``(C_out, C_in, k, k)`` layout."""
    c_out, c_in = w.shape[1], w.shape[0] // (k * k)
    return w.reshape(k, k, c_in, c_out).permute(3, 2, 0, 1).contiguous()


def pack_weight(w: torch.Tensor, ksize: int, stride: int, pack: int) -> torch.Tensor:
    """A ``(k²·C_in, C_out)`` weight for rows of ``pack`` outputs: ``(k·steps·C_in, pack·C_out)``.

    Input pixel ``r`` of a kernel row (``steps = stride·(pack-1) + k`` of them) is tap
    ``r - stride·q`` of the row's output ``q``, where that lies in ``0..k-1``, and zero otherwise.
    """
    if pack == 1:
        return w
    c_in, c_out = w.shape[0] // (ksize * ksize), w.shape[1]
    steps = stride * (pack - 1) + ksize
    taps = w.reshape(ksize, ksize, c_in, c_out)
    out = w.new_zeros(ksize, steps, c_in, pack, c_out)
    for r in range(steps):
        for q in range(pack):
            if 0 <= r - stride * q < ksize:
                out[:, r, :, q, :] = taps[:, r - stride * q]
    return out.reshape(ksize * steps * c_in, pack * c_out)


def pack_shortcut(ws: torch.Tensor, pack: int) -> torch.Tensor:
    """A 1×1 shortcut ``(C_in2, C_out)`` as ``(pack·C_in2, pack·C_out)``: output ``q`` reads pass ``q``."""
    return torch.block_diag(*[ws] * pack) if pack > 1 else ws


def stem_rows_weight(w: torch.Tensor) -> torch.Tensor:
    """The stem's ``(16, C)`` tap weight as the ``rows`` stem kernel reads it: ``(32, C)``.

    Row ``5·r + col`` of half ``dj`` weighs input pixel ``(r, col)`` of a 3 × 5 patch for the conv
    output at column offset ``dj``: tap ``(r, col - 2·dj)`` where that lies in the 3 × 3 kernel.
    """
    out = w.new_zeros(2, 16, w.shape[1])
    for dj in range(2):
        for r in range(3):
            for kw in range(3):
                out[dj, 5 * r + 2 * dj + kw] = w[3 * r + kw]
    return out.reshape(32, w.shape[1])
