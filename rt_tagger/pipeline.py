"""The streaming path: source → ring → stream state → backend → message → publisher.

:meth:`Pipeline.run` is the consumer loop of one stream: it reads the source's ring in the steps
the :class:`~rt_tagger.stream_state.StreamState` asks for, pushes them in, lets
:func:`~rt_tagger.scheduler.run_due` score the windows that became due (a batch of one), and
delivers each message (publisher, then the ``on_message`` callback). Every exit that can still
send ends the stream with a ``kind="end"`` message naming the reason.

Timings (``time.perf_counter``) per message: capture→ring (block capture to its arrival in the
ring), framing+mel (all front-end work since the previous message), inference, aggregation and
publish (by the publisher). Processing latency = wall time from the arrival in the ring of the
block holding the window's newest sample to the message being sent.

Heartbeats: a hop whose input RMS is below ``silence_rms`` yields ``kind="heartbeat"``
(``reason="silent"``) instead of tags; no new audio for ``stall_hops`` hops yields ``"stalled"``.

Non-finite samples (NaN/Inf): ``nonfinite="reject"`` stops with an :class:`AudioInputError` naming
the stream time; ``"zero"`` replaces them with 0 and counts them (``resampler_dropped_samples``).
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engines.bundle import Bundle
from rt_tagger.aggregator import Aggregator
from rt_tagger.messages import BackendInfo, ModelInfo, TagEvent, TagMessage, WindowInfo
from rt_tagger.placement import consumer_placement
from rt_tagger.scheduler import run_due
from rt_tagger.settings import MIN_HOP_SECONDS, RuntimeSettings, SettingsError, load_settings
from rt_tagger.sources import AudioInputError, DeviceLostError, FileSource, Source
from rt_tagger.stream_state import MessageOptions, StreamState, WindowResult

if TYPE_CHECKING:
    from rt_tagger.batch_frontend import BatchFrontEnd

__all__ = ["Pipeline", "RunResult", "StopRequest", "WindowResult", "run_file", "resolve_hop_frames"]

log = logging.getLogger(__name__)

_STAGES = ("capture_to_ring", "framing_mel", "inference", "aggregation", "publish")


class StopRequest(threading.Event):
    """A stop flag that remembers why (``"sigterm"``, ``"sigint"``, …), for the end message."""

    def __init__(self) -> None:
        super().__init__()
        self.reason = "stopped"

    def request(self, reason: str) -> None:
        self.reason = reason
        self.set()


@dataclass
class RunResult:
    """What one run produced, for the CLI, the tests and bench/."""

    tags: list[str]
    windows: list[WindowResult] = field(default_factory=list)
    silent_windows: list[WindowInfo] = field(default_factory=list)  # heartbeats instead of tags
    events: list[TagEvent] = field(default_factory=list)
    messages: int = 0  # delivered, the end message included
    heartbeats: int = 0
    duration_s: float = 0.0  # stream seconds consumed (input rate)
    latencies_ms: list[float] = field(default_factory=list)
    stage_ms: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in _STAGES})
    first_message_wall: float | None = None
    counters: dict[str, int | float] = field(default_factory=dict)
    backend: dict = field(default_factory=dict)
    hop_seconds: float = 0.0
    window_seconds: float = 0.0
    end_reason: str | None = None
    _last_drops: dict | None = None

    @property
    def clip_scores(self) -> np.ndarray:
        """Mean of the windows' raw probabilities: the whole-clip tag scores."""
        if not self.windows:
            return np.zeros(len(self.tags), dtype=np.float32)
        return np.mean([w.probabilities for w in self.windows], axis=0).astype(np.float32)

    def clip_top(self, k: int) -> list[tuple[str, float]]:
        s = self.clip_scores
        order = np.argsort(-s, kind="stable")[:k]
        return [(self.tags[i], float(s[i])) for i in order]

    def record(self, msg: TagMessage) -> None:
        """Account for a delivered message: count, stage timings, and a log line when drops change."""
        self.messages += 1
        if self.first_message_wall is None:
            self.first_message_wall = time.time()
        if msg.timings_ms is not None:
            for stage in _STAGES:
                v = getattr(msg.timings_ms, stage)
                if v is not None:
                    self.stage_ms[stage].append(v)
        if msg.kind == "end":  # the end says why and carries the counters; no log line of its own
            return
        drops = msg.drops.model_dump()
        if drops != self._last_drops and (self._last_drops is not None or any(drops.values())):
            log.warning("drop counters changed: %s", drops)
        self._last_drops = drops


