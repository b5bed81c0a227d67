"""What a TensorRT plan depends on, and where it is cached.

A plan is keyed by (weights sha256, TensorRT flavour + version, GPU name + compute capability —
or, for a TensorRT-RTX build on a machine without a GPU, the list of target compute capabilities —
precision, batch range, ONNX opset). The file name carries the target, precision and batch range
so several GPUs can share one bundle directory; the key file holds the whole key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from engines.base import BackendError
from engines.bundle import Bundle
from engines.cache import Artifact, bundle_artifact
from engines.onnx_export import DEFAULT_OPSET
from engines.trt.api import TrtApi

__all__ = ["Target", "cuda_gpu", "resolve_target", "plan_artifact"]


@dataclass(frozen=True)
class Target:
    """What a plan is built for: one GPU (name, cc) or, RTX without a GPU, a list of ccs."""

    ccs: tuple[tuple[int, int], ...]
    gpu: str | None = None  # the GPU's name when built on it

    def key(self) -> dict:
        if self.gpu is not None:
            return {"gpu": self.gpu, "compute_capability": f"{self.ccs[0][0]}.{self.ccs[0][1]}"}
        return {"build_target": [f"{a}.{b}" for a, b in self.ccs]}

    def slug(self) -> str:
        ccs = "-".join(f"sm{a}{b}" for a, b in self.ccs)
        if self.gpu is None:
            return ccs
        return ccs + "-" + re.sub(r"[^a-z0-9]+", "-", self.gpu.lower()).strip("-")


def cuda_gpu(device: int = 0) -> tuple[str, tuple[int, int]] | None:
    """(name, compute capability) of CUDA device ``device``, or None without a usable GPU."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(device)
    return props.name, (props.major, props.minor)


def _parse_ccs(text: str) -> tuple[tuple[int, int], ...]:
    out = []
    for part in text.replace("+", ",").split(","):
        m = re.fullmatch(r"\s*(?:sm_?)?(\d+)\.?(\d)\s*", part.lower())
        if not m:
            raise BackendError(f"bad compute capability {part!r} in --target (e.g. sm89 or 8.9)")
        out.append((int(m.group(1)), int(m.group(2))))
    return tuple(sorted(set(out)))


# TensorRT-RTX 1.7 cannot compile FP32 GEMMs for Turing (Myelin: "FP32 GEMM is not supported").
_NO_FP32 = {(7, 5)}


def resolve_target(api: TrtApi, target: str = "auto", device: int = 0, precision: str = "fp16") -> Target:
    """The plan target: ``auto`` (this GPU, else every cc RTX supports), ``current`` or a cc list."""
    gpu = cuda_gpu(device)
    if target in ("auto", "current"):
        if gpu is not None:
            name, cc = gpu
            why = api.runs_on(cc)
            if why:
                raise BackendError(f"backend tensorrt unavailable on {name}: {why}")
            return Target((cc,), gpu=name)
        if target == "current" or not api.is_rtx:
            raise BackendError(
                f"backend tensorrt unavailable: no CUDA GPU found to build a {api.flavour} plan for"
            )
        ccs = api.build_targets()
        if precision == "fp32":
            ccs = [cc for cc in ccs if cc not in _NO_FP32]
        return Target(tuple(ccs))
    if not api.is_rtx:
        raise BackendError(
            "an explicit --target list needs TensorRT-RTX; full TensorRT builds for the GPU present"
        )
    ccs = _parse_ccs(target)
    for cc in ccs:
        why = api.runs_on(cc)
        if why:
            raise BackendError(why)
    return Target(ccs)


def plan_artifact(
    bundle: Bundle,
    api: TrtApi,
    target: Target,
    precision: str,
    batch_range: tuple[int, int],
    opset: int = DEFAULT_OPSET,
) -> Artifact:
    """Where this plan lives and the key it must carry."""
    lo, hi = batch_range
    key = {
        "kind": "tensorrt-plan",
        "flavour": api.flavour,
        "tensorrt_version": api.version,
        **target.key(),
        "precision": precision,
        "batch_min": int(lo),
        "batch_max": int(hi),
        "onnx_opset": int(opset),
    }
    name = f"tagger.{api.flavour}-{api.version}.{target.slug()}.{precision}.b{lo}-{hi}.plan"
    return bundle_artifact(bundle, name, key)  # adds weights sha256 and manifest digest
