"""The streaming path: source → ring → front end → backend → aggregator → message → publisher.

One consumer loop (:meth:`Pipeline.run`) drains the source's ring in fixed steps of input samples,
feeds them to the numba front end (:class:`rt_tagger.framer.StreamingFrontEnd`), and every hop
sends the last window of log-mel to the backend, aggregates, builds a
:class:`~rt_tagger.messages.TagMessage` and publishes it (or hands it to a callback).

Why fixed steps: the step sizes depend only on how many frames the front end holds, never on how
the source happened to block its audio, so a file streamed in blocks of 256 or 65536 frames gives
the same windows and the same scores (chunk invariance, tested). A step feeds at most the input
needed to reach the next hop boundary, so a window never overshoots its boundary by more than one
frame of resampler slack.

Timings (``time.perf_counter``) per message: capture→ring (block capture to its arrival in the
ring), framing+mel (all front-end work since the previous message), inference, aggregation and
publish. Processing latency = wall time from the arrival in the ring of the block holding the
window's newest sample to the message being sent.

Heartbeats: a hop whose input RMS is below ``silence_rms`` yields ``kind="heartbeat"``
(``reason="silent"``) instead of tags; no new audio for ``stall_hops`` hops yields ``"stalled"``.

Non-finite samples (NaN/Inf): ``nonfinite="reject"`` stops with an :class:`AudioInputError` naming
the stream time; ``"zero"`` replaces them with 0 and counts them (``nonfinite_samples``, logged).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engines.bundle import Bundle
from rt_tagger.aggregator import Aggregator
from rt_tagger.messages import (
    BackendInfo,
    DropCounters,
    ModelInfo,
    StageTimings,
    TagEvent,
    TagMessage,
    TagScore,
    WindowInfo,
)
from rt_tagger.settings import RuntimeSettings, SettingsError, load_settings
from rt_tagger.sources import AudioInputError, FileSource, Source

__all__ = ["Pipeline", "RunResult", "WindowResult", "run_file", "resolve_hop_frames"]

log = logging.getLogger(__name__)


@dataclass
class WindowResult:
    """One analysed window (kept by :meth:`Pipeline.run` when ``keep_windows``)."""

    start_s: float
    end_s: float
    probabilities: np.ndarray  # (n_tags,) this window's raw model output
    scores: np.ndarray  # (n_tags,) aggregated over the horizon
    top: list[tuple[str, float]]


@dataclass
class RunResult:
    """What one run produced, for the CLI, the tests and bench/."""

    tags: list[str]
    windows: list[WindowResult] = field(default_factory=list)
    events: list[TagEvent] = field(default_factory=list)
    messages: int = 0
    heartbeats: int = 0
    duration_s: float = 0.0  # stream seconds consumed (model rate)
    latencies_ms: list[float] = field(default_factory=list)
    stage_ms: dict[str, list[float]] = field(default_factory=dict)
    first_message_wall: float | None = None
    counters: dict[str, int] = field(default_factory=dict)
    backend: dict = field(default_factory=dict)
    hop_seconds: float = 0.0
    window_seconds: float = 0.0

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


def resolve_hop_frames(hop_seconds: float | None, bundle: Bundle) -> int:
    """Hop in front-end frames: the bundle's default or ``hop_seconds``, 0.1 s .. one window."""
    spec = bundle.frontend
    hop_s = bundle.manifest.hop_seconds if hop_seconds is None else float(hop_seconds)
    if hop_s < 0.1 - 1e-9 or hop_s > spec.window_seconds + 1e-9:
        raise SettingsError(
            f"invalid setting hop_seconds={hop_s}: must be between 0.1 and the window ({spec.window_seconds:.3f} s)"
        )
    return max(1, round(hop_s * spec.sample_rate / spec.hop_length))


def _resampler_drops(fe) -> int:
    for obj in (fe, getattr(fe, "resampler", None)):
        for name in ("resampler_dropped_samples", "dropped_samples"):
            v = getattr(obj, name, None) if obj is not None else None
            if isinstance(v, int | np.integer):
                return int(v)
    return 0


