"""ONNX Runtime on the CPU: the exported graph under session options tuned for small machines.

Session options (why):
- ``intra_op_num_threads`` = the cores this process may use (2 here): convolutions split across
  cores; ``inter_op_num_threads`` = 1 with sequential execution, since the graph is a chain.
- ``ORT_ENABLE_ALL`` graph optimisation: conv+BN+ReLU fusion and NCHWc layout transforms.
- spinning off by default: an idle worker that spins steals a core from the audio/framing threads
  of the streaming path, which matters more on 2 cores than the few µs a wake-up costs.
"""

from __future__ import annotations

import os

import numpy as np

from engines.base import Backend, BackendError, Inference
from engines.onnx_export import (
    DEFAULT_OPSET,
    INPUT_NAME,
    OUTPUT_NAMES,
    PRECISIONS,
    OnnxError,
    check_onnx_file,
    onnx_artifact,
)
from engines.runtime_artifacts import ensure_runtime_artifacts

__all__ = ["OnnxRuntimeCPUBackend", "available_cores"]


def available_cores() -> int:
    """Cores this process may run on (affinity-aware)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class OnnxRuntimeCPUBackend(Backend):
    """ONNX Runtime CPUExecutionProvider over ``compiled/tagger.<precision>.opset<N>.onnx``."""

    name = "onnxruntime-cpu"

    def __init__(
        self,
        bundle,
        max_batch: int = 64,
        precision: str = "fp32",
        threads: int | None = None,
        spinning: bool = False,
        opset: int = DEFAULT_OPSET,
        onnx_path: str | os.PathLike | None = None,
    ) -> None:
        super().__init__(bundle, max_batch)
        if precision not in PRECISIONS:
            raise BackendError(
                f"backend {self.name}: precision must be one of {', '.join(PRECISIONS)}, got {precision!r}"
            )
        self.precision = precision
        self.threads = threads or available_cores()
        self.spinning = spinning
        self.opset = opset
        self.onnx_path = onnx_path  # an explicit file skips the bundle's cache (tests, tools)
        self.session = None

    def activate_impl(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendError(f"backend {self.name} unavailable: onnxruntime module not installed") from None
        path = self.onnx_path
        if path is None:
            # A missing graph is exported by a child process: this one stays free of torch.
            ensure_runtime_artifacts(self.bundle, self.precision, self.opset)
            path = onnx_artifact(self.bundle, self.precision, self.opset).path
        check_onnx_file(path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
        opts.log_severity_level = 3  # errors only: ORT warns about unused initializers otherwise
        try:
            self.session = ort.InferenceSession(
                str(path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # noqa: BLE001 - ORT raises its own Fail/InvalidGraph types
            raise OnnxError(f"ONNX Runtime cannot load {path}: {str(e).splitlines()[0]}") from None

    def infer_impl(self, mel: np.ndarray) -> Inference:
        probs, emb = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: mel})
        return Inference(probs, emb)

    def deactivate_impl(self) -> None:
        self.session = None
