"""RingBuffer: wrap-around equals plain concatenation, exact overflow accounting, SPSC threads."""

from __future__ import annotations

import threading
import time
import tracemalloc

import numpy as np
import pytest

from rt_tagger.ring import RingBuffer


def _blocks(rng: np.random.Generator, total: int, max_block: int, channels: int) -> list[np.ndarray]:
    out, done = [], 0
    while done < total:
        n = int(min(rng.integers(1, max_block + 1), total - done))
        out.append(rng.standard_normal((n, channels)).astype(np.float32))
        done += n
    return out


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_wraparound_read_write_equals_concatenation(channels, seed):
    rng = np.random.default_rng(seed)
    ring = RingBuffer(97, channels)  # prime capacity: every block boundary lands somewhere new
    blocks = _blocks(rng, 5000, 60, channels)
    written, read = [], []
    for b in blocks:
        # consume a random amount, alternating between copy reads and zero-copy views
        take = int(rng.integers(0, ring.available() + 1))
        if rng.random() < 0.5:
            out = np.empty((take, channels), np.float32)
            assert ring.read_into(out) == take
            read.append(out)
        else:
            a, c = ring.views(take)
            read.append(np.concatenate([a, c]))
            ring.advance(take)
        k = ring.write(b if channels > 1 or rng.random() < 0.5 else b[:, 0])
        written.append(b[:k])
    rest = np.empty((ring.available(), channels), np.float32)
    ring.read_into(rest)
    read.append(rest)
    lost = sum(b.shape[0] for b in blocks) - sum(w.shape[0] for w in written)
    assert ring.overflow_samples == lost
    np.testing.assert_array_equal(np.concatenate(read), np.concatenate(written))
    assert ring.read_pos == ring.write_pos > ring.capacity * 10  # it really wrapped many times


def test_overflow_accounting_exact():
    ring = RingBuffer(10)
    assert ring.write(np.arange(6, dtype=np.float32)) == 6
    assert ring.write(np.arange(6, 13, dtype=np.float32)) == 4  # 3 dropped
    assert (ring.overflow_samples, ring.overflow_events) == (3, 1)
    assert ring.write(np.ones(5, np.float32)) == 0  # full: all 5 dropped
    assert (ring.overflow_samples, ring.overflow_events) == (8, 2)
    out = np.empty(10, np.float32)
    assert ring.read_into(out) == 10
    # what fits is the head of each block: the newest samples are the ones dropped
    np.testing.assert_array_equal(out, np.arange(10, dtype=np.float32))
    assert ring.write(np.ones(10, np.float32)) == 10  # exactly full is not an overflow
    assert (ring.overflow_samples, ring.overflow_events) == (8, 2)


def test_underflow_definition():
    ring = RingBuffer(8)
    ring.write(np.arange(3, dtype=np.float32))
    out = np.zeros(5, np.float32)
    # all-or-nothing read: nothing consumed, one underflow counted
    assert ring.read_into(out, partial=False) == 0
    assert ring.underflow_events == 1 and ring.available() == 3
    # partial read: the 3 frames are copied, still an underflow (asked for 5)
    assert ring.read_into(out) == 3
    np.testing.assert_array_equal(out[:3], [0, 1, 2])
    assert ring.underflow_events == 2
    assert not ring.wait_available(1, timeout=0.01)
    assert ring.underflow_events == 3
    ring.write(np.ones(2, np.float32))
    assert ring.read_into(np.zeros(2, np.float32)) == 2  # exact read: no underflow
    assert ring.underflow_events == 3


def test_advance_beyond_available_raises_and_reset_clears():
    ring = RingBuffer(4, 2)
    ring.write(np.ones((3, 2), np.float32))
    with pytest.raises(ValueError):
        ring.advance(4)
    ring.write(np.ones((3, 2), np.float32))
    ring.reset()
    assert ring.available() == 0 and ring.overflow_samples == 0 and ring.write_pos == 0


def test_write_casts_dtype_without_changing_values():
    ring = RingBuffer(8)
    ring.write(np.array([0.5, -0.25], dtype=np.float64))
    out = np.empty(2, np.float32)
    ring.read_into(out)
    np.testing.assert_array_equal(out, [0.5, -0.25])


def test_threaded_producer_consumer_loses_nothing():
    """A producer thread and a consumer thread, no locks: every sample arrives once, in order."""
    rng = np.random.default_rng(7)
    signal = rng.standard_normal((200_000, 2)).astype(np.float32)
    ring = RingBuffer(1021, 2)
    sizes = rng.integers(1, 300, size=4000)
    received = np.empty_like(signal)
    n_recv = [0]

    def producer():
        pos = 0
        i = 0
        while pos < signal.shape[0]:
            n = int(min(sizes[i % sizes.size], signal.shape[0] - pos))
            i += 1
            # a source paced so the capacity suffices: wait for room (never drop)
            while ring.free() < n:
                time.sleep(0)
            assert ring.write(signal[pos : pos + n]) == n
            pos += n

    def consumer():
        j = 0
        while n_recv[0] < signal.shape[0]:
            want = int(sizes[j % sizes.size])
            j += 1
            a, b = ring.views(want)
            k = a.shape[0] + b.shape[0]
            if k == 0:
                time.sleep(0)
                continue
            received[n_recv[0] : n_recv[0] + a.shape[0]] = a
            received[n_recv[0] + a.shape[0] : n_recv[0] + k] = b
            ring.advance(k)
            n_recv[0] += k

    threads = [threading.Thread(target=producer), threading.Thread(target=consumer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert ring.overflow_samples == 0
    np.testing.assert_array_equal(received, signal)


def test_write_allocates_no_sample_memory():
    """The producer path copies into the preallocated buffer: no per-call array allocation."""
    ring = RingBuffer(4096, 2)
    block = np.ones((1000, 2), np.float32)  # 8 kB per block
    ring.write(block)
    ring.advance(1000)
    tracemalloc.start()
    try:
        for _ in range(200):
            ring.write(block)  # wraps every few calls
            ring.advance(ring.available())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4000, f"write() allocated {peak} bytes at peak"


def test_block_with_wrong_channel_count_is_refused():
    ring = RingBuffer(16, 2)
    with pytest.raises(ValueError, match="channels"):
        ring.write(np.ones(4, np.float32))
