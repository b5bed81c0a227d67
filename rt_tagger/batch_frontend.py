"""Log-mel of many streams at once, on a torch device: the server's GPU front end.

With thousands of streams, the per-stream numba framer (``rt_tagger.framer``) costs one small
FFT call per stream and hop on the CPU, and every window then crosses to the GPU on its own. Here
each stream's :class:`~rt_tagger.framer.StreamingFrontEnd` still downmixes and resamples on the
CPU (cheap, per stream) but hands the samples of its new frames to a :class:`BatchFrontEnd`
(``frame_sink``) instead of computing their log-mel. At each scoring round :meth:`flush` turns the
new frames of *all* streams into log-mel in one batch on the device — one upload of the new
samples, one gather into frames, one FFT, one filterbank product, one dB, one scatter into a
device-resident ring of log-mel columns per stream — and :meth:`windows` gathers the due windows
from the ring straight into the model's input, so windows never travel as log-mel over PCIe.

The math is the one definition in :mod:`engines.frontend` (window, filterbank and
:func:`~engines.frontend.power_to_db` in float64, rounded to float32 at the end), as the numba
framer and training's LogMel use it: the windows equal the numba framer's within 1e-3 dB (tested).

Ring: stream ``slot`` keeps its newest ``ring_frames`` log-mel columns, frame ``f`` in column
``f % ring_frames``. A window ending at frame ``e`` reads frames ``e - window_frames .. e - 1``;
frames before the stream's first are never written and hold the dB floor, as in the framer. The
ring holds ``window_frames`` plus the frames a stream may add between a window falling due and the
next flush; :meth:`flush` grows it when a stream brought more.
"""

from __future__ import annotations

import numpy as np

from engines.frontend import FrontEndSpec, hann_window, mel_filterbank, power_to_db

__all__ = ["BatchFrontEnd"]

_BLOCK_ROWS = 2048  # streams per FFT in add_block: ~0.6 GB of float64 temporaries at a 0.5-s hop


