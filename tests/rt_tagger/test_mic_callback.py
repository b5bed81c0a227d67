"""The microphone's native PortAudio callback (rt_tagger.mic_callback), called through its C
function pointer as PortAudio calls it: what it writes into the ring, the block records, the
counters and the wake-up eventfd. The device path itself: tests/rt_tagger/test_microphone.py."""

from __future__ import annotations

import ctypes
import os
import time

import numpy as np
import pytest

from rt_tagger import mic_callback as mc
from rt_tagger.ring import RingBuffer

# PaStreamCallback
_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.c_ulong,
    ctypes.c_void_p,
    ctypes.c_ulong,
    ctypes.c_void_p,
)


class Harness:
    def __init__(self, capacity: int, channels: int, rate: float = 1000.0, clock_offset: float = 100.0):
        self.ring = RingBuffer(capacity, channels)
        self.rec_end = np.zeros(4, np.int64)
        self.rec_capture = np.zeros(4)
        self.rec_arrival = np.zeros(4)
        self.rec_count = np.zeros(1, np.int64)
        self.counts = np.zeros(mc.COUNTS, np.int64)
        self.times = np.array([clock_offset, rate])
        self.scratch = np.zeros(3, np.int64)
        self.wake_fd = os.eventfd(0, os.EFD_NONBLOCK)
        self.context = mc.new_context(
            self.ring, self.rec_end, self.rec_capture, self.rec_arrival, self.rec_count,
            self.counts, self.times, self.scratch, self.wake_fd,
        )  # fmt: skip
        self.call = _CALLBACK(mc.callback_address())

    def __call__(self, block, adc: float | None = 5.0, flags: int = 0) -> int:
        info = None if adc is None else np.array([adc, 0.0, 0.0])
        return self.call(
            None if block is None else block.ctypes.data,
            None,
            0 if block is None else block.shape[0],
            None if info is None else info.ctypes.data,
            flags,
            self.context.ctypes.data,
        )

    def wakes(self) -> int:
        try:
            return os.eventfd_read(self.wake_fd)
        except BlockingIOError:
            return 0

    def close(self):
        os.close(self.wake_fd)


@pytest.fixture
def harness():
    made = []

    def make(*args, **kwargs):
        made.append(Harness(*args, **kwargs))
        return made[-1]

    yield make
    for h in made:
        h.close()


def test_block_lands_in_the_ring_with_its_times(harness):
    h = harness(10, 2)
    block = np.arange(12, dtype=np.float32).reshape(6, 2)
    before = time.time()
    assert h(block, adc=5.0) == 0  # paContinue
    after = time.time()
    assert h.ring.write_pos == 6 and h.ring.available() == 6
    np.testing.assert_array_equal(h.ring.buffer[:6], block)
    assert h.rec_count[0] == 1 and h.rec_end[0] == 6
    # ADC time of the first frame + the stream clock's offset + 5 frames at 1000 Hz
    assert h.rec_capture[0] == pytest.approx(105.005)
    assert before <= h.rec_arrival[0] <= after
    assert h.counts[mc.CALLBACKS] == 1 and h.counts[mc.STATUS_FLAGS] == 0
    assert h.wakes() == 1


def test_wraps_and_drops_what_does_not_fit(harness):
    h = harness(10, 2)
    block = np.arange(12, dtype=np.float32).reshape(6, 2)
    h(block)
    out = np.zeros((4, 2), np.float32)
    h.ring.read_into(out)  # 2 unread frames left, 8 free
    h(block + 100)  # all 6 fit, wrapping past the end
    assert h.ring.overflow_samples == 0 and h.ring.write_pos == 12
    first, second = h.ring.views()
    np.testing.assert_array_equal(np.concatenate([first, second]), np.concatenate([block[4:], block + 100]))
    h(block + 200)  # 2 free: 2 frames in, 4 dropped and counted
    assert h.ring.write_pos == 14 and (h.ring.overflow_samples, h.ring.overflow_events) == (4, 1)
    assert h.rec_end[2] == 14
    h.ring.read_into(np.zeros((10, 2), np.float32))
    h(block)  # room again
    assert h.ring.write_pos == 20 and h.ring.overflow_events == 1
    assert h.rec_count[0] == 4 and h.wakes() == 4


def test_full_ring_drops_the_block_without_a_record(harness):
    h = harness(4, 1)
    h(np.ones(4, np.float32).reshape(4, 1))
    h(np.ones(3, np.float32).reshape(3, 1))
    assert (h.ring.overflow_samples, h.ring.overflow_events) == (3, 1)
    assert h.rec_count[0] == 1 and h.wakes() == 1  # nothing new for the consumer


def test_status_flags_and_missing_input_are_counted(harness):
    h = harness(8, 1)
    h(np.zeros((2, 1), np.float32), flags=0x2)  # paInputOverflow
    h(np.zeros((2, 1), np.float32), flags=0x1)  # paInputUnderflow
    assert h(None, flags=0x1) == 0  # PortAudio may pass no input buffer
    assert h.counts[mc.CALLBACKS] == 3 and h.counts[mc.STATUS_FLAGS] == 3
    assert h.counts[mc.INPUT_OVERFLOWS] == 1 and h.counts[mc.NO_INPUT] == 1
    assert h.ring.write_pos == 4 and h.rec_count[0] == 2


def test_without_adc_time_capture_is_arrival(harness):
    h = harness(8, 1)
    h(np.zeros((2, 1), np.float32), adc=None)  # no time info
    h(np.zeros((2, 1), np.float32), adc=0.0)  # the host API gives none
    h(np.zeros((2, 1), np.float32), adc=1e12)  # in the future: inconsistent
    assert (h.rec_capture[:3] == h.rec_arrival[:3]).all()


def test_context_refuses_wrong_arrays():
    ring = RingBuffer(8, 1)
    good = dict(
        rec_end=np.zeros(4, np.int64), rec_capture=np.zeros(4), rec_arrival=np.zeros(4),
        rec_count=np.zeros(1, np.int64), counts=np.zeros(mc.COUNTS, np.int64), times=np.zeros(mc.TIMES),
        scratch=np.zeros(3, np.int64),
    )  # fmt: skip
    mc.new_context(ring, **good, wake_fd=0)
    with pytest.raises(ValueError, match="rec_capture must be a C-contiguous float64"):
        mc.new_context(ring, **{**good, "rec_capture": np.zeros(4, np.float32)}, wake_fd=0)
    with pytest.raises(ValueError, match="differ in length"):
        mc.new_context(ring, **{**good, "rec_arrival": np.zeros(5)}, wake_fd=0)
