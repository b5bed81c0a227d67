"""StreamingFrontEnd vs torchaudio (engines.logmel_torch.LogMel), modelled on torchaudio's
librosa-compatibility tests: streamed numba log-mel against the batch reference on the whole clip.

LogMel is the training front end: torchaudio's float32 window and filterbank, float64 arithmetic
(a float32 STFT alone moves quiet bands by up to ~0.05 dB). The runtime uses the same constants and
precision, so the 1e-3 dB bound holds for every band, on synthetic signals and on real music.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engines.frontend import FrontEndSpec
from engines.logmel_torch import LogMel
from rt_tagger.framer import StreamingFrontEnd
from rt_tagger.resample import StreamingResampler
from rt_tagger.ring import RingBuffer

SPEC = FrontEndSpec(window_frames=64)
_FE_CACHE: dict[tuple, StreamingFrontEnd] = {}


def _frontend(spec: FrontEndSpec, rate: int, channels: int = 1, fft: str = "auto") -> StreamingFrontEnd:
    key = (spec, rate, channels, fft)
    if key not in _FE_CACHE:
        _FE_CACHE[key] = StreamingFrontEnd(spec, rate, channels, fft=fft)
    fe = _FE_CACHE[key]
    fe.reset()
    return fe


def _music_like(rate: int, seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    x = 0.05 * rng.standard_normal(t.size)
    for f, a in ((110.0, 0.3), (440.0, 0.2), (1318.5, 0.1), (3520.0, 0.05)):
        x += a * np.sin(2 * np.pi * f * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 0.7 * t))
    return x.astype(np.float32)


def _reference(x: np.ndarray, spec: FrontEndSpec) -> np.ndarray:
    with torch.no_grad():
        return LogMel(spec)(torch.from_numpy(x)).numpy()


def _stream_through_ring(
    fe: StreamingFrontEnd, x: np.ndarray, rng: np.random.Generator, capacity: int, max_block: int
) -> np.ndarray:
    """Feed ``x`` in random blocks through a small ring; collect every new frame as it appears."""
    x2 = x.reshape(x.shape[0], -1)
    ring = RingBuffer(capacity, x2.shape[1])
    cols, pos = [], 0
    w = fe.spec.window_frames
    while pos < x2.shape[0]:
        n = int(min(rng.integers(1, max_block + 1), ring.free(), x2.shape[0] - pos))
        assert ring.write(x2[pos : pos + n]) == n
        pos += n
        before = fe.frames_total
        new = fe.consume(ring)
        assert fe.frames_total == before + new
        assert new <= w, "test blocks must not outrun the window"
        if new:
            cols.append(fe.window(copy=True)[:, w - new :])
    assert ring.overflow_samples == 0 and ring.read_pos > 3 * capacity  # it wrapped
    return np.concatenate(cols, axis=1) if cols else np.zeros((fe.spec.n_mels, 0), np.float32)


@pytest.mark.parametrize("fft", ["numpy", "numba"])
def test_streamed_16k_matches_torchaudio_whole_clip(fft):
    rng = np.random.default_rng(1)
    x = _music_like(16000, 3.0)
    fe = _frontend(SPEC, 16000, fft=fft)
    got = _stream_through_ring(fe, x, rng, capacity=3001, max_block=2000)
    ref = _reference(x, SPEC)
    assert got.shape == ref.shape == (SPEC.n_mels, SPEC.frames_for(x.size))
    assert np.abs(got - ref).max() <= 1e-3


def test_real_music_streamed_matches_training_front_end():
    """The demo clip (real music, 16 kHz) in 10-ms blocks vs LogMel on the whole clip: every band."""
    import soundfile as sf

    from tests.conftest import ROOT

    x, sr = sf.read(ROOT / "rt_tagger" / "demo" / "demo.ogg", dtype="float32")
    spec = FrontEndSpec()  # the default model's front end
    fe = _frontend(spec, sr)
    cols = []
    for s in range(0, x.size, 160):
        new = fe.consume_array(x[s : s + 160])
        if new:
            cols.append(fe.window(copy=True)[:, spec.window_frames - new :])
    got = np.concatenate(cols, axis=1)
    ref = _reference(x, spec)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1e-3


def test_stereo_44k_resampled_matches_resample_whole_then_logmel():
    rng = np.random.default_rng(2)
    left = _music_like(44100, 2.5, seed=3)
    right = _music_like(44100, 2.5, seed=4)
    x = np.stack([left, right], axis=1)
    fe = _frontend(SPEC, 44100, channels=2)
    got = _stream_through_ring(fe, x, rng, capacity=4999, max_block=3000)
    # reference: downmix, resample the whole clip in one call, flush, torchaudio on the result
    r = StreamingResampler(44100, SPEC.sample_rate)
    mono = (0.5 * (left + right)).astype(np.float32)
    y = np.concatenate([r.process(mono), r.flush()])
    ref = _reference(y, SPEC)
    # the stream stops before the flush: compare the frames it produced
    assert 0 < got.shape[1] <= ref.shape[1]
    assert (
        ref.shape[1] - got.shape[1]
        <= 1 + r.latency_samples * SPEC.sample_rate // 44100 // SPEC.hop_length + 1
    )
    assert np.abs(got - ref[:, : got.shape[1]]).max() <= 1e-3


@pytest.mark.parametrize("freq", [50.0, 997.0, 3000.0, 7777.0])
def test_pure_tones_match_within_float_precision(freq):
    spec = FrontEndSpec(window_frames=16)
    t = np.arange(spec.window_samples) / spec.sample_rate
    x = (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    fe = _frontend(spec, spec.sample_rate)
    assert fe.consume_array(x) == spec.window_frames
    got = fe.window()
    assert np.abs(got - _reference(x, spec)).max() <= 1e-3


def test_chunk_size_invariance():
    x = _music_like(22050, 2.0, seed=5)
    fe = _frontend(SPEC, 22050)
    fe.consume_array(x)
    whole, total = fe.window(copy=True), fe.frames_total
    for chunk in (1, 255, 256, 4097):
        fe.reset()
        for s in range(0, x.size, chunk):
            fe.consume_array(x[s : s + chunk])
        assert fe.frames_total == total
        np.testing.assert_array_equal(fe.window(), whole)


def test_only_new_frames_are_counted():
    spec, fe = SPEC, _frontend(SPEC, 16000)
    rng = np.random.default_rng(6)
    fed = 0
    for n in rng.integers(0, 1500, size=60):
        x = rng.standard_normal(int(n)).astype(np.float32) * 0.1
        new = fe.consume_array(x)
        fed += int(n)
        assert fe.frames_total == spec.frames_for(fed)
        assert new >= 0 and fe.samples_total == fed
        assert fe.remainder == fed - fe.frames_total * spec.hop_length < spec.n_fft or fe.frames_total == 0
        if fe.frames_total:
            assert fe.newest_frame_last_sample == (fe.frames_total - 1) * spec.hop_length + spec.n_fft - 1
            start, end = fe.window_span()
            assert end - start == spec.window_samples and end == fe.newest_frame_last_sample + 1
    assert fe.ready == (fe.frames_total >= spec.window_frames)
    assert fe.input_frames_total == fed


def test_silence_gives_db_floor_not_nan():
    fe = _frontend(SPEC, 48000, channels=2)
    fe.consume_array(np.zeros((96000, 2), np.float32))
    w = fe.window()
    assert fe.ready and np.isfinite(w).all()
    np.testing.assert_allclose(w, fe.floor_db)
    assert fe.floor_db == pytest.approx(10 * np.log10(SPEC.amin) - 10 * np.log10(max(SPEC.amin, SPEC.ref)))


def test_non_finite_input_is_counted_and_output_stays_finite():
    fe = _frontend(SPEC, 16000)
    x = _music_like(16000, 1.0)
    x[100:110] = np.nan
    fe.consume_array(x)
    assert np.isfinite(fe.window()).all()
    assert fe.resampler.dropped_samples == 10


def test_window_is_c_contiguous_and_copy_is_independent():
    fe = _frontend(SPEC, 16000)
    fe.consume_array(_music_like(16000, 1.0))
    view, copy = fe.window(), fe.window(copy=True)
    assert (
        view.flags.c_contiguous
        and view.dtype == np.float32
        and view.shape == (SPEC.n_mels, SPEC.window_frames)
    )
    fe.consume_array(_music_like(16000, 0.5, seed=9))
    assert not np.array_equal(view, copy)  # the view follows the stream, the copy does not


def test_compile_happens_at_construction():
    fe = StreamingFrontEnd(FrontEndSpec(window_frames=8), 32000, channels=3)
    assert fe.compile_seconds > 0 and fe.frames_total == 0 and fe.samples_total == 0
    assert np.all(fe.window() == fe.floor_db)


@pytest.mark.parametrize(
    "spec",
    [
        FrontEndSpec(mel_scale="slaney", n_mels=64, window_frames=32),
        FrontEndSpec(power=1.0, f_min=30.0, f_max=7600.0, window_frames=32),
        FrontEndSpec(n_fft=400, hop_length=160, n_mels=80, window_frames=32),  # numpy-FFT path only
        FrontEndSpec(
            sample_rate=22050, n_fft=1024, hop_length=512, n_mels=128, f_max=11025.0, window_frames=16
        ),
    ],
    ids=["slaney", "power1-fmin", "nfft400", "22k-nfft1024"],
)
def test_other_front_end_definitions_match_torchaudio(spec):
    rng = np.random.default_rng(11)
    x = _music_like(spec.sample_rate, 1.5, seed=12)
    fe = _frontend(spec, spec.sample_rate)
    got = _stream_through_ring(fe, x, rng, capacity=2 * spec.n_fft + 37, max_block=spec.n_fft + 100)
    ref = _reference(x, spec)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1e-3


def test_numba_fft_refuses_non_power_of_two():
    with pytest.raises(ValueError, match="n_fft=400"):
        StreamingFrontEnd(FrontEndSpec(n_fft=400, hop_length=160), 16000, fft="numba")