class BatchFrontEnd:
    """New frames of many streams → log-mel ring on ``device`` → batched model input.

    Args:
        spec: The bundle's front-end parameters.
        device: A torch device (``"cuda:0"``; ``"cpu"`` runs the same code on the CPU).
        slots: Streams to allocate for at first (the ring grows by doubling).
    """

    def __init__(self, spec: FrontEndSpec, device: str = "cpu", slots: int = 64) -> None:
        import torch

        self.torch = torch
        self.spec = spec
        self.device = torch.device(device)
        self.window_frames = spec.window_frames
        self.ring_frames = 2 * spec.window_frames
        self.floor_db = float(np.float32(spec.floor_db))
        self._win = torch.from_numpy(hann_window(spec.n_fft)).to(self.device)
        self._fb = torch.from_numpy(mel_filterbank(spec)).to(self.device)  # (n_freqs, n_mels) float64
        self._offsets = torch.arange(spec.n_fft, device=self.device)
        self.ring = torch.full(
            (slots, spec.n_mels, self.ring_frames), self.floor_db, dtype=torch.float32, device=self.device
        )
        self.written = np.zeros(slots, np.int64)  # frames each slot has received (= its frames_total)
        self._free = list(range(slots - 1, -1, -1))
        self._pending: list[tuple[int, int, np.ndarray]] = []  # (slot, first frame, samples)
        self.frames_flushed = 0  # counters for stats and tests
        self.flushes = 0

    # ------------------------------------------------------------------ streams
    def open(self) -> int:
        """A slot for a new stream (its ring columns at the dB floor)."""
        if not self._free:
            self._grow_slots(2 * self.ring.shape[0])
        slot = self._free.pop()
        self.reset([slot])
        return slot

    def reset(self, slots) -> None:
        """Slots as new: ring columns at the dB floor, no frames received."""
        for slot in slots:
            self.ring[slot].fill_(self.floor_db)
            self.written[slot] = 0

    def close(self, slot: int) -> None:
        """Give a stream's slot back (frames it still had pending are dropped)."""
        self._pending = [p for p in self._pending if p[0] != slot]
        self._free.append(slot)

    def sink(self, slot: int):
        """The ``frame_sink`` of a stream's :class:`~rt_tagger.framer.StreamingFrontEnd`."""

        def add(first_frame: int, samples: np.ndarray) -> None:
            self._pending.append((slot, first_frame, samples))

        return add

    # ------------------------------------------------------------------ the batch
    def flush(self) -> int:
        """Log-mel of every pending frame of every stream into the ring; returns the frame count."""
        if not self._pending:
            return 0
        torch, spec = self.torch, self.spec
        pending, self._pending = self._pending, []
        hop, n_fft = spec.hop_length, spec.n_fft
        counts = np.array([(len(s) - n_fft) // hop + 1 for _, _, s in pending], np.int64)
        lengths = np.array([len(s) for _, _, s in pending], np.int64)
        slots = np.array([p[0] for p in pending], np.int64)
        firsts = np.array([p[1] for p in pending], np.int64)
        n = int(counts.sum())
        # per frame: where its samples start in the concatenated upload, its slot and its frame index
        seg_start = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        which = np.repeat(np.arange(len(pending)), counts)
        within = np.arange(n) - np.repeat(np.cumsum(counts) - counts, counts)
        frame_slot = slots[which]
        frame_index = firsts[which] + within
        self._fit(frame_slot, frame_index)
        samples = np.concatenate([s for _, _, s in pending])
        dev = self.device
        sig = torch.from_numpy(samples).to(dev, non_blocking=True)
        # Rows padded to a power of two (repeating frame 0): the FFT sees a handful of batch sizes,
        # so cuFFT's plan cache keeps them and no round pays for a new plan.
        starts_np = np.zeros(1 << (n - 1).bit_length(), np.int64)
        starts_np[:n] = seg_start[which] + within * hop
        starts = torch.from_numpy(starts_np).to(dev, non_blocking=True)
        db = self._logmel(sig[starts[:, None] + self._offsets])[:n]  # (n, n_mels)
        cols = torch.from_numpy(frame_index % self.ring_frames).to(dev, non_blocking=True)
        rows = torch.from_numpy(frame_slot).to(dev, non_blocking=True)
        self.ring[rows, :, cols] = db
        np.maximum.at(self.written, frame_slot, frame_index + 1)
        self.frames_flushed += n
        self.flushes += 1
        return n

    def add_block(
        self,
        slots: np.ndarray,
        first_frame: int,
        samples: np.ndarray,
        scale: float = 1.0,
        energy_from: int = 0,
    ) -> tuple[int, np.ndarray]:
        """Log-mel of the frames in ``samples`` ``(len(slots), L)`` (int16 or float32, times
        ``scale``) into the ring now: row ``i`` holds stream ``slots[i]``'s model-rate samples from
        frame ``first_frame``'s first sample on. Streams served in lockstep
        (:class:`~rt_tagger.stream_group.StreamGroup`) come this way: one upload of the raw PCM,
        no per-stream framing on the CPU. Returns the frames per stream (the caller keeps the
        samples from frame ``first_frame + frames`` on), and each row's sum of squares (float64,
        scaled) over ``samples[:, energy_from:]``, computed where the samples already are."""
        torch, spec = self.torch, self.spec
        hop, n_fft = spec.hop_length, spec.n_fft
        count = (samples.shape[1] - n_fft) // hop + 1 if samples.shape[1] >= n_fft else 0
        energy = np.zeros(len(slots), np.float64)
        if count <= 0:
            return 0, energy
        slots = np.asarray(slots, np.int64)
        last = first_frame + count
        need = int((last - self.written[slots]).max()) + self.window_frames
        if need > self.ring_frames:
            self._grow_frames(1 << (need - 1).bit_length())
        cols = torch.from_numpy((first_frame + np.arange(count)) % self.ring_frames).to(self.device)
        used = (count - 1) * hop + n_fft
        sums = []
        for lo in range(0, len(slots), _BLOCK_ROWS):  # bounds the float64 temporaries
            x = torch.from_numpy(np.ascontiguousarray(samples[lo : lo + _BLOCK_ROWS])).to(self.device)
            x = x.double() * scale if scale != 1.0 else x.double()
            sums.append(x[:, energy_from:].square().sum(dim=1))
            db = self._logmel(x[:, :used].unfold(1, n_fft, hop))  # (rows, count, n_mels)
            rows = torch.from_numpy(slots[lo : lo + _BLOCK_ROWS, None]).to(self.device)
            self.ring[rows, :, cols[None, :]] = db
        self.written[slots] = np.maximum(self.written[slots], last)
        self.frames_flushed += count * len(slots)
        self.flushes += 1
        return count, torch.cat(sums).cpu().numpy()

    def _logmel(self, frames):
        """Log-mel float32 ``(..., n_mels)`` of raw frames ``(..., n_fft)`` (the float64 math of
        :mod:`engines.frontend`)."""
        spec = self.spec
        spectrum = self.torch.fft.rfft(frames.double() * self._win, n=spec.n_fft, dim=-1)
        power = spectrum.real.square() + spectrum.imag.square()
        if spec.power != 2.0:
            power = power.pow(0.5 * spec.power)
        return power_to_db(power @ self._fb, spec).float()

    def windows(self, slots: np.ndarray, frame_ends: np.ndarray):
        """The windows ending at ``frame_ends`` of ``slots``: ``(B, n_mels, window_frames)`` float32
        on the device (call :meth:`flush` first)."""
        torch = self.torch
        w = self.window_frames
        cols = (np.asarray(frame_ends, np.int64)[:, None] - w + np.arange(w)) % self.ring_frames
        rows = torch.from_numpy(np.asarray(slots, np.int64)[:, None]).to(self.device)
        cols_t = torch.from_numpy(cols).to(self.device)
        return self.ring[rows, :, cols_t].permute(0, 2, 1).contiguous()  # (B, w, n_mels) → (B, n_mels, w)

    # ------------------------------------------------------------------ sizes
    def _fit(self, frame_slot: np.ndarray, frame_index: np.ndarray) -> None:
        """Grow the ring when a stream brought more frames since the last flush than it holds
        beyond one window (a window due before them still reads the window before them)."""
        slots, inv = np.unique(frame_slot, return_inverse=True)
        newest = np.zeros(slots.size, np.int64)
        np.maximum.at(newest, inv, frame_index + 1)
        need = int((newest - self.written[slots]).max()) + self.window_frames
        if need > self.ring_frames:
            self._grow_frames(1 << (need - 1).bit_length())

    def _grow_frames(self, frames: int) -> None:
        torch = self.torch
        old, old_r = self.ring, self.ring_frames
        new = torch.full(
            (old.shape[0], old.shape[1], frames), self.floor_db, dtype=old.dtype, device=old.device
        )
        for slot in range(old.shape[0]):  # rare: a stream that sent seconds at once
            last = int(self.written[slot])
            f = np.arange(max(0, last - old_r), last)
            if f.size:
                src = torch.from_numpy(f % old_r).to(old.device)
                dst = torch.from_numpy(f % frames).to(old.device)
                new[slot][:, dst] = old[slot][:, src]
        self.ring, self.ring_frames = new, frames

    def _grow_slots(self, slots: int) -> None:
        old = self.ring
        extra = self.torch.full(
            (slots - old.shape[0], old.shape[1], old.shape[2]),
            self.floor_db,
            dtype=old.dtype,
            device=old.device,
        )
        self.ring = self.torch.cat([old, extra])
        self.written = np.concatenate([self.written, np.zeros(slots - old.shape[0], np.int64)])
        self._free = list(range(slots - 1, old.shape[0] - 1, -1)) + self._free