def resolve_hop_frames(hop_seconds: float | None, bundle: Bundle) -> int:
    """Hop in front-end frames: the bundle's default or ``hop_seconds``, MIN_HOP_SECONDS .. one window."""
    spec = bundle.frontend
    hop_s = bundle.manifest.hop_seconds if hop_seconds is None else float(hop_seconds)
    if hop_s < MIN_HOP_SECONDS - 1e-9 or hop_s > spec.window_seconds + 1e-9:
        raise SettingsError(
            f"invalid setting hop_seconds={hop_s}: must be between {MIN_HOP_SECONDS} and the window ({spec.window_seconds:.3f} s)"
        )
    return spec.hop_frames_for(hop_s)


class Pipeline:
    """A bundle, a backend and the per-stream state, ready to run a source.

    Args:
        bundle: The verified model bundle.
        settings: Runtime settings (hop, aggregator, stream id, heartbeat floors, …).
        publisher: A :class:`rt_tagger.publisher.Publisher`, or None (offline runs).
        on_message: Called with every message after it was published (e.g. printing).
        keep_windows: Keep every window's probabilities in the result (offline tagging).
        max_batch: The backend's largest batch (a server's ``serve.max_batch``; None: the backend's
            default).
    """

    def __init__(
        self,
        bundle: Bundle,
        settings: RuntimeSettings | None = None,
        *,
        publisher=None,
        on_message=None,
        keep_windows: bool = True,
        max_batch: int | None = None,
    ) -> None:
        from engines.registry import open_backend

        self.bundle = bundle
        self.settings = settings or load_settings()
        self.spec = bundle.frontend
        self.hop_frames = resolve_hop_frames(self.settings.hop_seconds, bundle)
        self.hop_seconds = self.hop_frames * self.spec.hop_length / self.spec.sample_rate
        self.publisher = publisher
        self.on_message = on_message
        self.keep_windows = keep_windows
        t0 = time.perf_counter()
        options = {"max_batch": max_batch} if max_batch else {}
        self.backend = open_backend(bundle, self.settings.backend, **options)
        d = self.backend.describe()
        self.backend_info = BackendInfo(name=d["name"], device=d["device"], precision=d["precision"])
        self.model_info = ModelInfo(
            name=bundle.manifest.name, weights_sha256=bundle.manifest.weights_sha256[:12]
        )
        # Warm the backend: the first inference allocates and (for some backends) compiles.
        self.backend.infer(np.zeros((1, *self.backend.input_shape), dtype=np.float32))
        log.info(
            "backend %s (%s, %s; %s) for model %s %s; window %.3f s, hop %.3f s; ready in %.2f s",
            d["name"],
            d["device"],
            d["precision"],
            getattr(self.backend, "selection", "forced"),
            bundle.manifest.name,
            self.model_info.weights_sha256,
            self.spec.window_seconds,
            self.hop_seconds,
            time.perf_counter() - t0,
        )

    def close(self) -> None:
        self.backend.deactivate()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def front_end(self, input_rate: int, channels: int, frame_sink=None):
        """A warmed :class:`StreamingFrontEnd` for this input layout (numba compiled at start-up)."""
        from rt_tagger.framer import StreamingFrontEnd

        return StreamingFrontEnd(self.spec, input_rate, channels, frame_sink=frame_sink)

    def message_options(
        self, stream_id: str, hop_frames: int, full_scores: bool | None = None
    ) -> MessageOptions:
        """How a stream's messages are built (ids, model and backend, heartbeat/NaN policies)."""
        st = self.settings
        hop_s = hop_frames * self.spec.hop_length / self.spec.sample_rate
        return MessageOptions(
            stream_id=stream_id,
            backend=self.backend_info,
            model=self.model_info,
            silence_rms=st.silence_rms,
            stall_s=st.stall_hops * hop_s,
            nonfinite=st.nonfinite,
            full_scores=st.publish.full_scores if full_scores is None else full_scores,
            embedding=st.publish.embedding,
        )

    def aggregator_options(self) -> dict:
        """The aggregator's keyword arguments from the settings and the bundle's music head."""
        agg = self.settings.aggregator
        return dict(
            mode=agg.mode,
            horizon_windows=agg.horizon_windows,
            ema_alpha=agg.ema_alpha,
            top_k=agg.top_k,
            off_ratio=agg.off_ratio,
            min_dwell_s=agg.min_dwell_s,
            music_index=self.bundle.manifest.music_index,
        )

    def open_stream(
        self,
        source: Source | None,
        input_rate: int,
        channels: int,
        *,
        stream_id: str | None = None,
        hop_frames: int | None = None,
        full_scores: bool | None = None,
        batch_frontend: BatchFrontEnd | None = None,
    ) -> StreamState:
        """Fresh per-stream state (front end, aggregator, message builder) for one input.

        ``stream_id``, ``hop_frames`` and ``full_scores`` override the settings (a server's
        streams each have their own). With ``batch_frontend`` the stream's frames become log-mel
        there, with other streams' (a slot is taken; give it back with ``batch_frontend.close``).
        """
        hop_frames = hop_frames or self.hop_frames
        options = self.message_options(stream_id or self.settings.stream_id, hop_frames, full_scores)
        aggregator = Aggregator(
            self.bundle.tags, self.bundle.manifest.thresholds, **self.aggregator_options()
        )
        slot = batch_frontend.open() if batch_frontend is not None else None
        fe = self.front_end(input_rate, channels, batch_frontend.sink(slot) if slot is not None else None)
        return StreamState(
            fe,
            aggregator,
            hop_frames,
            options,
            source=source,
            keep_windows=self.keep_windows,
            batch_slot=slot,
        )

    # ------------------------------------------------------------------ the consumer loop
    def run(
        self, source: Source, *, duration_s: float | None = None, stop: threading.Event | None = None
    ) -> RunResult:
        """Start ``source``, stream it until it ends (or ``duration_s``/``stop``), stop it.

        Every exit that can send ends with a ``kind="end"`` message: reason ``eof``, ``duration``,
        the :class:`StopRequest` reason (``sigterm``, ``sigint``, ``stopped``), ``error`` or
        ``device_lost``.

        Raises:
            AudioInputError: undecodable input, non-finite samples with ``nonfinite="reject"``,
                or a stream that ended before any audio arrived.
            DeviceLostError: the capture device went silent and could not be reopened.
        """
        stream = self.open_stream(source, source.sample_rate, source.channels)
        res = RunResult(
            tags=list(self.bundle.tags), backend=self.backend.describe(), hop_seconds=self.hop_seconds
        )
        res.window_seconds = self.spec.window_seconds
        deadline = None if duration_s is None else time.perf_counter() + duration_s
        try:
            with source:  # its threads exist now: placing the consumer leaves them every core
                with consumer_placement(self.settings.consumer_core, self.settings.realtime_priority):
                    reason = self._consume(source, stream, res, deadline, stop)
                if reason in ("eof", "duration") and stream.pad_short_stream():
                    self._dispatch(stream, res)
            if not stream.totals.fed_frames and reason == "eof" and duration_s is None:
                raise AudioInputError(f"no audio received from {source.describe()}")
        except BaseException as e:
            self._end(stream, res, *_end_reason(e))
            raise
        self._end(stream, res, reason, None)
        res.windows, res.events = stream.totals.kept, stream.totals.events
        res.silent_windows = stream.totals.silent
        res.heartbeats, res.duration_s = stream.totals.heartbeats, stream.duration_s
        res.counters = {**stream.drops().model_dump(), "ring_overflow_events": source.ring.overflow_events}
        if self.publisher is not None:
            res.counters["publisher_dropped"] = self.publisher.dropped
        return res

    def _consume(self, source: Source, stream: StreamState, res: RunResult, deadline, stop) -> str:
        """Read, push, score and deliver until the source ends or a stop; returns the end reason."""
        ring = source.ring
        buf = np.empty((stream.max_step_frames, source.channels), dtype=np.float32)
        prewarm = _Prewarm(self.backend, self.settings.prewarm_ms, self._rehearsal(source))
        while_waiting = prewarm.rehearsal.message if prewarm.rehearsal is not None else None
        while True:
            if stop is not None and stop.is_set():
                return stop.reason if isinstance(stop, StopRequest) else "stopped"
            if deadline is not None and time.perf_counter() >= deadline:
                return "duration"
            source.check()  # raises what stopped the producer; reopens a silent device
            finished = source.finished  # read before available(): once finished, the ring is final
            n = min(stream.step_frames(), ring.available())
            if n == 0:
                if finished:
                    source.check()
                    return "eof"
                source.note_starved(self.hop_seconds)
                beat = stream.idle()
                if beat is not None:
                    self._deliver(beat, res)
                wait_s = prewarm.step(stream)
                if wait_s:
                    source.wait_for_audio(wait_s)
                continue
            prewarm.arrived()
            ring.read_into(buf[:n])
            stream.push(buf[:n], *source.times_at(ring.read_pos - 1))
            self._dispatch(stream, res, while_waiting)

    def _rehearsal(self, source: Source) -> _Rehearsal | None:
        """The host side of the prewarm (GPU backends with ``prewarm_ms`` only)."""
        if not (self.backend.on_gpu and self.settings.prewarm_ms > 0):
            return None
        scratch = self.open_stream(None, source.sample_rate, source.channels, stream_id="rehearsal")
        scratch.keep_windows = False
        return _Rehearsal(scratch, self.publisher, getattr(source, "block_frames", 0) or 1024)

    def _dispatch(self, stream: StreamState, res: RunResult, while_waiting=None) -> None:
        """Score the stream's due windows and deliver their messages; ``while_waiting`` is host
        work the GPU backends run while the model is on the device (the rehearsal's message steps)."""
        for _, window, msg in run_due([stream], self.backend, while_waiting=while_waiting):
            self._deliver(msg, res)
            if msg.kind == "tags" and window.arrival_wall is not None:
                res.latencies_ms.append((time.time() - window.arrival_wall) * 1e3)

    def _deliver(self, msg: TagMessage, res: RunResult) -> None:
        if self.publisher is not None:
            self.publisher.publish(msg)  # stamps publish_wall_time and timings_ms.publish
        else:
            msg.publish_wall_time = time.time()
        res.record(msg)
        if self.on_message is not None:
            self.on_message(msg)

    def _end(self, stream: StreamState, res: RunResult, reason: str, error: str | None) -> None:
        """Send the end message; a failure to send must not hide why the stream ended."""
        res.end_reason = reason
        try:
            self._deliver(stream.end(reason, error), res)
        except Exception as e:  # noqa: BLE001 - logged; the original outcome stands
            log.warning("could not send the end message: %s", e)


