"""Launchers: allocate the output, work out the grid, and start one kernel on NHWC tensors.

:func:`stem_nhwc` and :func:`conv_nhwc` run the Triton kernels; :func:`conv_cudnn` does
:func:`conv_nhwc`'s job with cuDNN's fused operations (the :data:`~engines.triton.tiles.CUDNN`
tuning candidate). Nothing here allocates beyond the output tensor, so a sequence of launches can
be captured in a CUDA graph.
"""

from __future__ import annotations

import torch
import triton

from engines.triton.kernels_conv import conv_kernel
from engines.triton.kernels_stem import stem_rows_kernel, stem_taps_kernel
from engines.triton.tiles import STEM_CANDIDATES, Tile, default_tile

__all__ = ["conv_nhwc", "stem_nhwc", "stem_precision", "conv_cudnn", "CandidateUnavailable"]


def stem_precision(dtype: torch.dtype) -> str:
    """The stem's operand precision for a network in ``dtype``.

    A bf16 network rounds every activation to 8 mantissa bits anyway, so its stem takes bf16
    operands, as torch's bf16 path does. An fp16 network keeps 10 bits, which bf16 or TF32
    rounding would show, so its stem takes 3×TF32 (as accurate as fp32). An fp32 network (only
    under Triton's interpreter) takes 3×TF32 too.
    """
    return "bf16" if dtype == torch.bfloat16 else "tf32x3"


