"""An engines backend and how it is timed: what model and capacity modes measure.

A :class:`Runner` is one backend from :func:`engines.registry.open_backend` with one of two timers:

- ``infer``: through the public ``infer()`` exactly as the runtime calls it (numpy in, numpy out,
  host↔device copies included), wall clock; the call returns once the results are on the host.
- ``graph``: the model alone on the GPU, the number to hold against the device's tensor peak: the
  input sits in the backend's device buffer and the backend's own CUDA graph for the batch
  (:class:`engines.cuda_graphs.GraphCache`, the capture the runtime replays) is replayed between
  CUDA events. Before timing, every prepared batch's graph output is checked against the fp32
  torch model (first 16 windows): a fast number from wrong kernels must not reach a results file.

Runner specs (:func:`make_runner`):

- ``NAME[:option=value…]``: backend NAME through ``infer()``, e.g. ``torch-cuda:precision=bf16``;
- ``cuda-graph-<precision>``: ``torch-cuda`` (eager cuDNN kernels, channels_last), graph timer;
- ``compiled-graph-<precision>[-autotune]``: ``torch-cuda`` with BatchNorm folded and
  ``torch.compile`` (Inductor; ``-autotune``: max-autotune), graph timer;
- ``triton-fused-<precision>[-cudnn]``: the ``triton-fused`` backend (``-cudnn``: cuDNN's fused
  ops compete per layer), graph timer.

Graph-timer specs take ``:option=value`` too (``triton-fused-bf16:catalogue=quick``).
"""

from __future__ import annotations

import time

import numpy as np

from bench.common import BenchError
from engines.base import Backend
from engines.bundle import Bundle

__all__ = [
    "Runner",
    "make_runner",
    "auto_runners",
    "measure",
    "flops_per_window",
    "random_windows",
]

TIMERS = ("infer", "graph")


def random_windows(bundle: Bundle, batch: int, seed: int = 0) -> np.ndarray:
    """Log-mel-like input ``(batch, n_mels, frames)`` float32 in a realistic dB range."""
    fe = bundle.frontend
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((batch, fe.n_mels, fe.window_frames), dtype=np.float32) * 15.0 - 40.0).astype(
        np.float32
    )