class _Rehearsal:
    """A window's host-side steps on a scratch stream that nothing reads: the framing of one
    block, then aggregation, the message and its JSON (:meth:`message`). Run just
    before a real window is due, it keeps those code paths and their data in the caches: after
    the 0.5 s between windows each step otherwise takes several times its warm time (aggregation
    and message 0.48 ms against 0.10 on the 2-core CPU; 0.25 against 0.03 on the H200's host).
    Even a millisecond of spinning cools them again, so a GPU backend also runs :meth:`message`
    while the window's own model run is on the device: the window's aggregation and message then
    find them warm. (Framing a scratch block at every turn of the spin was tried too: it held the
    GIL long enough to make the audio thread wait, up to 5 ms at p99.)
    """

    def __init__(self, scratch: StreamState, publisher, block_frames: int) -> None:
        self.stream = scratch
        self.publisher = publisher
        noise = np.random.default_rng(0).normal(0.0, 0.05, (max(1, block_frames), scratch.fe.channels))
        self.block = noise.astype(np.float32)
        while not scratch.push(self.block):  # one window's audio, for the window complete() takes
            pass
        self.window = scratch.due_windows()[-1]
        self.probabilities = np.full(len(scratch.aggregator.tags), 0.5, np.float32)

    def __call__(self) -> None:
        self.stream.push(self.block)
        self.stream.due_windows()  # discarded: only the framing matters
        self.message()

    def message(self) -> None:
        msg = self.stream.complete(self.window, self.probabilities, 0.0)
        if self.publisher is not None:
            self.publisher.rehearse(msg)


