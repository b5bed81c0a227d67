"""``rt-tagger serve``: one process tags many live streams, batching their windows together.

Clients open streams and send PCM over the ingest protocol (:mod:`rt_tagger.ingest`, a ZeroMQ
ROUTER socket); every stream gets its own :class:`~rt_tagger.stream_state.StreamState`
(resampler, framer, aggregator, sequence numbers: exactly what ``rt-tagger stream`` runs), and
its messages go out on the same PUB socket and topic scheme (``tags.<stream_id>``).

The loop (one thread, so no locks): receive what arrived, push each chunk into its stream, and
when the oldest due window has waited ``max_batch_delay_ms`` (or a full batch is due), score the
due windows of all streams in one backend batch (:func:`rt_tagger.scheduler.run_due`) and publish
the messages. Housekeeping between rounds: streams idle past ``idle_timeout_s`` are ended, and a
``stats`` message is published every ``stats_interval_s``.

Flow control, per stream: a ``live`` stream may run ahead of real time by ``buffer_s``; chunks
beyond are dropped and counted (``drops.ingest_dropped_samples``); a gap in a stream's chunk
sequence numbers is counted as ``drops.ingest_lost_chunks``. A ``batch`` stream has no rate
limit: the client is slowed by ZeroMQ back-pressure (the server reads only as fast as it tags).
Admission: at ``max_streams`` open streams, ``open`` is refused with the reason.
"""

from __future__ import annotations

import errno
import gc
import json
import logging
import random
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np
import zmq

from rt_tagger.batch_frontend import BatchFrontEnd
from rt_tagger.ingest import (
    AudioHeader,
    CloseGroupHeader,
    CloseHeader,
    GroupAudioHeader,
    OpenGroupHeader,
    OpenHeader,
    ProtocolError,
    Reply,
    decode_pcm,
    encode_message,
    parse_client_message,
)
from rt_tagger.pipeline import Pipeline, resolve_hop_frames
from rt_tagger.publisher import Publisher, parse_endpoint
from rt_tagger.scheduler import run_due
from rt_tagger.settings import ServeSettings, SettingsError
from rt_tagger.sources import AudioInputError
from rt_tagger.stream_group import StreamGroup
from rt_tagger.stream_state import StreamState

__all__ = ["IngestInput", "Server", "ServeStats", "bind_ingest"]

log = logging.getLogger(__name__)

STATS_TOPIC = b"stats\0"  # outside "tags.": subscribers of tags never receive it
_MAX_MESSAGES_PER_ROUND = 256  # bounds how long reading can delay due windows


@dataclass
class IngestInput:
    """One served stream's input side: sequence checks, pacing and its counters."""

    identity: bytes  # the client's ROUTER identity, for replies
    header: OpenHeader
    buffer_s: float
    opened: float = field(default_factory=time.monotonic)
    last_audio: float = field(default_factory=time.monotonic)
    next_seq: int = 0
    received_frames: int = 0
    dropped_frames: int = 0
    lost_chunks: int = 0
    # Chunks held until the stream's next front-end step is whole: one push per step, not per chunk
    # (a window still becomes due with the chunk that holds its last sample).
    pending: list = field(default_factory=list)
    pending_frames: int = 0
    pending_times: tuple = (None, None)  # capture / arrival of the newest pending chunk

    def hold(self, pcm: np.ndarray, capture: float | None, arrival: float) -> None:
        self.pending.append(pcm)
        self.pending_frames += pcm.shape[0]
        self.pending_times = (capture, arrival)

    def take(self) -> np.ndarray:
        block = self.pending[0] if len(self.pending) == 1 else np.concatenate(self.pending)
        self.pending, self.pending_frames = [], 0
        return block

    def accept(self, seq: int, frames: int, now: float) -> bool:
        """Whether a chunk goes to the tagger; counts gaps and (live streams) audio too far ahead."""
        if seq > self.next_seq:
            self.lost_chunks += seq - self.next_seq
        self.next_seq = max(self.next_seq, seq + 1)
        self.last_audio = now
        if self.header.options.pace == "live":
            ahead = (self.received_frames + frames) / self.header.sample_rate - (now - self.opened)
            if ahead > self.buffer_s:
                self.dropped_frames += frames
                return False
        self.received_frames += frames
        return True

    # InputStatus (what every message of the stream reports)
    def counters(self) -> dict[str, int | float]:
        return {"ingest_dropped_samples": self.dropped_frames, "ingest_lost_chunks": self.lost_chunks}

    def backlog_seconds(self) -> float:
        return 0.0  # chunks are framed as they arrive; what waits is in ZeroMQ's queue


