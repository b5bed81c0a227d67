"""Preallocated single-producer / single-consumer ring buffer of audio frames.

Contract of the producer side (:meth:`RingBuffer.write`, called from the PortAudio callback or a
file/stdin reader thread): it only copies samples in — at most two slice copies for the wrap —
and bumps integer counters. No array allocation (only the few small view objects numpy slicing
creates), no logging, no locks.

Why no lock is needed:

- The two positions live in one int64 array, ``positions`` (``[write, read]``): ``write_pos`` is
  written only by the producer and ``read_pos`` only by the consumer. Both only grow (no modulo),
  so ``write_pos - read_pos`` is always the exact fill level and "full" and "empty" can never be
  confused. An aligned 8-byte store is never torn.
- The producer publishes ``write_pos`` only *after* its copy, and the consumer publishes
  ``read_pos`` only *after* it finished reading. A Python producer (file reader, PortAudio
  callback) writes under the GIL, whose hand-over orders its stores. The pipe reader
  (:mod:`rt_tagger.pipe_reader`) writes without the GIL, from numba: it puts a release fence
  between the data and the position, and the consumer reads the write position with an acquire
  load (:func:`load_acquire`), so a consumer that sees the new position also sees the data.
- numpy may release the GIL inside a large copy, so both copies can run at the same time; that
  is still safe because the producer only writes slots in ``[write_pos, read_pos + capacity)``
  and the consumer only reads slots in ``[read_pos, write_pos)``, disjoint by construction.
- Each counter has one writer: ``overflow_*`` belong to the producer, ``underflow_events`` to
  the consumer. The producer's counters live in an int64 array, ``overflow``
  (``[samples, events]``), so a native producer (the microphone callback,
  :mod:`rt_tagger.mic_callback`) counts its drops where Python reads them.
"""

from __future__ import annotations

import time

import numpy as np
from numba import njit, types
from numba.extending import intrinsic

__all__ = ["RingBuffer", "fence", "load_acquire", "publish_block"]

WRITE, READ = 0, 1  # indices in RingBuffer.positions
DROPPED_SAMPLES, DROP_EVENTS = 0, 1  # indices in RingBuffer.overflow


@intrinsic
def fence(typingctx, ordering):
    """A memory fence in numba code: ``fence("release")`` orders every earlier store before every
    later one; ``fence("acquire")`` every earlier load before every later access. (On x86-64 both
    only stop the compiler from reordering; weakly ordered CPUs also need the instruction.)"""
    if not isinstance(ordering, types.StringLiteral):
        return None

    def codegen(context, builder, signature, args):
        builder.fence(ordering.literal_value)
        return context.get_dummy_value()

    return types.void(ordering), codegen


@njit(cache=True)
def publish_block(positions, end, rec_end, rec_capture, rec_arrival, rec_count, capture, arrival):
    """A native producer's last step once its frames are in the ring up to position ``end``: the
    block's record (end, capture and arrival wall times), a release fence, the record count, a
    release fence, the write position. A consumer that loads the write position with
    :func:`load_acquire` then sees the frames and their record complete."""
    i = rec_count[0] % rec_end.size
    rec_end[i] = end
    rec_capture[i] = capture
    rec_arrival[i] = arrival
    fence("release")
    rec_count[0] += 1
    fence("release")
    positions[WRITE] = end


@njit(cache=True)
def load_acquire(positions, i):
    """``positions[i]``, and no later load moves before it."""
    value = positions[i]
    fence("acquire")
    return value


