"""Incremental log-mel front end in numba: ring buffer in, rolling log-mel window out.

:meth:`StreamingFrontEnd.consume_array` (what the pipeline calls with each block it reads from the
ring) or :meth:`StreamingFrontEnd.consume` (straight from a ring) downmixes and resamples the new
audio to the model rate and turns **only the new complete frames** into log-mel, which it appends
to a rolling ``(n_mels, window_frames)`` window (a ring: a frame writes one column, nothing
shifts). The math is the bundle's
:class:`engines.frontend.FrontEndSpec` through the one definition in :mod:`engines.frontend`
(:func:`hann_window`, :func:`mel_filterbank`, :func:`power_to_db`, as training's
:class:`engines.logmel_torch.LogMel` uses them), so the output matches LogMel on the whole clip
within 1e-3 dB: ``center=False`` framing, periodic Hann, power spectrum, mel filterbank, fixed dB
floor, all in float64, rounded to float32 at the end.

Kernels are ``@njit(cache=True)`` without fastmath (parity matters) and are compiled, or loaded
from numba's cache, in the constructor (:meth:`StreamingFrontEnd.warmup`), not on the first window.
Framing, windowing, power and mel bands run in numba; the FFT of the new frames is one numpy
``rfft`` call on the small ``(new_frames, n_fft)`` batch (pocketfft, faster per hop than an
in-kernel radix-2 FFT: docs/frontend_kernels.md), and the dB of the new bands one vectorised
:func:`power_to_db` call.

Stream time: model-rate sample ``s`` corresponds to input (ring) frame ``s * input_rate /
sample_rate`` exactly (the resampler has zero phase). Frame ``f`` covers model samples
``[f*hop, f*hop + n_fft)``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
from numba import njit

from engines.frontend import FrontEndSpec, hann_window, mel_filterbank, power_to_db
from rt_tagger.resample import StreamingResampler, _downmix, _shift_left
from rt_tagger.ring import RingBuffer

__all__ = ["StreamingFrontEnd"]

_CHUNK = 1 << 15  # input frames per internal step: bounds scratch memory for huge backlogs


# ------------------------------------------------------------------------------------ kernels
@njit(cache=True)
def _ring_append(ring, pos, cols):
    """Write the ``k`` columns of ``cols`` (n_mels, k) into the log-mel ring ``ring`` (n_mels, 2W)
    from column ``pos``, each at ``c`` and ``c + W``; returns the next ``pos``. The window, oldest
    frame first, is then always the contiguous column range ``[pos, pos + W)``."""
    w = ring.shape[1] // 2
    for j in range(cols.shape[1]):
        for m in range(ring.shape[0]):
            v = cols[m, j]
            ring[m, pos] = v
            ring[m, pos + w] = v
        pos = pos + 1 if pos + 1 < w else 0
    return pos


@njit(cache=True)
def _window_frames(sig, first, n, hop, win, frames):
    """Windowed frames ``first..first+n-1`` of ``sig`` into ``frames[:n]``."""
    n_fft = win.shape[0]
    for f in range(n):
        s = (first + f) * hop
        seg = sig[s : s + n_fft]
        dst = frames[f]
        for t in range(n_fft):
            dst[t] = seg[t] * win[t]


@njit(cache=True)
def _spectrum_mel_bands(spectrum, exponent, fb_t, lo, hi, power, bands):
    """Power of each complex ``spectrum`` row ``f``, then its mel band powers, into ``bands[f]``."""
    for f in range(spectrum.shape[0]):
        row = spectrum[f]
        for k in range(row.shape[0]):
            z = row[k]
            p = z.real * z.real + z.imag * z.imag
            if exponent != 2.0:
                p = p ** (0.5 * exponent)
            power[k] = p
        for m in range(fb_t.shape[0]):
            weights = fb_t[m]
            acc = 0.0
            for k in range(lo[m], hi[m]):  # the band's non-zero weights only; same order as a dense sum
                acc += power[k] * weights[k]
            bands[f, m] = acc


# ------------------------------------------------------------------------------------ class
class StreamingFrontEnd:
    """Rolling log-mel of a live stream, by the one definition of the bundle's front end.

    Args:
        spec: The bundle's front-end parameters.
        input_rate: Sample rate of the incoming audio (ring buffer or arrays).
        channels: Channel count of the incoming audio; it is averaged to mono.
        resample_quality: Quality preset of the :class:`StreamingResampler` (when rates differ).
        frame_sink: Hand the samples of new frames to ``frame_sink(first_frame, samples)`` (a
            :class:`~rt_tagger.batch_frontend.BatchFrontEnd` computes their log-mel with other
            streams' frames) instead of computing them here; :meth:`window` is then unused.

    Attributes:
        frames_total: Frames produced since the last reset.
        samples_total: Model-rate samples produced (by the resampler) since the last reset.
        input_frames_total: Input frames consumed since the last reset.
        compile_seconds: Time the constructor's warm-up took (numba compile or cache load).
    """

    def __init__(
        self,
        spec: FrontEndSpec,
        input_rate: int,
        channels: int = 1,
        *,
        resample_quality: str = "high",
        frame_sink: Callable[[int, np.ndarray], None] | None = None,
    ) -> None:
        self.spec = spec
        self.frame_sink = frame_sink
        self.input_rate = int(input_rate)
        self.channels = int(channels)
        if self.channels <= 0:
            raise ValueError(f"channels must be positive, got {channels}")
        n_fft, hop = spec.n_fft, spec.hop_length
        self.resampler = StreamingResampler(self.input_rate, spec.sample_rate, resample_quality)

        # the one front-end definition (engines.frontend), as training uses it
        self._win = hann_window(n_fft)
        fb_t = np.ascontiguousarray(mel_filterbank(spec).T)  # (n_mels, n_freqs) float64
        nz = fb_t != 0.0
        any_nz = nz.any(axis=1)
        self._lo = np.where(any_nz, nz.argmax(axis=1), 0).astype(np.int64)
        self._hi = np.where(any_nz, fb_t.shape[1] - nz[:, ::-1].argmax(axis=1), 0).astype(np.int64)
        self._fb_t = fb_t
        self._exponent = float(spec.power)
        self.floor_db = float(np.float32(spec.floor_db))
        self._power = np.zeros(spec.n_freqs, np.float64)
        self._bands = np.zeros((spec.window_frames, spec.n_mels), np.float64)  # new frames' mel power

        # buffers: mono input scratch, model-rate signal (remainder + new), rolling log-mel
        self._mono = np.zeros(_CHUNK, np.float32)
        self._sig = np.zeros(n_fft + self.resampler.max_output(_CHUNK) + hop, np.float32)
        self._frames = np.zeros((0, n_fft), np.float64)  # windowed new frames, grown on demand
        # rolling log-mel as a ring written twice (see _ring_append): a new frame writes one column
        # pair instead of shifting the whole window (73 KB for the default model) out of the caches
        self._ring = np.empty((spec.n_mels, 2 * spec.window_frames), np.float32)
        self._pos = 0
        self.compile_seconds = 0.0
        self.reset()
        t0 = time.perf_counter()
        self.warmup()
        self.compile_seconds = time.perf_counter() - t0

    # -------------------------------------------------------------------------------- state
    def reset(self) -> None:
        """Start a new stream: empty remainder and window (filled with the dB floor), counters 0."""
        self.resampler.reset()
        self._sig_len = 0
        self._ring.fill(self.floor_db)
        self._pos = 0
        self.frames_total = 0
        self.input_frames_total = 0

    @property
    def samples_total(self) -> int:
        """Model-rate samples produced since the last reset (framed or in the remainder)."""
        return self.resampler.samples_out

    @property
    def remainder(self) -> int:
        """Model-rate samples kept for the next frame (always < n_fft)."""
        return self._sig_len

    @property
    def ready(self) -> bool:
        """Whether a full window of real frames exists."""
        return self.frames_total >= self.spec.window_frames

    @property
    def newest_frame_last_sample(self) -> int:
        """Model-rate index of the last sample of the newest frame (-1 before the first frame)."""
        if self.frames_total == 0:
            return -1
        return (self.frames_total - 1) * self.spec.hop_length + self.spec.n_fft - 1

    def window_span(self) -> tuple[int, int]:
        """Model-rate ``(start, end)`` samples of the current window, end exclusive.

        ``start`` is negative until the stream has ``window_frames`` frames (those columns hold
        the dB floor).
        """
        end = self.newest_frame_last_sample + 1
        return end - self.spec.window_samples, end

    def input_frame_of(self, model_sample: int) -> float:
        """Input-rate frame (ring position) at the same stream time as ``model_sample``."""
        return model_sample * self.input_rate / self.spec.sample_rate

    def window(self, copy: bool = False) -> np.ndarray:
        """The last window of log-mel, ``(n_mels, window_frames)`` float32, oldest frame first.

        Args:
            copy: ``False`` returns a view of the internal ring (rows not contiguous with each
                other), valid until the next ``consume*``/``reset``; ``True`` returns an
                independent, C-contiguous copy.
        """
        view = self._ring[:, self._pos : self._pos + self.spec.window_frames]
        return view.copy() if copy else view

    # -------------------------------------------------------------------------------- input
    def consume(self, ring: RingBuffer) -> int:
        """Read every available frame from ``ring`` (zero-copy views), return new log-mel frames."""
        if ring.channels != self.channels:
            raise ValueError(f"ring has {ring.channels} channels, front end expects {self.channels}")
        new = 0
        avail = ring.available()
        while avail > 0:
            n = avail if avail < _CHUNK else _CHUNK
            a, b = ring.views(n)
            new += self._ingest(a, b)
            ring.advance(n)
            avail -= n
        return new

    def consume_array(self, x: np.ndarray) -> int:
        """Feed audio ``(n,)`` or ``(n, channels)`` from an array; return new log-mel frames."""
        x = np.asarray(x)
        if x.ndim == 1:
            x = x.reshape(-1, 1)
        if x.ndim != 2 or x.shape[1] != self.channels:
            raise ValueError(f"expected (n, {self.channels}) audio, got shape {x.shape}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        new = 0
        for s in range(0, x.shape[0], _CHUNK):
            blk = x[s : s + _CHUNK]
            new += self._ingest(blk, blk[:0])
        return new

    def _ingest(self, a: np.ndarray, b: np.ndarray) -> int:
        spec = self.spec
        n = _downmix(a, b, self._mono)
        self.input_frames_total += n
        k = self.resampler.process_into(self._mono[:n], self._sig[self._sig_len :])
        self._sig_len += k
        n_new = spec.frames_for(self._sig_len)
        if n_new == 0:
            return 0
        if self.frame_sink is None:
            self._logmel_new_frames(n_new)
        else:
            self._sink_new_frames(n_new)
        self.frames_total += n_new
        consumed = n_new * spec.hop_length
        _shift_left(self._sig, consumed, self._sig_len)
        self._sig_len -= consumed
        return n_new

    def _logmel_new_frames(self, n_new: int) -> None:
        """Log-mel of the first ``n_new`` frames of the signal appended to the rolling window.

        Only the last ``min(n_new, window_frames)`` are computed: older ones would be overwritten.
        """
        spec = self.spec
        keep = min(n_new, spec.window_frames)
        if self._frames.shape[0] < keep:
            self._frames = np.zeros((keep, spec.n_fft), np.float64)
        _window_frames(self._sig, n_new - keep, keep, spec.hop_length, self._win, self._frames)
        spectrum = np.fft.rfft(self._frames[:keep], n=spec.n_fft, axis=1)  # (keep, n_freqs) complex128
        bands = self._bands[:keep]
        _spectrum_mel_bands(spectrum, self._exponent, self._fb_t, self._lo, self._hi, self._power, bands)
        self._pos = _ring_append(self._ring, self._pos, power_to_db(bands, spec).astype(np.float32).T)

    def _sink_new_frames(self, n_new: int) -> None:
        """The samples of the last ``min(n_new, window_frames)`` new frames to the sink (older
        ones would be overwritten before any window reads them, as in :meth:`_logmel_new_frames`)."""
        hop, keep = self.spec.hop_length, min(n_new, self.spec.window_frames)
        first = n_new - keep
        samples = self._sig[first * hop : (n_new - 1) * hop + self.spec.n_fft].copy()
        self.frame_sink(self.frames_total + first, samples)

    # -------------------------------------------------------------------------------- compile
    def warmup(self) -> None:
        """Compile or load every kernel with the argument types of real calls, then reset."""
        spec = self.spec
        sink, self.frame_sink = self.frame_sink, None  # the warm-up's frames are nobody's
        n_in = int(math.ceil((spec.n_fft + 2 * spec.hop_length) * self.input_rate / spec.sample_rate)) + 4 * (
            self.resampler.right + 1
        )
        ring = RingBuffer(n_in + 7, self.channels)
        ring.write(np.zeros((5, self.channels), np.float32))
        ring.advance(5)  # the next write wraps: both views non-empty
        ring.write(np.zeros((n_in, self.channels), np.float32))
        self.consume(ring)
        self.consume_array(np.zeros((n_in, self.channels), np.float32))
        self.resampler.warmup()
        self.frame_sink = sink
        self.reset()
