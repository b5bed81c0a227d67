"""Batching: the windows due in many streams go to the backend together.

:func:`run_due` asks every stream for its due windows, runs the non-silent ones through the
backend in batches of at most the backend's largest batch, and completes each window in its own
stream, in stream order. One stream is a batch of one (``rt-tagger stream``/``listen``); a server
passes all its streams at every tick. The scheduler knows nothing about audio or sockets.

With a batch front end (a server on a GPU: :class:`~rt_tagger.batch_frontend.BatchFrontEnd`) the
windows are not log-mel yet: the new frames of every stream become log-mel in one batch, and each
model batch is gathered from the device ring and handed to the backend where it already is.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import numpy as np

from rt_tagger.messages import TagMessage
from rt_tagger.stream_state import DueWindow, StreamState

if TYPE_CHECKING:
    from rt_tagger.batch_frontend import BatchFrontEnd

__all__ = ["run_due"]


def run_due(
    streams: Iterable[StreamState],
    backend,
    frontend: BatchFrontEnd | None = None,
    while_waiting: Callable[[], None] | None = None,
) -> list[tuple[StreamState, DueWindow, TagMessage]]:
    """Infer and complete every due window of ``streams``.

    Args:
        streams: The streams to serve this tick.
        backend: An engines backend (``infer((batch, n_mels, frames)) -> Inference``).
        frontend: The batch front end the streams' frames went to (None: windows carry their mel).
        while_waiting: Host work a GPU backend runs while the first batch is on the device.

    Returns:
        ``(stream, window, message)`` for every completed window, in each stream's order.
        ``timings_ms.inference`` of a message is the time of the batch that held its window
        (``while_waiting`` included, where it outlasts the device work).
    """
    due = [(s, w) for s in streams for w in s.due_windows()]
    live = [w for _, w in due if not w.silent]
    results: dict[int, tuple[np.ndarray, np.ndarray, float]] = {}
    batch_max = backend.batch_range[1]
    if frontend is not None:
        frontend.flush()
    for i in range(0, len(live), batch_max):
        chunk = live[i : i + batch_max]
        t = time.perf_counter()
        if frontend is not None:
            slots = np.fromiter((w.slot for w in chunk), np.int64, len(chunk))
            mel = frontend.windows(slots, np.fromiter((w.frame_end for w in chunk), np.int64, len(chunk)))
        else:
            mel = chunk[0].mel[None] if len(chunk) == 1 else np.stack([w.mel for w in chunk])
        out = backend.infer(mel, while_waiting if i == 0 else None)
        ms = (time.perf_counter() - t) * 1e3
        for j, w in enumerate(chunk):
            results[id(w)] = (out.probabilities[j], out.embeddings[j], ms)
    done = []
    for stream, w in due:
        p, e, ms = results.get(id(w), (None, None, None))
        done.append((stream, w, stream.complete(w, p, ms, e)))
    return done