class RingBuffer:
    """Fixed-capacity float32 ring of ``(capacity_frames, channels)`` audio frames.

    Positions count frames since the last :meth:`reset` and never wrap; the slot of absolute
    frame ``p`` is ``p % capacity``.

    Args:
        capacity_frames: Number of frames (samples per channel) the ring holds.
        channels: Interleaved channel count of every written block.
    """

    def __init__(self, capacity_frames: int, channels: int = 1) -> None:
        if capacity_frames <= 0:
            raise ValueError(f"capacity_frames must be positive, got {capacity_frames}")
        if channels <= 0:
            raise ValueError(f"channels must be positive, got {channels}")
        self.capacity = int(capacity_frames)
        self.channels = int(channels)
        self.buffer = np.zeros((self.capacity, self.channels), dtype=np.float32)
        self.positions = np.zeros(2, np.int64)  # [write (producer-owned), read (consumer-owned)]
        # producer-owned: [frames dropped because the ring was full, writes that dropped anything]
        self.overflow = np.zeros(2, np.int64)
        # consumer-owned: reads that asked for more than was there, and waits for overdue audio
        # (note_underflow; the pipeline's definition is in rt_tagger.sources)
        self.underflow_events = 0

    @property
    def write_pos(self) -> int:
        return int(self.positions[WRITE])

    @property
    def read_pos(self) -> int:
        return int(self.positions[READ])

    @property
    def overflow_samples(self) -> int:
        return int(self.overflow[DROPPED_SAMPLES])

    @property
    def overflow_events(self) -> int:
        return int(self.overflow[DROP_EVENTS])

    # ---------------------------------------------------------------- producer side
    def write(self, block: np.ndarray) -> int:
        """Copy a block in; what does not fit is dropped and counted. Producer only.

        Args:
            block: ``(n, channels)`` frames, or ``(n,)`` when ``channels == 1``. Any real dtype;
                it is cast to float32 during the copy (no intermediate array).

        Returns:
            Frames written (``n`` minus the frames counted in ``overflow_samples``).
        """
        if block.ndim == 1:
            block = block.reshape(-1, 1)  # a view, no copy
        if block.shape[1] != self.channels:  # copyto would silently broadcast a mono block
            raise ValueError(f"block has {block.shape[1]} channels, ring has {self.channels}")
        n = block.shape[0]
        wp = int(self.positions[WRITE])
        free = self.capacity - (wp - int(self.positions[READ]))
        k = n if n <= free else free
        if k < n:
            self.overflow[DROPPED_SAMPLES] += n - k
            self.overflow[DROP_EVENTS] += 1
        if k > 0:
            start = wp % self.capacity
            first = self.capacity - start
            if k <= first:
                np.copyto(self.buffer[start : start + k], block[:k], casting="unsafe")
            else:
                np.copyto(self.buffer[start:], block[:first], casting="unsafe")
                np.copyto(self.buffer[: k - first], block[first:k], casting="unsafe")
            self.positions[WRITE] = wp + k  # publish only after the copy
        return k

    # ---------------------------------------------------------------- consumer side
    def available(self) -> int:
        """Frames written but not yet consumed."""
        return int(load_acquire(self.positions, WRITE) - self.positions[READ])

    def free(self) -> int:
        """Frames the producer can still write without overflow."""
        return self.capacity - self.available()

    def views(self, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Zero-copy views of the next ``n`` unread frames (default: all available).

        Returns:
            ``(first, second)``: two ``(k, channels)`` views of ``buffer`` whose concatenation
            is the data; ``second`` is empty unless the span wraps. Valid until
            :meth:`advance` lets the producer overwrite them.
        """
        avail = self.available()
        n = avail if n is None else min(n, avail)
        start = int(self.positions[READ]) % self.capacity
        first = min(n, self.capacity - start)
        return self.buffer[start : start + first], self.buffer[: n - first]

    def advance(self, n: int) -> None:
        """Mark ``n`` frames consumed (after reading them via ``buffer``/:meth:`views`)."""
        if n < 0 or n > self.available():
            raise ValueError(f"cannot advance by {n}: {self.available()} frames available")
        self.positions[READ] += n  # publish only after the consumer is done with the data

    def read_into(self, out: np.ndarray, *, partial: bool = True) -> int:
        """Copy up to ``len(out)`` unread frames into ``out`` and consume them.

        A read *underflows* when fewer frames are available than ``len(out)``: it is counted in
        ``underflow_events``. With ``partial=True`` (default) the available frames are still
        copied; with ``partial=False`` nothing is consumed and 0 is returned.

        Args:
            out: ``(m, channels)`` destination, or ``(m,)`` when ``channels == 1``.
            partial: Whether a short read copies what is there.

        Returns:
            Frames copied.
        """
        dst = out.reshape(-1, 1) if out.ndim == 1 else out
        m = dst.shape[0]
        avail = self.available()
        if avail < m:
            self.underflow_events += 1
            if not partial:
                return 0
        first, second = self.views(m)
        k1 = first.shape[0]
        k2 = second.shape[0]
        dst[:k1] = first
        if k2:
            dst[k1 : k1 + k2] = second
        self.advance(k1 + k2)
        return k1 + k2

    def wait_available(self, n: int, timeout: float, poll_s: float = 0.001) -> bool:
        """Block the consumer until ``n`` frames are available or ``timeout`` seconds pass.

        Polls (the producer must not signal: no locks on the audio thread). A timeout counts one
        underflow event.
        """
        deadline = time.monotonic() + timeout
        while self.available() < n:
            if time.monotonic() >= deadline:
                self.underflow_events += 1
                return False
            time.sleep(poll_s)
        return True

    def note_underflow(self) -> None:
        """Count an underflow the consumer detected itself: it waited for audio that was due
        (:meth:`rt_tagger.sources.Source.note_starved`)."""
        self.underflow_events += 1

    def reset(self) -> None:
        """Empty the ring and zero the counters. Only while neither side is running."""
        self.positions[:] = 0
        self.overflow[:] = 0
        self.underflow_events = 0
        self.buffer.fill(0.0)

    def __repr__(self) -> str:
        return (
            f"RingBuffer(capacity={self.capacity}, channels={self.channels}, available={self.available()}, "
            f"overflow_samples={self.overflow_samples}, underflow_events={self.underflow_events})"
        )
