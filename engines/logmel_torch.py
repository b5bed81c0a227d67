"""Log-mel on torch batches (training, on CPU or GPU), from the one definition in :mod:`engines.frontend`.

A thin module in the torchaudio way: the window and mel filterbank of the bundle's
:class:`FrontEndSpec` (:func:`hann_window`, :func:`mel_filterbank`) are float64 buffers, ``forward``
is torchaudio's STFT, one matrix product and :func:`power_to_db`. The streaming runtime uses the same
functions in numba (``rt_tagger.framer``) and must agree with this module within 1e-3 dB. Everything
runs in float64 and is rounded to float32 at the end: a float32 STFT alone moves quiet bands by up
to ~0.05 dB.
"""

from __future__ import annotations

import torch
import torchaudio.functional as F
from torch import nn

from engines.frontend import FrontEndSpec, hann_window, mel_filterbank, power_to_db

__all__ = ["LogMel"]


class LogMel(nn.Module):
    """Waveform ``(..., time)`` → log-mel in dB ``(..., n_mels, frames)`` float32 (center=False frames)."""

    window: torch.Tensor
    fbank: torch.Tensor

    def __init__(self, spec: FrontEndSpec) -> None:
        super().__init__()
        self.spec = spec
        # Not in state_dict: they are the spec's, never trained or saved with a model.
        self.register_buffer("window", torch.from_numpy(hann_window(spec.n_fft)), persistent=False)
        self.register_buffer("fbank", torch.from_numpy(mel_filterbank(spec)), persistent=False)

    def _apply(self, fn, recurse=True):
        # The buffers follow .to(device) but keep their float64 values through .half()/.float().
        saved = {name: buf for name, buf in self.named_buffers(recurse=False)}
        super()._apply(fn, recurse)
        for name, old in saved.items():
            setattr(self, name, old.to(getattr(self, name).device))
        return self

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """float64 STFT, mel and dB (also under autocast), returned in float32."""
        s = self.spec
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            power = F.spectrogram(
                waveform.double(), pad=0, window=self.window, n_fft=s.n_fft, hop_length=s.hop_length,
                win_length=s.n_fft, power=s.power, normalized=False, center=False,
            )  # fmt: skip
            mel = torch.matmul(power.transpose(-1, -2), self.fbank).transpose(-1, -2)
            return power_to_db(mel, s).float()
