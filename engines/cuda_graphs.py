"""One CUDA graph per batch size: the capture the torch GPU backends share (and bench times).

At small batch these networks are launch-bound (tens of small kernels); replaying a captured
graph turns them into one launch. :class:`GraphCache` captures ``forward(inputs[:b])`` the first
time batch ``b`` is asked for, after ``warmup`` plain runs on the same stream (cuDNN picks its
algorithms, Triton compiles, the allocator grows, all outside the capture), and replays it after.

All graphs of one cache share one memory pool: safe because they replay one at a time on one
stream. When the last graph is released the pool is dropped with it and the next capture starts
a new one: capturing into a pool whose graphs were all freed trips an allocator assert (torch 2.11,
"it->second->use_count > 0").
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np

__all__ = ["GraphCache", "graph_bucket", "infer_on_device"]


def graph_bucket(b: int, max_batch: int) -> int:
    """The captured batch size that runs ``b`` windows: the next power of two (at most
    ``max_batch``), so a server whose batch size varies keeps a handful of graphs, not one per size."""
    return min(max_batch, 1 << max(0, b - 1).bit_length())


class GraphCache:
    """Captured graphs of ``forward`` over prefixes of a fixed device input buffer.

    Args:
        forward: ``forward(x) -> dict[str, Tensor]``; must allocate through torch only.
        inputs: the device buffer ``(max_batch, ...)`` whose prefix ``[:b]`` each graph reads.
        stream: the CUDA stream that warms up, captures and replays.
        context: returns a context manager entered around warm-up and capture (e.g. math flags).
        warmup: plain runs before each capture.
    """

    def __init__(
        self,
        forward: Callable,
        inputs,
        stream,
        context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
        warmup: int = 2,
    ) -> None:
        import torch

        self._torch = torch
        self.forward = forward
        self.inputs = inputs
        self.stream = stream
        self.context = context
        self.warmup = warmup
        self._graphs: dict[int, tuple] = {}
        self._pool = None

    def __contains__(self, b: int) -> bool:
        return b in self._graphs

    def get(self, b: int) -> tuple:
        """``(graph, outputs)`` for batch ``b``, capturing it on first use."""
        if b not in self._graphs:
            self._graphs[b] = self._capture(self.forward, b)
        return self._graphs[b]

    def get_with_copies(self, b: int, io) -> tuple:
        """Like :meth:`get`, but the graph also holds the copies of a :class:`~engines.cuda_io.CudaIO`:
        its pinned ``host_in[:b]`` to the device before, the outputs to its pinned ``host_out``
        after. One replay then does a whole batch of host windows: at batch 1 the separate copies,
        each a few torch calls, took as long on the host as the network on the GPU."""
        key = ("copies", b)
        if key not in self._graphs:

            def through(x):
                x.copy_(io.host_in[:b], non_blocking=True)
                outs = self.forward(x)
                for k, t in outs.items():
                    io.host_out[k][:b].copy_(t[:b], non_blocking=True)
                return outs

            self._graphs[key] = self._capture(through, b)
        return self._graphs[key]

    def _capture(self, forward: Callable, b: int) -> tuple:
        torch = self._torch
        x = self.inputs[:b]
        self.stream.wait_stream(torch.cuda.current_stream(self.stream.device))
        with torch.cuda.stream(self.stream), torch.inference_mode(), self.context():
            for _ in range(self.warmup):
                forward(x)
        self.stream.synchronize()
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with (
            self.context(),
            torch.inference_mode(),
            torch.cuda.graph(graph, pool=self._pool, stream=self.stream),
        ):
            outs = forward(x)
        return graph, outs

    def replay(self, b: int) -> dict:
        """Enqueue batch ``b``'s graph on the stream (capturing it first if new); returns its outputs."""
        graph, outs = self.get(b)
        with self._torch.cuda.stream(self.stream):
            graph.replay()
        return outs

    def release(self, b: int) -> None:
        """Free batch ``b``'s graphs (and the pool with the last one)."""
        self._graphs.pop(b, None)
        self._graphs.pop(("copies", b), None)
        if not self._graphs:
            self.clear()

    def clear(self) -> None:
        self._graphs.clear()
        self._pool = None
        self._torch.cuda.empty_cache()


def infer_on_device(
    torch,
    mel,
    io,
    forward,
    graphs: GraphCache | None,
    context: Callable,
    while_waiting: Callable | None = None,
):
    """One batch through a torch GPU backend: copy in, replay the graph of the batch's bucket (or run
    ``forward`` under ``context`` on the copy stream), copy out. Host windows (numpy) replay a graph
    that holds the copies too (:meth:`GraphCache.get_with_copies`). ``while_waiting`` runs once
    everything is enqueued, before the wait for the device.

    Returns ``(host outputs, device seconds)`` from ``io.collect``.
    """
    b = mel.shape[0]
    if graphs is not None and isinstance(mel, np.ndarray):  # host windows: one replay, copies inside
        bucket = graph_bucket(b, graphs.inputs.shape[0])
        graph, outs = graphs.get_with_copies(bucket, io)
        io.stage(mel)  # rows b..bucket keep older windows: their outputs are not read
        io.start.record(io.stream)
        with torch.cuda.stream(io.stream):
            graph.replay()
        return io.collect(outs, b, while_waiting)
    if graphs is not None:
        bucket = graph_bucket(b, graphs.inputs.shape[0])
        graphs.get(bucket)  # capture outside the timed copy-in → copy-out
        io.upload(mel)  # rows b..bucket keep older windows: their outputs are not read
        outs = graphs.replay(bucket)
    else:
        x = io.upload(mel)
        with torch.cuda.stream(io.stream), torch.inference_mode(), context():
            outs = forward(x)
    return io.download(outs, b, while_waiting)