class _Prewarm:
    """Keeps the core and the GPU at speed for the block that completes a stream's next window.

    Between windows (0.5 s apart by default) the consumer sleeps, the GPU drops to idle clocks
    and the core to a deep sleep state: on an H200 batch 1 then takes 0.76 ms instead of 0.25,
    and each host-side step several times its warm time. In the last ``prewarm_ms`` of audio
    before a window is due the consumer therefore runs the model on silence, but only while the
    next block is not expected before that run would end (blocks come at a steady pace: the last
    gap between two is the estimate), so a window never waits behind a prewarm run; between runs
    it spins, yielding the GIL and the core at every turn. Each run also takes a scratch window
    through the host-side steps (:class:`_Rehearsal`) and a young-generation garbage collection,
    so that the window's own allocations rarely start one. Why spin rather than sleep: a thread
    woken from even a 0.2-ms sleep may land on another core whose caches hold none of the
    rehearsed code and data. GPU backends only: on a CPU the runs would take the cores the window
    needs.
    """

    POLL_S = 0.001  # the consumer's wait for audio, far from a window

    def __init__(self, backend, prewarm_ms: float, rehearsal: _Rehearsal | None = None) -> None:
        self.backend = backend
        self.rehearsal = rehearsal
        self.window_s = prewarm_ms / 1e3 if backend.on_gpu else 0.0
        self.last_block = None  # perf_counter time the newest block was read
        self.gap = None  # seconds between the last two blocks
        self.run_s = 0.0  # how long the last prewarm run took

    def arrived(self) -> None:
        now = time.perf_counter()
        if self.last_block is not None:
            self.gap = now - self.last_block
        self.last_block = now

    def step(self, stream: StreamState) -> float:
        """While no audio is there: one prewarm run when the next window is near and the run fits
        before the next block (returns 0: look again at once), else how long to wait for audio."""
        if not self.window_s or stream.seconds_to_window() > self.window_s:
            return self.POLL_S
        now = time.perf_counter()
        if self.last_block is not None and now - self.last_block > max(0.05, 4 * (self.gap or 0.0)):
            return self.POLL_S  # the input stalls: no reason to stay awake
        expected = None if self.gap is None else self.last_block + self.gap
        if expected is None or now + 2 * self.run_s < expected:
            self.backend.prewarm()
            if self.rehearsal is not None:
                self.rehearsal()
            gc.collect(0)
            self.run_s = time.perf_counter() - now
        else:
            os.sched_yield()  # lets the audio thread take the GIL; the core stays this thread's
        return 0.0


