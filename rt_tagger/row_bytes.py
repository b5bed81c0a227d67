"""Copying rows of bytes to scattered offsets, compiled: the inner step of building a stream
group's compact frames (:func:`rt_tagger.compact.encode_rows`). numpy's fancy indexing needs an
index per byte (≈ 0.5 µs a 300-byte row); a loop of slice copies needs none.

Its own module so that readers of compact frames (subscribers) never import numba.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["place_rows", "warm_up"]


@njit(cache=True)
def _place_rows(out, starts, data):  # pragma: no cover - compiled
    width = data.shape[1]
    for j in range(starts.shape[0]):
        s = starts[j]
        out[s : s + width] = data[j]


def place_rows(out: np.ndarray, starts: np.ndarray, data: np.ndarray) -> None:
    """Write row ``j`` of ``data`` ``(n, width)`` uint8 at ``out[starts[j]:]`` (``out`` uint8, 1-D)."""
    if len(starts):
        _place_rows(out, np.ascontiguousarray(starts, np.int64), np.ascontiguousarray(data, np.uint8))


def warm_up() -> None:
    """Compile (or load from numba's cache) now rather than at a stream group's first window."""
    place_rows(np.zeros(1, np.uint8), np.zeros(1, np.int64), np.zeros((1, 1), np.uint8))