@dataclass
class ServeStats:
    """Counters of the server as a whole, published as the ``stats`` message."""

    opened: int = 0
    refused: int = 0
    closed: Counter = field(default_factory=Counter)  # by reason
    protocol_errors: int = 0
    batches: int = 0
    windows: int = 0
    batch_sizes: Counter = field(default_factory=Counter)  # power-of-two bucket -> batches
    queue_delay_ms: deque = field(default_factory=lambda: deque(maxlen=4096))
    batch_ms: deque = field(default_factory=lambda: deque(maxlen=4096))
    device_ms: deque = field(default_factory=lambda: deque(maxlen=4096))  # GPU time of a round's batches
    ended_dropped_samples: int = 0  # input counters of streams already ended
    ended_lost_chunks: int = 0
    batches_at_last_report: int = 0

    def record_batch(
        self, size: int, queue_delay_ms: float, batch_ms: float, device_ms: float | None
    ) -> None:
        self.batches += 1
        self.windows += size
        self.batch_sizes[1 << max(0, size - 1).bit_length()] += 1
        self.queue_delay_ms.append(queue_delay_ms)
        self.batch_ms.append(batch_ms)
        if device_ms is not None:
            self.device_ms.append(device_ms)


class _GcPauses:
    """Times the interpreter's garbage collections (gc.callbacks), for the stats message."""

    def __init__(self) -> None:
        self.pause_ms: deque = deque(maxlen=4096)
        self.full = 0  # collections of the oldest generation
        self._t0 = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
            return
        self.pause_ms.append((time.perf_counter() - self._t0) * 1e3)
        self.full += info.get("generation") == 2

    def install(self) -> None:
        gc.callbacks.append(self)

    def remove(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)


def _pcts(values) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None}
    a = np.fromiter(values, dtype=np.float64)
    return {"p50": round(float(np.percentile(a, 50)), 3), "p99": round(float(np.percentile(a, 99)), 3)}


def _batch_frontend(mode: str, pipeline: Pipeline) -> BatchFrontEnd | None:
    """The server's batch front end: on the backend's device for ``batch``, and for ``auto`` where
    the backend runs on a GPU; None: every stream computes its own log-mel (numba, CPU)."""
    device = pipeline.backend.device
    if mode == "stream" or (mode == "auto" and not device.startswith("cuda")):
        return None
    from rt_tagger.batch_frontend import BatchFrontEnd

    return BatchFrontEnd(pipeline.spec, device)


def bind_ingest(settings: ServeSettings, context: zmq.Context | None = None) -> zmq.Socket:
    """The server's ROUTER socket, bound (done first, so a busy port fails before the model loads)."""
    ep = parse_endpoint(settings.ingest)
    if not ep.is_local and not settings.allow_remote_ingest:
        raise SettingsError(
            f"refusing to accept ingest on {ep.url} beyond loopback without serve.allow_remote_ingest"
        )
    sock = (context or zmq.Context.instance()).socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, settings.rcvhwm)
    try:
        sock.bind(ep.url)
    except zmq.ZMQError as e:
        sock.close()
        reason = "address already in use" if e.errno == errno.EADDRINUSE else e.strerror.split(" (")[0]
        raise SettingsError(f"cannot listen for ingest on {ep.url}: {reason}") from None
    return sock


