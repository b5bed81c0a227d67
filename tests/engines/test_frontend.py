"""engines.frontend is the one definition of the log-mel math, and engines.logmel_torch.LogMel (training,
torch batches) uses it. Grouped by property the torchaudio way: a base class per property holds the
tests, its CPU and CUDA subclasses only set the device. The numba framer's side is in
tests/rt_tagger/test_framer.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchaudio

import engines.logmel_torch
from engines.frontend import FrontEndSpec, hann_window, logmel_numpy, mel_filterbank, power_to_db
from engines.logmel_torch import LogMel
from tests.frontend_cases import SPECS, music_like, needs_cuda


# ------------------------------------------------------------------ one definition
def test_logmel_multiplies_by_the_one_definition():
    spec = SPECS["slaney"]
    m = LogMel(spec)
    assert m.fbank.dtype == m.window.dtype == torch.float64
    assert np.array_equal(m.fbank.numpy(), mel_filterbank(spec))
    assert np.array_equal(m.window.numpy(), hann_window(spec.n_fft))
    assert engines.logmel_torch.power_to_db is power_to_db
    assert not m.state_dict()  # the spec's constants, never saved with (or loaded into) a model


@pytest.mark.parametrize("scale", ["htk", "slaney"])
def test_filterbank_matches_torchaudio_within_its_float32_rounding(scale):
    spec = FrontEndSpec(mel_scale=scale)
    ours = mel_filterbank(spec)
    ref = torchaudio.functional.melscale_fbanks(
        spec.n_freqs, spec.f_min, spec.f_max, spec.n_mels, spec.sample_rate, norm=None, mel_scale=scale
    ).numpy()
    assert ours.shape == (spec.n_freqs, spec.n_mels)
    # torchaudio builds it in float32 (rounding depends on the CPU's vector width), we in float64
    np.testing.assert_allclose(ours, ref, atol=2e-5)


def test_window_matches_torch():
    np.testing.assert_allclose(
        hann_window(512), torch.hann_window(512, dtype=torch.float64).numpy(), atol=1e-12
    )


def test_power_to_db_takes_numpy_and_torch_alike():
    spec = FrontEndSpec(amin=1e-6, ref=2.0)
    power = np.array([0.0, 1e-7, 1e-6, 0.5, 2.0, 1e3])
    got = power_to_db(power, spec)
    expected = [10 * math.log10(max(p, 1e-6)) - 10 * math.log10(2.0) for p in power]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    assert got[0] == pytest.approx(spec.floor_db) and spec.db_offset == pytest.approx(10 * math.log10(2.0))
    t = power_to_db(torch.from_numpy(power), spec)
    assert isinstance(t, torch.Tensor) and np.array_equal(t.numpy(), got)


def test_invalid_spec_names_field():
    with pytest.raises(ValueError, match="f_max"):
        FrontEndSpec(f_max=9000)


# ------------------------------------------------------------------ properties, per device
class ReferenceParity:
    """LogMel on ``device`` equals the float64 numpy reference within 1e-3 dB, for every spec."""

    device: str

    @pytest.mark.parametrize("name", list(SPECS))
    def test_matches_numpy_reference(self, name):
        spec = SPECS[name]
        audio = music_like(spec.sample_rate, 1.5, seed=1)
        got = LogMel(spec).to(self.device)(torch.from_numpy(audio).to(self.device)).cpu().numpy()
        ref = logmel_numpy(audio, spec)
        assert got.dtype == np.float32 and got.shape == ref.shape == (
            spec.n_mels,
            spec.frames_for(audio.size),
        )
        assert np.abs(got - ref).max() <= 1e-3

    def test_float64_through_half_module_and_autocast(self):
        spec = SPECS["default"]
        x = torch.from_numpy(music_like(spec.sample_rate, 1.0, seed=2)).to(self.device)
        plain = LogMel(spec).to(self.device)(x)
        half = LogMel(spec).to(self.device).half()
        assert half.fbank.dtype == torch.float64 and half.fbank.device.type == self.device
        with torch.autocast(device_type=self.device, dtype=torch.bfloat16):
            got = half(x.half())
        # same fp16-rounded input through the plain module: equal means float64 all the way
        ref = LogMel(spec).to(self.device)(x.half().float())
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, ref, rtol=0, atol=0)
        assert not torch.equal(got, plain)  # the rounding did change the input: the check has teeth


class BatchInvariance:
    """A clip's log-mel does not depend on what else is in the batch or on the leading dims."""

    device: str

    def test_batch_equals_one_by_one(self):
        spec = SPECS["default"]
        x = torch.from_numpy(np.stack([music_like(spec.sample_rate, 1.0, seed=s) for s in range(3)]))
        m = LogMel(spec).to(self.device)
        batch = m(x.to(self.device)).cpu()
        for i in range(3):
            torch.testing.assert_close(batch[i], m(x[i].to(self.device)).cpu(), rtol=0, atol=1e-5)

    def test_leading_dims_are_kept(self):
        spec = SPECS["default"]
        x = torch.from_numpy(music_like(spec.sample_rate, 6 * 0.5, seed=4)).reshape(2, 3, -1).to(self.device)
        m = LogMel(spec).to(self.device)
        got = m(x)
        assert got.shape == (2, 3, spec.n_mels, spec.frames_for(x.shape[-1]))
        torch.testing.assert_close(got.reshape(6, spec.n_mels, -1), m(x.reshape(6, -1)), rtol=0, atol=1e-5)


class ChunkInvariance:
    """Overlapping chunks (center=False frames, fixed dB floor) give the whole clip's frames."""

    device: str

    @pytest.mark.parametrize("frames_per_chunk", [1, 7, 64])
    def test_chunks_concatenate_to_whole_clip(self, frames_per_chunk):
        spec = SPECS["22k-nfft1024"]
        x = torch.from_numpy(music_like(spec.sample_rate, 2.0, seed=5)).to(self.device)
        m = LogMel(spec).to(self.device)
        whole = m(x).cpu()
        parts = []
        for first in range(0, whole.shape[1], frames_per_chunk):
            last = min(first + frames_per_chunk, whole.shape[1])
            parts.append(m(x[first * spec.hop_length : (last - 1) * spec.hop_length + spec.n_fft]).cpu())
        torch.testing.assert_close(torch.cat(parts, dim=1), whole, rtol=0, atol=1e-5)


class TestReferenceParityCPU(ReferenceParity):
    device = "cpu"


@needs_cuda
class TestReferenceParityCUDA(ReferenceParity):
    device = "cuda"


class TestBatchInvarianceCPU(BatchInvariance):
    device = "cpu"


@needs_cuda
class TestBatchInvarianceCUDA(BatchInvariance):
    device = "cuda"


class TestChunkInvarianceCPU(ChunkInvariance):
    device = "cpu"


@needs_cuda
class TestChunkInvarianceCUDA(ChunkInvariance):
    device = "cuda"
