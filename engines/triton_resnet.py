"""The tagger network as a few fused Triton kernels: NHWC, fp16/bf16, BatchNorm folded.

Why it exists: cuDNN runs every convolution, BatchNorm, ReLU and residual add of this narrow
network (32–256 channels) as its own kernel, and at large batch those passes over memory, not the
tensor cores, set the speed (8.6 % of the H200's dense peak eagerly, 19.3 % with Inductor). Here:

- the stem is one kernel: input BatchNorm, 3×3/2 convolution, bias, ReLU and 2×2 max-pool, so its
  32-channel full-resolution map never reaches memory;
- every other convolution is an implicit GEMM (the 3×3 taps × input channels are the K loop,
  loaded straight from the NHWC activations; no im2col buffer) with bias, residual add and ReLU in
  its epilogue;
- a block's 1×1 strided shortcut is more K of the block's second convolution, so the shortcut's
  output is never written either;
- the pooled tail and the two linear layers run in torch, in float32 (a few MB at any batch).

Each convolution's tile sizes are chosen once per (layer shape, batch) by timing a few candidates
(``tune=True``), the way cuDNN's benchmark mode does. Accuracy is checked against the torch model
in tests/engines/test_triton_resnet.py (on a GPU, or on the CPU through Triton's interpreter).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

__all__ = [
    "FusedResNet",
    "fold_resnet",
    "conv_nhwc",
    "stem_nhwc",
    "stem_rows_weight",
    "STEM_CANDIDATES",
    "Tile",
    "TILE_CANDIDATES",
    "default_tile",
    "pack_weight",
    "pack_shortcut",
    "cuda_event_ms",
    "conv_cudnn",
    "oihw_weight",
    "CUDNN",
]


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
def _stem_kernel(
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
def _stem_rows_kernel(
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
    # _stem_kernel's job with half the gathers. The two conv outputs of one pooling row (dj = 0, 1)
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


@triton.jit
def _conv_kernel(
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
    # PACK × KSIZE², and the weight (prepared by pack_weight) is zero where a pixel is not a tap
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


@dataclass(frozen=True)
class Tile:
    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    pack: int = 1  # output pixels per GEMM row (see _conv_kernel)


# Candidates timed per layer shape; those that do not fit a layer (see _fits) are skipped.
TILE_CANDIDATES = [
    Tile(128, 32, 32, 4, 4),
    Tile(256, 32, 32, 4, 4),
    # fewer pipeline stages: fewer loads in flight (won a few fp16 layers on the H200)
    Tile(128, 32, 32, 4, 1),
    Tile(128, 32, 32, 4, 2),
    Tile(256, 32, 32, 8, 2),
    Tile(128, 64, 32, 4, 4),
    Tile(128, 64, 32, 4, 2),
    Tile(128, 64, 64, 4, 4),
    Tile(128, 128, 64, 4, 3),
    Tile(128, 128, 64, 4, 2),
    Tile(256, 128, 64, 8, 3),
    Tile(128, 256, 64, 8, 3),
    Tile(64, 128, 64, 4, 4),
    # two or four output pixels per row: a third fewer bytes from L2 per output, at 4/3 or 2x the
    # MMA work (on the H200 the 32-channel layers got 5-10 % faster this way)
    Tile(128, 64, 32, 4, 4, pack=2),
    Tile(128, 64, 32, 4, 3, pack=2),
    Tile(256, 64, 32, 8, 3, pack=2),
    Tile(256, 64, 32, 4, 3, pack=2),
    Tile(128, 64, 32, 8, 4, pack=2),
    Tile(256, 64, 32, 8, 4, pack=2),
    Tile(128, 128, 32, 4, 3, pack=4),
    Tile(128, 128, 32, 8, 3, pack=4),
    Tile(128, 128, 32, 4, 3, pack=2),
    Tile(128, 128, 64, 4, 3, pack=2),
    Tile(256, 128, 64, 8, 3, pack=2),
    Tile(128, 256, 64, 8, 3, pack=2),
]
# (pixels per program, warps, kernel) of the stem: "taps" gathers the 9 taps of each of the four
# conv outputs under a pooled pixel, "rows" the 15 pixels shared by each row of two (half the loads)
STEM_CANDIDATES = [
    (128, 4, "taps"),
    (64, 4, "taps"),
    (128, 8, "taps"),
    (32, 2, "taps"),
    (256, 4, "taps"),
    (256, 8, "taps"),
    (128, 4, "rows"),
    (64, 4, "rows"),
    (128, 8, "rows"),
    (256, 4, "rows"),
    (256, 8, "rows"),
]


def stem_rows_weight(w: torch.Tensor) -> torch.Tensor:
    """The stem's ``(16, C)`` tap weight as :func:`_stem_rows_kernel` reads it: ``(32, C)``.

    Row ``5·r + col`` of half ``dj`` weighs input pixel ``(r, col)`` of a 3 × 5 patch for the conv
    output at column offset ``dj``: tap ``(r, col - 2·dj)`` where that lies in the 3 × 3 kernel.
    """
    out = w.new_zeros(2, 16, w.shape[1])
    for dj in range(2):
        for r in range(3):
            for kw in range(3):
                out[dj, 5 * r + 2 * dj + kw] = w[3 * r + kw]
    return out.reshape(32, w.shape[1])


def default_tile(c_in: int, c_out: int) -> Tile:
    """A tile that fits every layer of this network (used until :meth:`FusedResNet.tune` runs)."""
    return Tile(128, min(c_out, 64), 32 if c_in % 32 == 0 else 16, 4, 3)


def _fits(tile: Tile, c_in: int, c_out: int, out_width: int) -> bool:
    # BLOCK_K either divides C_IN (one tap per K step) or exceeds it (several taps per step,
    # unpacked only); a packed row never straddles two image rows.
    if (tile.pack * c_out) % tile.block_n:
        return False
    if tile.pack > 1:
        return out_width % tile.pack == 0 and c_in % tile.block_k == 0
    return c_in % tile.block_k == 0 or tile.block_k > c_in


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
    _conv_kernel[grid](
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
    # A bf16 network rounds every activation to 8 mantissa bits anyway, so its stem takes bf16
    # operands as torch's bf16 path does (H200, 4096 windows: 0.34 → 0.28 ms against TF32, max
    # |Δprob| 1.0e-2 → 1.4e-2, torch eager bf16 2.5e-2). An fp16 network keeps 10 bits, so its
    # stem takes 3×TF32, as accurate as fp32 (4e-3 → 1.3e-3 in probability, 0.4 → 0.65 ms).
    if precision is None:
        precision = "bf16" if dtype == torch.bfloat16 else "tf32x3"
    kernel_fn = _stem_rows_kernel if kernel == "rows" else _stem_kernel
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


CUDNN = "cudnn"  # a tuning candidate besides the tiles: cuDNN's fused conv+bias(+add)+ReLU


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


# -- folding the torch model ---------------------------------------------------------------------


def _bn_affine(bn) -> tuple[torch.Tensor, torch.Tensor]:
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    return scale, bn.bias.double() - bn.running_mean.double() * scale


def _fold_conv(conv, bn) -> tuple[torch.Tensor, torch.Tensor]:
    """Conv + BatchNorm → (weight (k²·C_in, C_out), bias (C_out)), folded in float64."""
    scale, shift = _bn_affine(bn)
    w = conv.weight.double() * scale[:, None, None, None]  # (C_out, C_in, k, k)
    c_out, c_in, k, _ = w.shape
    return w.permute(2, 3, 1, 0).reshape(k * k * c_in, c_out), shift


def oihw_weight(w: torch.Tensor, k: int) -> torch.Tensor:
    """A kernel-side weight ``(k²·C_in, C_out)`` back in torch's ``(C_out, C_in, k, k)`` layout."""
    c_out, c_in = w.shape[1], w.shape[0] // (k * k)
    return w.reshape(k, k, c_in, c_out).permute(3, 2, 0, 1).contiguous()


