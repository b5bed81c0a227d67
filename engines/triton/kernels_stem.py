"""The stem as one Triton kernel: input BatchNorm, 3×3/2 convolution, bias, ReLU and 2×2 max-pool.

Its 32-channel full-resolution map never reaches memory. Two kernels do the same job and compete
in tuning (:data:`engines.triton.tiles.STEM_CANDIDATES`): ``taps`` gathers the 9 taps of each of
the four conv outputs under a pooled pixel; ``rows`` gathers the 3 × 5 input pixels that a pooling
row's two outputs share once, for both products (half the loads). Launched by
:func:`engines.triton.launch.stem_nhwc`.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["stem_taps_kernel", "stem_rows_kernel"]


@triton.jit
def _pooled_pixels(P, PH: tl.constexpr, PW: tl.constexpr, BLOCK_P: tl.constexpr):
    # A stem program's BLOCK_P pooled output pixels (flattened batch × PH × PW): index, in range,
    # and their (batch, row, column).
    offs = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    t = offs // PW
    return offs, offs < P, t // PH, t % PH, offs % PW


@triton.jit
def _stem_product(xv, w, PRECISION: tl.constexpr):
    if PRECISION == "bf16":  # bf16 operands: half the tensor-core work of TF32
        prod = tl.dot(xv.to(tl.bfloat16), w.to(tl.bfloat16))
    else:
        prod = tl.dot(xv, w, input_precision=PRECISION)
    return prod


@triton.jit
def _store_pooled(y_ptr, bias_ptr, best, offs, p_ok, C: tl.constexpr):
    # max(relu(a + bias)) == relu(max(a) + bias): one bias add and ReLU after pooling.
    c = tl.arange(0, C)
    out = tl.maximum(best + tl.load(bias_ptr + c)[None, :], 0.0)
    tl.store(y_ptr + offs[:, None] * C + c[None, :], out.to(y_ptr.dtype.element_ty), mask=p_ok[:, None])


@triton.jit
def stem_taps_kernel(
    x_ptr,
    w_ptr,
    bias_ptr,
    y_ptr,
    norm_scale,
    norm_shift,
    P,
    H: tl.constexpr,
    W: tl.constexpr,
    PH: tl.constexpr,
    PW: tl.constexpr,
    C: tl.constexpr,
    BLOCK_P: tl.constexpr,
    PRECISION: tl.constexpr,
):
    # One program: BLOCK_P pooled output pixels (flattened batch × PH × PW) × all C channels.
    # Each of the 2×2 conv outputs under a pooled pixel is a (BLOCK_P × 16) × (16 × C) product
    # on the tensor cores (the 9 taps padded to 16), so the CUDA cores only gather.
    offs, p_ok, b, p, q = _pooled_pixels(P, PH, PW, BLOCK_P)
    tap = tl.arange(0, 16)
    kh = tap // 3
    kw = tap % 3
    c = tl.arange(0, C)
    wv = tl.load(w_ptr + tap[:, None] * C + c[None, :])  # (16, C) fp32, rows 9..15 are zero
    best = tl.full((BLOCK_P, C), float("-inf"), dtype=tl.float32)
    for di in tl.static_range(2):  # the 2×2 pooling window over conv outputs
        for dj in tl.static_range(2):
            ih = (4 * p + 2 * di - 1)[:, None] + kh[None, :]
            iw = (4 * q + 2 * dj - 1)[:, None] + kw[None, :]
            ok = p_ok[:, None] & (tap < 9)[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            xv = tl.load(x_ptr + b[:, None] * (H * W) + ih * W + iw, mask=ok, other=0.0).to(tl.float32)
            # Zero padding belongs to the normalised input, so pad after the affine.
            xv = tl.where(ok, xv * norm_scale + norm_shift, 0.0)
            best = tl.maximum(best, _stem_product(xv, wv, PRECISION))
    _store_pooled(y_ptr, bias_ptr, best, offs, p_ok, C)


@triton.jit
def stem_rows_kernel(
    x_ptr,
    w_ptr,
    bias_ptr,
    y_ptr,
    norm_scale,
    norm_shift,
    P,
    H: tl.constexpr,
    W: tl.constexpr,
    PH: tl.constexpr,
    PW: tl.constexpr,
    C: tl.constexpr,
    BLOCK_P: tl.constexpr,
    PRECISION: tl.constexpr,
):
    # stem_taps_kernel's job with half the gathers. The two conv outputs of one pooling row (dj = 0, 1)
    # read the same 3 × 5 input pixels, so one (BLOCK_P × 16) gather of those 15 values feeds both
    # products, against a (16, C) weight per dj that is zero where a pixel is not one of its taps.
    offs, p_ok, b, p, q = _pooled_pixels(P, PH, PW, BLOCK_P)
    k = tl.arange(0, 16)
    r = tl.where(k < 15, k // 5, 1 << 20)  # the 16th column reads nothing (masked below)
    col = k % 5
    c = tl.arange(0, C)
    w0 = tl.load(w_ptr + k[:, None] * C + c[None, :])  # (16, C) fp32 for dj = 0
    w1 = tl.load(w_ptr + (16 + k)[:, None] * C + c[None, :])  # and for dj = 1
    top = tl.where(p_ok, 4 * p - 1, -(1 << 20))  # rows of a program's tail read nothing
    iw = (4 * q - 1)[:, None] + col[None, :]
    # One unsigned compare per side: negative indices wrap to huge values.
    w_ok = iw.to(tl.uint32) < W
    base = x_ptr + (b * (H * W))[:, None] + iw
    best = tl.full((BLOCK_P, C), float("-inf"), dtype=tl.float32)
    for di in tl.static_range(2):
        ih = (top + 2 * di)[:, None] + r[None, :]
        ok = w_ok & (ih.to(tl.uint32) < H)
        xv = tl.load(base + ih * W, mask=ok, other=0.0).to(tl.float32)
        xv = tl.where(ok, xv * norm_scale + norm_shift, 0.0)  # zero padding is after the affine
        best = tl.maximum(best, _stem_product(xv, w0, PRECISION))
        best = tl.maximum(best, _stem_product(xv, w1, PRECISION))
    _store_pooled(y_ptr, bias_ptr, best, offs, p_ok, C)
