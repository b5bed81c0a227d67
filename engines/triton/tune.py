"""Choosing each layer's launch configuration by timing the candidates, once per batch size.

The way cuDNN's benchmark mode does: for the stem and then every convolution, in network order on
real activations, each candidate that fits the layer runs ``iters`` times under CUDA events and
the median decides. The default tile always competes; a candidate that cannot compile or run
here (out of shared memory, no fused cuDNN engine) is skipped. Needs a CUDA GPU.
"""

from __future__ import annotations

import torch
import triton

from engines.triton.launch import CandidateUnavailable
from engines.triton.network import FusedResNet
from engines.triton.tiles import (
    CUDNN,
    QUICK_STEM_CANDIDATES,
    QUICK_TILE_CANDIDATES,
    STEM_CANDIDATES,
    TILE_CANDIDATES,
    TilePlan,
    default_tile,
    fits,
)

__all__ = ["CATALOGUES", "tune_plan", "cuda_event_ms"]

# name → (stem candidates, tile candidates): "full" times everything; "quick" a short list that
# compiles about a tenth as many kernels.
CATALOGUES = {
    "full": (STEM_CANDIDATES, TILE_CANDIDATES),
    "quick": (QUICK_STEM_CANDIDATES, QUICK_TILE_CANDIDATES),
}


def tune_plan(
    net: FusedResNet,
    mel: torch.Tensor,
    catalogue: str = "full",
    iters: int = 10,
    trace: list | None = None,
) -> tuple[TilePlan, list[dict]]:
    """The fastest plan for ``mel``'s batch size; also sets ``net.plan`` to it.

    Returns the plan and a report: the stem's ``(config, ms)``, then per block
    ``{"block", "conv1": (choice, ms), "conv2": (choice, ms)}``. ``trace``, if given, receives
    every candidate's time as ``(layer, candidate, ms)`` (``ms`` None where it could not run).
    With ``net.cudnn`` prepared, cuDNN's fused ops compete in every convolution.
    """
    stems, tiles = CATALOGUES[catalogue]
    mel = mel.contiguous()
    stem, stem_ms = _fastest(list(stems), lambda cfg: net.stem(mel, cfg), iters, _tracer(trace, "stem"))
    y = net.stem(mel, stem)
    report: list[dict] = [{"stem": (stem, stem_ms)}]
    convs = []
    extra = [CUDNN] if net.cudnn is not None else []
    for i, blk in enumerate(net.blocks):
        c_in, c_out = y.shape[3], blk.w1.shape[1]
        out_width = (y.shape[2] - 1) // blk.stride + 1
        t1, ms1 = _fastest(
            _fitting(tiles, c_in, c_out, out_width) + extra,
            lambda tile, i=i, y=y: net.conv1(i, y, tile), iters, _tracer(trace, f"block {i} conv1"),
        )  # fmt: skip
        h = net.conv1(i, y, t1)
        t2, ms2 = _fastest(
            _fitting(tiles, c_out, c_out, out_width) + extra,
            lambda tile, i=i, h=h, y=y: net.conv2(i, h, y, tile), iters, _tracer(trace, f"block {i} conv2"),
        )  # fmt: skip
        convs.append((t1, t2))
        report.append({"block": i, "conv1": (t1, ms1), "conv2": (t2, ms2)})
        y = net.conv2(i, h, y, t2)
    net.plan = TilePlan(stem, convs)
    return net.plan, report


def _fitting(tiles: list, c_in: int, c_out: int, out_width: int) -> list:
    default = default_tile(c_in, c_out)
    return [default] + [t for t in tiles if fits(t, c_in, c_out, out_width) and t != default]


def _tracer(trace: list | None, layer: str):
    return None if trace is None else lambda candidate, ms: trace.append((layer, candidate, ms))


def _fastest(candidates: list, run, iters: int, record=None) -> tuple:
    """The fastest of ``candidates`` for ``run(candidate)`` and its median milliseconds."""
    best, best_ms = candidates[0], float("inf")
    for candidate in candidates:
        try:
            ms = cuda_event_ms(lambda c=candidate: run(c), iters)
        except (
            triton.runtime.errors.OutOfResources,
            triton.compiler.errors.CompilationError,
            CandidateUnavailable,
        ):
            ms = None
        if record is not None:
            record(candidate, ms)
        if ms is not None and ms < best_ms:
            best, best_ms = candidate, ms
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
