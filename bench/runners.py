"""Things that run one batch of log-mel windows and say how long it took (model and capacity modes).

Two kinds:

- :class:`BackendRunner` goes through the engines backend protocol exactly as the runtime does
  (numpy in, numpy out, host↔device copies included), timed with the wall clock — the call only
  returns once the probabilities are on the host, so no extra synchronisation is needed.
- :class:`CudaGraphRunner` measures the model alone on the GPU: input already on the device,
  fp16/bf16 weights in channels_last, one CUDA graph captured per batch size, timed with CUDA
  events. This is the number to hold against the device's tensor peak.
- :class:`CompiledGraphRunner` is the same with BatchNorm folded into the convolutions and the
  network compiled by torch.compile (Inductor), which fuses the ReLU/residual element-wise work
  into fewer kernels: it shows how much of the gap to the peak is memory traffic between ops.
"""

from __future__ import annotations

import time

import numpy as np

from bench.common import BenchError
from engines.bundle import Bundle

__all__ = [
    "Runner",
    "BackendRunner",
    "CudaGraphRunner",
    "CompiledGraphRunner",
    "FusedTritonRunner",
    "make_runner",
    "auto_runners",
    "measure",
    "flops_per_window",
    "random_windows",
]


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
    """Runs batches of windows; ``time_batch`` returns the milliseconds of one run."""

    name = "runner"
    device = "cpu"
    precision = "fp32"
    timer = "wall"
    max_batch = 1 << 30
    device_ms: list[float]  # per timed run, device-event time where the backend reports one

    def prepare(self, batch: int) -> None:
        """Allocate inputs (and capture graphs) for ``batch``; not timed."""

    def time_batch(self, batch: int) -> float:
        raise NotImplementedError

    def release(self, batch: int) -> None:
        """Free what :meth:`prepare` made for ``batch``."""

    def close(self) -> None:
        pass

    def describe(self) -> dict:
        return {"runner": self.name, "device": self.device, "precision": self.precision, "timer": self.timer}


class BackendRunner(Runner):
    """A backend from ``engines.select`` through its public ``infer`` (what the runtime calls)."""

    def __init__(self, bundle: Bundle, backend: str, max_batch: int) -> None:
        from engines.select import open_backend

        self.backend = open_backend(bundle, backend, max_batch=max_batch)
        self.bundle = bundle
        d = self.backend.describe()
        self.name = d["name"]
        self.device = d["device"]
        self.precision = d["precision"]
        self.max_batch = d["batch_max"]
        self._inputs: dict[int, np.ndarray] = {}

    def prepare(self, batch: int) -> None:
        self._inputs[batch] = random_windows(self.bundle, batch)
        self.device_ms = []

    def time_batch(self, batch: int) -> float:
        x = self._inputs[batch]
        t0 = time.perf_counter()
        self.backend.infer(x)
        wall = (time.perf_counter() - t0) * 1e3
        dev = getattr(self.backend, "last_device_time", None)
        if dev is not None:
            self.device_ms.append(dev * 1e3)
        return wall

    def release(self, batch: int) -> None:
        self._inputs.pop(batch, None)

    def close(self) -> None:
        self.backend.deactivate()


class CudaGraphRunner(Runner):
    """The model alone on a CUDA GPU: device-resident input, channels_last, one CUDA graph per batch."""

    timer = "cuda-events"

    def __init__(self, bundle: Bundle, precision: str = "bf16", max_batch: int = 4096) -> None:
        import torch

        if not torch.cuda.is_available():
            raise BenchError("runner cuda-graph needs a CUDA GPU; torch sees none here")
        dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
        if precision not in dtypes:
            raise BenchError(f"precision {precision!r} not one of {', '.join(dtypes)}")
        self.torch = torch
        self.dtype = dtypes[precision]
        self.precision = precision
        self.name = f"cuda-graph-{precision}"
        self.device = f"cuda:{torch.cuda.current_device()}"
        self.max_batch = max_batch
        self.bundle = bundle
        torch.backends.cudnn.benchmark = True
        self.model = bundle.build_model().to("cuda", self.dtype).to(memory_format=torch.channels_last)
        self._graphs: dict[int, tuple] = {}
        self.start = torch.cuda.Event(enable_timing=True)
        self.end = torch.cuda.Event(enable_timing=True)

    def prepare(self, batch: int) -> None:
        torch = self.torch
        x = torch.from_numpy(random_windows(self.bundle, batch)).to("cuda", self.dtype)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.inference_mode(), torch.cuda.stream(side):
            for _ in range(3):  # cuDNN autotuning and lazy init happen here, not in the graph
                self.model(x)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # A private memory pool per graph: graphs are released batch by batch, and capturing into
        # a shared pool whose last graph was freed trips an allocator assert (torch 2.11,
        # "it->second->use_count > 0").
        with torch.inference_mode(), torch.cuda.graph(graph):
            out = self.model(x)
        self._graphs[batch] = (graph, x, out)

    def time_batch(self, batch: int) -> float:
        graph = self._graphs[batch][0]
        self.start.record()
        graph.replay()
        self.end.record()
        self.end.synchronize()
        return float(self.start.elapsed_time(self.end))

    def release(self, batch: int) -> None:
        self._graphs.pop(batch, None)
        self.torch.cuda.empty_cache()

    def close(self) -> None:
        self._graphs.clear()
        self.model = None