def flops_per_window(bundle: Bundle) -> float:
    """Floating-point operations (multiply and add counted separately) of one window, by torch's counter."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model = bundle.build_model()
    x = torch.from_numpy(random_windows(bundle, 1))
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x)
    return float(counter.get_total_flops())


class Runner:
    """Times batches of windows on an active ``backend``; ``time_batch`` returns milliseconds.

    Args:
        backend: an active engines backend.
        timer: ``infer`` or ``graph`` (see the module docstring).
        name: the name results carry (default: the backend's).
    """

    max_prob_diff = 0.05  # graph timer: allowed max |Δprob| against the fp32 torch model

    def __init__(self, backend: Backend, timer: str = "infer", name: str | None = None) -> None:
        if timer not in TIMERS:
            raise BenchError(f"timer {timer!r} not one of {', '.join(TIMERS)}")
        if timer == "graph" and getattr(backend, "graphs", None) is None:
            backend.deactivate()
            raise BenchError(f"backend {backend.name} has no CUDA graphs to time (graph timer)")
        self.backend = backend
        self.bundle = backend.bundle
        self.timer = "cuda-events" if timer == "graph" else "wall"
        d = backend.describe()
        self.name = name or d["name"]
        self.device = d["device"]
        self.precision = d["precision"]
        self.max_batch = d["batch_max"]
        self.device_ms: list[float] = []  # infer timer: the backend's device-event time per run
        self.prob_diff: dict[int, float] = {}
        self._inputs: dict[int, np.ndarray] = {}
        self._ref_model = None  # the fp32 torch model, built on the first check

    def prepare(self, batch: int) -> None:
        """Make the input (and, for the graph timer, upload it and capture the graph); not timed."""
        windows = random_windows(self.bundle, batch)
        self.device_ms = []
        if self.timer == "wall":
            self._inputs[batch] = windows
            return
        io, graphs = self.backend.io, self.backend.graphs
        graphs.get(batch)  # warm-up and capture first: they may run on whatever the buffer holds
        io.upload(windows)
        outs = graphs.replay(batch)
        io.stream.synchronize()
        self._check(batch, windows, outs["probabilities"])

    def _check(self, batch: int, windows: np.ndarray, probabilities) -> None:
        import torch

        n = min(batch, 16)
        with torch.inference_mode():
            ref = torch.sigmoid(self._reference()(torch.from_numpy(windows[:n]))[0])
        diff = float((probabilities[:n].float().cpu() - ref).abs().max())
        self.prob_diff[batch] = diff
        if diff > self.max_prob_diff:
            raise BenchError(
                f"runner {self.name}: batch {batch} differs from the fp32 torch model by {diff:.3g} "
                f"in probability (allowed {self.max_prob_diff})"
            )

    def _reference(self):
        if self._ref_model is None:
            self._ref_model = self.bundle.build_model()
        return self._ref_model

    def time_batch(self, batch: int) -> float:
        if self.timer == "wall":
            t0 = time.perf_counter()
            self.backend.infer(self._inputs[batch])
            wall = (time.perf_counter() - t0) * 1e3
            if self.backend.last_device_time is not None:
                self.device_ms.append(self.backend.last_device_time * 1e3)
            return wall
        io = self.backend.io
        io.start.record(io.stream)
        self.backend.graphs.replay(batch)
        io.end.record(io.stream)
        io.end.synchronize()
        return float(io.start.elapsed_time(io.end))

    def release(self, batch: int) -> None:
        """Free what :meth:`prepare` made for ``batch``."""
        self._inputs.pop(batch, None)
        if self.timer != "wall":
            self.backend.graphs.release(batch)

    def close(self) -> None:
        self.backend.deactivate()

    def describe(self) -> dict:
        d = {**self.backend.describe(), "runner": self.name, "timer": self.timer}
        d.pop("name", None)
        if self.prob_diff:
            d["max_abs_prob_diff_vs_fp32"] = max(self.prob_diff.values())
        plans = getattr(self.backend, "plans", None)
        if plans and self.prob_diff:  # triton-fused: the tiles each timed batch ran
            from engines.triton.keys import bucket_of

            d["tiles"] = {
                str(b): plans[bucket_of(b, sorted(plans))].to_json() for b in sorted(self.prob_diff)
            }
        return d


def _options(parts: list[str]) -> dict:
    """``["precision=bf16", "cudnn=false", "max_batch=8"]`` → typed keyword arguments."""
    out: dict = {}
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise BenchError(f"runner option {part!r} is not key=value")
        low = value.lower()
        out[key.replace("-", "_")] = (
            low == "true" if low in ("true", "false") else int(value) if value.isdigit() else value
        )
    return out


def _graph_spec(spec: str) -> tuple[str, dict] | None:
    """The backend and options behind a graph-timer spec, or None for a plain backend name."""
    for prefix, backend in (
        ("compiled-graph", "torch-cuda"),
        ("triton-fused", "triton-fused"),
        ("cuda-graph", "torch-cuda"),
    ):
        if not spec.startswith(prefix) or (prefix == "triton-fused" and spec == "triton-fused"):
            continue
        words = [w for w in spec.removeprefix(prefix).split("-") if w]
        flag = words.pop() if words and words[-1] in ("autotune", "cudnn") else None
        precision = words[0] if words else "bf16"
        if prefix == "compiled-graph":
            return backend, {
                "precision": precision,
                "compile": "max-autotune-no-cudagraphs" if flag else "default",
            }
        if prefix == "triton-fused":
            return backend, {"precision": precision, "cudnn": flag == "cudnn"}
        return backend, {"precision": precision}
    return None


def make_runner(bundle: Bundle, spec: str, max_batch: int) -> Runner:
    """A runner for ``spec`` (see the module docstring) holding batches up to ``max_batch``."""
    import torch

    from engines.registry import open_backend

    head, *parts = spec.split(":")
    options = _options(parts)
    graph = _graph_spec(head)
    if graph is None:
        return Runner(open_backend(bundle, head, max_batch=max_batch, **options), "infer")
    backend_name, graph_options = graph
    torch.backends.cudnn.benchmark = True  # the model alone at its fastest: cuDNN times its algorithms
    backend = open_backend(bundle, backend_name, max_batch=max_batch, **{**graph_options, **options})
    return Runner(backend, "graph", name=head)


def auto_runners(
    bundle: Bundle, max_batch: int, gpu: bool, graphs: bool = True
) -> tuple[list[Runner], list[str]]:
    """Every runner that opens here: on a GPU machine the CUDA-graph runners and the GPU backends,
    else the CPU backends. Returns the runners and one note per backend that could not open."""
    from engines.errors import UserError
    from engines.registry import AUTO_OPTIONS, BACKENDS

    runners: list[Runner] = []
    notes: list[str] = []
    specs = [f"cuda-graph-{p}" for p in ("bf16", "fp16")] if gpu and graphs else []
    # each backend as auto opens it (the fused kernels only where they were tuned: no minutes of tuning here)
    specs += [
        ":".join([name, *(f"{k}={v}" for k, v in AUTO_OPTIONS.get(name, {}).items())]) for name in BACKENDS
    ]
    for spec in specs:
        try:
            r = make_runner(bundle, spec, max_batch)
        except (UserError, ImportError, OSError, RuntimeError) as e:
            notes.append(
                f"backend {spec.split(':')[0]} not available here: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
            )
            continue
        if r.device.startswith("cpu") == gpu:
            r.close()  # CPU backends on a GPU machine (or GPU ones on CPU) are left to their own run
            continue
        runners.append(r)
    return runners, notes


def measure(
    runner: Runner, batch: int, warmup: int, iters: int, min_iters: int, max_seconds: float
) -> list[float]:
    """Warm up, then time ``runner`` on ``batch`` until ``iters`` runs or ``max_seconds`` (≥ ``min_iters``)."""
    runner.prepare(batch)
    try:
        for _ in range(warmup):
            runner.time_batch(batch)
        runner.device_ms = []
        samples: list[float] = []
        t_end = time.perf_counter() + max_seconds
        while len(samples) < iters and (len(samples) < min_iters or time.perf_counter() < t_end):
            samples.append(runner.time_batch(batch))
        return samples
    finally:
        runner.release(batch)
