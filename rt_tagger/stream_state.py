"""One stream's state: resampler → framer → aggregator → message builder.

A :class:`StreamState` knows nothing about where audio comes from or where messages go. Its
owner pushes audio blocks in (:meth:`~StreamState.push`), takes the windows that became due
(:meth:`~StreamState.due_windows`), has a backend score them (one stream alone, or many streams in
one batch: :func:`rt_tagger.scheduler.run_due`) and hands the probabilities back
(:meth:`~StreamState.complete`), which returns the message to publish. ``rt-tagger stream`` holds
one state; a server holds one per connected stream.

Why fixed steps: a pushed block is fed to the front end in steps whose sizes depend only on how
many frames the front end holds, never on how the audio happened to be blocked, so a file streamed
in blocks of 256 or 65536 frames gives the same windows and the same scores (chunk invariance,
tested). A step feeds at most the input needed to reach the next hop boundary, so a window never
overshoots its boundary by more than one frame of resampler slack.

The message builder owns ``seq`` (+1 per message, heartbeats and the end included), the silent
and stalled heartbeats and the ``end`` message; every message carries the cumulative drop counters
of the stream's input (``counters()`` of its :class:`~rt_tagger.sources.Source`) and its backlog.

Non-finite samples (NaN/Inf) are handled once, by the resampler, which replaces them with 0 and
counts them (``resampler_dropped_samples``). ``nonfinite="reject"`` then stops the stream with an
:class:`~rt_tagger.sources.AudioInputError` naming the stream time of the first one.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from rt_tagger.aggregator import Aggregator
from rt_tagger.messages import (
    BackendInfo,
    DropCounters,
    EndInfo,
    ModelInfo,
    StageTimings,
    TagEvent,
    TagMessage,
    TagScore,
    WindowInfo,
)
from rt_tagger.sources import AudioInputError

if TYPE_CHECKING:  # the framer imports numba: only the caller that builds one pays for it
    from rt_tagger.framer import StreamingFrontEnd

__all__ = ["DueWindow", "InputStatus", "MessageOptions", "StreamState", "WindowResult"]

log = logging.getLogger(__name__)

_MAX_STEP_FRAMES = 1 << 15  # input frames per step at most (bounds the work between two checks)


class InputStatus(Protocol):
    """What a stream reports about its input (a :class:`~rt_tagger.sources.Source` is one)."""

    def counters(self) -> dict[str, int | float]: ...

    def backlog_seconds(self) -> float: ...


@dataclass(frozen=True)
class MessageOptions:
    """How a stream's messages are built (from the runtime settings)."""

    stream_id: str
    backend: BackendInfo
    model: ModelInfo
    silence_rms: float = 1e-4  # hop RMS below this: a silent heartbeat instead of tags
    stall_s: float = 1.0  # no audio pushed for this long: a stalled heartbeat (then one per hop)
    nonfinite: str = "reject"  # "reject" | "zero"
    full_scores: bool = False
    embedding: bool = False  # send each window's embedding (publish.embedding)


@dataclass
class WindowResult:
    """One analysed window (kept when the state is built with ``keep_windows``)."""

    start_s: float
    end_s: float
    probabilities: np.ndarray  # (n_tags,) this window's raw model output
    scores: np.ndarray  # (n_tags,) aggregated over the horizon
    top: list[tuple[str, float]]
    state: str | None = None  # "music" / "not_music" (the music head), None: no music head
    embedding: np.ndarray | None = None  # (embed_dim,) when the backend returned one


@dataclass
class DueWindow:
    """A window whose last sample has arrived, waiting for the backend.

    A silent window needs no inference and becomes a heartbeat. Otherwise ``mel`` holds the
    window, or is ``None`` when the stream's frames went to a batch front end
    (:class:`~rt_tagger.batch_frontend.BatchFrontEnd`), which holds the window ending at frame
    ``frame_end`` in ring ``slot``.
    """

    info: WindowInfo
    mel: np.ndarray | None  # (n_mels, window_frames) float32, an independent copy
    capture_wall: float | None  # unix time the window's last sample was captured
    arrival_wall: float | None  # unix time it was in the ring
    framing_ms: float  # front-end work since the previous window
    silent: bool = False
    frame_end: int = 0  # front-end frames up to the window's end
    slot: int | None = None  # the stream's slot in a batch front end