class CompiledGraphRunner(CudaGraphRunner):
    """:class:`CudaGraphRunner` over a BatchNorm-folded, ``torch.compile``'d copy of the model.

    Compilation happens in :meth:`prepare` (once per batch size: shapes are static), outside the
    timed runs; the compiled kernels are then captured in a CUDA graph like the eager ones.
    """

    def __init__(
        self, bundle: Bundle, precision: str = "bf16", max_batch: int = 4096, mode: str = "default"
    ) -> None:
        super().__init__(bundle, precision, max_batch)
        from torch.fx.experimental.optimization import fuse

        torch = self.torch
        # Fold in fp32 (exact), then cast: folding in half precision would round twice.
        folded = fuse(bundle.build_model().eval())
        folded = folded.to("cuda", self.dtype).to(memory_format=torch.channels_last)
        self.model = torch.compile(folded, mode=mode, dynamic=False)
        self.name = f"compiled-graph-{precision}" + ("-autotune" if mode != "default" else "")
        self.mode = mode

    def describe(self) -> dict:
        return {**super().describe(), "compile_mode": self.mode, "batchnorm_folded": True}


class FusedTritonRunner(CudaGraphRunner):
    """:class:`CudaGraphRunner` over ``engines.triton_resnet.FusedResNet``: the network as fused
    Triton kernels (stem + pool in one, implicit-GEMM convolutions with bias/residual/ReLU/shortcut
    in the epilogue). Tiles are tuned per batch size in :meth:`prepare`, outside the timed runs;
    with ``cudnn=True`` cuDNN's fused conv+bias(+add)+ReLU competes per convolution too.

    Every prepared batch is also checked against the fp32 torch model (on the CPU, first 16
    windows): a fast number from wrong kernels must not reach a results file.
    """

    max_prob_diff = 0.05

    def __init__(
        self, bundle: Bundle, precision: str = "bf16", max_batch: int = 4096, cudnn: bool = False
    ) -> None:
        super().__init__(bundle, precision, max_batch)
        if precision == "fp32":
            raise BenchError("runner triton-fused runs fp16 or bf16 (tensor-core kernels), not fp32")
        from engines.triton_resnet import FusedResNet

        self.model = FusedResNet(bundle.build_model(), "cuda", self.dtype, cudnn_candidates=cudnn)
        self.name = f"triton-fused-{precision}" + ("-cudnn" if cudnn else "")
        self.tuning: dict[int, list] = {}
        self.prob_diff: dict[int, float] = {}
        self._reference = bundle.build_model().eval()

    def prepare(self, batch: int) -> None:
        torch = self.torch
        windows = random_windows(self.bundle, batch)
        x = torch.from_numpy(windows).to("cuda", self.dtype)
        with torch.inference_mode():
            self.tuning[batch] = self.model.tune(x)
            got = torch.sigmoid(self.model(x)[0][:16]).cpu()
            ref = torch.sigmoid(self._reference(torch.from_numpy(windows[:16]))[0])
        self.prob_diff[batch] = float((got - ref).abs().max())
        if self.prob_diff[batch] > self.max_prob_diff:
            raise BenchError(
                f"runner {self.name}: batch {batch} differs from the fp32 torch model by "
                f"{self.prob_diff[batch]:.3g} in probability (allowed {self.max_prob_diff})"
            )
        super().prepare(batch)

    def describe(self) -> dict:
        return {
            **super().describe(),
            "kernels": "triton fused (engines/triton_resnet.py)"
            + (" + cuDNN fused ops where faster" if self.model.cudnn else ""),
            "batchnorm_folded": True,
            "max_abs_prob_diff_vs_fp32": max(self.prob_diff.values(), default=None),
            "tiles": {
                str(b): [{k: str(v[0]) for k, v in entry.items() if k != "block"} for entry in report]
                for b, report in self.tuning.items()
            },
        }


def make_runner(bundle: Bundle, spec: str, max_batch: int) -> Runner:
    """``cuda-graph-bf16`` / ``cuda-graph-fp16`` / ``cuda-graph-fp32``, ``compiled-graph-<precision>``
    (``-autotune``: Inductor's max-autotune, which times kernel variants while compiling),
    ``triton-fused-<precision>`` (``-cudnn``: cuDNN's fused ops compete per layer), else an engines
    backend name."""
    if spec.startswith("compiled-graph"):
        rest = spec.removeprefix("compiled-graph").lstrip("-")
        autotune = rest.endswith("autotune")
        precision = rest.removesuffix("autotune").rstrip("-") or "bf16"
        mode = "max-autotune-no-cudagraphs" if autotune else "default"
        return CompiledGraphRunner(bundle, precision, max_batch, mode)
    if spec.startswith("triton-fused"):
        rest = spec.removeprefix("triton-fused").lstrip("-")
        cudnn = rest.endswith("cudnn")
        precision = rest.removesuffix("cudnn").rstrip("-") or "bf16"
        return FusedTritonRunner(bundle, precision, max_batch, cudnn)
    if spec.startswith("cuda-graph"):
        precision = spec.removeprefix("cuda-graph").lstrip("-") or "bf16"
        return CudaGraphRunner(bundle, precision, max_batch)
    return BackendRunner(bundle, spec, max_batch)


def auto_runners(
    bundle: Bundle, max_batch: int, gpu: bool, graphs: bool = True
) -> tuple[list[Runner], list[str]]:
    """Every runner that opens here: on a GPU machine the CUDA-graph runners and the GPU backends,
    else the CPU backends. Returns the runners and one note per backend that could not open."""
    from engines.errors import UserError
    from engines.select import BACKENDS

    runners: list[Runner] = []
    notes: list[str] = []
    if gpu and graphs:
        runners += [CudaGraphRunner(bundle, p, max_batch) for p in ("bf16", "fp16")]
    for name in BACKENDS:
        try:
            r = BackendRunner(bundle, name, max_batch)
        except (UserError, ImportError, OSError, RuntimeError) as e:
            notes.append(
                f"backend {name} not available here: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
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
