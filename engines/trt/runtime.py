"""The TensorRT backend: deserialise a cached plan and run it with ``execute_async_v3``.

Activation finds (or builds, see :func:`engines.trt.builder.compile_bundle`) the plan keyed for
this GPU, checks its key and its I/O tensors, creates one execution context, and binds fixed
device buffers (:class:`engines.cuda_io.CudaIO`) with ``set_tensor_address``. Each call sets the
input shape, enqueues on the backend's stream and waits on one event. With ``cuda_graphs`` the
enqueue is captured per batch size (after one plain run, as TensorRT requires after a shape
change) and replayed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from engines.base import Backend, BackendError, Inference
from engines.cuda_io import CudaIO, require_cuda
from engines.onnx_export import INPUT_NAME, OUTPUT_NAMES
from engines.trt.api import TrtApi, load_trt
from engines.trt.builder import compile_bundle, make_logger
from engines.trt.keys import plan_artifact, resolve_target

__all__ = ["TensorRTBackend", "PlanError", "check_plan_header", "deserialize_plan"]

log = logging.getLogger(__name__)


class PlanError(BackendError):
    """A TensorRT plan file that is corrupt, truncated or not for this runtime."""


def check_plan_header(api: TrtApi, data: bytes, path: Path) -> None:
    """Reject files whose header is not a plan (works without a GPU on TensorRT-RTX)."""
    trt = api.module
    runtime = trt.Runtime(make_logger(api))
    header = getattr(runtime, "engine_header_size", 0)
    if len(data) < max(header, 1):
        raise PlanError(f"TensorRT plan {path} is truncated ({len(data)} bytes)")
    if hasattr(runtime, "get_engine_validity"):
        _validity, diag = runtime.get_engine_validity(data)
        if int(diag) & int(trt.EngineInvalidityDiagnostics.MALFORMED_ENGINE):
            raise PlanError(f"TensorRT plan {path} is corrupt (malformed header)")
        if int(diag) & int(trt.EngineInvalidityDiagnostics.VERSION_MISMATCH):
            raise PlanError(
                f"TensorRT plan {path} was built by another {api.flavour} version than {api.version}"
            )


def deserialize_plan(api: TrtApi, path: Path):
    """Read and deserialise a plan; returns ``(runtime, engine)``. Needs a CUDA GPU.

    Raises:
        PlanError: unreadable, truncated or corrupt plan, or one this GPU cannot run.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise PlanError(f"cannot read TensorRT plan {path}: {e.strerror}") from None
    check_plan_header(api, data, path)
    logger = make_logger(api)
    runtime = api.module.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        why = logger.errors[-1] if logger.errors else "no details"
        raise PlanError(
            f"cannot deserialise TensorRT plan {path} (corrupt, truncated or built for another GPU): {why}"
        )
    return runtime, engine


