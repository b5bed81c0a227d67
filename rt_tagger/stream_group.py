"""Many streams in lockstep: one group's framing, tagging and messages as arrays.

A gateway in front of many same-format sources opens a *group* (ingest protocol 1.2,
:class:`~rt_tagger.ingest.OpenGroupHeader`) and sends one chunk of every stream in one payload.
All streams of a group then have the same clock: their windows fall due together, so instead of
one :class:`~rt_tagger.stream_state.StreamState` per stream (Python work per chunk and per window)
the group keeps its PCM as the ``(streams, frames)`` chunks it received (views of the payloads,
not copied) and, at each window:

- turns the new samples of every stream into log-mel with one upload and one FFT
  (:meth:`~rt_tagger.batch_frontend.BatchFrontEnd.add_block`, the same float64 math as every
  front end), and gathers the windows from the ring into the model's input;
- runs the backend on the streams that are not silent, in batches of its largest batch;
- updates every stream's aggregator row at once (:class:`~rt_tagger.aggregator.RowAggregator`,
  the rules of :class:`~rt_tagger.aggregator.Aggregator`);
- encodes every stream's message from the arrays (:func:`~rt_tagger.compact.encode_rows`) and
  publishes it on the stream's own topics and, for subscribers of the whole group, as one group
  frame on ``tagg.<group_id>`` (:meth:`~rt_tagger.publisher.Publisher.publish_rows`).

Semantics are a single stream's: windows end at the same samples (``window_frames``, then every
``hop_frames``), a window whose hop RMS is below ``silence_rms`` is a ``silent`` heartbeat, each
stream has its own ``seq``, events, ``end`` message and counters (input drops and gaps are the
group's, so every stream of it reports them). Tested against ``rt-tagger stream`` on the same
audio. What a group does not do: resample, downmix, or take float PCM (the gateway sends model-rate
mono s16le), and per-stream options (all streams share the group's).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from rt_tagger.aggregator import RowAggregator
from rt_tagger.compact import _KIND, _STATE, HB_REASONS, RowMessages, Vocabulary, encode_rows
from rt_tagger.messages import DropCounters, EndInfo, TagEvent, TagMessage

__all__ = ["GroupWindow", "StreamGroup"]

_SCALE = 1.0 / 32768.0  # s16le to float, as rt_tagger.ingest.decode_pcm scales it
_HB_SILENT = HB_REASONS.index("silent")


@dataclass
class GroupWindow:
    """A window of every stream of a group whose last sample has arrived."""

    frame_end: int  # front-end frames up to the window's end
    capture_wall: float | None
    arrival_wall: float | None


class StreamGroup:
    """The state of a group of streams served in lockstep.

    Args:
        group_id: The group's id (its messages' group topic, ``tagg.<group_id>``).
        stream_ids: The group's streams, in payload order.
        pipeline: The server's pipeline (bundle, backend, settings).
        frontend: The batch front end the group's log-mel rings live in.
        hop_frames: Front-end frames between windows.
        source: The group's input counters (an :class:`~rt_tagger.serve.IngestInput`).
    """

    def __init__(
        self, group_id: str, stream_ids: list[str], pipeline, frontend, hop_frames: int, source
    ) -> None:
        self.group_id = group_id
        self.ids = list(stream_ids)
        self.size = len(self.ids)
        self.spec = pipeline.spec
        self.frontend = frontend
        self.hop_frames = int(hop_frames)
        self.source = source
        self.options = pipeline.message_options(self.ids[0], self.hop_frames)
        bundle = pipeline.bundle
        self.aggregator = RowAggregator(
            bundle.tags, bundle.manifest.thresholds, rows=self.size, **pipeline.aggregator_options()
        )
        self.vocab = Vocabulary.build(bundle.tags, self.options.model, self.options.backend)
        self.slots = np.array([frontend.open() for _ in self.ids], np.int64)
        self._rows = np.arange(self.size)
        # PCM not yet turned into frames, as the chunks came (views of the received payloads, so
        # nothing is copied until a window's samples are joined for the upload): stream sample
        # `_buf_start` is column 0 of the first chunk
        self._chunks: list[np.ndarray] = []
        self._buf_len = 0
        self._buf_start = 0
        self.samples_total = 0
        self._frames_done = 0
        self._next_window = self.spec.window_frames
        self._hop_start = 0  # first sample of the current hop's silence check
        self._energy_from = 0  # first sample whose energy is not in `_energy` yet
        self._energy = np.zeros(self.size, np.float64)  # sum of squares since `_hop_start`, per stream
        self._due: list[GroupWindow] = []
        self._real_until: int | None = None  # where silence padding starts (a short stream's end)
        self.seq = 0
        self.windows = 0
        self.heartbeats = np.zeros(self.size, np.int64)
        self._last_end_s: float | None = None
        self.routes = None  # the publisher's routes, set at the first publish
        self._group_route = None

    # ------------------------------------------------------------------ audio in
    def push(self, pcm: np.ndarray, capture_wall: float | None, arrival_wall: float | None) -> int:
        """Append ``(streams, frames)`` int16 PCM; returns how many windows became due."""
        n = pcm.shape[1]
        self._chunks.append(pcm)
        self._buf_len += n
        self.samples_total += n
        before = len(self._due)
        while self.samples_total >= self._due_sample(self._next_window):
            self._due.append(GroupWindow(self._next_window, capture_wall, arrival_wall))
            self._next_window += self.hop_frames
        ahead = self._frames_done + self.hop_frames
        if not self._due and ahead < self._next_window and self.samples_total >= self._due_sample(ahead):
            # before the first window: a hop's front end as its audio comes, rather than a whole
            # window's at once (at a server's start every group's first window falls in one hop)
            self._frame_until(ahead)
        return len(self._due) - before

    def _frame_until(self, frame_end: int) -> None:
        """Log-mel of the frames up to ``frame_end`` (and their samples' energy for the silence check)."""
        hop = self.spec.hop_length
        first = self._frames_done * hop - self._buf_start
        b = self._due_sample(frame_end) - self._buf_start
        _, energy = self.frontend.add_block(
            self.slots, self._frames_done, self._samples(first, b), scale=_SCALE,
            energy_from=self._energy_from - self._buf_start - first,
        )  # fmt: skip
        self._energy += energy
        self._energy_from = b + self._buf_start
        self._frames_done = frame_end
        self._drop(frame_end * hop - self._buf_start)  # keep from the next frame's first sample

    def _samples(self, a: int, b: int) -> np.ndarray:
        """Columns ``a:b`` of the pending PCM as one contiguous ``(streams, b - a)`` array."""
        parts, at = [], 0
        for c in self._chunks:
            lo, hi = max(a - at, 0), min(b - at, c.shape[1])
            if lo < hi:
                parts.append(c[:, lo:hi])
            at += c.shape[1]
            if at >= b:
                break
        return parts[0] if len(parts) == 1 and parts[0].flags.c_contiguous else np.concatenate(parts, axis=1)

    def _drop(self, n: int) -> None:
        """Forget the first ``n`` columns of the pending PCM."""
        self._buf_len -= n
        self._buf_start += n
        while n and n >= self._chunks[0].shape[1]:
            n -= self._chunks.pop(0).shape[1]
        if n:
            self._chunks[0] = self._chunks[0][:, n:]

    def warm_up(self, backend, batch_max: int | None = None) -> None:
        """Run this group's shapes once on silence before its audio: the first window's front end
        (a whole window of samples), a hop's, the backend at the group's batch size and the compiled
        frame writer. First calls build FFT plans, allocate and compile; at a server's start every
        group's first window comes within one hop, so each would be late by that and the rest queue
        behind (measured on the 2-core CPU: ≈ 1 s of backlog at 300 streams)."""
        from rt_tagger.row_bytes import warm_up as warm_rows

        spec = self.spec
        fe = self.frontend
        first = self._due_sample(spec.window_frames)
        for frame0, n in ((0, first), (spec.window_frames, self.hop_frames * spec.hop_length + spec.n_fft)):
            fe.add_block(self.slots, frame0, np.zeros((self.size, n), np.int16), scale=_SCALE)
        rows = self.slots[: min(self.size, batch_max or backend.batch_range[1])]
        backend.infer(fe.windows(rows, np.full(len(rows), spec.window_frames, np.int64)))
        fe.reset(self.slots.tolist())
        warm_rows()

    def pad_short_stream(self) -> bool:
        """Streams that ended before their first window get one, padded with silence (as
        :meth:`~rt_tagger.stream_state.StreamState.pad_short_stream`); returns whether one is due."""
        if self.seq or self._due or not self.samples_total:
            return False
        missing = self._due_sample(self._next_window) - self.samples_total
        self._real_until = self.samples_total
        self.push(np.zeros((self.size, missing), np.int16), None, None)
        self.samples_total -= missing  # padding is not stream time
        return True

    def _due_sample(self, frame_end: int) -> int:
        """Samples a stream must have for the window ending at ``frame_end`` (its last frame's end)."""
        return (frame_end - 1) * self.spec.hop_length + self.spec.n_fft

    @property
    def pending_windows(self) -> int:
        return len(self._due)

    # ------------------------------------------------------------------ windows out
    def score(self, backend, publisher, batch_max: int | None = None) -> int:
        """Tag every due window of every stream (backend batches of at most ``batch_max``) and
        publish the messages; returns the windows inferred."""
        due, self._due = self._due, []
        return sum(
            self._score_window(w, backend, publisher, batch_max or backend.batch_range[1]) for w in due
        )

    def _score_window(self, w: GroupWindow, backend, publisher, batch_max: int) -> int:
        spec = self.spec
        end = self._due_sample(w.frame_end)
        t = time.perf_counter()
        # the hop's energy (the silence check, as StreamState does it) comes with the front end
        self._frame_until(w.frame_end)
        framing_ms = (time.perf_counter() - t) * 1e3
        real = (
            end - self._hop_start if self._real_until is None else max(0, self._real_until - self._hop_start)
        )
        rms = np.sqrt(self._energy / max(1, real))
        self._energy = np.zeros(self.size, np.float64)
        self._hop_start = end
        live = np.flatnonzero(rms >= self.options.silence_rms)

        n_tags = len(self.aggregator.tags)
        probs = np.zeros((len(live), n_tags), np.float32)
        emb = None
        t = time.perf_counter()
        for i in range(0, len(live), batch_max):
            rows = live[i : i + batch_max]
            mel = self.frontend.windows(self.slots[rows], np.full(len(rows), w.frame_end, np.int64))
            out = backend.infer(mel)
            probs[i : i + len(rows)] = out.probabilities
            if self.options.embedding and out.embeddings is not None:
                if emb is None:
                    emb = np.zeros((self.size, out.embeddings.shape[1]), np.float32)
                emb[rows] = out.embeddings
        inference_ms = (time.perf_counter() - t) * 1e3 if len(live) else None

        t = time.perf_counter()
        start_sample = end - spec.window_samples
        end_s = end / spec.sample_rate
        upd = self.aggregator.update(None if len(live) == self.size else live, probs, end_s)
        k = self.size
        scores = np.zeros((k, n_tags), np.float32)
        scores[live] = upd.scores
        top = np.zeros((k, self.aggregator.top_k), np.int64)
        top[live] = upd.top
        turned_on = np.zeros((k, n_tags), bool)
        turned_off = np.zeros((k, n_tags), bool)
        turned_on[live], turned_off[live] = upd.turned_on, upd.turned_off
        kind = np.full(k, _KIND["heartbeat"], np.uint8)
        kind[live] = _KIND["tags"]
        state = np.full(k, _STATE["silence"], np.uint8)
        state[live] = (
            _STATE[None] if upd.music is None else np.where(upd.music, _STATE["music"], _STATE["not_music"])
        )
        hb = np.full(k, _HB_SILENT, np.uint8)
        hb[live] = 0
        silent = np.ones(k, bool)
        silent[live] = False
        self.heartbeats += silent
        aggregation_ms = (time.perf_counter() - t) * 1e3
        c2r = (
            (w.arrival_wall - w.capture_wall) * 1e3
            if w.capture_wall is not None and w.arrival_wall is not None
            else None
        )
        src = self.source.counters()
        msgs = RowMessages(
            seq=np.full(k, self.seq, np.uint64),
            kind=kind,
            state=state,
            heartbeat_reason=hb,
            window=(start_sample, end, start_sample / spec.sample_rate, end_s),
            capture_wall_time=w.capture_wall,
            backlog_s=0.0,
            counters=(
                publisher.dropped,
                0,
                0,
                0,
                0,
                0,
                src["ingest_dropped_samples"],
                src["ingest_lost_chunks"],
            ),  # fmt: skip
            timings=(c2r, framing_ms, inference_ms, aggregation_ms, None),
            scores=scores,
            top=top,
            active=self.aggregator.active & self.aggregator.listed,
            turned_on=turned_on,
            turned_off=turned_off,
            event_time_s=end_s,
            embedding=emb,
        )
        if self.routes is None:
            self.routes = publisher.routes(self.ids)
        publisher.publish_rows(
            self.routes,
            self.vocab,
            lambda names: encode_rows(msgs, self.vocab, names),
            self.seq,
            self.group_route(publisher),
        )
        self.seq += 1
        self.windows += 1
        self._last_end_s = end_s
        return len(live)

    def group_route(self, publisher):
        """The publisher's route of this group's frames (topic ``tagg.<group_id>``)."""
        if self._group_route is None:
            self._group_route = publisher.group_route(self.group_id, self.ids)
        return self._group_route

    # ------------------------------------------------------------------ the end
    def end(self, reason: str, error: str | None = None) -> list[TagMessage]:
        """Every stream's last message: why it ended, its counters and the tags switched off."""
        spec = self.spec
        end_s = (
            self._last_end_s
            if self._last_end_s is not None
            else self._frames_done * spec.hop_length / spec.sample_rate
        )
        on = self.aggregator.close(self._rows)
        src = self.source.counters()
        drops = DropCounters(
            ingest_dropped_samples=src["ingest_dropped_samples"],
            ingest_lost_chunks=src["ingest_lost_chunks"],
        )
        stream_s = self.samples_total / spec.sample_rate
        tags = self.aggregator.tags
        msgs = [
            TagMessage(
                kind="end",
                stream_id=stream_id,
                seq=self.seq,
                events=[TagEvent(tag=tags[j], state="off", time_s=end_s) for j in np.flatnonzero(on[i])],
                drops=drops.model_copy(),
                backend=self.options.backend,
                model=self.options.model,
                backlog_s=0.0,
                end=EndInfo(
                    reason=reason,
                    error=error,
                    stream_s=stream_s,
                    windows=self.windows - int(self.heartbeats[i]),
                    heartbeats=int(self.heartbeats[i]),
                ),
            )
            for i, stream_id in enumerate(self.ids)
        ]
        self.seq += 1
        for slot in self.slots.tolist():
            self.frontend.close(slot)
        return msgs

    @property
    def hop_s(self) -> float:
        return self.hop_frames * self.spec.hop_length / self.spec.sample_rate
