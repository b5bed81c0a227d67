"""torchaudio log-mel on batches, built from the bundle's :class:`FrontEndSpec`.

Used by training (on GPU batches) and by the parity tests; the streaming runtime uses the numba
framer, which must agree with this module within 1e-3 dB.
"""

from __future__ import annotations

import torch
import torchaudio
from torch import nn

from engines.frontend import FrontEndSpec

__all__ = ["LogMel"]


class LogMel(nn.Module):
    """Waveform ``(..., time)`` → log-mel in dB ``(..., n_mels, frames)``."""

    def __init__(self, spec: FrontEndSpec) -> None:
        super().__init__()
        self.spec = spec
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=spec.sample_rate,
            n_fft=spec.n_fft,
            win_length=spec.n_fft,
            hop_length=spec.hop_length,
            f_min=spec.f_min,
            f_max=spec.f_max,
            n_mels=spec.n_mels,
            power=spec.power,
            center=False,
            norm=None,
            mel_scale=spec.mel_scale,
        )
        self.to_db = torchaudio.transforms.AmplitudeToDB(stype="power", top_db=None)
        self.to_db.amin = spec.amin
        self.to_db.ref_value = spec.ref
        self.to_db.db_multiplier = float(torch.log10(torch.tensor(max(spec.amin, spec.ref))))

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        # STFT in fp32 even under autocast: fp16 power spectra underflow the dB floor.
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            return self.to_db(self.mel(waveform.float()))
