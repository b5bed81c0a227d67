"""The backend protocol: every way to run a bundle looks the same to its callers.

Shape (after Polygraphy's BaseRunner): the public verbs ``activate``, ``infer``, ``deactivate``
and the context manager live here and do the shared checks once; a backend overrides only the
``*_impl`` methods. ``infer`` records ``last_inference_time`` so bench/ reads every backend alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from engines.bundle import Bundle
from engines.errors import UserError

__all__ = ["Backend", "BackendError", "Inference"]


class BackendError(UserError):
    """A backend that cannot run here or cannot run this input; one line for the user."""


@dataclass
class Inference:
    probabilities: np.ndarray  # (B, n_tags) float32 in [0, 1]
    embeddings: np.ndarray  # (B, embed_dim) float32


class Backend:
    """Base class. Subclasses set ``name`` and implement ``activate_impl``/``infer_impl``."""

    name: str = "base"
    # infer_impl takes ``while_waiting``: host work it runs after enqueuing the model on the device
    # and before waiting for it (the GPU backends); other backends never call it
    overlaps_host_work: bool = False

    def __init__(self, bundle: Bundle, max_batch: int = 64) -> None:
        self.bundle = bundle
        spec = bundle.frontend
        self.input_shape = (spec.n_mels, spec.window_frames)
        self._silence = np.zeros((1, *self.input_shape), dtype=np.float32)  # what prewarm() runs
        self.max_batch = int(max_batch)
        self.is_active = False
        self.last_inference_time: float | None = None  # seconds, wall clock around infer_impl
        self.last_device_time: float | None = None  # seconds by device events (GPU backends only)
        self.device_time_total = 0.0  # the sum of last_device_time over every infer()
        self.selection = "forced"  # how open_backend chose it ("forced" or "auto: <why>")
        self.device = "cpu"
        self.precision = "fp32"
        self.device_input = False  # infer_impl also takes a float32 torch tensor on self.device

    # -- public verbs -------------------------------------------------------------------------
    def activate(self) -> Backend:
        if self.is_active:
            return self
        self.activate_impl()
        self.is_active = True
        return self

    def deactivate(self) -> None:
        if self.is_active:
            self.deactivate_impl()
            self.is_active = False

    def infer(self, mel, while_waiting: Callable[[], None] | None = None) -> Inference:
        """Log-mel windows ``(B, n_mels, window_frames)`` float32 → probabilities and embeddings.

        ``mel`` is a numpy array, or a torch tensor: a backend with ``device_input`` takes a
        tensor on its own device as it is (a server's GPU front end gathers windows there); any
        other tensor is copied to the host first. ``while_waiting`` is host work a GPU backend
        (``overlaps_host_work``) runs while the device computes; other backends skip it: it must
        not be needed for the result.
        """
        if not isinstance(mel, np.ndarray):
            if not (self.device_input and str(mel.device) == self.device):
                mel = mel.cpu().numpy()
        if not self.is_active:
            raise BackendError(f"backend {self.name} is not active; call activate() first")
        if mel.ndim != 3 or mel.shape[1:] != self.input_shape:
            raise BackendError(
                f"input shape {tuple(mel.shape)} != (B, {self.input_shape[0]}, {self.input_shape[1]})"
            )
        lo, hi = self.batch_range
        if not lo <= mel.shape[0] <= hi:
            raise BackendError(f"batch {mel.shape[0]} outside the supported range {lo}..{hi} of {self.name}")
        if isinstance(mel, np.ndarray):
            mel = np.ascontiguousarray(mel, dtype=np.float32)
        t0 = time.perf_counter()
        if while_waiting is not None and self.overlaps_host_work:
            out = self.infer_impl(mel, while_waiting)
        else:
            out = self.infer_impl(mel)
        self.last_inference_time = time.perf_counter() - t0
        if self.last_device_time is not None:
            self.device_time_total += self.last_device_time
        return out

    @property
    def on_gpu(self) -> bool:
        """Whether the model runs on a GPU (a CUDA device)."""
        return self.device.startswith("cuda")

    def prewarm(self) -> None:
        """Run the model once on silence and discard the result, outside the timing counters.

        A stream calls it while it waits for the block that completes its next window (setting
        ``prewarm_ms``): a GPU left idle between windows drops to low clocks, and the next
        window's launch and kernels then take about three times as long. No-op on the CPU.
        """
        if not self.on_gpu:
            return
        self.infer_impl(self._silence)

    @property
    def batch_range(self) -> tuple[int, int]:
        return (1, self.max_batch)

    def describe(self) -> dict:
        lo, hi = self.batch_range
        return {
            "name": self.name,
            "device": self.device,
            "precision": self.precision,
            "batch_min": lo,
            "batch_max": hi,
        }

    def __enter__(self) -> Backend:
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    # -- for subclasses -----------------------------------------------------------------------
    def activate_impl(self) -> None:
        raise NotImplementedError

    def infer_impl(self, mel: np.ndarray) -> Inference:
        raise NotImplementedError

    def deactivate_impl(self) -> None:
        pass
