"""Which TensorRT module is installed, behind one small description of it."""

from __future__ import annotations

import importlib
import os
import re
from dataclasses import dataclass
from types import ModuleType

from engines.base import BackendError

__all__ = ["FLAVOURS", "TrtApi", "load_trt", "ENV_FLAVOUR"]

# flavour -> module name; "auto" tries them in this order.
FLAVOURS: dict[str, str] = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx_bindings"}
ENV_FLAVOUR = "RT_TAGGER_TRT_FLAVOUR"


@dataclass(frozen=True)
class TrtApi:
    """An imported TensorRT module and what differs between flavours."""

    module: ModuleType
    flavour: str  # "tensorrt" | "tensorrt-rtx"
    version: str

    @property
    def is_rtx(self) -> bool:
        return self.flavour == "tensorrt-rtx"

    @property
    def strongly_typed_only(self) -> bool:
        """RTX networks are strongly typed: precision comes from the ONNX graph."""
        return self.is_rtx

    @property
    def has_timing_cache(self) -> bool:
        """Timing caches are no-ops in TensorRT-RTX ≥ 1.2 (it warns when asked for one)."""
        return not self.is_rtx

    def build_targets(self) -> list[tuple[int, int]] | None:
        """Compute capabilities an RTX build can target (from its enum); None: full TensorRT builds for the GPU present."""
        if not self.is_rtx:
            return None
        out = []
        for name in self.module.ComputeCapability.__members__:
            m = re.fullmatch(r"SM(\d+)(\d)", name)
            if m:
                out.append((int(m.group(1)), int(m.group(2))))
        return sorted(out)

    def cc_enum(self, cc: tuple[int, int]):
        return getattr(self.module.ComputeCapability, f"SM{cc[0]}{cc[1]}")

    def runs_on(self, cc: tuple[int, int]) -> str | None:
        """None if plans of this flavour can run on compute capability ``cc``, else why not."""
        targets = self.build_targets()
        if targets is not None and cc not in targets:
            listed = ", ".join(f"{a}.{b}" for a, b in targets)
            return f"TensorRT-RTX {self.version} does not run on compute capability {cc[0]}.{cc[1]} (it supports {listed})"
        return None


def load_trt(flavour: str = "auto") -> TrtApi:
    """Import TensorRT: ``flavour`` is auto, tensorrt or tensorrt-rtx (env ``RT_TAGGER_TRT_FLAVOUR``).

    Raises:
        BackendError: no such module is installed (one line, with the install hint).
    """
    flavour = os.environ.get(ENV_FLAVOUR, flavour) if flavour == "auto" else flavour
    if flavour != "auto" and flavour not in FLAVOURS:
        raise BackendError(f"unknown TensorRT flavour {flavour!r}; choose from auto, {', '.join(FLAVOURS)}")
    names = list(FLAVOURS) if flavour == "auto" else [flavour]
    errors = []
    for name in names:
        try:
            module = importlib.import_module(FLAVOURS[name])
            version = str(module.__version__)
        except Exception as e:  # noqa: BLE001 - the registry's "tensorrt" stubs fail in odd ways
            errors.append(f"{FLAVOURS[name]}: {type(e).__name__}")
            continue
        return TrtApi(module, name, version)
    raise BackendError(
        "tensorrt module not installed (" + "; ".join(errors) + "); "
        "pip install 'rt-tagger[tensorrt-rtx]' for TensorRT-RTX, or NVIDIA's tensorrt wheels"
    )
