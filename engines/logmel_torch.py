"""torchaudio log-mel on batches, built from the bundle's :class:`FrontEndSpec`.

Used by training (on GPU batches) and by the parity tests; the streaming runtime uses the numba
framer, which must agree with this module within 1e-3 dB. Both multiply by the same constants:
torchaudio's float32 Hann window and mel filterbank (:func:`torchaudio_constants`, cached beside
each bundle by :mod:`engines.prepare` so the runtime needs no torch), and both compute in float64
and round to float32 at the end: a float32 STFT alone moves quiet bands by up to ~0.05 dB.
"""

from __future__ import annotations

import torch
import torchaudio
from torch import nn

from engines.frontend import FrontEndSpec

__all__ = ["LogMel", "torchaudio_constants"]


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

        # float64 buffers (the float32 values widened exactly); kept float64 by _apply below.
        self.mel.double()

    def _apply(self, fn, recurse=True):
        # The buffers follow .to(device) but keep their float64 values through .half()/.float().
        saved = [
            (mod, name, buf) for mod in self.mel.modules() for name, buf in mod.named_buffers(recurse=False)
        ]
        super()._apply(fn, recurse)
        for mod, name, old in saved:
            setattr(mod, name, old.to(getattr(mod, name).device))
        return self

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """float64 STFT, mel and dB (also under autocast), returned in float32."""
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            return self.to_db(self.mel(waveform.double())).float()


def torchaudio_constants(spec: FrontEndSpec) -> tuple:
    """The window ``(n_fft,)`` and mel filterbank ``(n_freqs, n_mels)`` that :class:`LogMel`
    multiplies by: torchaudio's float32 values, as float32 numpy arrays."""
    mel = LogMel(spec).mel  # its float64 buffers hold float32 values: narrowing back is exact
    return mel.spectrogram.window.float().numpy(), mel.mel_scale.fb.float().numpy()
