"""StreamingFrontEnd (numba, incremental) against the training front end (engines.logmel_torch.LogMel,
torch batches on the whole clip), grouped by property the torchaudio way: a base class holds the
tests, CPU and CUDA subclasses set the device LogMel runs on. Both use the one definition in
engines.frontend (float64 window, filterbank and dB), so the 1e-3 dB bound of DESIGN.md holds for
every band, on synthetic signals and on real music.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import rt_tagger.framer
from engines.frontend import FrontEndSpec, hann_window, mel_filterbank, power_to_db
from engines.logmel_torch import LogMel
from rt_tagger.framer import StreamingFrontEnd
from rt_tagger.resample import StreamingResampler
from rt_tagger.ring import RingBuffer
from tests.conftest import ROOT
from tests.frontend_cases import SPECS, music_like, needs_cuda

SPEC = FrontEndSpec(window_frames=64)
_FE_CACHE: dict[tuple, StreamingFrontEnd] = {}


def _frontend(spec: FrontEndSpec, rate: int, channels: int = 1) -> StreamingFrontEnd:
    key = (spec, rate, channels)
    if key not in _FE_CACHE:
        _FE_CACHE[key] = StreamingFrontEnd(spec, rate, channels)
    fe = _FE_CACHE[key]
    fe.reset()
    return fe


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


def _stream_arrays(fe: StreamingFrontEnd, x: np.ndarray, block: int) -> np.ndarray:
    """Feed ``x`` in ``block``-frame arrays (as the pipeline does); collect every new frame."""
    cols = []
    w = fe.spec.window_frames
    for s in range(0, x.shape[0], block):
        new = fe.consume_array(x[s : s + block])
        assert new <= w, "test blocks must not outrun the window"
        if new:
            cols.append(fe.window(copy=True)[:, w - new :])
    return np.concatenate(cols, axis=1)


def test_framer_uses_the_one_definition():
    spec = SPECS["power1-fmin-db"]
    fe = _frontend(spec, spec.sample_rate)
    assert np.array_equal(fe._win, hann_window(spec.n_fft))
    assert np.array_equal(fe._fb_t, mel_filterbank(spec).T)
    assert rt_tagger.framer.power_to_db is power_to_db
    assert fe.floor_db == np.float32(spec.floor_db)


# ------------------------------------------------------------------ parity, per reference device
class StreamParity:
    """Streamed numba log-mel equals LogMel on ``device`` over the whole clip within 1e-3 dB."""

    device: str

    def reference(self, x: np.ndarray, spec: FrontEndSpec) -> np.ndarray:
        with torch.no_grad():
            return LogMel(spec).to(self.device)(torch.from_numpy(x).to(self.device)).cpu().numpy()

    def test_streamed_through_ring_16k(self):
        rng = np.random.default_rng(1)
        x = music_like(16000, 3.0)
        got = _stream_through_ring(_frontend(SPEC, 16000), x, rng, capacity=3001, max_block=2000)
        ref = self.reference(x, SPEC)
        assert got.shape == ref.shape == (SPEC.n_mels, SPEC.frames_for(x.size))
        assert np.abs(got - ref).max() <= 1e-3

    def test_real_music_in_10ms_blocks(self):
        """The demo clip (real music, 16 kHz) vs LogMel on the whole clip: every band."""
        import soundfile as sf

        x, sr = sf.read(ROOT / "rt_tagger" / "demo" / "demo.ogg", dtype="float32")
        spec = FrontEndSpec()  # the default model's front end
        got = _stream_arrays(_frontend(spec, sr), x, block=sr // 100)
        ref = self.reference(x, spec)
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() <= 1e-3

    def test_stereo_44k_resampled_matches_resample_whole_then_logmel(self):
        rng = np.random.default_rng(2)
        left = music_like(44100, 2.5, seed=3)
        right = music_like(44100, 2.5, seed=4)
        x = np.stack([left, right], axis=1)
        got = _stream_through_ring(_frontend(SPEC, 44100, channels=2), x, rng, capacity=4999, max_block=3000)
        # reference: downmix, resample the whole clip in one call, flush, LogMel on the result
        r = StreamingResampler(44100, SPEC.sample_rate)
        mono = (0.5 * (left + right)).astype(np.float32)
        y = np.concatenate([r.process(mono), r.flush()])
        ref = self.reference(y, SPEC)
        # the stream stops before the flush: compare the frames it produced
        assert 0 < got.shape[1] <= ref.shape[1]
        assert (
            ref.shape[1] - got.shape[1]
            <= 1 + r.latency_samples * SPEC.sample_rate // 44100 // SPEC.hop_length + 1
        )
        assert np.abs(got - ref[:, : got.shape[1]]).max() <= 1e-3

    @pytest.mark.parametrize("freq", [50.0, 997.0, 3000.0, 7777.0])
    def test_pure_tones(self, freq):
        spec = FrontEndSpec(window_frames=16)
        t = np.arange(spec.window_samples) / spec.sample_rate
        x = (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
        fe = _frontend(spec, spec.sample_rate)
        assert fe.consume_array(x) == spec.window_frames
        assert np.abs(fe.window() - self.reference(x, spec)).max() <= 1e-3

    @pytest.mark.parametrize("name", list(SPECS))
    def test_every_spec_variant(self, name):
        spec = SPECS[name]
        rng = np.random.default_rng(11)
        x = music_like(spec.sample_rate, 1.5, seed=12)
        fe = _frontend(spec, spec.sample_rate)
        got = _stream_through_ring(fe, x, rng, capacity=2 * spec.n_fft + 37, max_block=spec.n_fft + 100)
        ref = self.reference(x, spec)
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() <= 1e-3


class TestStreamParityCPU(StreamParity):
    device = "cpu"


@needs_cuda
class TestStreamParityCUDA(StreamParity):
    device = "cuda"


# ------------------------------------------------------------------ chunk invariance
class TestChunkInvariance:
    """How the audio is cut never changes a frame. The framer is numba on the CPU only, so this
    property has no CUDA subclass (LogMel's own chunk invariance is tested per device in
    tests/engines/test_frontend.py)."""

    @pytest.mark.parametrize("block", [1, 255, 256, 22050])
    def test_block_sizes_give_identical_frames(self, block):
        x = music_like(22050, 2.0, seed=5)
        fe = _frontend(SPEC, 22050)
        ref = _stream_arrays(fe, x, block=4097)
        fe.reset()
        np.testing.assert_array_equal(_stream_arrays(fe, x, block=block), ref)

    def test_whole_clip_in_one_call_gives_the_same_last_window(self):
        x = music_like(22050, 2.0, seed=5)
        fe = _frontend(SPEC, 22050)
        ref = _stream_arrays(fe, x, block=4097)
        fe.reset()
        assert fe.consume_array(x) == ref.shape[1] > SPEC.window_frames  # older frames are skipped
        np.testing.assert_array_equal(fe.window(), ref[:, -SPEC.window_frames :])

    def test_ring_and_arrays_give_identical_frames(self):
        x = music_like(44100, 2.0, seed=6)
        fe = _frontend(SPEC, 44100)
        from_ring = _stream_through_ring(fe, x, np.random.default_rng(7), capacity=3001, max_block=2000)
        fe.reset()
        np.testing.assert_array_equal(_stream_arrays(fe, x, block=1000), from_ring)


# ------------------------------------------------------------------ counters and buffers
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
    x = music_like(16000, 1.0)
    x[100:110] = np.nan
    fe.consume_array(x)
    assert np.isfinite(fe.window()).all()
    assert fe.resampler.dropped_samples == 10


def test_window_copy_is_c_contiguous_and_independent():
    fe = _frontend(SPEC, 16000)
    fe.consume_array(music_like(16000, 1.0))
    view, copy = fe.window(), fe.window(copy=True)
    assert copy.flags.c_contiguous and copy.dtype == view.dtype == np.float32
    assert copy.shape == view.shape == (SPEC.n_mels, SPEC.window_frames)
    np.testing.assert_array_equal(view, copy)
    fe.consume_array(music_like(16000, 0.5, seed=9))
    assert not np.array_equal(fe.window(), copy)  # the stream moved on, the copy did not


def test_ring_wraps_many_times_and_keeps_frame_order():
    """Fed in blocks of odd sizes across several laps of the ring, the window equals the same
    audio's window fed at once (the ring's column order is the frames' order)."""
    fe_blocks, fe_once = _frontend(SPEC, 16000), _frontend(SPEC, 16000)
    x = music_like(16000, 3.5 * SPEC.window_seconds, seed=4)
    for s in range(0, x.shape[0], 1733):
        fe_blocks.consume_array(x[s : s + 1733])
    fe_once.consume_array(x)
    assert fe_blocks.frames_total == fe_once.frames_total > 3 * SPEC.window_frames
    np.testing.assert_array_equal(fe_blocks.window(), fe_once.window())


def test_compile_happens_at_construction():
    fe = StreamingFrontEnd(FrontEndSpec(window_frames=8), 32000, channels=3)
    assert fe.compile_seconds > 0 and fe.frames_total == 0 and fe.samples_total == 0
    assert np.all(fe.window() == fe.floor_db)
