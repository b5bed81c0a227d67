"""Every convolution after the stem as one Triton implicit-GEMM kernel, epilogue fused.

K runs over the 3×3 taps × input channels, loaded straight from the NHWC activations (no im2col
buffer); bias, the residual add and ReLU are in the epilogue; a block's 1×1 strided shortcut is
more K (``HAS_SC``), so its output is never written. Launched by
:func:`engines.triton.launch.conv_nhwc`.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["conv_kernel"]


@triton.jit
def conv_kernel(
    x_ptr,
    w_ptr,
    bias_ptr,
    res_ptr,
    x2_ptr,
    w2_ptr,
    y_ptr,
    M,
    H,
    W,
    OH,
    OW,
    H2,
    W2,
    C_IN: tl.constexpr,
    C_OUT: tl.constexpr,
    KSIZE: tl.constexpr,
    STRIDE: tl.constexpr,
    HAS_RES: tl.constexpr,
    HAS_SC: tl.constexpr,
    C_IN2: tl.constexpr,
    STRIDE2: tl.constexpr,
    RELU: tl.constexpr,
    PACK: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_K2: tl.constexpr,
):
    # Output tile: BLOCK_M rows × BLOCK_N columns of the GEMM. A row is PACK horizontally
    # adjacent output pixels (flattened batch × OH × OW/PACK) and its PACK · C_OUT columns are
    # their channels, which NHWC already stores contiguously. PACK > 1 loads each input pixel once
    # for PACK outputs instead of once per tap: a row needs KSIZE × STEPS input pixels, not
    # PACK × KSIZE², and the weight (prepared by engines.triton.packing.pack_weight) is zero where a pixel is not a tap
    # of an output.
    N_TOTAL: tl.constexpr = PACK * C_OUT
    N_TILES: tl.constexpr = N_TOTAL // BLOCK_N
    PAD: tl.constexpr = KSIZE // 2
    STEPS: tl.constexpr = STRIDE * (PACK - 1) + KSIZE  # input pixels per kernel row
    pid = tl.program_id(0)
    pid_m = pid // N_TILES  # neighbouring programs share the same input pixels (L2 reuse)
    pid_n = pid % N_TILES
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < M
    OWP = OW // PACK
    ow = (offs_m % OWP) * PACK  # the row's first output pixel
    t = offs_m // OWP
    oh = t % OH
    b = t // OH
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    K_TOTAL: tl.constexpr = KSIZE * STEPS * C_IN
    ih0 = oh * STRIDE - PAD
    iw0 = ow * STRIDE - PAD
    if BLOCK_K <= C_IN:
        # K runs over (kernel row, input pixel, input channel); BLOCK_K divides C_IN, so one step
        # stays in one input pixel.
        for k in range(0, K_TOTAL, BLOCK_K):
            tap = k // C_IN
            ih = ih0 + tap // STEPS
            iw = iw0 + tap % STEPS
            ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            row = ((b * H + ih) * W + iw) * C_IN + (k - tap * C_IN)
            a = tl.load(x_ptr + row[:, None] + offs_k[None, :], mask=ok[:, None], other=0.0)
            wt = tl.load(w_ptr + (k + offs_k)[:, None] * N_TOTAL + offs_n[None, :])
            acc = tl.dot(a, wt, acc)
    else:
        # Narrow inputs (C_IN < BLOCK_K): one step spans several taps, so each column has its
        # own tap offset and border mask; K is padded up to a multiple of BLOCK_K.
        tl.static_assert(PACK == 1)
        base = ((b * H + ih0) * W + iw0) * C_IN
        for k in range(0, K_TOTAL, BLOCK_K):
            kk = k + offs_k
            tap = kk // C_IN
            dh = tap // KSIZE
            dw = tap % KSIZE
            ih = ih0[:, None] + dh[None, :]
            iw = iw0[:, None] + dw[None, :]
            k_ok = kk < K_TOTAL
            ok = (m_ok[:, None] & k_ok[None, :]) & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            col = (dh * W + dw) * C_IN + (kk - tap * C_IN)
            a = tl.load(x_ptr + base[:, None] + col[None, :], mask=ok, other=0.0)
            wt = tl.load(w_ptr + kk[:, None] * N_TOTAL + offs_n[None, :], mask=k_ok[:, None], other=0.0)
            acc = tl.dot(a, wt, acc)
    if HAS_SC:  # the block's 1×1 strided projection shortcut, as more K (one pass per packed pixel)
        offs_k2 = tl.arange(0, BLOCK_K2)
        for q in tl.static_range(PACK):
            row2 = ((b * H2 + oh * STRIDE2) * W2 + (ow + q) * STRIDE2) * C_IN2
            for k in range(0, C_IN2, BLOCK_K2):
                a = tl.load(x2_ptr + row2[:, None] + (k + offs_k2)[None, :], mask=m_ok[:, None], other=0.0)
                wt = tl.load(w2_ptr + (q * C_IN2 + k + offs_k2)[:, None] * N_TOTAL + offs_n[None, :])
                acc = tl.dot(a, wt, acc)
    acc += tl.load(bias_ptr + offs_n).to(tl.float32)[None, :]
    out = offs_m[:, None] * N_TOTAL + offs_n[None, :]
    if HAS_RES:
        acc += tl.load(res_ptr + out, mask=m_ok[:, None], other=0.0).to(tl.float32)
    if RELU:
        acc = tl.maximum(acc, 0.0)
    tl.store(y_ptr + out, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None])
