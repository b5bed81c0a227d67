"""The backend registry: every backend by name, and the automatic choice among them.

``auto`` tries, in order, and logs what it picked and why (also kept in ``backend.selection``):

1. ``triton-fused`` — a CUDA GPU where the fused kernels were tuned for this bundle (a cached
   tuning whose key matches: GPU, Triton version, weights…; auto never tunes, which takes minutes);
2. ``tensorrt`` — a CUDA GPU, a TensorRT module whose runtime supports it, and a plan that exists
   or can be built now for this GPU;
3. ``torch-cuda`` — any CUDA GPU torch can use;
4. the faster CPU backend, :data:`CPU_DEFAULT`: ONNX Runtime, measured faster than torch eager on
   the 2-core CPU machine with the default architecture (numbers in docs/engines.md), falling back
   to ``torch-cpu`` if it cannot start (e.g. no onnxruntime, or a read-only bundle with no ONNX file).

A forced name (``--backend NAME``) opens exactly that backend or raises its one-line reason.
"""

from __future__ import annotations

import glob
import importlib
import inspect
import logging
import os
import sys

from engines.base import Backend, BackendError
from engines.bundle import Bundle
from engines.errors import UserError

__all__ = ["BACKENDS", "AUTO_OPTIONS", "CPU_DEFAULT", "open_backend", "gpu_present"]

log = logging.getLogger(__name__)

# name -> "module:Class"; imported lazily so unavailable toolkits cost nothing.
BACKENDS: dict[str, str] = {
    "torch-cpu": "engines.torch_cpu:TorchCPUBackend",
    "onnxruntime-cpu": "engines.onnxrt:OnnxRuntimeCPUBackend",
    "torch-cuda": "engines.torch_cuda:TorchCUDABackend",
    "tensorrt": "engines.trt.runtime:TensorRTBackend",
    "triton-fused": "engines.triton.backend:TritonFusedBackend",
}
CPU_DEFAULT = "onnxruntime-cpu"
_AUTO_GPU = ("triton-fused", "tensorrt", "torch-cuda")
# Options auto mode sets for a candidate: the fused kernels only where a tuning is cached.
AUTO_OPTIONS = {"triton-fused": {"tune": False}}


def _load(name: str) -> type[Backend]:
    module, cls = BACKENDS[name].split(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError as e:
        raise BackendError(f"backend {name} unavailable: {e.name or e} module not installed") from None


def gpu_present() -> bool:
    """True if torch sees a CUDA GPU."""
    # Importing torch costs ~600 MB of resident memory; a Linux machine without an NVIDIA device
    # node (/dev/nvidia0…, or /dev/dxg under WSL) has no GPU for it to find, so don't load it there.
    if sys.platform.startswith("linux") and not (
        glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/dxg")
    ):
        return False
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _accepted(cls: type[Backend], kwargs: dict) -> dict:
    """The kwargs ``cls`` takes; auto mode passes common options (max_batch, precision) only where they fit."""
    params = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in kwargs.items() if k in params}


def _open(name: str, bundle: Bundle, kwargs: dict, selection: str) -> Backend:
    backend = _load(name)(bundle, **kwargs).activate()
    backend.selection = selection
    return backend


def open_backend(bundle: Bundle, name: str = "auto", **kwargs) -> Backend:
    """Build and activate a backend. ``auto`` picks the fastest one available here and logs why.

    Raises:
        BackendError: unknown name, or the forced backend is unavailable here (one line saying why).
    """
    if name != "auto":
        if name not in BACKENDS:
            raise BackendError(f"unknown backend {name!r}; choose from: auto, {', '.join(BACKENDS)}")
        return _open(name, bundle, kwargs, "forced")

    skipped: list[str] = []
    candidates = list(_AUTO_GPU) if gpu_present() else []
    if not candidates:
        skipped.append(f"{', '.join(_AUTO_GPU)}: no CUDA GPU found")
    candidates += [CPU_DEFAULT, "torch-cpu"]
    for cand in candidates:
        try:
            cls = _load(cand)
            why = "; ".join(skipped) or "first choice"
            options = {**_accepted(cls, kwargs), **AUTO_OPTIONS.get(cand, {})}
            backend = _open(cand, bundle, options, f"auto: {cand} ({why})")
        except UserError as e:
            skipped.append(f"{cand}: {e}")
            log.info("backend %s not used: %s", cand, e)
            continue
        log.info(
            "backend auto-selected: %s (%s, %s); %s",
            backend.name,
            backend.device,
            backend.precision,
            backend.selection,
        )
        return backend
    raise BackendError("no backend could start: " + "; ".join(skipped))
