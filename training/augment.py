"""Batched audio augmentations that run where the batch lives (the GPU in real runs).

Waveform stage (before log-mel): random gain, background mixing with a crop of another track,
additive white noise. Log-mel stage: a random EQ curve (tilt plus one peak/notch, in dB per mel
band — a filter applied as per-band gains), and SpecAugment-style time and frequency masks.
Pitch shift is done while cropping (:func:`training.views.sample_views`, ``max_semitones``).
Every random draw uses the caller's generator, so a run is reproducible and resumable.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from training.bank import AudioBank
from training.views import gather_crops

__all__ = ["AugmentSpec", "ChannelSpec", "augment_wave", "augment_mel", "degrade_channel", "mix_in"]


class AugmentSpec(BaseModel):
    """Augmentation strengths; a probability of 0 or a range of 0 switches one off."""

    model_config = ConfigDict(extra="forbid")

    gain_db: float = Field(6.0, ge=0, description="uniform gain in ±gain_db")
    noise_p: float = Field(0.3, ge=0, le=1)
    noise_snr_db: tuple[float, float] = (15.0, 40.0)
    mix_p: float = Field(0.3, ge=0, le=1, description="probability of mixing in another track")
    mix_snr_db: tuple[float, float] = (5.0, 15.0)
    pitch_semitones: float = Field(1.0, ge=0, le=12, description="resampling shift in ±semitones")
    eq_db: float = Field(6.0, ge=0, description="max tilt / peak gain of the EQ curve in dB")
    eq_p: float = Field(0.5, ge=0, le=1)
    freq_mask: int = Field(12, ge=0, description="max masked mel bands")
    time_mask: int = Field(24, ge=0, description="max masked frames")
    mask_p: float = Field(0.5, ge=0, le=1)


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen, device=gen.device)


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x.pow(2).mean(dim=-1, keepdim=True).clamp_min(1e-10).sqrt()


def augment_wave(x: torch.Tensor, bank: AudioBank, spec: AugmentSpec, gen: torch.Generator) -> torch.Tensor:
    """Augment crops ``(N, T)`` in place of a copy; returns ``(N, T)``."""
    n, t = x.shape
    if spec.mix_p > 0:
        x = mix_in(x, bank, spec.mix_p, spec.mix_snr_db, gen)[0]
    if spec.noise_p > 0:
        noise = torch.randn(n, t, generator=gen, device=gen.device)
        snr = _uniform(n, *spec.noise_snr_db, gen)[:, None]
        on = (torch.rand(n, 1, generator=gen, device=gen.device) < spec.noise_p).float()
        x = x + on * _rms(x) * torch.pow(10.0, -snr / 20) * noise
    if spec.gain_db > 0:
        g = _uniform(n, -spec.gain_db, spec.gain_db, gen)[:, None]
        x = x * torch.pow(10.0, g / 20)
    return x


def mix_in(
    x: torch.Tensor, bank: AudioBank, p: float, snr_db: tuple[float, float], gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each crop of ``x`` ``(N, T)`` gets, with probability ``p``, a random crop of a random track of
    ``bank`` mixed in at a signal-to-background ratio drawn from ``snr_db``.

    Returns ``(mixed (N, T), on (N, 1), other (N,))``: ``on`` is 1.0 where a crop was mixed,
    ``other`` the bank track each background came from.
    """
    n, t = x.shape
    other = torch.randint(len(bank), (n,), generator=gen, device=gen.device)
    starts = (torch.rand(n, generator=gen, device=gen.device) * (bank.lengths[other] - t).clamp(min=0)).long()
    bg = gather_crops(bank, other, starts, t)
    snr = _uniform(n, *snr_db, gen)[:, None]
    scale = _rms(x) / _rms(bg) * torch.pow(10.0, -snr / 20)
    on = (torch.rand(n, 1, generator=gen, device=gen.device) < p).float()
    return x + on * scale * bg, on, other


def augment_mel(mel: torch.Tensor, spec: AugmentSpec, gen: torch.Generator) -> torch.Tensor:
    """Augment log-mel ``(N, n_mels, frames)`` in dB; returns a new tensor."""
    n, f, t = mel.shape
    dev = mel.device
    if spec.eq_p > 0 and spec.eq_db > 0:
        band = torch.linspace(-1, 1, f, device=dev)[None, :]  # (1, F)
        tilt = _uniform(n, -spec.eq_db, spec.eq_db, gen)[:, None] * band
        center = _uniform(n, -1, 1, gen)[:, None]
        width = _uniform(n, 0.05, 0.3, gen)[:, None]
        peak = _uniform(n, -spec.eq_db, spec.eq_db, gen)[:, None] * torch.exp(
            -0.5 * ((band - center) / width) ** 2
        )
        on = (torch.rand(n, 1, generator=gen, device=gen.device) < spec.eq_p).float()
        mel = mel + (on * (tilt + peak))[:, :, None]
    if spec.mask_p > 0 and (spec.freq_mask > 0 or spec.time_mask > 0):
        fill = mel.mean(dim=(1, 2), keepdim=True)
        on = torch.rand(n, generator=gen, device=gen.device) < spec.mask_p
        mask = torch.zeros(n, f, t, dtype=torch.bool, device=dev)
        if spec.freq_mask > 0:
            w = (torch.rand(n, generator=gen, device=gen.device) * (spec.freq_mask + 1)).long()
            s = (torch.rand(n, generator=gen, device=gen.device) * (f - w + 1)).long()
            r = torch.arange(f, device=dev)[None, :]
            mask |= ((r >= s[:, None]) & (r < (s + w)[:, None]) & on[:, None])[:, :, None]
        if spec.time_mask > 0:
            w = (torch.rand(n, generator=gen, device=gen.device) * (spec.time_mask + 1)).long()
            s = (torch.rand(n, generator=gen, device=gen.device) * (t - w + 1)).long()
            r = torch.arange(t, device=dev)[None, :]
            mask |= ((r >= s[:, None]) & (r < (s + w)[:, None]) & on[:, None])[:, None, :]
        mel = torch.where(mask, fill, mel)
    return mel