def engine_io(api: TrtApi, engine) -> dict[str, tuple[str, tuple[int, ...], str]]:
    """name → (mode, shape, dtype) of a deserialised engine's I/O tensors."""
    trt = api.module
    out = {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        mode = "input" if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "output"
        out[name] = (
            mode,
            tuple(engine.get_tensor_shape(name)),
            str(engine.get_tensor_dtype(name)).split(".")[-1],
        )
    return out


class TensorRTBackend(Backend):
    name = "tensorrt"
    overlaps_host_work = True

    def __init__(
        self,
        bundle,
        max_batch: int = 64,
        precision: str = "fp16",
        device: int = 0,
        flavour: str = "auto",
        cuda_graphs: bool = True,
        build: bool = True,
        plan_path: str | Path | None = None,
    ) -> None:
        super().__init__(bundle, max_batch)
        self.precision = precision
        self.device_index = device
        self.flavour = flavour
        self.cuda_graphs = cuda_graphs
        self.build = build  # False: use an existing plan only (no build at start-up)
        self.plan_path = Path(plan_path) if plan_path else None  # explicit plan: no cache lookup
        self.device = f"cuda:{device}"
        self._graphs: dict[int, object] = {}

    def activate_impl(self) -> None:
        import torch

        dev = require_cuda(self.name, self.device_index)
        api = load_trt(self.flavour)
        cc = torch.cuda.get_device_capability(dev)
        why = api.runs_on(cc)
        if why:
            raise BackendError(f"backend {self.name} unavailable on {torch.cuda.get_device_name(dev)}: {why}")
        if self.plan_path is None:
            with torch.cuda.device(dev):
                if self.build:
                    artifact = compile_bundle(
                        self.bundle, self.precision, self.max_batch, api=api, target="current"
                    )
                else:
                    target = resolve_target(api, "current", self.device_index, self.precision)
                    artifact = plan_artifact(self.bundle, api, target, self.precision, (1, self.max_batch))
                    if artifact.problem() is not None:
                        raise BackendError(
                            f"no usable TensorRT plan {artifact.path.name}: {artifact.problem()}; run `rt-tagger compile`"
                        )
            self.plan_path = artifact.path
        with torch.cuda.device(dev):
            self._runtime, self.engine = deserialize_plan(api, self.plan_path)
        io = engine_io(api, self.engine)
        want = {INPUT_NAME: "input", **{n: "output" for n in OUTPUT_NAMES}}
        got = {k: v[0] for k, v in io.items()}
        if got != want or any(v[2] != "FLOAT" for v in io.values()):
            raise PlanError(f"TensorRT plan {self.plan_path} has I/O {io}, expected float32 {want}")
        _, pmax, _ = self.engine.get_tensor_profile_shape(INPUT_NAME, 0)
        self.max_batch = min(self.max_batch, int(pmax[0]))
        self.api = api
        self.context = self.engine.create_execution_context()
        m = self.bundle.manifest.model
        self.io = CudaIO(
            dev, self.max_batch, self.input_shape, {"probabilities": m.n_tags, "embeddings": m.embed_dim}
        )
        self.context.set_tensor_address(INPUT_NAME, self.io.dev_in.data_ptr())
        for name in OUTPUT_NAMES:
            self.context.set_tensor_address(name, self.io.dev_out[name].data_ptr())
        self._shape = None
        self.device = f"cuda:{dev.index}"
        self._torch = torch

    def _enqueue(self, b: int) -> None:
        if self._shape != b:
            self.context.set_input_shape(INPUT_NAME, (b, *self.input_shape))
            self._shape = b
        if not self.context.execute_async_v3(self.io.stream.cuda_stream):
            raise BackendError(f"TensorRT execute_async_v3 failed at batch {b}")

    def infer_impl(self, mel: np.ndarray, while_waiting=None) -> Inference:
        torch = self._torch
        b = mel.shape[0]
        self.io.upload(mel)
        if self.cuda_graphs and b in self._graphs:
            if self._shape != b:
                self.context.set_input_shape(INPUT_NAME, (b, *self.input_shape))
                self._shape = b
            with torch.cuda.stream(self.io.stream):
                self._graphs[b].replay()
        else:
            self._enqueue(b)
            if self.cuda_graphs:  # capture after this plain run (TensorRT needs one after a shape change)
                self.io.stream.synchronize()
                graph = torch.cuda.CUDAGraph()
                try:
                    with torch.cuda.graph(graph, stream=self.io.stream):
                        self._enqueue(b)
                    self._graphs[b] = graph
                except RuntimeError as e:  # some plans are not capturable; run them plainly
                    log.warning("TensorRT CUDA graph capture failed at batch %d (%s); running without", b, e)
                    self.cuda_graphs = False
        host, self.last_device_time = self.io.download(self.io.dev_out, b, while_waiting)
        return Inference(host["probabilities"], host["embeddings"])

    def deactivate_impl(self) -> None:
        self._graphs.clear()
        self.context = None
        self.engine = None
        self._runtime = None
        self.io = None
