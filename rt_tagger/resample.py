"""Streaming polyphase resampler (Kaiser-windowed sinc) whose state carries across blocks.

The ratio is rational, ``out/in = L/M`` after dividing by the gcd (44100 → 16000 is 160/441).
Output sample ``n`` sits exactly at input time ``n * M / L`` (zero-phase: no group delay in stream
time), and is ``sum_k x[k] * h(n*M/L - k)`` with ``h`` a windowed sinc whose cut-off lies in the
middle of a transition band that ends at the lower of the two Nyquist frequencies, so everything
that would alias is attenuated by at least the design attenuation.

Every output is computed by one kernel from the same taps in the same order, whatever the block
sizes, so feeding a signal in pieces gives the same samples as feeding it whole. The price is a
latency of ``right`` input samples: an output is emitted once all the inputs it needs arrived.
:meth:`StreamingResampler.flush` ends the stream (zeros after the end) and emits the tail.

Non-finite input samples (NaN/Inf) would poison the filter's history; they are replaced by 0 and
counted in ``dropped_samples`` (0 in normal operation). This is the streaming path's only NaN
handling: the count is the messages' ``drops.resampler_dropped_samples``, and the stream state
(:mod:`rt_tagger.stream_state`) applies the ``nonfinite`` policy (reject or keep the zeros) from it.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from engines.errors import UserError

__all__ = ["StreamingResampler", "ResampleError", "to_mono", "QUALITY"]

# name -> (stop-band attenuation in dB, transition width as a fraction of the lower Nyquist)
QUALITY: dict[str, tuple[float, float]] = {
    "high": (90.0, 0.10),
    "medium": (80.0, 0.15),
    "low": (65.0, 0.25),
}
_MAX_PHASES = 4096  # L above this means an exotic ratio with a huge tap table
_TAP_ALIGN = 8


class ResampleError(UserError):
    """A rate pair or quality the resampler cannot handle."""


@njit(cache=True)
def _ingest(x, hist, pos):
    """Copy ``x`` into ``hist[pos:]`` replacing non-finite values by 0; returns how many."""
    bad = 0
    for t in range(x.shape[0]):
        v = x[t]
        if np.isfinite(v):
            hist[pos + t] = v
        else:
            hist[pos + t] = 0.0
            bad += 1
    return bad


@njit(cache=True, fastmath={"reassoc", "contract"})
def _polyphase(hist, hist_start, n0, n1, L, M, left, table, out, out_off):
    """Outputs ``n0..n1-1`` into ``out[out_off:]``.

    ``hist[j]`` holds input sample ``hist_start + j``. The dot product may be vectorised
    (reassoc): its order is fixed by the code and the tap count, never by the block sizes.
    float32 throughout (inputs are float32 anyway): twice the SIMD width of float64, and the
    rounding (~1e-7, -138 dB full scale) stays far under the design attenuation.
    """
    taps = table.shape[1]
    for n in range(n0, n1):
        nm = n * M
        i = nm // L
        p = nm - i * L
        k0 = i - left - hist_start
        # 1-D views indexed by a non-negative loop counter: no wrap-around checks, so LLVM
        # vectorises the dot product (3x faster than indexing table[p, j] directly)
        seg = hist[k0 : k0 + taps]
        row = table[p]
        acc = np.float32(0.0)
        for j in range(taps):
            acc += seg[j] * row[j]
        out[out_off + n - n0] = acc


@njit(cache=True)
def _shift_left(hist, drop, length):
    """``hist[:length-drop] = hist[drop:length]`` without a temporary."""
    for j in range(length - drop):
        hist[j] = hist[drop + j]


@njit(cache=True)
def _downmix(a, b, out):
    """Mean over channels of two ``(k, ch)`` views (a ring's wrap) into ``out[:ka+kb]``."""
    ch = a.shape[1]
    inv = np.float32(1.0 / ch)
    ka = a.shape[0]
    for t in range(ka):
        s = np.float32(0.0)
        for c in range(ch):
            s += a[t, c]
        out[t] = s * inv if ch > 1 else s
    for t in range(b.shape[0]):
        s = np.float32(0.0)
        for c in range(ch):
            s += b[t, c]
        out[ka + t] = s * inv if ch > 1 else s
    return ka + b.shape[0]


def to_mono(block: np.ndarray) -> np.ndarray:
    """Downmix ``(n, channels)`` (or ``(n,)``) audio to ``(n,)`` float32 by averaging channels."""
    block = np.asarray(block)
    if block.ndim == 1:
        return block.astype(np.float32, copy=False)
    block = np.ascontiguousarray(block, dtype=np.float32)
    out = np.empty(block.shape[0], np.float32)
    _downmix(block, block[:0], out)
    return out


def design_table(L: int, M: int, attenuation_db: float, transition: float) -> tuple[np.ndarray, int]:
    """Polyphase tap table ``(L, taps)`` float64 and ``left`` (taps before the output instant).

    Row ``p`` holds ``h(p/L + left - j)`` for ``j = 0..taps-1``; every row sums to 1 (unit DC gain).
    """
    # cut-off in cycles per input sample: lower Nyquist, minus half the transition band
    nyq = 0.5 * min(1.0, L / M)
    tw = transition * nyq
    fc = nyq - tw / 2.0
    beta = (
        0.1102 * (attenuation_db - 8.7)
        if attenuation_db > 50
        else 0.5842 * (attenuation_db - 21) ** 0.4 + 0.07886 * (attenuation_db - 21)
    )
    n_taps = (attenuation_db - 7.95) / (2.285 * 2.0 * math.pi * tw) + 1.0
    half = n_taps / 2.0
    left = int(math.floor(half))
    taps = 2 * left + 2
    taps = -(-taps // _TAP_ALIGN) * _TAP_ALIGN
    t = np.arange(L)[:, None] / L + left - np.arange(taps)[None, :]
    inside = np.abs(t) < half
    r = np.where(inside, t / half, 0.0)
    win = np.where(inside, np.i0(beta * np.sqrt(np.maximum(0.0, 1.0 - r * r))) / np.i0(beta), 0.0)
    h = 2.0 * fc * np.sinc(2.0 * fc * t) * win
    h /= h.sum(axis=1, keepdims=True)
    return np.ascontiguousarray(h), left


class StreamingResampler:
    """Stateful mono resampler from ``in_rate`` to ``out_rate``.

    Args:
        in_rate: Input sample rate in Hz.
        out_rate: Output sample rate in Hz.
        quality: ``"high"`` (90 dB, default), ``"medium"`` (80 dB) or ``"low"`` (65 dB) stop-band,
            see :data:`QUALITY`.

    Raises:
        ResampleError: a non-positive rate, an unknown quality, or a ratio whose reduced
            numerator exceeds 4096 phases.
    """

    def __init__(self, in_rate: int, out_rate: int, quality: str = "high") -> None:
        if int(in_rate) <= 0 or int(out_rate) <= 0:
            raise ResampleError(f"sample rates must be positive, got {in_rate} -> {out_rate}")
        if quality not in QUALITY:
            raise ResampleError(f"unknown resampler quality {quality!r} (choose from {', '.join(QUALITY)})")
        self.in_rate = int(in_rate)
        self.out_rate = int(out_rate)
        self.quality = quality
        g = math.gcd(self.in_rate, self.out_rate)
        self.L = self.out_rate // g
        self.M = self.in_rate // g
        if self.L > _MAX_PHASES:
            raise ResampleError(
                f"cannot resample {self.in_rate} Hz -> {self.out_rate} Hz: ratio {self.L}/{self.M} needs too many phases"
            )
        self.passthrough = self.L == self.M
        if self.passthrough:
            self.table = np.ones((1, 1), np.float32)
            self.left = 0
        else:
            table, self.left = design_table(self.L, self.M, *QUALITY[quality])
            self.table = table.astype(np.float32)
        self.right = self.table.shape[1] - 1 - self.left  # input samples of look-ahead (latency)
        self._hist = np.zeros(max(4 * self.table.shape[1], 8192), dtype=np.float32)
        self.reset()

    # ---------------------------------------------------------------- state
    def reset(self) -> None:
        """Forget the stream: history, counters and position."""
        self._hist_start = -self.left  # absolute input index of _hist[0]: zeros before time 0
        self._hist_len = self.left
        self._hist[: self.left] = 0.0
        self._n_out = 0  # next output index
        self.samples_in = 0
        self.dropped_samples = 0

    @property
    def samples_out(self) -> int:
        """Output samples emitted since the last reset."""
        return self._n_out

    @property
    def latency_samples(self) -> int:
        """Input samples that must arrive after an instant before its output can be emitted."""
        return self.right

    def max_output(self, n_in: int) -> int:
        """Upper bound of the outputs one :meth:`process_into` of ``n_in`` samples can produce."""
        if self.passthrough:
            return n_in
        return (n_in * self.L) // self.M + 2

    # ---------------------------------------------------------------- processing
    def process_into(self, x: np.ndarray, out: np.ndarray) -> int:
        """Feed ``x`` (``(n,)`` float32) and write every output now computable into ``out``.

        Args:
            x: Mono input block, C-contiguous float32.
            out: float32 destination with room for :meth:`max_output` ``(len(x))`` samples.

        Returns:
            Number of samples written to ``out``.
        """
        n = x.shape[0]
        if self.passthrough:
            self.dropped_samples += _ingest(x, out, 0)
            self.samples_in += n
            self._n_out += n
            return n
        need = self._hist_len + n
        if need > self._hist.shape[0]:
            grown = np.zeros(max(need, 2 * self._hist.shape[0]), dtype=np.float32)
            grown[: self._hist_len] = self._hist[: self._hist_len]
            self._hist = grown
        self.dropped_samples += _ingest(x, self._hist, self._hist_len)
        self._hist_len += n
        self.samples_in += n
        return self._emit(out, limit=None)

    def _emit(self, out: np.ndarray, limit: int | None) -> int:
        abs_end = self._hist_start + self._hist_len
        num = (abs_end - self.right) * self.L
        n_end = max(self._n_out, -(-num // self.M)) if num > 0 else self._n_out
        if limit is not None:
            n_end = min(n_end, limit)
        k = n_end - self._n_out
        if k > 0:
            _polyphase(
                self._hist,
                self._hist_start,
                self._n_out,
                n_end,
                self.L,
                self.M,
                self.left,
                self.table,
                out,
                0,
            )
            self._n_out = n_end
        # drop history no later output needs
        first_needed = (self._n_out * self.M) // self.L - self.left
        drop = first_needed - self._hist_start
        if drop > 0:
            _shift_left(self._hist, drop, self._hist_len)
            self._hist_start += drop
            self._hist_len -= drop
        return k

    def process(self, x: np.ndarray) -> np.ndarray:
        """Feed a mono block; returns all output samples computable so far (float32, new array)."""
        x = np.asarray(x)
        if x.ndim > 1 and (x.ndim > 2 or x.shape[1] != 1):
            raise ValueError(f"process() takes mono audio, got shape {x.shape}: downmix with to_mono() first")
        x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
        out = np.empty(self.max_output(x.shape[0]), dtype=np.float32)
        k = self.process_into(x, out)
        return out[:k]

    def flush(self) -> np.ndarray:
        """End the stream: emit the tail (treating the signal as zero after its end), then reset.

        After flush, the outputs of the whole stream number ``ceil(samples_in * L / M)``.
        """
        if self.passthrough:
            self.reset()
            return np.zeros(0, np.float32)
        total = -(-(self.samples_in * self.L) // self.M)
        pad = self.right
        if self._hist_len + pad > self._hist.shape[0]:
            grown = np.zeros(self._hist_len + pad, dtype=np.float32)
            grown[: self._hist_len] = self._hist[: self._hist_len]
            self._hist = grown
        self._hist[self._hist_len : self._hist_len + pad] = 0.0
        self._hist_len += pad
        out = np.empty(max(0, total - self._n_out), dtype=np.float32)
        k = self._emit(out, limit=total)
        self.reset()
        return out[:k]

    def warmup(self) -> None:
        """Compile (or load from cache) the kernels with the exact argument types used later."""
        x = np.zeros(64, np.float32)
        self.process(x)
        self.flush()
        to_mono(np.zeros((4, 2), np.float32))
        self.reset()

    def __repr__(self) -> str:
        return f"StreamingResampler({self.in_rate} -> {self.out_rate}, L/M={self.L}/{self.M}, taps={self.table.shape[1]})"
