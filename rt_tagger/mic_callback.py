"""The microphone's PortAudio callback in native code: it never waits for the GIL.

A Python callback (what ``sounddevice.InputStream`` calls) needs the GIL for every block. While
the consumer holds it (scoring a window, a garbage collection, a slow subscriber's
serialisation), PortAudio's thread waits: the block lands late, its arrival time is wrong, and a
long enough hold overflows the device's buffer. Measured on the PulseAudio null sink with a
GIL-holding loop of 0.6 s: the Python callback was not called for 0.63 s; this one went on every
20 ms (``tests/rt_tagger/test_microphone.py`` checks it).

:func:`callback_address` is a numba ``cfunc`` with PortAudio's ``PaStreamCallback`` signature,
opened through ``sounddevice._StreamBase`` with ``wrap_callback=None`` (the documented way to give
PortAudio a C function pointer). It does what the Python callback did, finishing as the
stdin reader (:mod:`rt_tagger.pipe_reader`) does: copy the block into the ring (what does not fit
is dropped and counted: a device cannot be held back), count status flags, then the block's record
and the ring's write position with release fences between (:func:`rt_tagger.ring.publish_block`),
then one write to an eventfd that wakes the consumer.

Everything it touches is a numpy array owned by the :class:`~rt_tagger.sources.MicSource`; the
``userData`` pointer is the address of ``context``, an int64 array of their addresses (the
``CONTEXT`` indices below). The source keeps every array alive while a stream may call back.
"""

from __future__ import annotations

import numpy as np
from numba import carray, cfunc, types

from rt_tagger.native import CLOCK_REALTIME, as_pointer, c_write, now_ns
from rt_tagger.ring import DROP_EVENTS, DROPPED_SAMPLES, READ, WRITE, load_acquire, publish_block

__all__ = [
    "CALLBACKS",
    "STATUS_FLAGS",
    "INPUT_OVERFLOWS",
    "NO_INPUT",
    "COUNTS",
    "CLOCK_OFFSET",
    "SAMPLE_RATE",
    "TIMES",
    "CONTEXT",
    "new_context",
    "callback_address",
]

# counts (int64, written by the callback only)
CALLBACKS, STATUS_FLAGS, INPUT_OVERFLOWS, NO_INPUT = range(4)
COUNTS = 4
# times (float64, written by Python before the stream starts, read by the callback)
CLOCK_OFFSET, SAMPLE_RATE = range(2)  # unix time - PortAudio stream time; frames per second
TIMES = 2
# context (int64): addresses and sizes
(BUFFER, CAPACITY, CHANNELS, POSITIONS, OVERFLOW, REC_END, REC_CAPTURE, REC_ARRIVAL, REC_COUNT,
 RECORDS, COUNTS_AT, TIMES_AT, SCRATCH, WAKE_FD) = range(14)  # fmt: skip
CONTEXT = 14

_PA_INPUT_OVERFLOW = 0x2  # paInputOverflow in PaStreamCallbackFlags
_PA_CONTINUE = 0


def new_context(
    ring, rec_end, rec_capture, rec_arrival, rec_count, counts, times, scratch, wake_fd: int
) -> np.ndarray:
    """The ``userData`` array: where the callback finds the ring, the block records, its counters,
    the stream's clock, a ``struct timespec`` to fill and the eventfd to write."""
    for name, a, dtype in (
        ("ring buffer", ring.buffer, np.float32), ("ring positions", ring.positions, np.int64),
        ("ring overflow", ring.overflow, np.int64), ("rec_end", rec_end, np.int64),
        ("rec_capture", rec_capture, np.float64), ("rec_arrival", rec_arrival, np.float64),
        ("rec_count", rec_count, np.int64), ("counts", counts, np.int64), ("times", times, np.float64),
        ("scratch", scratch, np.int64),
    ):  # fmt: skip
        if a.dtype != dtype or not a.flags.c_contiguous:
            raise ValueError(f"{name} must be a C-contiguous {np.dtype(dtype).name} array")
    if counts.size < COUNTS or times.size < TIMES or scratch.size < 2:
        raise ValueError("counts, times or scratch too small")
    if not rec_end.size == rec_capture.size == rec_arrival.size:
        raise ValueError("the block records differ in length")
    context = np.zeros(CONTEXT, np.int64)
    context[BUFFER], context[CAPACITY], context[CHANNELS] = (
        ring.buffer.ctypes.data,
        ring.capacity,
        ring.channels,
    )
    context[POSITIONS], context[OVERFLOW] = ring.positions.ctypes.data, ring.overflow.ctypes.data
    context[REC_END], context[REC_CAPTURE] = rec_end.ctypes.data, rec_capture.ctypes.data
    context[REC_ARRIVAL], context[REC_COUNT] = rec_arrival.ctypes.data, rec_count.ctypes.data
    context[RECORDS], context[COUNTS_AT], context[TIMES_AT] = (
        rec_end.size,
        counts.ctypes.data,
        times.ctypes.data,
    )
    context[SCRATCH], context[WAKE_FD] = scratch.ctypes.data, wake_fd
    return context