def conv_nhwc(
    x: torch.Tensor,
    w: torch.Tensor,
    bias: torch.Tensor,
    ksize: int,
    stride: int,
    relu: bool = True,
    residual: torch.Tensor | None = None,
    shortcut: tuple[torch.Tensor, torch.Tensor, int] | None = None,
    tile: Tile | None = None,
) -> torch.Tensor:
    """Convolution of NHWC ``x`` (B, H, W, C_in) with ``w`` laid out ``(ksize² · C_in, C_out)``.

    ``residual`` (B, OH, OW, C_out) is added before the ReLU; ``shortcut = (x2, w2, stride2)``
    adds a 1×1 strided convolution of ``x2`` with ``w2`` (C_in2, C_out) as extra K. For a tile
    with ``pack > 1``, ``w``, ``bias`` and ``w2`` come from :func:`pack_weight`, ``bias.repeat``
    and :func:`pack_shortcut`.
    """
    bsz, h, wd, c_in = x.shape
    tile = tile or default_tile(c_in, w.shape[1])
    pack = tile.pack
    c_out = w.shape[1] // pack
    steps = stride * (pack - 1) + ksize
    if w.shape[0] != ksize * steps * c_in or bias.shape[0] != pack * c_out:
        raise ValueError(f"weight {tuple(w.shape)} / bias {tuple(bias.shape)} are not packed for pack={pack}")
    pad = ksize // 2
    oh = (h + 2 * pad - ksize) // stride + 1
    ow = (wd + 2 * pad - ksize) // stride + 1
    y = torch.empty((bsz, oh, ow, c_out), device=x.device, dtype=x.dtype)
    m = bsz * oh * ow // pack
    if shortcut is not None:
        x2, w2, stride2 = shortcut
        h2, w2d, c_in2 = x2.shape[1], x2.shape[2], x2.shape[3]
        block_k2 = min(c_in2, 64)
    else:
        x2, w2, stride2, h2, w2d, c_in2, block_k2 = x, w, 1, 1, 1, 16, 16
    grid = (triton.cdiv(m, tile.block_m) * (pack * c_out // tile.block_n),)
    conv_kernel[grid](
        x,
        w,
        bias,
        residual if residual is not None else y,
        x2,
        w2,
        y,
        m,
        h,
        wd,
        oh,
        ow,
        h2,
        w2d,
        C_IN=c_in,
        C_OUT=c_out,
        KSIZE=ksize,
        STRIDE=stride,
        HAS_RES=residual is not None,
        HAS_SC=shortcut is not None,
        C_IN2=c_in2,
        STRIDE2=stride2,
        RELU=relu,
        PACK=pack,
        BLOCK_M=tile.block_m,
        BLOCK_N=tile.block_n,
        BLOCK_K=tile.block_k,
        BLOCK_K2=block_k2,
        num_warps=tile.num_warps,
        num_stages=tile.num_stages,
    )
    return y


def stem_nhwc(
    x: torch.Tensor,
    w: torch.Tensor,
    bias: torch.Tensor,
    norm_scale: float,
    norm_shift: float,
    dtype: torch.dtype,
    config: tuple[int, int, str] = STEM_CANDIDATES[0],
    precision: str | None = None,
) -> torch.Tensor:
    """Log-mel ``(B, H, W)`` → pooled stem output NHWC ``(B, ≈H/4, ≈W/4, C)``.

    ``w`` is float32 ``(16, C)``: the 9 taps (row-major 3×3) then zero rows; for the ``"rows"``
    kernel, :func:`stem_rows_weight` of that.
    """
    bsz, h, wd = x.shape
    block, warps, kernel = config
    c = w.shape[1]
    if w.shape[0] != {"taps": 16, "rows": 32}[kernel]:
        raise ValueError(f"stem weight {tuple(w.shape)} is not laid out for the {kernel!r} kernel")
    ph, pw = ((h - 1) // 2 + 1) // 2, ((wd - 1) // 2 + 1) // 2  # conv 3×3/2 pad 1, then pool 2×2 (floor)
    y = torch.empty((bsz, ph, pw, c), device=x.device, dtype=dtype)
    n = bsz * ph * pw
    precision = precision or stem_precision(dtype)
    kernel_fn = stem_rows_kernel if kernel == "rows" else stem_taps_kernel
    kernel_fn[(triton.cdiv(n, block),)](
        x,
        w,
        bias,
        y,
        norm_scale,
        norm_shift,
        n,
        H=h,
        W=wd,
        PH=ph,
        PW=pw,
        C=c,
        BLOCK_P=block,
        PRECISION=precision,
        num_warps=warps,
    )
    return y


class CandidateUnavailable(RuntimeError):
    """A tuning candidate that cannot run here (the tuner skips it)."""


def conv_cudnn(
    x: torch.Tensor,
    w4: torch.Tensor,
    bias: torch.Tensor,
    stride: int,
    residual: torch.Tensor | None = None,
    shortcut: tuple[torch.Tensor, torch.Tensor, int] | None = None,
) -> torch.Tensor:
    """:func:`conv_nhwc`'s job done by cuDNN's fused operations, on the same NHWC tensors.

    ``w4`` is (C_out, C_in, k, k) in channels_last, ``bias`` in the activations' dtype; an NHWC
    tensor viewed through ``permute(0, 3, 1, 2)`` is NCHW in channels_last, which cuDNN takes as is.
    On the CPU (tests) the same arithmetic runs through ``F.conv2d``.
    """
    xin = x.permute(0, 3, 1, 2)
    pad = w4.shape[-1] // 2
    z = None
    if shortcut is not None:
        x2, ws4, stride2 = shortcut
        z = torch.nn.functional.conv2d(x2.permute(0, 3, 1, 2), ws4, None, stride2)
    elif residual is not None:
        z = residual.permute(0, 3, 1, 2)
    if x.device.type != "cuda":
        y = torch.nn.functional.conv2d(xin, w4, bias, stride, pad)
        y = torch.relu(y if z is None else y + z)
    else:
        args = ([stride, stride], [pad, pad], [1, 1], 1)
        try:
            if z is None:
                y = torch.cudnn_convolution_relu(xin, w4, bias, *args)
            else:
                y = torch.cudnn_convolution_add_relu(xin, w4, z, 1.0, bias, *args)
        except RuntimeError as e:  # no fused cuDNN engine for this shape or dtype
            raise CandidateUnavailable(str(e).splitlines()[0]) from e
    return y.permute(0, 2, 3, 1).contiguous()  # a no-op when cuDNN kept channels_last
