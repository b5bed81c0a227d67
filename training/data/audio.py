"""Decoding audio files for training: mono float32 at the model's rate, clear errors on bad files."""

from __future__ import annotations

import os
from math import gcd

import numpy as np
import soundfile as sf

from training.data.table import DataError

__all__ = ["read_audio", "resample", "crop_or_pad"]


def resample(audio: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample a mono signal (soxr when installed, else scipy's polyphase filter)."""
    if sr_in == sr_out:
        return audio.astype(np.float32, copy=False)
    try:
        import soxr

        return soxr.resample(audio, sr_in, sr_out, quality="HQ").astype(np.float32)
    except ImportError:
        from scipy.signal import resample_poly

        g = gcd(sr_in, sr_out)
        return resample_poly(audio, sr_out // g, sr_in // g).astype(np.float32)


def read_audio(path: str | os.PathLike, sample_rate: int) -> np.ndarray:
    """Decode ``path`` to mono float32 at ``sample_rate``.

    Raises:
        DataError: the file is missing, empty or not decodable (one line naming the file).
    """
    try:
        audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except FileNotFoundError:
        raise DataError(f"missing audio file {path}") from None
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise DataError(f"unreadable audio file {path}: {str(e).splitlines()[0]}") from None
    if audio.shape[0] == 0:
        raise DataError(f"unreadable audio file {path}: no samples")
    return resample(audio.mean(axis=1), sr, sample_rate)


def crop_or_pad(audio: np.ndarray, n: int, mode: str = "start") -> np.ndarray:
    """Exactly ``n`` samples: crop (from the start or the centre) or zero-pad at the end."""
    if len(audio) >= n:
        off = (len(audio) - n) // 2 if mode == "center" else 0
        return audio[off : off + n]
    return np.pad(audio, (0, n - len(audio)))
