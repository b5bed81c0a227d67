"""Raw PCM from a file descriptor into a ring, without the GIL: the producer of ``rt-tagger stream -``.

Why not a Python thread: a reader thread in Python takes the GIL for every block it reads (wait,
read, convert, ring write, records, wake-up). The consumer then waits for the GIL twice per
block: when the block arrives (the hand-over sits inside the window's capture→publish time) and
whenever a block lands while the consumer completes a window. :func:`read_pcm` does the same
work in numba with the GIL released, calling libc (``poll``, ``read``, ``clock_gettime``,
``nanosleep``, ``write``; :mod:`rt_tagger.native`) directly, so the consumer never waits for it.

Everything the loop shares with Python is a numpy array: the ring's buffer and positions
(:class:`~rt_tagger.ring.RingBuffer`), the source's block records, and ``state`` (indices below).
Order of the stores per write: the samples and the block's record, a release fence, the record
count, a release fence, the ring's write position (:func:`rt_tagger.ring.publish_block`); the
consumer loads the write position with an acquire fence (:func:`rt_tagger.ring.load_acquire`), so
it never sees frames without their data or their record.

The semantics are those the Python reader had (tests/rt_tagger/test_sources.py checks each): a
read takes what the pipe holds now, up to one block; a partial frame waits for the rest; the
ring's back-pressure holds the reader (counted in ``input_blocked_s``) instead of dropping audio;
a trailing partial frame at the end is reported in ``state[TRAILING_BYTES]``. Linux only (``poll``, eventfd), little-endian
hosts (the formats are little-endian and are read in place).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from rt_tagger.native import (
    CLOCK_MONOTONIC,
    CLOCK_REALTIME,
    c_errno,
    c_nanosleep,
    c_poll,
    c_read,
    c_write,
    now_ns,
)
from rt_tagger.ring import READ, WRITE, load_acquire, publish_block

__all__ = ["EOF", "ERROR", "STOPPED", "STATE_FIELDS", "read_pcm", "new_state"]

# state: one int64 array, written by the loop except STOP (set by the consumer to end the loop)
STOP, FRAMES_READ, HELD_FRAMES, TRAILING_BYTES, ERRNO, BLOCKED_NS = range(6)
STATE_FIELDS = 6
EOF, STOPPED, ERROR = 0, 1, 2  # what read_pcm returns

_POLLIN = 1
_EINTR, _EAGAIN = 4, 11
_POLL_MS = 50  # the longest the loop goes without looking at the stop flag
_FULL_WAIT_NS = 500_000  # wait for room in a full ring in these steps


def new_state() -> np.ndarray:
    return np.zeros(STATE_FIELDS, np.int64)


@njit(nogil=True, cache=True)
def read_pcm(
    fd, wake_fd, staging, samples, scale, buffer, positions, rec_end, rec_capture, rec_arrival, nrec, state
):
    """Read ``fd`` until end of input, ``state[STOP]`` or an error, into the ring.

    Args:
        fd: The descriptor (a pipe, a file, a terminal).
        wake_fd: An eventfd written (+1) after every write into the ring.
        staging: uint8 bytes of one block, the most one read takes.
        samples: ``staging`` viewed as the PCM's sample type (int16 or float32).
        scale: Factor from a sample to float32 audio.
        buffer, positions: The ring's ``(capacity, channels)`` float32 frames and positions.
        rec_end, rec_capture, rec_arrival, nrec: The source's block records and their count.
        state: The counters and flags above.

    Returns:
        ``EOF``, ``STOPPED`` or ``ERROR`` (``state[ERRNO]`` says which).
    """
    capacity, channels = buffer.shape
    sample_bytes = staging.size // samples.size
    frame_bytes = sample_bytes * channels
    pfd = np.zeros(2, np.int32)
    pfd[0] = fd
    pfd[1] = _POLLIN  # events (low half); the kernel writes revents into the high half
    ts = np.zeros(2, np.int64)
    pause = np.zeros(2, np.int64)
    pause[1] = _FULL_WAIT_NS
    one = np.ones(1, np.uint64)
    pending = 0  # bytes of a partial frame at the start of staging
    while state[STOP] == 0:
        ready = c_poll(pfd.ctypes.data, 1, _POLL_MS)
        if ready == 0:
            continue
        n = c_read(fd, staging.ctypes.data + pending, staging.size - pending) if ready > 0 else -1
        if n < 0:
            err = c_errno()
            if err == _EINTR or err == _EAGAIN:
                continue
            state[ERRNO] = err
            return ERROR
        if n == 0:
            state[TRAILING_BYTES] = pending
            return EOF
        capture = now_ns(CLOCK_REALTIME, ts) / 1e9
        total = pending + n
        frames = total // frame_bytes
        done = 0
        while done < frames and state[STOP] == 0:  # write what fits, wait for the consumer, repeat
            wp = positions[WRITE]
            k = min(capacity - (wp - load_acquire(positions, READ)), frames - done)
            state[HELD_FRAMES] = frames - done
            if k == 0:
                t = now_ns(CLOCK_MONOTONIC, ts)
                c_nanosleep(pause.ctypes.data, 0)
                state[BLOCKED_NS] += now_ns(CLOCK_MONOTONIC, ts) - t
                continue
            for f in range(k):
                slot = (wp + f) % capacity
                first = (done + f) * channels
                for c in range(channels):
                    buffer[slot, c] = np.float32(samples[first + c]) * scale
            arrival = now_ns(CLOCK_REALTIME, ts) / 1e9
            publish_block(positions, wp + k, rec_end, rec_capture, rec_arrival, nrec, capture, arrival)
            c_write(wake_fd, one.ctypes.data, 8)
            done += k
            state[FRAMES_READ] += k
        state[HELD_FRAMES] = 0
        pending = total - frames * frame_bytes
        for b in range(pending):  # the partial frame moves to the front
            staging[b] = staging[frames * frame_bytes + b]
    return STOPPED