class ChannelSpec(BaseModel):
    """Degradations of the recording channel, each applied to a window with its own probability
    (0 switches it off): a room (reverb from a synthetic impulse response), a dull speaker (a
    low-pass of random corner), a small speaker or laptop microphone (a high-pass: no lows), an
    overdriven stage (soft clipping), a lo-fi converter (sample-and-hold rate reduction and few
    bits, scaled to the window's peak). The window's RMS is kept."""

    model_config = ConfigDict(extra="forbid")

    reverb_p: float = Field(0.0, ge=0, le=1)
    reverb_rt60_s: tuple[float, float] = (0.3, 2.5)
    reverb_wet: tuple[float, float] = (0.1, 0.7)
    lowpass_p: float = Field(0.0, ge=0, le=1)
    lowpass_hz: tuple[float, float] = (2000.0, 6000.0)
    highpass_p: float = Field(0.0, ge=0, le=1)
    highpass_hz: tuple[float, float] = (100.0, 400.0)
    clip_p: float = Field(0.0, ge=0, le=1)
    clip_drive_db: tuple[float, float] = (3.0, 18.0)
    crush_p: float = Field(0.0, ge=0, le=1)
    crush_bits: tuple[float, float] = (5.0, 10.0)  # bits of the quantiser, its full scale at the peak
    crush_hold: tuple[int, int] = (1, 4)  # each sample held this many samples (1: rate kept)

    @model_validator(mode="after")
    def _crush_ranges(self) -> ChannelSpec:
        (b_lo, b_hi), (h_lo, h_hi) = self.crush_bits, self.crush_hold
        if not (1 <= b_lo <= b_hi and 1 <= h_lo <= h_hi):
            raise ValueError("crush_bits and crush_hold take (low, high) ranges from 1 up")
        return self

    @property
    def enabled(self) -> bool:
        return any(p > 0 for p in (self.reverb_p, self.lowpass_p, self.highpass_p, self.clip_p, self.crush_p))


_IR_SECONDS = 1.5  # impulse responses are cut here (a 2.5-s RT60 is 36 dB down by then)


def degrade_channel(
    x: torch.Tensor, spec: ChannelSpec, sample_rate: int, gen: torch.Generator
) -> torch.Tensor:
    """Apply ``spec``'s channel degradations to crops ``(N, T)``; returns a new ``(N, T)``."""
    n, t = x.shape
    dev = x.device

    def on(p: float) -> torch.Tensor:  # (N, 1): 1.0 for the windows this degradation applies to
        return (torch.rand(n, 1, generator=gen, device=gen.device) < p).float().to(dev)

    rms_in = _rms(x)
    y = x
    if spec.reverb_p > 0:
        taps = int(_IR_SECONDS * sample_rate)
        time = torch.arange(taps, device=dev)[None, :] / sample_rate
        rt60 = _uniform(n, *spec.reverb_rt60_s, gen)[:, None].to(dev)
        ir = torch.randn(n, taps, generator=gen, device=gen.device).to(dev) * torch.exp(-6.9078 * time / rt60)
        size = t + taps
        wet = torch.fft.irfft(torch.fft.rfft(y, size) * torch.fft.rfft(ir, size), size)[:, :t]
        mix = _uniform(n, *spec.reverb_wet, gen)[:, None].to(dev) * on(spec.reverb_p)
        y = (1 - mix) * y + mix * wet * (_rms(y) / _rms(wet))
    if spec.lowpass_p > 0 or spec.highpass_p > 0:  # both speakers' roll-offs in one spectrum
        freqs = torch.fft.rfftfreq(t, 1 / sample_rate).to(dev)[None, :]
        gain = torch.ones_like(freqs)
        for p, hz, ratio in (
            (spec.lowpass_p, spec.lowpass_hz, lambda corner: freqs / corner),
            (spec.highpass_p, spec.highpass_hz, lambda corner: corner / freqs.clamp_min(1e-3)),
        ):
            if p > 0:  # second order, no ringing; the high-pass is the low-pass's mirror image
                corner = _uniform(n, *hz, gen)[:, None].to(dev)
                gain = gain * torch.where(on(p) > 0, 1 / torch.sqrt(1 + ratio(corner) ** 4), 1.0)
        y = torch.fft.irfft(torch.fft.rfft(y) * gain, t)
    if spec.clip_p > 0:
        drive = torch.pow(10.0, _uniform(n, *spec.clip_drive_db, gen)[:, None].to(dev) / 20)
        peak = y.abs().amax(dim=1, keepdim=True).clamp_min(1e-6)
        clipped = torch.tanh(drive * y / peak) * peak
        y = torch.where(on(spec.clip_p) > 0, clipped, y)
    if spec.crush_p > 0:
        lo, hi = spec.crush_hold
        hold = torch.randint(lo, hi + 1, (n, 1), generator=gen, device=gen.device).to(dev)
        held = torch.gather(y, 1, torch.arange(t, device=dev)[None, :] // hold * hold)
        levels = torch.pow(2.0, _uniform(n, *spec.crush_bits, gen)[:, None].to(dev) - 1)
        peak = held.abs().amax(dim=1, keepdim=True).clamp_min(1e-6)
        crushed = torch.round(held / peak * levels) / levels * peak
        y = torch.where(on(spec.crush_p) > 0, crushed, y)
    return y * (rms_in / _rms(y))