class Server:
    """Streams in over ingest, tags out over the publisher.

    Args:
        pipeline: A warmed :class:`Pipeline` (bundle, backend, front-end constants, settings).
        publisher: Where every stream's messages and the stats go.
        settings: The ``[serve]`` settings.
        ingest_socket: The bound ROUTER socket (default: :func:`bind_ingest` of the settings).
        context: ZeroMQ context for the ingest socket (default: the global one).
        name: Named in the stats messages (a shard's name under ``serve --ray``).
    """

    def __init__(
        self,
        pipeline: Pipeline,
        publisher: Publisher,
        settings: ServeSettings,
        *,
        ingest_socket: zmq.Socket | None = None,
        context: zmq.Context | None = None,
        name: str = "serve",
    ) -> None:
        self.name = name
        self.pipeline = pipeline
        self.publisher = publisher
        self.settings = settings
        self.streams: dict[str, tuple[StreamState, IngestInput]] = {}
        self.groups: dict[str, tuple[StreamGroup, IngestInput]] = {}  # protocol 1.2 stream groups
        self._group_streams: set[str] = set()  # the stream ids of all open groups
        self._warm_groups: set[tuple[int, int]] = set()  # (size, hop) of groups run once on silence
        self._due_groups: set[str] = set()
        self.stats = ServeStats()
        self._due: set[str] = set()  # streams holding due windows
        self._due_since: float | None = None
        self._due_count = 0
        self._batch_max = min(settings.max_batch or 1 << 30, pipeline.backend.batch_range[1])
        self.frontend = _batch_frontend(settings.frontend, pipeline)
        self._group_frontend: BatchFrontEnd | None = self.frontend
        self._warm_batches()
        self.sock = ingest_socket if ingest_socket is not None else bind_ingest(settings, context)
        self.ingest_endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._started = time.monotonic()
        self._last_stats = self._last_idle_scan = self._last_freeze = self._started
        self._opened_at_freeze = 0
        # staggered, so that the processes of `serve --processes` do not all pause at once
        self._next_full_gc = self._started + self.settings.full_gc_interval_s * random.uniform(0.5, 1.5)
        self._gc = _GcPauses()
        log.info("serving: ingest on %s, tags on %s", self.ingest_endpoint, publisher.endpoint)

    def _warm_batches(self) -> None:
        """On a GPU, run every power-of-two batch once now: each captures its CUDA graph (tens of
        ms) at start-up instead of in the middle of serving."""
        backend = self.pipeline.backend
        if not backend.device.startswith("cuda"):
            return
        sizes = [1 << k for k in range(self._batch_max.bit_length()) if 1 << k <= self._batch_max]
        for b in sorted({*sizes, self._batch_max}):
            backend.infer(np.zeros((b, *backend.input_shape), np.float32))

    # ------------------------------------------------------------------ the loop
    def run(self, stop: threading.Event) -> str:
        """Serve until ``stop`` is set; every open stream then gets its ``end``. Returns the stop reason."""
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        self._gc.install()
        gc.freeze()  # see _housekeeping
        thresholds = gc.get_threshold()
        if self.settings.full_gc_interval_s:  # full collections only on _housekeeping's schedule
            gc.set_threshold(thresholds[0], thresholds[1], 2**31 - 1)
        try:
            while not stop.is_set():
                if poller.poll(self._poll_ms()):
                    self._read()
                if self._batch_due():
                    self._score()
                self._housekeeping()
        finally:
            reason = getattr(stop, "reason", "stopped")
            now = time.monotonic()
            for stream_id in list(self.streams):  # one last batch for what every stream still holds
                self._push(stream_id, now)
            if self._due:
                self._score()
            for stream_id in list(self.streams):
                self._end(stream_id, reason)
            for group_id in list(self.groups):
                self._end_group(group_id, reason)
            self._publish_stats()
            self._gc.remove()
            gc.set_threshold(*thresholds)
            self.sock.close()
        return reason

    def _poll_ms(self) -> int:
        if self._due_since is None:
            return 50
        wait = self._due_since + self.settings.max_batch_delay_ms / 1e3 - time.monotonic()
        return max(0, int(wait * 1e3))

    def _read(self) -> None:
        for _ in range(_MAX_MESSAGES_PER_ROUND):
            try:
                identity, *parts = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            # payloads as views of the received frames: a group's PCM is not copied until it is
            # joined for its window's upload (at 100 000 streams that is gigabytes a second)
            identity = identity.bytes
            frames = [parts[0].bytes, *(f.buffer for f in parts[1:])] if parts else []
            try:
                header, payloads = parse_client_message(frames)
                if isinstance(header, AudioHeader):
                    self._audio(identity, header, payloads)
                elif isinstance(header, OpenHeader):
                    self._open(identity, header)
                elif isinstance(header, CloseHeader):
                    self._close(identity, header.stream_id)
                elif isinstance(header, GroupAudioHeader):
                    self._group_audio(identity, header, payloads[0])
                elif isinstance(header, OpenGroupHeader):
                    self._open_group(identity, header)
                elif isinstance(header, CloseGroupHeader):
                    self._close_group(identity, header.group_id)
            except ProtocolError as e:
                self.stats.protocol_errors += 1
                self._reply(identity, Reply(type="error", reason=str(e)))
            if self._batch_due():  # full, or the oldest due window waited long enough: score first
                return

    # ------------------------------------------------------------------ requests
    def _open(self, identity: bytes, h: OpenHeader) -> None:
        def refuse(reason: str) -> None:
            self.stats.refused += 1
            self._reply(identity, Reply(type="refused", stream_id=h.stream_id, reason=reason))

        if h.stream_id in self.streams or h.stream_id in self._group_streams:
            return refuse(f"stream id {h.stream_id!r} is already open")
        if self.open_streams >= self.settings.max_streams:
            return refuse(f"at capacity: {self.open_streams} of {self.settings.max_streams} streams open")
        try:
            hop_frames = self._hop_frames(h.options)
        except SettingsError as e:
            return refuse(str(e))
        state = self.pipeline.open_stream(
            None, h.sample_rate, h.channels, stream_id=h.stream_id, hop_frames=hop_frames,
            full_scores=h.options.full_scores, batch_frontend=self.frontend,
        )  # fmt: skip
        inp = IngestInput(identity, h, buffer_s=self.settings.buffer_s)
        state.source = inp
        self.streams[h.stream_id] = (state, inp)
        self.stats.opened += 1
        hop_s = state.hop_frames * self.pipeline.spec.hop_length / self.pipeline.spec.sample_rate
        self._reply(
            identity,
            Reply(type="opened", stream_id=h.stream_id, hop_s=hop_s, buffer_s=self.settings.buffer_s,
                  topic=f"tags.{h.stream_id}"),
        )  # fmt: skip

    def _hop_frames(self, options) -> int:
        """A stream's hop in front-end frames: its ``hop_s`` option, else the server's."""
        if options.hop_s:
            return resolve_hop_frames(options.hop_s, self.pipeline.bundle)
        return self.pipeline.hop_frames

    @property
    def open_streams(self) -> int:
        return len(self.streams) + len(self._group_streams)

    def _open_group(self, identity: bytes, h: OpenGroupHeader) -> None:
        def refuse(reason: str) -> None:
            self.stats.refused += 1
            self._reply(identity, Reply(type="refused", stream_id=h.group_id, reason=reason))

        if h.group_id in self.groups:
            return refuse(f"group id {h.group_id!r} is already open")
        ids = h.stream_ids
        if len(set(ids)) != len(ids):
            return refuse("the group names a stream id twice")
        taken = next((s for s in ids if s in self.streams or s in self._group_streams), None)
        if taken is not None:
            return refuse(f"stream id {taken!r} is already open")
        if self.open_streams + len(ids) > self.settings.max_streams:
            return refuse(
                f"at capacity: {self.open_streams} of {self.settings.max_streams} streams open, "
                f"the group has {len(ids)}"
            )
        rate = self.pipeline.spec.sample_rate
        if h.sample_rate != rate:
            return refuse(f"a group's audio must be at the model's rate, {rate} Hz (got {h.sample_rate})")
        try:
            hop_frames = self._hop_frames(h.options)
        except SettingsError as e:
            return refuse(str(e))
        if self._group_frontend is None:  # a CPU server: the groups' log-mel in torch on the CPU
            self._group_frontend = BatchFrontEnd(self.pipeline.spec, self.pipeline.backend.device)
        inp = IngestInput(identity, h, buffer_s=self.settings.buffer_s)  # type: ignore[arg-type]
        group = StreamGroup(h.group_id, ids, self.pipeline, self._group_frontend, hop_frames, inp)
        if (
            group.size,
            hop_frames,
        ) not in self._warm_groups:  # first calls of these shapes: now, not at a window
            group.warm_up(self.pipeline.backend, self._batch_max)
            self._warm_groups.add((group.size, hop_frames))
        self.groups[h.group_id] = (group, inp)
        self._group_streams.update(ids)
        self.stats.opened += len(ids)
        self._reply(
            identity,
            Reply(type="opened", stream_id=h.group_id, hop_s=group.hop_s, buffer_s=self.settings.buffer_s,
                  topic="tags.<stream_id>"),
        )  # fmt: skip

    def _group_audio(self, identity: bytes, h: GroupAudioHeader, payload: bytes) -> None:
        entry = self.groups.get(h.group_id)
        if entry is None:
            raise ProtocolError(f"audio for group {h.group_id!r}, which is not open")
        group, inp = entry
        if inp.identity != identity:
            raise ProtocolError(f"group {h.group_id!r} belongs to another client")
        if len(payload) != 2 * group.size * h.frames:
            raise ProtocolError(
                f"group chunk payload has {len(payload)} bytes, expected {group.size} streams × "
                f"{h.frames} frames × 2 B"
            )
        now = time.monotonic()
        arrival = time.time()
        if not inp.accept(h.seq, h.frames, now):
            return
        pcm = np.frombuffer(payload, "<i2").reshape(group.size, h.frames)
        capture = h.capture_wall_time if h.capture_wall_time is not None else arrival
        due = group.push(pcm, capture, arrival)
        if due:
            self._due_groups.add(h.group_id)
            self._due_count += due * group.size
            if self._due_since is None:
                self._due_since = now

    def _close_group(self, identity: bytes, group_id: str) -> None:
        entry = self.groups.get(group_id)
        if entry is None or entry[1].identity != identity:
            raise ProtocolError(f"close for group {group_id!r}, which is not open on this client")
        if entry[0].pad_short_stream():
            self._due_groups.add(group_id)
        self._end_group(group_id, "closed")

    def _end_group(self, group_id: str, reason: str) -> None:
        """Tag what the group still holds, then every stream's ``end``."""
        group, inp = self.groups[group_id]
        if group.pending_windows:
            self._score_group(group_id)
        self._due_groups.discard(group_id)
        del self.groups[group_id]
        self._group_streams.difference_update(group.ids)
        ends = group.end(reason)
        for msg in ends:
            self.publisher.publish(msg)
        self.publisher.publish_group_end(group.group_route(self.publisher), ends)
        self.stats.closed[reason] += group.size
        self.stats.ended_dropped_samples += inp.dropped_frames * group.size
        self.stats.ended_lost_chunks += inp.lost_chunks * group.size
        self._reply(inp.identity, Reply(type="closed", stream_id=group_id, reason=reason))

    def _score_group(self, group_id: str) -> None:
        group, _ = self.groups[group_id]
        backend = self.pipeline.backend
        t, device0 = time.perf_counter(), backend.device_time_total
        queue_ms = (time.monotonic() - self._due_since) * 1e3 if self._due_since is not None else 0.0
        inferred = group.score(backend, self.publisher, self._batch_max)
        batch_ms = (time.perf_counter() - t) * 1e3
        device_ms = (backend.device_time_total - device0) * 1e3 if backend.device != "cpu" else None
        if inferred:
            self.stats.record_batch(inferred, queue_ms, batch_ms, device_ms)

    def _audio(self, identity: bytes, h: AudioHeader, payloads: list[bytes]) -> None:
        now = time.monotonic()
        arrival = time.time()
        for chunk, payload in zip(h.chunks, payloads, strict=True):
            stream_id, frames = chunk["stream_id"], chunk["frames"]
            entry = self.streams.get(stream_id)
            if entry is None:
                raise ProtocolError(f"audio for stream {stream_id!r}, which is not open")
            state, inp = entry
            if inp.identity != identity:
                raise ProtocolError(f"stream {stream_id!r} belongs to another client")
            pcm = decode_pcm(payload, inp.header.format, inp.header.channels, frames)
            if not inp.accept(chunk["seq"], frames, now):
                continue
            capture = chunk.get("capture_wall_time")
            inp.hold(pcm, capture if capture is not None else arrival, arrival)
            if inp.pending_frames >= state.step_frames():
                self._push(stream_id, now)

    def _push(self, stream_id: str, now: float) -> None:
        """The stream's held chunks into its front end; its due windows join the next batch."""
        state, inp = self.streams[stream_id]
        if not inp.pending_frames:
            return
        try:
            due = state.push(inp.take(), *inp.pending_times)
        except AudioInputError as e:  # NaN/Inf with nonfinite=reject: this stream ends, no other
            self._end(stream_id, "error", str(e))
            return
        if due:
            self._due.add(stream_id)
            self._due_count += due
            if self._due_since is None:
                self._due_since = now

    def _close(self, identity: bytes, stream_id: str) -> None:
        entry = self.streams.get(stream_id)
        if entry is None or entry[1].identity != identity:
            raise ProtocolError(f"close for stream {stream_id!r}, which is not open on this client")
        self._finish(stream_id, "closed")

    def _finish(self, stream_id: str, reason: str) -> None:
        """Tag what the stream still holds (a stream shorter than a window gets one), then end it."""
        self._push(stream_id, time.monotonic())
        if stream_id not in self.streams:  # the held audio ended it (error)
            return
        state, _ = self.streams[stream_id]
        if reason == "closed" and state.pad_short_stream():
            self._due.add(stream_id)
        if stream_id in self._due:
            self._score()
        self._end(stream_id, reason)

    # ------------------------------------------------------------------ batching
    def _batch_full(self) -> bool:
        return self._due_count >= self._batch_max

    def _batch_due(self) -> bool:
        if self._due_since is None:
            return False
        if self._due_groups:  # a group's window is a batch already: waiting would add only latency
            return True
        waited = time.monotonic() - self._due_since
        return self._batch_full() or waited * 1e3 >= self.settings.max_batch_delay_ms

    def _score(self) -> None:
        """One round: every due window of every stream, in backend batches, then publish."""
        queue_ms = (time.monotonic() - self._due_since) * 1e3 if self._due_since is not None else 0.0
        streams = [self.streams[s][0] for s in self._due if s in self.streams]
        self._due.clear()
        for group_id in [g for g in self._due_groups if g in self.groups]:
            self._score_group(group_id)
        self._due_groups.clear()
        self._due_since, self._due_count = None, 0
        backend = self.pipeline.backend
        t, device0 = time.perf_counter(), backend.device_time_total
        done = run_due(streams, backend, self.frontend)
        batch_ms = (time.perf_counter() - t) * 1e3
        device_ms = (backend.device_time_total - device0) * 1e3 if backend.device != "cpu" else None
        live = sum(1 for _, w, _ in done if not w.silent)
        if live:
            self.stats.record_batch(live, queue_ms, batch_ms, device_ms)
        for _, _, msg in done:
            self.publisher.publish(msg)

    # ------------------------------------------------------------------ housekeeping
    def _housekeeping(self) -> None:
        now = time.monotonic()
        idle = self.settings.idle_timeout_s
        # Every stream is looked at a few times per idle timeout, not on every pass of the loop
        # (one pass per ingest read: with thousands of streams the scan would dominate it).
        if now - self._last_idle_scan >= min(0.5, idle / 4):
            self._last_idle_scan = now
            for stream_id, (_, inp) in list(self.streams.items()):
                if now - inp.last_audio > idle:
                    self._finish(stream_id, "idle")
            for group_id, (_, inp) in list(self.groups.items()):
                if now - inp.last_audio > idle:
                    self._end_group(group_id, "idle")
        # A full garbage collection scans every long-lived object: with a model, its libraries and
        # 1000 streams about 280 000 objects and 120 ms here, longer than the batching budget, at
        # moments set by allocation counts. Objects that exist once streams are open (modules,
        # model, stream states) are frozen out of the collector's scans; cyclic garbage among them
        # is not collected while frozen, everything else is freed by reference counting as usual.
        if self.stats.opened != self._opened_at_freeze and now - self._last_freeze >= 1.0:
            gc.freeze()
            self._opened_at_freeze, self._last_freeze = self.stats.opened, now
        # Python starts a full collection when enough objects outlived two younger ones; under load
        # (100 000 streams, one H200) that was every ~15 s per process, 15-43 ms each. Run them here
        # instead, rarely; the young generations are collected as usual.
        if self.settings.full_gc_interval_s and now >= self._next_full_gc:
            gc.collect()
            self._next_full_gc = now + self.settings.full_gc_interval_s
        if now - self._last_stats >= self.settings.stats_interval_s:
            self._publish_stats()

    def _end(self, stream_id: str, reason: str, error: str | None = None) -> None:
        state, inp = self.streams.pop(stream_id)
        self._due.discard(stream_id)
        if state.batch_slot is not None:
            self.frontend.close(state.batch_slot)
        self.publisher.publish(state.end(reason, error))
        self.stats.closed[reason] += 1
        self.stats.ended_dropped_samples += inp.dropped_frames
        self.stats.ended_lost_chunks += inp.lost_chunks
        self._reply(inp.identity, Reply(type="closed", stream_id=stream_id, reason=error or reason))

    def stats_document(self) -> dict:
        now = time.monotonic()
        span = max(1e-9, now - self._last_stats)
        doc = {
            "schema_version": "1.0",
            "kind": "stats",
            "server": self.name,
            "wall_time": time.time(),
            "uptime_s": round(now - self._started, 3),
            "streams_open": self.open_streams,
            "groups_open": len(self.groups),
            "streams_opened": self.stats.opened,
            "streams_refused": self.stats.refused,
            "streams_closed": dict(self.stats.closed),
            "protocol_errors": self.stats.protocol_errors,
            "batches": self.stats.batches,
            "windows": self.stats.windows,
            "batches_per_s": round((self.stats.batches - self.stats.batches_at_last_report) / span, 3),
            "batch_size_histogram": {str(k): v for k, v in sorted(self.stats.batch_sizes.items())},
            "queue_delay_ms": _pcts(self.stats.queue_delay_ms),
            "batch_ms": _pcts(self.stats.batch_ms),
            "device_ms": _pcts(self.stats.device_ms),
            "gc": {
                "full_collections": self._gc.full,
                "pause_ms": {
                    **_pcts(self._gc.pause_ms),
                    "max": round(max(self._gc.pause_ms, default=0.0), 3),
                },
            },
            "drops": {
                "ingest_dropped_samples": self.stats.ended_dropped_samples
                + sum(inp.dropped_frames for _, inp in self.streams.values())
                + sum(inp.dropped_frames * g.size for g, inp in self.groups.values()),
                "ingest_lost_chunks": self.stats.ended_lost_chunks
                + sum(inp.lost_chunks for _, inp in self.streams.values())
                + sum(inp.lost_chunks * g.size for g, inp in self.groups.values()),
                "publisher_dropped": self.publisher.dropped,
            },
            "publisher_encoded": self.publisher.encoded,
            "backend": self.pipeline.backend_info.model_dump(),
            "frontend": "batch" if self.frontend is not None else "stream",
        }
        if self.frontend is not None:
            doc["frontend_frames"] = self.frontend.frames_flushed
        return doc

    def _publish_stats(self) -> None:
        self.publisher.publish_raw(STATS_TOPIC, json.dumps(self.stats_document()).encode())
        self.stats.batches_at_last_report = self.stats.batches
        self._last_stats = time.monotonic()

    def _reply(self, identity: bytes, reply: Reply) -> None:
        try:
            self.sock.send_multipart([identity, *encode_message(reply)], zmq.NOBLOCK)
        except zmq.ZMQError:  # the client is gone or not reading: replies are advisory
            pass
