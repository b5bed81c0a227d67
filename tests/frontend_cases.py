"""Front-end cases shared by tests/engines/test_frontend.py and tests/rt_tagger/test_framer.py:
the spec variants every implementation is checked on, a music-like signal and the CUDA skip."""

from __future__ import annotations

import numpy as np
import pytest

from engines.frontend import FrontEndSpec

# Every parameter of the spec differs from the default in at least one case.
SPECS = {
    "default": FrontEndSpec(window_frames=32),
    "slaney": FrontEndSpec(mel_scale="slaney", n_mels=64, window_frames=32),
    "power1-fmin-db": FrontEndSpec(power=1.0, f_min=30.0, f_max=7600.0, amin=1e-6, ref=0.5, window_frames=32),
    "nfft400": FrontEndSpec(n_fft=400, hop_length=160, n_mels=80, window_frames=32),
    "22k-nfft1024": FrontEndSpec(
        sample_rate=22050, n_fft=1024, hop_length=512, n_mels=128, f_max=11025.0, window_frames=16
    ),
}


def music_like(rate: int, seconds: float, seed: int = 0) -> np.ndarray:
    """Noise plus four slowly modulated tones, float32 mono."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    x = 0.05 * rng.standard_normal(t.size)
    for f, a in ((110.0, 0.3), (440.0, 0.2), (1318.5, 0.1), (3520.0, 0.05)):
        x += a * np.sin(2 * np.pi * f * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 0.7 * t))
    return x.astype(np.float32)


def needs_cuda(cls):
    """Skip a CUDA subclass, saying why, where torch sees no GPU."""
    import torch

    return pytest.mark.skipif(
        not torch.cuda.is_available(), reason="no CUDA GPU here: the CPU subclass checks the same properties"
    )(cls)
