"""The one definition of the log-mel front end.

Every model bundle stores a :class:`FrontEndSpec`. The math is defined here once, in float64 numpy:
:func:`hann_window`, :func:`mel_filterbank` and :func:`power_to_db`. Every implementation uses
these functions, not copies of them: training's torch batches (:class:`engines.logmel_torch.LogMel`
keeps the window and filterbank as buffers and calls :func:`power_to_db` on tensors), the runtime's
incremental numba framer (``rt_tagger.framer``) and the whole-clip reference :func:`logmel_numpy`.
All three compute in float64 and round to float32 at the end; parity tests keep them within 1e-3 dB.

Why float64 numpy and not torchaudio's float32 filterbank: torchaudio builds it in float32, with
rounding that depends on the CPU's vector width (``ATEN_CPU_CAPABILITY=default`` and ``avx512``
give filterbanks up to 0.6 % apart on small weights), so it is not a machine-independent
definition. This one is; it matches torchaudio's to within float32 rounding noise (2e-5).

Design choices that keep streamed output equal to whole-clip output:
- ``center=False`` framing: frame ``i`` covers samples ``[i*hop, i*hop + n_fft)``, no padding.
- a fixed dB floor (``amin``, ``ref``), never ``top_db`` or per-window max normalisation, both of
  which would make a window's values depend on how the audio was chunked.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["FrontEndSpec", "hann_window", "mel_filterbank", "power_to_db", "logmel_numpy"]


class FrontEndSpec(BaseModel):
    """Log-mel parameters shared by training and the runtime (stored in every bundle)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sample_rate: int = Field(16000, gt=0, description="model sample rate in Hz")
    n_fft: int = Field(512, gt=0, description="FFT size in samples (= window length)")
    hop_length: int = Field(256, gt=0, description="frame hop in samples")
    n_mels: int = Field(96, gt=0)
    f_min: float = Field(0.0, ge=0)
    f_max: float = Field(8000.0, gt=0)
    mel_scale: str = Field("htk", pattern="^(htk|slaney)$")
    power: float = Field(2.0, description="2.0: power spectrogram")
    amin: float = Field(1e-10, gt=0, description="dB floor: 10*log10(max(x, amin))")
    ref: float = Field(1.0, gt=0, description="dB reference power")
    window_frames: int = Field(192, gt=0, description="model input length in frames")

    @model_validator(mode="after")
    def _check(self) -> FrontEndSpec:
        if self.f_min >= self.f_max:
            raise ValueError(f"f_min ({self.f_min}) must be below f_max ({self.f_max})")
        if self.f_max > self.sample_rate / 2:
            raise ValueError(f"f_max ({self.f_max}) is above Nyquist ({self.sample_rate / 2})")
        if self.hop_length > self.n_fft:
            raise ValueError("hop_length must not exceed n_fft")
        return self

    @property
    def n_freqs(self) -> int:
        return self.n_fft // 2 + 1

    @property
    def db_offset(self) -> float:
        """dB subtracted from every band: ``10*log10(max(amin, ref))``."""
        return 10.0 * math.log10(max(self.amin, self.ref))

    @property
    def floor_db(self) -> float:
        """dB of silence (power at or below ``amin``)."""
        return 10.0 * math.log10(self.amin) - self.db_offset

    @property
    def window_samples(self) -> int:
        """Samples that make exactly ``window_frames`` frames with center=False."""
        return (self.window_frames - 1) * self.hop_length + self.n_fft

    @property
    def window_seconds(self) -> float:
        return self.window_samples / self.sample_rate

    def hop_frames_for(self, seconds: float) -> int:
        """Frames between windows for a hop of ``seconds`` (at least one)."""
        return max(1, round(seconds * self.sample_rate / self.hop_length))

    def frames_for(self, n_samples: int) -> int:
        """Number of complete frames in ``n_samples`` samples (center=False)."""
        if n_samples < self.n_fft:
            return 0
        return 1 + (n_samples - self.n_fft) // self.hop_length


def hann_window(n: int) -> np.ndarray:
    """Periodic Hann window, as ``torch.hann_window(n)`` (float64)."""
    k = np.arange(n, dtype=np.float64)
    return 0.5 - 0.5 * np.cos(2.0 * math.pi * k / n)


def _hz_to_mel(f: np.ndarray, scale: str) -> np.ndarray:
    if scale == "htk":
        return 2595.0 * np.log10(1.0 + f / 700.0)
    f = np.asarray(f, dtype=np.float64)
    f_sp = 200.0 / 3
    mels = f / f_sp
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-12) / min_log_hz) / logstep, mels)


def _mel_to_hz(m: np.ndarray, scale: str) -> np.ndarray:
    if scale == "htk":
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    f_sp = 200.0 / 3
    freqs = f_sp * m
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), freqs)


def mel_filterbank(spec: FrontEndSpec) -> np.ndarray:
    """Triangular mel filterbank, shape ``(n_freqs, n_mels)``, float64: ``power @ fb`` gives bands.

    Same construction as ``torchaudio.functional.melscale_fbanks(norm=None)``, in float64.
    """
    all_freqs = np.linspace(0, spec.sample_rate // 2, spec.n_freqs)
    m_min = _hz_to_mel(np.array(spec.f_min), spec.mel_scale)
    m_max = _hz_to_mel(np.array(spec.f_max), spec.mel_scale)
    m_pts = np.linspace(m_min, m_max, spec.n_mels + 2)
    f_pts = _mel_to_hz(m_pts, spec.mel_scale)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts[None, :] - all_freqs[:, None]
    down = (-1.0 * slopes[:, :-2]) / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return np.maximum(0.0, np.minimum(down, up))


def power_to_db(power, spec: FrontEndSpec):
    """Fixed-floor dB of a power array: ``10*log10(max(power, amin)) - db_offset``.

    Takes a numpy array or a torch tensor (any device) and returns the same kind, so training and
    the runtime share this one function (as ``AmplitudeToDB('power', top_db=None)``).
    """
    clipped = power.clip(min=spec.amin)  # ndarray.clip and Tensor.clip alike
    log10 = np.log10(clipped) if isinstance(clipped, np.ndarray | np.generic) else clipped.log10()
    return 10.0 * log10 - spec.db_offset


def logmel_numpy(audio: np.ndarray, spec: FrontEndSpec) -> np.ndarray:
    """Reference log-mel of a whole mono clip, shape ``(n_mels, n_frames)`` float32.

    Plain numpy, for tests and offline tools; the runtime uses the numba framer, training LogMel.
    """
    audio = np.asarray(audio, dtype=np.float64)
    n = spec.frames_for(audio.shape[0])
    if n == 0:
        return np.zeros((spec.n_mels, 0), dtype=np.float32)
    idx = np.arange(spec.n_fft)[None, :] + spec.hop_length * np.arange(n)[:, None]
    frames = audio[idx] * hann_window(spec.n_fft)[None, :]
    mag = np.abs(np.fft.rfft(frames, n=spec.n_fft, axis=1))
    power = mag**spec.power
    mel = power @ mel_filterbank(spec)
    return power_to_db(mel, spec).T.astype(np.float32)
