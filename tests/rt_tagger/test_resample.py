"""StreamingResampler: block-size invariance, frequency response, pass-through, downmix."""

from __future__ import annotations

import numpy as np
import pytest

from rt_tagger.resample import QUALITY, ResampleError, StreamingResampler, to_mono

OUT = 16000


def _random_blocks(
    r: StreamingResampler, x: np.ndarray, rng: np.random.Generator, max_block: int
) -> np.ndarray:
    parts, pos = [], 0
    while pos < x.size:
        n = int(rng.integers(0, max_block + 1))  # zero-length blocks included
        parts.append(r.process(x[pos : pos + n]))
        pos += n
    parts.append(r.flush())
    return np.concatenate(parts)


@pytest.mark.parametrize("in_rate", [44100, 48000, 22050, 8000, 32000])
def test_random_blocks_equal_whole_signal(in_rate):
    rng = np.random.default_rng(in_rate)
    x = (0.5 * rng.standard_normal(int(in_rate * 1.3))).astype(np.float32)
    r = StreamingResampler(in_rate, OUT)
    whole = np.concatenate([r.process(x), r.flush()])
    assert whole.size == -(-x.size * OUT // in_rate)  # ceil(n_in * out / in)
    for max_block in (7, 1000, 9000):
        streamed = _random_blocks(r, x, rng, max_block)
        assert streamed.shape == whole.shape
        np.testing.assert_allclose(streamed, whole, rtol=0, atol=1e-6)
    # without flush, the emitted prefix is the same too
    r.reset()
    head = _random_blocks_no_flush(r, x, rng)
    np.testing.assert_allclose(head, whole[: head.size], rtol=0, atol=1e-6)
    assert head.size >= whole.size - (r.latency_samples * OUT) // in_rate - 2


def _random_blocks_no_flush(r, x, rng):
    parts, pos = [], 0
    while pos < x.size:
        n = int(rng.integers(1, 3000))
        parts.append(r.process(x[pos : pos + n]))
        pos += n
    return np.concatenate(parts)


def _tone_gain_db(in_rate: int, freq: float, quality: str = "high") -> float:
    t = np.arange(in_rate * 2) / in_rate
    x = np.sin(2 * np.pi * freq * t).astype(np.float32)
    y = StreamingResampler(in_rate, OUT, quality).process(x).astype(np.float64)
    core = y[OUT // 2 : -OUT // 2]  # away from the start and the unflushed end
    rms = np.sqrt(np.mean(core**2))
    return 20 * np.log10(max(rms, 1e-30) / np.sqrt(0.5))


@pytest.mark.parametrize("quality", list(QUALITY))
@pytest.mark.parametrize("in_rate", [44100, 48000, 22050, 8000])
def test_passband_tone_keeps_amplitude(in_rate, quality):
    assert abs(_tone_gain_db(in_rate, 1000.0, quality)) < 0.1


@pytest.mark.parametrize("quality", list(QUALITY))
@pytest.mark.parametrize("in_rate", [44100, 48000, 32000])
@pytest.mark.parametrize("freq", [8200.0, 9000.0, 12000.0])
def test_tone_above_new_nyquist_is_attenuated_60db(in_rate, freq, quality):
    assert _tone_gain_db(in_rate, freq, quality) <= -60.0


def test_equal_rates_pass_through_exactly():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(5000).astype(np.float32)
    r = StreamingResampler(16000, 16000)
    np.testing.assert_array_equal(np.concatenate([r.process(x[:1234]), r.process(x[1234:])]), x)
    assert r.flush().size == 0


def test_output_is_aligned_to_input_time():
    """Zero phase: output n sits at input time n*M/L, so a slow ramp maps to itself."""
    in_rate = 44100
    t = np.arange(in_rate) / in_rate
    x = np.sin(2 * np.pi * 50 * t).astype(np.float32)
    y = StreamingResampler(in_rate, OUT).process(x)
    ty = np.arange(y.size) / OUT
    ref = np.sin(2 * np.pi * 50 * ty)
    np.testing.assert_allclose(y[400:-400], ref[400:-400], atol=1e-4)


def test_non_finite_samples_are_zeroed_and_counted():
    x = np.ones(4410, np.float32)
    x[[10, 20, 30]] = [np.nan, np.inf, -np.inf]
    r = StreamingResampler(44100, OUT)
    y = np.concatenate([r.process(x), r.flush()])
    assert np.isfinite(y).all()
    r2 = StreamingResampler(16000, OUT)
    assert np.isfinite(r2.process(x)).all() and r2.dropped_samples == 3
    r.process(x)
    assert r.dropped_samples == 3


def test_to_mono_averages_channels():
    block = np.array([[1.0, 3.0], [-2.0, 0.0]], np.float32)
    np.testing.assert_array_equal(to_mono(block), [2.0, -1.0])
    np.testing.assert_array_equal(to_mono(block[:, :1]), [1.0, -2.0])
    np.testing.assert_array_equal(to_mono(np.array([0.5, 0.25])), [0.5, 0.25])


def test_bad_rates_raise_user_error():
    with pytest.raises(ResampleError, match="positive"):
        StreamingResampler(0, OUT)
    with pytest.raises(ResampleError, match="quality"):
        StreamingResampler(44100, OUT, quality="best")
    with pytest.raises(ResampleError, match="phases"):
        StreamingResampler(44100, 16001)


def test_short_streams_and_shapes():
    r = StreamingResampler(44100, OUT)
    assert r.process(np.ones(10, np.float32)).size == 0  # still inside the filter's look-ahead
    assert r.flush().size == -(-10 * OUT // 44100)
    assert r.flush().size == 0 and r.process(np.zeros(0, np.float32)).size == 0
    assert r.process(np.ones((5000, 1), np.float32)).size > 0  # (n, 1) is mono
    with pytest.raises(ValueError, match="to_mono"):
        r.process(np.ones((100, 2), np.float32))
