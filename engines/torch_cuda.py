"""Torch on a CUDA GPU: fp32/fp16/bf16 weights, channels_last, one CUDA graph per batch size used.

Why these choices:
- precision by casting the weights (``.half()`` / ``.bfloat16()``) rather than autocast: one dtype
  everywhere makes the captured graph smaller and avoids per-op cast kernels; the sigmoid and the
  outputs are computed in float32.
- channels_last: NHWC convolutions hit the tensor-core kernels without layout transposes.
- CUDA graphs (:class:`engines.cuda_graphs.GraphCache`): at batch 1 this network is launch-bound
  (≈60 small kernels); replaying a graph turns them into one launch. A graph is captured the first
  time a batch size is seen and replayed after.
- ``compile`` (off by default; bench's ``compiled-graph-*`` runners): BatchNorm folded into the
  convolutions (in fp32, then cast) and the network compiled by ``torch.compile`` (Inductor) with
  static shapes, which fuses the element-wise work into fewer kernels; compilation happens in the
  warm-up before each batch size's capture.
- fp32 means IEEE fp32: TF32 is switched off for convolutions and matmuls while this backend
  runs or captures (cuDNN allows TF32 by default, which moved probabilities by ~1e-4 on an H200).
``last_device_time`` is the CUDA-event time of copy-in + compute + copy-out.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from engines.base import Backend, BackendError, Inference
from engines.cuda_graphs import GraphCache, infer_on_device
from engines.cuda_io import CudaIO, require_cuda

__all__ = ["TorchCUDABackend", "PRECISIONS"]

PRECISIONS = ("fp32", "fp16", "bf16")


class TorchCUDABackend(Backend):
    name = "torch-cuda"
    overlaps_host_work = True

    def __init__(
        self,
        bundle,
        max_batch: int = 64,
        precision: str = "fp16",
        device: int = 0,
        channels_last: bool = True,
        cuda_graphs: bool = True,
        compile: str | None = None,
    ) -> None:
        super().__init__(bundle, max_batch)
        if precision not in PRECISIONS:
            raise BackendError(
                f"backend {self.name}: precision must be one of {', '.join(PRECISIONS)}, got {precision!r}"
            )
        self.precision = precision
        self.device_index = device
        self.channels_last = channels_last
        self.cuda_graphs = cuda_graphs
        self.compile = compile  # a torch.compile mode ("default", "max-autotune-no-cudagraphs"), or None
        self.device = f"cuda:{device}"
        self.graphs: GraphCache | None = None

    def activate_impl(self) -> None:
        import torch

        dev = require_cuda(self.name, self.device_index)
        if self.precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise BackendError(
                f"backend {self.name}: bf16 is not supported on {torch.cuda.get_device_name(dev)}"
            )
        self._torch = torch
        self._dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.precision]
        model = self.bundle.build_model().eval()
        if self.compile:
            from torch.fx.experimental.optimization import fuse

            model = fuse(model)  # in fp32: folding in half precision would round twice
        model = model.to(dev, self._dtype)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = torch.compile(model, mode=self.compile, dynamic=False) if self.compile else model
        m = self.bundle.manifest.model
        self.io = CudaIO(
            dev, self.max_batch, self.input_shape, {"probabilities": m.n_tags, "embeddings": m.embed_dim}
        )
        if self.cuda_graphs:
            self.graphs = GraphCache(self._forward, self.io.dev_in, self.io.stream, self._math_mode)
        self.device = f"cuda:{dev.index}"
        self.device_input = True

    @contextmanager
    def _math_mode(self) -> Iterator[None]:
        """No TF32 for fp32 (restored afterwards: other code in the process keeps its settings)."""
        torch = self._torch
        if self.precision != "fp32":
            yield
            return
        cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
        saved = matmul.allow_tf32
        matmul.allow_tf32 = False
        try:
            with cudnn.flags(
                enabled=cudnn.enabled,
                benchmark=cudnn.benchmark,
                deterministic=cudnn.deterministic,
                allow_tf32=False,
            ):
                yield
        finally:
            matmul.allow_tf32 = saved

    def _forward(self, x):
        logits, emb = self.model(x.to(self._dtype))
        return {"probabilities": self._torch.sigmoid(logits.float()), "embeddings": emb.float()}

    def describe(self) -> dict:
        return {**super().describe(), **({"compile": self.compile} if self.compile else {})}

    def infer_impl(self, mel: np.ndarray, while_waiting=None) -> Inference:
        host, self.last_device_time = infer_on_device(
            self._torch, mel, self.io, self._forward, self.graphs, self._math_mode, while_waiting
        )
        return Inference(host["probabilities"], host["embeddings"])

    def deactivate_impl(self) -> None:
        if self.graphs is not None:
            self.graphs.clear()
            self.graphs = None
        self.model = None
        self.io = None