def _end_reason(e: BaseException) -> tuple[str, str | None]:
    """End reason and one-line error for an exception that stops a stream."""
    if isinstance(e, KeyboardInterrupt):
        return "sigint", None
    text = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return ("device_lost" if isinstance(e, DeviceLostError) else "error"), text


def run_file(
    path: str | Path,
    bundle: Bundle,
    hop: float | None = None,
    block_size: int = 1024,
    *,
    realtime: bool = False,
    settings: RuntimeSettings | None = None,
    publisher=None,
    on_message=None,
    pipeline: Pipeline | None = None,
) -> RunResult:
    """Replay an audio file as a stream (tests and bench/): blocks of ``block_size`` frames.

    Args:
        path: Audio file (wav, flac, ogg, mp3).
        bundle: Model bundle.
        hop: Hop in seconds (None: the settings' or the bundle's).
        block_size: Frames per source block.
        realtime: Pace the blocks at real time.
        settings: Runtime settings (default: :func:`load_settings`).
        publisher: Optional publisher.
        on_message: Optional per-message callback.
        pipeline: Reuse a warmed pipeline (its settings win over ``hop``/``settings``).
    """
    if pipeline is None:
        settings = settings or load_settings()
        if hop is not None:
            settings = settings.model_copy(update={"hop_seconds": hop})
        pipeline = Pipeline(bundle, settings, publisher=publisher, on_message=on_message)
        own = True
    else:
        own = False
    try:
        ring_s = max(pipeline.settings.audio.ring_seconds, 4 * block_size / 8000.0)
        source = FileSource(path, block_size=block_size, realtime=realtime, ring_seconds=ring_s)
        return pipeline.run(source)
    finally:
        if own:
            pipeline.close()
