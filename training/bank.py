"""All tracks of a corpus in one flat tensor, so crops are gathered on the device in one indexing op.

Keeping the decoded corpus resident on the GPU (a few GB at 16 kHz) removes the data loader from
the training loop entirely: view sampling, augmentation and log-mel all run as batched GPU ops.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["AudioBank"]


@dataclass
class AudioBank:
    """Mono waveforms at one sample rate, concatenated.

    Attributes:
        audio: ``(total_samples,)`` float tensor.
        offsets: ``(n_tracks,)`` int64 start of each track in ``audio``.
        lengths: ``(n_tracks,)`` int64 length of each track (≥ the window after padding).
        sample_rate: Hz.
        names: one name per track (relative paths), for reports.
        labels: ``(n_tracks, n_tags)`` float multi-hot, or None for unlabelled audio.
        tags: tag vocabulary matching ``labels``' columns.
        split: ``(n_tracks,)`` split name per track ("train", "valid", "test", ...).
    """

    audio: torch.Tensor
    offsets: torch.Tensor
    lengths: torch.Tensor
    sample_rate: int
    names: list[str]
    labels: torch.Tensor | None = None
    tags: list[str] = field(default_factory=list)
    split: np.ndarray | None = None

    @classmethod
    def from_arrays(
        cls,
        waves: list[np.ndarray],
        sample_rate: int,
        min_length: int,
        names: list[str] | None = None,
        labels: np.ndarray | None = None,
        tags: list[str] | None = None,
        split: list[str] | np.ndarray | None = None,
    ) -> AudioBank:
        """Concatenate mono float waveforms; tracks shorter than ``min_length`` are zero-padded."""
        if not waves:
            raise ValueError("no audio tracks")
        lengths = np.array([max(len(w), min_length) for w in waves], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        audio = np.zeros(int(lengths.sum()), dtype=np.float32)
        for w, o in zip(waves, offsets, strict=True):
            audio[o : o + len(w)] = w
        return cls(
            audio=torch.from_numpy(audio),
            offsets=torch.from_numpy(offsets),
            lengths=torch.from_numpy(lengths),
            sample_rate=sample_rate,
            names=list(names) if names is not None else [str(i) for i in range(len(waves))],
            labels=None if labels is None else torch.as_tensor(np.asarray(labels, dtype=np.float32)),
            tags=list(tags or []),
            split=None if split is None else np.asarray(split, dtype=object),
        )

    def __len__(self) -> int:
        return int(self.offsets.shape[0])

    @property
    def device(self) -> torch.device:
        return self.audio.device

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> AudioBank:
        """Move tensors (e.g. the whole corpus onto the GPU, optionally as fp16 to halve memory)."""
        return AudioBank(
            audio=self.audio.to(device=device, dtype=dtype or self.audio.dtype),
            offsets=self.offsets.to(device),
            lengths=self.lengths.to(device),
            sample_rate=self.sample_rate,
            names=self.names,
            labels=None if self.labels is None else self.labels.to(device),
            tags=self.tags,
            split=self.split,
        )

    def subset(self, idx: np.ndarray) -> AudioBank:
        """The tracks ``idx`` (the audio tensor is shared, only the index tensors are sliced)."""
        t = torch.as_tensor(np.asarray(idx, dtype=np.int64), device=self.offsets.device)
        return AudioBank(
            audio=self.audio,
            offsets=self.offsets[t],
            lengths=self.lengths[t],
            sample_rate=self.sample_rate,
            names=[self.names[i] for i in np.asarray(idx)],
            labels=None if self.labels is None else self.labels[t],
            tags=self.tags,
            split=None if self.split is None else self.split[np.asarray(idx)],
        )

    def indices(self, split: str) -> np.ndarray:
        """Track indices of one split (all tracks when the bank has no split column)."""
        if self.split is None:
            return np.arange(len(self))
        return np.flatnonzero(self.split == split)

    @staticmethod
    def concat(banks: list[AudioBank]) -> AudioBank:
        """Several banks (same rate) as one, e.g. real + synthetic audio for pretraining.

        Labels, tags and splits are kept when every bank has labels over the same tags.
        """
        rates = {b.sample_rate for b in banks}
        if len(rates) != 1:
            raise ValueError(f"banks have different sample rates: {sorted(rates)}")
        shift = 0
        offsets = []
        for b in banks:
            offsets.append(b.offsets.cpu() + shift)
            shift += b.audio.shape[0]
        labelled = all(b.labels is not None and b.tags == banks[0].tags for b in banks)
        splits = all(b.split is not None for b in banks)
        return AudioBank(
            audio=torch.cat([b.audio.cpu() for b in banks]),
            offsets=torch.cat(offsets),
            lengths=torch.cat([b.lengths.cpu() for b in banks]),
            sample_rate=banks[0].sample_rate,
            names=[n for b in banks for n in b.names],
            labels=torch.cat([b.labels.cpu() for b in banks]) if labelled else None,
            tags=list(banks[0].tags) if labelled else [],
            split=np.concatenate([b.split for b in banks]) if splits else None,
        )