# PaStreamCallback: int (const void *input, void *output, unsigned long frameCount,
#   const PaStreamCallbackTimeInfo *timeInfo, PaStreamCallbackFlags statusFlags, void *userData).
# Pointers and unsigned longs are 64-bit integers in the LP64 ABI, so they are taken as such.
_SIGNATURE = types.int32(types.int64, types.int64, types.uint64, types.int64, types.uint64, types.int64)


def _callback(input_addr, output_addr, frame_count, time_info_addr, status_flags, user_data):
    context = carray(as_pointer(user_data, np.int64), (CONTEXT,))
    counts = carray(as_pointer(context[COUNTS_AT], np.int64), (COUNTS,))
    times = carray(as_pointer(context[TIMES_AT], np.float64), (TIMES,))
    scratch = carray(as_pointer(context[SCRATCH], np.int64), (3,))
    arrival = now_ns(CLOCK_REALTIME, scratch[:2]) / 1e9
    counts[CALLBACKS] += 1
    if status_flags != 0:
        counts[STATUS_FLAGS] += 1
        if status_flags & _PA_INPUT_OVERFLOW:
            counts[INPUT_OVERFLOWS] += 1
    if input_addr == 0:  # PortAudio passes no input on some underflows: nothing to copy
        counts[NO_INPUT] += 1
        return _PA_CONTINUE
    capacity, channels = context[CAPACITY], context[CHANNELS]
    frames = np.int64(frame_count)
    buffer = carray(as_pointer(context[BUFFER], np.float32), (capacity * channels,))
    positions = carray(as_pointer(context[POSITIONS], np.int64), (2,))
    overflow = carray(as_pointer(context[OVERFLOW], np.int64), (2,))
    block = carray(as_pointer(input_addr, np.float32), (frames * channels,))

    wp = positions[WRITE]
    k = min(frames, capacity - (wp - load_acquire(positions, READ)))
    if k < frames:
        overflow[DROPPED_SAMPLES] += frames - k
        overflow[DROP_EVENTS] += 1
    if k <= 0:
        return _PA_CONTINUE
    for f in range(k):
        slot = ((wp + f) % capacity) * channels
        for c in range(channels):
            buffer[slot + c] = block[f * channels + c]

    # the block's last frame, on the unix clock; no (or an inconsistent) ADC time: it just arrived
    adc = carray(as_pointer(time_info_addr, np.float64), (3,))[0] if time_info_addr != 0 else 0.0
    capture = adc + times[CLOCK_OFFSET] + (frames - 1) / times[SAMPLE_RATE]
    if not adc > 0.0 or capture > arrival:
        capture = arrival
    records = context[RECORDS]
    publish_block(
        positions,
        wp + k,
        carray(as_pointer(context[REC_END], np.int64), (records,)),
        carray(as_pointer(context[REC_CAPTURE], np.float64), (records,)),
        carray(as_pointer(context[REC_ARRIVAL], np.float64), (records,)),
        carray(as_pointer(context[REC_COUNT], np.int64), (1,)),
        capture,
        arrival,
    )
    scratch[2] = 1
    c_write(context[WAKE_FD], scratch[2:].ctypes.data, 8)
    return _PA_CONTINUE


_compiled = None


def callback_address() -> int:
    """The native callback's address (compiled, or loaded from numba's cache, on first use)."""
    global _compiled
    if _compiled is None:
        _compiled = cfunc(_SIGNATURE, nopython=True, cache=True)(_callback)
    return _compiled.address