@dataclass
class _Totals:
    """What the stream has done so far (the consumer writes each field, in one place)."""

    fed_frames: int = 0  # input frames pushed (excluding the padding of a short stream)
    windows: int = 0  # tags messages built
    heartbeats: int = 0
    events: list[TagEvent] = field(default_factory=list)
    kept: list[WindowResult] = field(default_factory=list)
    silent: list[WindowInfo] = field(default_factory=list)  # silent windows (kept with ``kept``)


class StreamState:
    """Everything one stream carries between blocks.

    Args:
        frontend: A warmed :class:`StreamingFrontEnd` for the stream's input rate and channels.
        aggregator: The stream's :class:`Aggregator`.
        hop_frames: Front-end frames between windows.
        options: Stream id, backend/model descriptions and the heartbeat/NaN policies.
        source: The stream's input, for its counters and backlog (None: all zero).
        keep_windows: Keep every window's probabilities (offline tagging).
        batch_slot: The stream's slot in the batch front end its ``frontend`` sinks frames to
            (None: the front end computes its own log-mel).
    """

    def __init__(
        self,
        frontend: StreamingFrontEnd,
        aggregator: Aggregator,
        hop_frames: int,
        options: MessageOptions,
        *,
        source: InputStatus | None = None,
        keep_windows: bool = False,
        batch_slot: int | None = None,
    ) -> None:
        self.fe = frontend
        self.batch_slot = batch_slot
        self.aggregator = aggregator
        self.hop_frames = int(hop_frames)
        self.options = options
        self.source = source
        self.keep_windows = keep_windows
        spec = frontend.spec
        self.input_rate = frontend.input_rate
        # Input frames per unit of a step: at most one front-end frame's worth of model-rate samples.
        self._unit = max(1, math.floor(spec.hop_length * self.input_rate / spec.sample_rate))
        self._max_units = max(1, _MAX_STEP_FRAMES // self._unit)
        self._next_window = spec.window_frames  # frames_total at which the next window is due
        self._pending: list[DueWindow] = []
        self._framing_s = 0.0  # front-end time since the last window
        self._hop_sq, self._hop_n = 0.0, 0  # input energy since the last window (silence check)
        self._times: tuple[float | None, float | None] = (None, None)  # of the newest pushed block
        self._last_push = time.perf_counter()
        self._last_stall_beat = -math.inf
        self._last_window_end_s: float | None = None
        self.seq = 0
        self.totals = _Totals()

    # ------------------------------------------------------------------ audio in
    @property
    def max_step_frames(self) -> int:
        """The most input frames one step takes (size a read buffer with it)."""
        return self._max_units * self._unit

    def step_frames(self) -> int:
        """Input frames the next deterministic step takes at most (read no more than this)."""
        remaining = self._next_window - self.fe.frames_total
        return min(self._max_units, max(1, remaining - 2)) * self._unit

    def seconds_to_window(self) -> float:
        """Stream seconds of audio still to come before the next window is due."""
        spec = self.fe.spec
        return max(0, self._next_window - self.fe.frames_total) * spec.hop_length / spec.sample_rate

    def push(
        self, block: np.ndarray, capture_wall: float | None = None, arrival_wall: float | None = None
    ) -> int:
        """Feed ``(n, channels)`` float32 audio; returns how many windows became due.

        ``capture_wall``/``arrival_wall`` are the unix times the block's last frame was captured
        and arrived; a window due in this block reports them.

        Raises:
            AudioInputError: NaN/Inf samples with ``nonfinite="reject"``.
        """
        self._times = (capture_wall, arrival_wall)
        self._last_push = time.perf_counter()
        due = len(self._pending)
        done, n = 0, block.shape[0]
        while done < n:
            k = min(self.step_frames(), n - done)
            self._feed(block[done : done + k])
            done += k
            while self.fe.frames_total >= self._next_window:
                self._window_due()
        return len(self._pending) - due

    def _feed(self, block: np.ndarray) -> None:
        dropped = self.fe.resampler.dropped_samples
        t = time.perf_counter()
        self.fe.consume_array(block)
        self._framing_s += time.perf_counter() - t
        if self.fe.resampler.dropped_samples != dropped:  # rare: the block held NaN/Inf
            block = self._nonfinite(block, self.fe.resampler.dropped_samples - dropped)
        flat = block.ravel()
        self._hop_sq += float(np.dot(flat, flat))
        self._hop_n += flat.size
        self.totals.fed_frames += block.shape[0]

    def _nonfinite(self, block: np.ndarray, bad: int) -> np.ndarray:
        finite = np.isfinite(block)
        if self.options.nonfinite == "reject":
            at = (self.totals.fed_frames + int(np.argmin(finite.all(axis=1)))) / self.input_rate
            raise AudioInputError(
                f"input has NaN/Inf samples ({bad} in the first bad block, from {at:.3f} s of the stream); "
                "fix the input or set nonfinite=zero (RT_TAGGER_NONFINITE=zero) to replace them with 0"
            )
        if self.fe.resampler.dropped_samples == bad:
            log.warning("input has NaN/Inf samples: replacing them with 0 (nonfinite=zero) and counting")
        return np.where(finite, block, np.float32(0.0))  # what the front end saw, for the silence check

    def _window_due(self) -> None:
        start, end = self.fe.window_span()
        sr = self.fe.spec.sample_rate
        rms = math.sqrt(self._hop_sq / self._hop_n) if self._hop_n else 0.0
        silent = rms < self.options.silence_rms
        self._pending.append(
            DueWindow(
                info=WindowInfo(start_sample=start, end_sample=end, start_s=start / sr, end_s=end / sr),
                mel=None if silent or self.batch_slot is not None else self.fe.window(copy=True),
                capture_wall=self._times[0],
                arrival_wall=self._times[1],
                framing_ms=self._framing_s * 1e3,
                silent=silent,
                frame_end=self.fe.frames_total,
                slot=self.batch_slot,
            )
        )
        self._framing_s, self._hop_sq, self._hop_n = 0.0, 0.0, 0
        self._next_window += self.hop_frames

    def pad_short_stream(self) -> bool:
        """A stream that ended before its first window gets one, padded with silence.

        Returns whether a window was padded (it is then due).
        """
        if self.seq or self._pending or not self.totals.fed_frames:
            return False
        zeros = np.zeros((self._unit, self.fe.channels), dtype=np.float32)
        while self.fe.frames_total < self._next_window:
            self.fe.consume_array(zeros)
        self._window_due()
        log.info(
            "input shorter than one window (%.2f s): padded with silence",
            self.totals.fed_frames / self.input_rate,
        )
        return True

    # ------------------------------------------------------------------ windows out
    def due_windows(self) -> list[DueWindow]:
        """Hand over the windows that became due (in stream order); the caller completes each."""
        due, self._pending = self._pending, []
        return due

    def complete(
        self,
        window: DueWindow,
        probabilities: np.ndarray | None,
        inference_ms: float | None,
        embedding: np.ndarray | None = None,
    ) -> TagMessage:
        """The message for a due window: tags from ``probabilities`` ``(n_tags,)`` (and the
        window's ``embedding``), or a ``state="silence"`` heartbeat for a silent window
        (``probabilities`` None)."""
        if window.silent:
            if self.keep_windows:
                self.totals.silent.append(window.info)
            return self._heartbeat("silent", window)
        t = time.perf_counter()
        out = self.aggregator.update(probabilities, window.info.end_s)
        aggregation_ms = (time.perf_counter() - t) * 1e3
        events = [TagEvent(tag=e.tag, state=e.state, time_s=e.time_s) for e in out.events]
        self.totals.events.extend(events)
        if self.keep_windows:
            self.totals.kept.append(
                WindowResult(
                    window.info.start_s,
                    window.info.end_s,
                    probabilities.copy(),
                    out.scores.copy(),
                    out.top,
                    out.state,
                    None if embedding is None else embedding.copy(),
                )
            )
        c2r = _ms_between(window.capture_wall, window.arrival_wall)
        full = self.options.full_scores
        msg = TagMessage(
            kind="tags",
            stream_id=self.options.stream_id,
            seq=self.seq,
            window=window.info,
            capture_wall_time=window.capture_wall,
            timings_ms=StageTimings(
                capture_to_ring=c2r,
                framing_mel=window.framing_ms,
                inference=inference_ms,
                aggregation=aggregation_ms,
            ),
            top=[TagScore(tag=t, score=s) for t, s in out.top],
            scores=[float(x) for x in out.scores] if full else None,
            tags=list(self.aggregator.tags) if (full or self.seq == 0) else None,
            events=events,
            active=out.active,
            drops=self.drops(),
            backend=self.options.backend,
            model=self.options.model,
            backlog_s=self._backlog(),
            state=out.state,
            embedding=embedding.tolist() if self.options.embedding and embedding is not None else None,
        )
        msg._score_array = out.scores  # every score for the compact encoding, without --full-scores
        self.seq += 1
        self.totals.windows += 1
        self._last_window_end_s = window.info.end_s
        return msg

    def idle(self) -> TagMessage | None:
        """Called while no audio is there: a ``stalled`` heartbeat once nothing was pushed for
        ``stall_s``, then one per hop; otherwise None."""
        now = time.perf_counter()
        hop_s = self.hop_frames * self.fe.spec.hop_length / self.fe.spec.sample_rate
        if now - self._last_push <= self.options.stall_s or now - self._last_stall_beat <= hop_s:
            return None
        self._last_stall_beat = now
        return self._heartbeat("stalled", None)

    def end(self, reason: str, error: str | None = None) -> TagMessage:
        """The stream's last message: why it ended, the final counters, and the tags switched off."""
        replaced = self.fe.resampler.dropped_samples
        if replaced and self.options.nonfinite == "zero":
            log.warning("replaced %d NaN/Inf input sample(s) with 0", replaced)
        events = [
            TagEvent(tag=e.tag, state=e.state, time_s=e.time_s)
            for e in self.aggregator.close_events(self.end_s)
        ]
        self.totals.events.extend(events)
        msg = TagMessage(
            kind="end",
            stream_id=self.options.stream_id,
            seq=self.seq,
            events=events,
            drops=self.drops(),
            backend=self.options.backend,
            model=self.options.model,
            backlog_s=self._backlog(),
            end=EndInfo(
                reason=reason,
                error=error,
                stream_s=self.duration_s,
                windows=self.totals.windows,
                heartbeats=self.totals.heartbeats,
            ),
        )
        self.seq += 1
        return msg

    # ------------------------------------------------------------------ counters
    def drops(self) -> DropCounters:
        """The cumulative counters every message carries (``publisher_dropped`` is the publisher's)."""
        counters = self.source.counters() if self.source is not None else {}
        return DropCounters(
            ring_overflow_samples=counters.get("ring_overflow_samples", 0),
            ring_underflow_events=counters.get("ring_underflow_events", 0),
            input_status_flags=counters.get("input_status_flags", 0),
            input_blocked_s=counters.get("input_blocked_s", 0.0),
            device_reopens=counters.get("device_reopens", 0),
            ingest_dropped_samples=counters.get("ingest_dropped_samples", 0),
            ingest_lost_chunks=counters.get("ingest_lost_chunks", 0),
            resampler_dropped_samples=self.fe.resampler.dropped_samples,
        )

    @property
    def duration_s(self) -> float:
        """Seconds of input pushed so far."""
        return self.totals.fed_frames / self.input_rate

    @property
    def end_s(self) -> float:
        """Stream time where the stream ends: the last tagged window's end, else the newest frame's start."""
        if self._last_window_end_s is not None:
            return self._last_window_end_s
        spec = self.fe.spec
        return self.fe.frames_total * spec.hop_length / spec.sample_rate

    def _backlog(self) -> float | None:
        return round(self.source.backlog_seconds(), 4) if self.source is not None else None

    def _heartbeat(self, reason: str, window: DueWindow | None) -> TagMessage:
        msg = TagMessage.heartbeat(
            self.options.stream_id,
            self.seq,
            reason,  # type: ignore[arg-type]
            drops=self.drops(),
            backend=self.options.backend,
            model=self.options.model,
            window=window.info if window is not None else None,
            capture_wall_time=window.capture_wall if window is not None else None,
            active=self.aggregator.active_tags(),
        )
        msg.backlog_s = self._backlog()
        self.seq += 1
        self.totals.heartbeats += 1
        return msg


def _ms_between(start: float | None, end: float | None) -> float | None:
    return (end - start) * 1e3 if start is not None and end is not None else None
