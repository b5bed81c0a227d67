import numpy as np
import pytest
import torch
import torchaudio

from engines.frontend import FrontEndSpec, hann_window, logmel_numpy, mel_filterbank
from engines.logmel_torch import LogMel


@pytest.mark.parametrize("scale", ["htk", "slaney"])
def test_filterbank_matches_torchaudio(scale):
    spec = FrontEndSpec(mel_scale=scale)
    ours = mel_filterbank(spec)
    ref = torchaudio.functional.melscale_fbanks(
        spec.n_freqs, spec.f_min, spec.f_max, spec.n_mels, spec.sample_rate, norm=None, mel_scale=scale
    ).numpy()
    assert ours.shape == (spec.n_freqs, spec.n_mels)
    # torchaudio builds it in float32, we in float64
    np.testing.assert_allclose(ours, ref, atol=2e-5)


def test_window_matches_torch():
    np.testing.assert_allclose(hann_window(512), torch.hann_window(512, dtype=torch.float64).numpy(), atol=1e-12)


def test_numpy_reference_matches_torchaudio_within_1e3_db():
    spec = FrontEndSpec()
    rng = np.random.default_rng(0)
    t = np.arange(spec.sample_rate * 2) / spec.sample_rate
    audio = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    ours = logmel_numpy(audio, spec)
    ref = LogMel(spec).double()(torch.from_numpy(audio).double()).numpy()
    assert ours.shape == ref.shape == (spec.n_mels, spec.frames_for(audio.size))
    assert np.abs(ours - ref).max() < 1e-3


def test_invalid_spec_names_field():
    with pytest.raises(ValueError, match="f_max"):
        FrontEndSpec(f_max=9000)