class Pipeline:
    """A bundle, a backend and the per-stream state, ready to run a source.

    Args:
        bundle: The verified model bundle.
        settings: Runtime settings (hop, aggregator, stream id, heartbeat floors, …).
        publisher: A :class:`rt_tagger.publisher.Publisher`, or None (offline runs).
        on_message: Called with every message after it was published (e.g. printing).
        keep_windows: Keep every window's probabilities in the result (offline tagging).
    """

    def __init__(
        self,
        bundle: Bundle,
        settings: RuntimeSettings | None = None,
        *,
        publisher=None,
        on_message=None,
        keep_windows: bool = True,
    ) -> None:
        from engines.select import open_backend

        self.bundle = bundle
        self.settings = settings or load_settings()
        self.spec = bundle.frontend
        self.hop_frames = resolve_hop_frames(self.settings.hop_seconds, bundle)
        self.hop_seconds = self.hop_frames * self.spec.hop_length / self.spec.sample_rate
        self.publisher = publisher
        self.on_message = on_message
        self.keep_windows = keep_windows
        t0 = time.perf_counter()
        self.backend = open_backend(bundle, self.settings.backend)
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

    def front_end(self, input_rate: int, channels: int):
        """A warmed :class:`StreamingFrontEnd` for this input layout (numba compiled at start-up)."""
        from rt_tagger.framer import StreamingFrontEnd

        # compiles/loads kernels, warms up
        return StreamingFrontEnd(self.spec, input_rate, channels)

    # ------------------------------------------------------------------ the consumer loop
    def run(
        self,
        source: Source,
        *,
        duration_s: float | None = None,
        stop: threading.Event | None = None,
    ) -> RunResult:
        """Start ``source``, stream it until it ends (or ``duration_s``/``stop``), stop it.

        Raises:
            AudioInputError: undecodable input, non-finite samples with ``nonfinite="reject"``,
                or a stream that ended before any audio arrived.
        """
        st = self.settings
        spec = self.spec
        fe = self.front_end(source.sample_rate, source.channels)
        agg_s = st.aggregator
        agg = Aggregator(
            self.bundle.tags,
            self.bundle.manifest.thresholds,
            mode=agg_s.mode,
            horizon_windows=agg_s.horizon_windows,
            ema_alpha=agg_s.ema_alpha,
            top_k=agg_s.top_k,
            off_ratio=agg_s.off_ratio,
            min_dwell_s=agg_s.min_dwell_s,
        )
        res = RunResult(
            tags=list(self.bundle.tags),
            backend=self.backend.describe(),
            hop_seconds=self.hop_seconds,
            window_seconds=spec.window_seconds,
        )
        res.stage_ms = {
            k: [] for k in ("capture_to_ring", "framing_mel", "inference", "aggregation", "publish")
        }
        ring = source.ring
        ch = source.channels
        # Input samples per step: at most one frame's worth of model-rate samples.
        unit = max(1, math.floor(spec.hop_length * source.sample_rate / spec.sample_rate))
        max_units = max(1, ring.capacity // (4 * unit))
        step_buf = np.empty((unit * max_units, ch), dtype=np.float32)
        next_emit = spec.window_frames  # frames_total at which the next window is due
        seq = 0
        framing_s = 0.0
        hop_sq, hop_n = 0.0, 0  # input energy since the last message (silence check)
        nonfinite = 0
        last_drops: tuple | None = None
        stall_s = st.stall_hops * self.hop_seconds
        last_data = time.perf_counter()
        last_wp = 0
        last_stall_beat = 0.0
        fed_in = 0  # input samples fed to the front end
        padded = False
        deadline = None

        def drops() -> DropCounters:
            return DropCounters(
                ring_overflow_samples=ring.overflow_samples,
                ring_underflow_events=ring.underflow_events,
                input_status_flags=source.status_flags,
                resampler_dropped_samples=_resampler_drops(fe),
                publisher_dropped=self.publisher.dropped if self.publisher is not None else 0,
            )

        def send(msg: TagMessage) -> None:
            nonlocal seq, last_drops
            t = time.perf_counter()
            if self.publisher is not None:
                self.publisher.publish(msg)
            else:
                msg.publish_wall_time = time.time()
            publish_ms = (time.perf_counter() - t) * 1e3
            if msg.timings_ms is not None and msg.timings_ms.publish is None:
                msg.timings_ms.publish = publish_ms
            res.stage_ms["publish"].append(publish_ms)
            if res.first_message_wall is None:
                res.first_message_wall = time.time()
            seq += 1
            res.messages += 1
            d = msg.drops
            key = (
                d.ring_overflow_samples,
                d.ring_underflow_events,
                d.input_status_flags,
                d.resampler_dropped_samples,
                d.publisher_dropped,
            )
            if key != last_drops:
                if last_drops is not None or any(key):
                    log.warning("drop counters changed: %s", d.model_dump())
                last_drops = key
            if self.on_message is not None:
                self.on_message(msg)

        def window_info() -> WindowInfo:
            start, end = fe.window_span()
            sr = spec.sample_rate
            return WindowInfo(start_sample=start, end_sample=end, start_s=start / sr, end_s=end / sr)

        def emit() -> None:
            nonlocal framing_s, hop_sq, hop_n
            pos = max(0, ring.read_pos - 1)
            capture, arrival = source.times_at(pos)
            win = window_info()
            rms = math.sqrt(hop_sq / hop_n) if hop_n else 0.0
            hop_sq, hop_n = 0.0, 0
            framing_ms = framing_s * 1e3
            framing_s = 0.0
            res.stage_ms["framing_mel"].append(framing_ms)
            c2r = (arrival - capture) * 1e3 if capture is not None and arrival is not None else None
            if c2r is not None:
                res.stage_ms["capture_to_ring"].append(c2r)
            if rms < st.silence_rms:
                msg = TagMessage.heartbeat(
                    st.stream_id,
                    seq,
                    "silent",
                    drops=drops(),
                    backend=self.backend_info,
                    model=self.model_info,
                    window=win,
                    capture_wall_time=capture,
                    active=[t for t, a in zip(agg.tags, agg.active, strict=True) if a],
                )
                res.heartbeats += 1
                send(msg)
                return
            t0 = time.perf_counter()
            mel = fe.window()
            probs = self.backend.infer(mel[None])
            p = probs.probabilities[0]
            t1 = time.perf_counter()
            out = agg.update(p, win.end_s)
            t2 = time.perf_counter()
            events = [TagEvent(tag=e.tag, state=e.state, time_s=e.time_s) for e in out.events]
            res.events.extend(events)
            full = st.publish.full_scores
            msg = TagMessage(
                kind="tags",
                stream_id=st.stream_id,
                seq=seq,
                window=win,
                capture_wall_time=capture,
                timings_ms=StageTimings(
                    capture_to_ring=c2r,
                    framing_mel=framing_ms,
                    inference=(t1 - t0) * 1e3,
                    aggregation=(t2 - t1) * 1e3,
                ),
                top=[TagScore(tag=t, score=s) for t, s in out.top],
                scores=[float(x) for x in out.scores] if full else None,
                tags=list(agg.tags) if (full or seq == 0) else None,
                events=events,
                active=out.active,
                drops=drops(),
                backend=self.backend_info,
                model=self.model_info,
            )
            res.stage_ms["inference"].append((t1 - t0) * 1e3)
            res.stage_ms["aggregation"].append((t2 - t1) * 1e3)
            if self.keep_windows:
                res.windows.append(WindowResult(win.start_s, win.end_s, p.copy(), out.scores.copy(), out.top))
            send(msg)
            if arrival is not None:
                res.latencies_ms.append((time.time() - arrival) * 1e3)

        def feed(block: np.ndarray) -> None:
            nonlocal framing_s, hop_sq, hop_n, nonfinite, fed_in
            finite = np.isfinite(block)
            if not finite.all():
                bad = int(block.size - np.count_nonzero(finite))
                if st.nonfinite == "reject":
                    first = int(np.argmin(finite.all(axis=1)))  # first frame holding a bad sample
                    at = (fed_in + first) / source.sample_rate
                    raise AudioInputError(
                        f"input has NaN/Inf samples ({bad} in the first bad block, from {at:.3f} s of the stream); "
                        "fix the input or set nonfinite=zero (RT_TAGGER_NONFINITE=zero) to replace them with 0"
                    )
                np.copyto(block, 0.0, where=~finite)
                if nonfinite == 0:
                    log.warning(
                        "input has NaN/Inf samples: replacing them with 0 (nonfinite=zero) and counting"
                    )
                nonfinite += bad
            hop_sq += float(np.dot(block.ravel(), block.ravel()))
            hop_n += block.size
            t = time.perf_counter()
            fe.consume_array(block)
            framing_s += time.perf_counter() - t
            fed_in += block.shape[0]

        if duration_s is not None:
            deadline = time.perf_counter() + duration_s
        with source:
            while True:
                if stop is not None and stop.is_set():
                    break
                if deadline is not None and time.perf_counter() >= deadline:
                    break
                if source.error is not None:
                    raise source.error
                # Deterministic step: at most the input that cannot overshoot the next boundary.
                # Less is fed as soon as it is there: framing does not depend on block sizes, and
                # waiting for a whole step would hold a finished window back by up to one frame.
                remaining = next_emit - fe.frames_total
                units = min(max_units, max(1, remaining - 2))
                want = units * unit
                fin = source.finished  # read before available(): once finished, the ring is final
                avail = ring.available()
                if avail == 0:
                    if fin:
                        break
                    now = time.perf_counter()
                    if ring.write_pos != last_wp:  # new audio arrived, even if not a whole step yet
                        last_wp, last_data = ring.write_pos, now
                    if now - last_data > stall_s and now - last_stall_beat > self.hop_seconds:
                        last_stall_beat = now
                        res.heartbeats += 1
                        send(
                            TagMessage.heartbeat(
                                st.stream_id,
                                seq,
                                "stalled",
                                drops=drops(),
                                backend=self.backend_info,
                                model=self.model_info,
                                active=[t for t, a in zip(agg.tags, agg.active, strict=True) if a],
                            )
                        )
                    source.wait_for_audio(0.001)
                    continue
                n = min(want, avail)
                block = step_buf[:n]
                ring.read_into(block)
                feed(block)
                while fe.frames_total >= next_emit:
                    emit()
                    next_emit += self.hop_frames
            if source.error is not None:
                raise source.error
            # A stream shorter than one window still gets one window, padded with silence.
            if res.messages == 0 and fed_in > 0 and (stop is None or not stop.is_set()):
                padded = True
                zeros = np.zeros((unit, ch), dtype=np.float32)
                while fe.frames_total < next_emit:
                    fe.consume_array(zeros)
                emit()
        if padded:
            log.info(
                "input shorter than one window (%.2f s): padded with silence", fed_in / source.sample_rate
            )
        if fed_in == 0 and (stop is None or not stop.is_set()) and duration_s is None:
            raise AudioInputError(f"no audio received from {source.describe()}")
        if nonfinite:
            log.warning("replaced %d NaN/Inf input sample(s) with 0", nonfinite)
        end_s = res.windows[-1].end_s if res.windows else fe.frames_total * spec.hop_length / spec.sample_rate
        res.events.extend(
            TagEvent(tag=e.tag, state=e.state, time_s=e.time_s) for e in agg.close_events(end_s)
        )
        res.duration_s = fed_in / source.sample_rate
        res.counters = {
            **source.counters(),
            "resampler_dropped_samples": _resampler_drops(fe),
            "nonfinite_samples": nonfinite,
        }
        if self.publisher is not None:
            res.counters["publisher_dropped"] = self.publisher.dropped
        return res


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
