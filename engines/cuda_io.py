"""Pinned host buffers, device buffers, a stream and timing events for the GPU backends.

Both GPU backends (torch CUDA and TensorRT) move windows the same way: numpy → pinned host buffer
→ ``non_blocking`` copy to a fixed device buffer on the backend's own stream → compute → copies
back into pinned buffers → one event sync. Buffers are allocated once for ``max_batch`` and used
as prefixes, so device addresses stay fixed (what CUDA graphs and TensorRT tensor addresses need).
torch.cuda does the CUDA work, so there is no cuda-python dependency.
"""

from __future__ import annotations

import numpy as np

from engines.base import BackendError

__all__ = ["CudaIO", "require_cuda"]


def require_cuda(backend_name: str, device: int = 0):
    """Return ``torch.device`` for ``device`` or raise the one-line "unavailable" error."""
    try:
        import torch
    except ImportError:
        raise BackendError(f"backend {backend_name} unavailable: torch is not installed") from None
    if not torch.cuda.is_available():
        raise BackendError(f"backend {backend_name} unavailable: no CUDA GPU found")
    if device >= torch.cuda.device_count():
        raise BackendError(
            f"backend {backend_name} unavailable: CUDA device {device} not found ({torch.cuda.device_count()} present)"
        )
    return torch.device("cuda", device)


class CudaIO:
    """Fixed host/device buffers for ``(B, *in_shape)`` float32 in and named ``(B, dim)`` float32 out."""

    def __init__(self, device, max_batch: int, in_shape: tuple[int, ...], out_dims: dict[str, int]) -> None:
        import torch

        self.torch = torch
        f32 = torch.float32
        self.host_in = torch.empty((max_batch, *in_shape), dtype=f32, pin_memory=True)
        self.dev_in = torch.zeros((max_batch, *in_shape), dtype=f32, device=device)  # padded rows: finite
        self.host_out = {
            k: torch.empty((max_batch, d), dtype=f32, pin_memory=True) for k, d in out_dims.items()
        }
        self.dev_out = {k: torch.empty((max_batch, d), dtype=f32, device=device) for k, d in out_dims.items()}
        self.stream = torch.cuda.Stream(device)
        # numpy views of the pinned buffers, made once: slicing a tensor per call costs more
        self._host_in_np = self.host_in.numpy()
        self._host_out_np = {k: t.numpy() for k, t in self.host_out.items()}
        self.start = torch.cuda.Event(enable_timing=True)
        self.end = torch.cuda.Event(enable_timing=True)

    def upload(self, mel):
        """Copy ``mel`` into the pinned buffer and enqueue its copy to the device; returns the device view.

        A torch tensor already on the device is copied device to device, after the work that
        produced it on the current stream.
        """
        b = mel.shape[0]
        if isinstance(mel, np.ndarray):
            self.stage(mel)
            src = self.host_in[:b]
        else:
            self.stream.wait_stream(self.torch.cuda.current_stream(self.stream.device))
            src = mel
        self.start.record(self.stream)
        with self.torch.cuda.stream(self.stream):
            self.dev_in[:b].copy_(src, non_blocking=True)
        return self.dev_in[:b]

    def stage(self, mel: np.ndarray) -> None:
        """Copy ``mel`` into the pinned input buffer only (a graph holding the copy moves it)."""
        self._host_in_np[: mel.shape[0]] = mel

    def collect(self, outs: dict, b: int, while_waiting=None) -> tuple[dict[str, np.ndarray], float]:
        """After work that copied ``outs``' first ``b`` rows into the pinned buffers on the stream
        (the ``start`` event recorded before it): run ``while_waiting`` (host work, if given), wait,
        and return numpy copies and device seconds."""
        self.end.record(self.stream)
        if while_waiting is not None:
            while_waiting()
        self.end.synchronize()
        seconds = self.start.elapsed_time(self.end) / 1e3
        return {k: self._host_out_np[k][:b].copy() for k in outs}, seconds

    def download(self, outs: dict, b: int, while_waiting=None) -> tuple[dict[str, np.ndarray], float]:
        """Enqueue device → pinned copies of ``outs``, then :meth:`collect`."""
        with self.torch.cuda.stream(self.stream):
            for k, t in outs.items():
                self.host_out[k][:b].copy_(t[:b], non_blocking=True)
        return self.collect(outs, b, while_waiting)