@dataclass
class FoldedBlock:
    w1: torch.Tensor
    b1: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor
    stride: int
    ws: torch.Tensor | None  # 1×1 shortcut weight (C_in, C_out), its bias already in b2
    tiles: tuple[Tile | None, Tile | None] = (None, None)  # None: default_tile


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


class FusedResNet:
    """A ``ResNetTagger`` run by the kernels above; call it with log-mel ``(B, n_mels, frames)``.

    Returns ``(logits, embedding)`` in float32, like the torch model.
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
        to_k = lambda t: t.to(device, dtype).contiguous()  # noqa: E731  kernel-side weights
        to_f = lambda t: t.to(device, torch.float32).contiguous()  # noqa: E731  biases, tail
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
        # Packing only copies and zero-fills, so it works on the kernel-side tensors; pack 1 is
        # those tensors themselves.
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
        self.stem_config = STEM_CANDIDATES[0]
        self.stem_precision = stem_precision  # None: stem_nhwc's choice for the dtype
        # With cudnn_candidates, tune() also times cuDNN's fused ops per convolution and keeps
        # whichever is faster: (C_out, C_in, k, k) channels_last weights and half-precision biases.
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
        config = config or self.stem_config
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

    def _conv1(self, i: int, y: torch.Tensor, tile) -> torch.Tensor:
        blk = self.blocks[i]
        if tile == CUDNN:
            c = self.cudnn[i]
            return conv_cudnn(y, c["w1"], c["b1"], blk.stride)
        w1, b1, _, _, _ = self.packed[i][tile.pack if tile else 1]
        return conv_nhwc(y, w1, b1, 3, blk.stride, tile=tile)

    def _conv2(self, i: int, h: torch.Tensor, y: torch.Tensor, tile) -> torch.Tensor:
        """The block's second convolution plus its residual (``y``) or projected shortcut."""
        blk = self.blocks[i]
        if tile == CUDNN:
            c = self.cudnn[i]
            if blk.ws is None:
                return conv_cudnn(h, c["w2"], c["b2"], 1, residual=y)
            return conv_cudnn(h, c["w2"], c["b2"], 1, shortcut=(y, c["ws"], blk.stride))
        _, _, w2, b2, ws = self.packed[i][tile.pack if tile else 1]
        if ws is None:
            return conv_nhwc(h, w2, b2, 3, 1, residual=y, tile=tile)
        return conv_nhwc(h, w2, b2, 3, 1, shortcut=(y, ws, blk.stride), tile=tile)

    def _run_blocks(self, y: torch.Tensor) -> torch.Tensor:
        for i, blk in enumerate(self.blocks):
            t1, t2 = blk.tiles
            y = self._conv2(i, self._conv1(i, y, t1), y, t2)
        return y

    def __call__(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.stem(mel)
        y = self._run_blocks(y)
        f = y.mean(dim=1, dtype=torch.float32)  # over frequency → (B, T, C), no float32 copy of y
        z = torch.cat([f.mean(dim=1), f.amax(dim=1)], dim=1)
        emb = torch.relu(z @ self.emb_w.T + self.emb_b)
        return emb @ self.head_w.T + self.head_b, emb

    def tune(self, mel: torch.Tensor, iters: int = 10, trace: list | None = None) -> list[dict]:
        """Pick each convolution's tile by timing the candidates on ``mel``'s batch size.

        ``trace``, if given, receives every candidate's time: ``(layer, candidate, ms)``.
        """
        mel = mel.contiguous()
        self.stem_config, stem_ms = _pick_from(
            STEM_CANDIDATES,
            lambda cfg: self.stem(mel, cfg),
            iters,
            _tracer(trace, "stem"),
        )
        y = self.stem(mel)
        report = [{"stem": (self.stem_config, stem_ms)}]
        extra = [CUDNN] if self.cudnn is not None else []
        for i, blk in enumerate(self.blocks):
            c_in, c_out = y.shape[3], blk.w1.shape[1]
            out_width = (y.shape[2] - 1) // blk.stride + 1
            t1, ms1 = _pick(
                lambda tile, i=i, y=y: self._conv1(i, y, tile),
                (c_in, c_out, out_width), iters, extra, _tracer(trace, f"block {i} conv1"),
            )  # fmt: skip
            h = self._conv1(i, y, t1)
            t2, ms2 = _pick(
                lambda tile, i=i, h=h, y=y: self._conv2(i, h, y, tile),
                (c_out, c_out, out_width), iters, extra, _tracer(trace, f"block {i} conv2"),
            )  # fmt: skip
            blk.tiles = (t1, t2)
            report.append({"block": i, "conv1": (t1, ms1), "conv2": (t2, ms2)})
            y = self._conv2(i, h, y, t2)
        return report


def _tracer(trace: list | None, layer: str):
    return None if trace is None else lambda candidate, ms: trace.append((layer, candidate, ms))


def _pick(run, shape: tuple[int, int, int], iters: int, extra: list, record=None) -> tuple:
    """The fastest tile fitting ``shape`` (C_in, C_out, output width), or ``extra`` candidate, for
    ``run(tile)``; the default tile always competes."""
    default = default_tile(*shape[:2])
    tiles = [default] + [t for t in TILE_CANDIDATES if _fits(t, *shape) and t != default]
    return _pick_from(tiles + extra, run, iters, record)


def _pick_from(candidates: list, run, iters: int, record=None) -> tuple:
    """The fastest of ``candidates`` for ``run(candidate)`` (median CUDA-event time of ``iters``).

    ``record(candidate, ms)`` sees every time, ``ms`` None for a candidate that cannot run.
    """
    best, best_ms = candidates[0], float("inf")
    for tile in candidates:
        try:
            ms = cuda_event_ms(lambda tile=tile: run(tile), iters)
        except (
            triton.runtime.errors.OutOfResources,
            triton.compiler.errors.CompilationError,
            CandidateUnavailable,
        ):
            ms = None
        if record is not None:
            record(tile, ms)
        if ms is None:
            continue
        if ms < best_ms:
            best, best_ms = tile, ms
    return best, best_ms


def cuda_event_ms(fn, iters: int) -> float:
    """Median milliseconds of ``fn()`` by CUDA events, after one untimed call (compile, warm-up)."""
    fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]
