"""The compact binary encoding of a :class:`~rt_tagger.messages.TagMessage` (topic ``tagb.<stream_id>``).

JSON costs tens of microseconds per message in Python; at 100 000 streams and a 0.5-s hop (200 000
messages/s) that is several cores. The compact form is one fixed 132-byte little-endian header
(kind, seq, window, times, state, every drop counter, stage timings, counts) followed by the
scores as float32 in manifest order, top-k / active / events as tag indices, and, in the first
message a subscriber sees of a stream, the tag names. docs/messages.md ("Compact encoding") is the
byte layout; this module is its Python reference (the C example in examples/c_subscriber reads it
too).

Negotiated by topic: the publisher encodes a stream's compact frame only while someone subscribes
to a prefix of ``tagb.<stream_id>\\0``, and its JSON only while someone subscribes to a prefix of
``tags.<stream_id>\\0``.

Tag names travel in a *names section* (the tag names, then model name, weights digest, backend
name, device, precision), identified by ``vocab_id`` (CRC-32 of the section). Every frame carries
``vocab_id``; the section itself is in a stream's first compact frame, and again in each stream's
next frame whenever a new compact subscription arrives, so a late joiner has the names within one
hop of every stream. A frame whose names are not known yet still decodes (names ``#<index>``).

``kind="end"`` messages (one per stream) carry the header and then the whole JSON body (flag
``JSON_TAIL``): they are rare and hold strings (reason, error) that a fixed layout would truncate.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

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

__all__ = [
    "COMPACT_PREFIX",
    "COMPACT_VERSION",
    "CompactDecoder",
    "CompactFrame",
    "HEADER",
    "RowFrames",
    "RowMessages",
    "Vocabulary",
    "compact_topic",
    "decode_frame",
    "encode",
    "encode_rows",
    "group_frame",
    "group_topic",
    "split_group_frame",
]

COMPACT_VERSION = 1
COMPACT_PREFIX = b"tagb."
# A group frame (topic tagg.<group_id>): one ZeroMQ message per window with every stream's compact
# frame, for subscribers that read a whole group (one receive instead of one per stream).
GROUP_PREFIX = b"tagg."
GROUP_MAGIC = b"RTGF"
GROUP_VERSION = 1
# magic, version, reserved, n_rows, bytes of stream ids
GROUP_HEADER = struct.Struct("<4sHHII")
# version, kind, state, heartbeat_reason, flags, n_scores, seq, start_sample, end_sample, start_s,
# end_s, capture_wall_time, publish_wall_time, backlog_s, vocab_id, 8 u32 counters, input_blocked_s,
# 5 f32 timings, n_top, n_active, n_events, reserved.
HEADER = struct.Struct("<4BHHQqqddddfI8If5f3Bx")
assert HEADER.size == 132
# The same header as a numpy record, to encode many streams' frames at once (encode_rows).
HEADER_DTYPE = np.dtype(
    [("version", "u1"), ("kind", "u1"), ("state", "u1"), ("hb", "u1"), ("flags", "<u2"),
     ("n_scores", "<u2"), ("seq", "<u8"), ("start_sample", "<i8"), ("end_sample", "<i8"),
     ("start_s", "<f8"), ("end_s", "<f8"), ("capture", "<f8"), ("publish", "<f8"), ("backlog", "<f4"),
     ("vocab_id", "<u4"), ("counters", "<u4", (8,)), ("blocked", "<f4"), ("timings", "<f4", (5,)),
     ("n_top", "u1"), ("n_active", "u1"), ("n_events", "u1"), ("pad", "u1")]
)  # fmt: skip
assert HEADER_DTYPE.itemsize == HEADER.size
OFF_PUBLISH_WALL_TIME = 56  # f64, patched after encoding (see Publisher.publish)
OFF_TIMING_PUBLISH = 124  # f32

# flags
F_WINDOW = 1
F_CAPTURE = 2
F_BACKLOG = 4
F_NAMES = 8
F_JSON_TAIL = 16
F_EMBEDDING = 32

KINDS = ("tags", "heartbeat", "end")
_KIND = {k: i for i, k in enumerate(KINDS)}
STATES = (None, "music", "not_music", "silence")
_STATE = {s: i for i, s in enumerate(STATES)}
HB_REASONS = (None, "silent", "stalled")
_HB = {r: i for i, r in enumerate(HB_REASONS)}
COUNTERS = (
    "publisher_dropped",
    "ring_overflow_samples",
    "ring_underflow_events",
    "input_status_flags",
    "resampler_dropped_samples",
    "device_reopens",
    "ingest_dropped_samples",
    "ingest_lost_chunks",
)
TIMINGS = ("capture_to_ring", "framing_mel", "inference", "aggregation", "publish")
_U32 = 0xFFFFFFFF
_F4 = np.dtype("<f4")
_NAN = math.nan
_EXTRA_NAMES = 5  # model name, weights digest, backend name, device, precision


def compact_topic(stream_id: str) -> bytes:
    """The compact topic frame of one stream, ``b"tagb.<stream_id>\\0"``."""
    return COMPACT_PREFIX + stream_id.encode() + b"\0"


def group_topic(group_id: str) -> bytes:
    """The topic of a stream group's frames, ``b"tagg.<group_id>\\0"`` (:func:`group_frame`)."""
    return GROUP_PREFIX + group_id.encode() + b"\0"


@dataclass(frozen=True)
class Vocabulary:
    """A stream's tag names (manifest order) plus model and backend: the names section."""

    tags: tuple[str, ...]
    model: ModelInfo
    backend: BackendInfo
    section: bytes  # u16 n_tags, u32 n_bytes, then n_tags + 5 NUL-terminated UTF-8 strings
    vocab_id: int  # CRC-32 of `section`
    index: dict[str, int]

    @classmethod
    def build(cls, tags, model: ModelInfo, backend: BackendInfo) -> Vocabulary:
        tags = tuple(tags)
        if len(tags) > 0xFFFF:
            raise ValueError(f"{len(tags)} tags: the compact encoding holds at most 65535")
        strings = (*tags, model.name, model.weights_sha256, backend.name, backend.device, backend.precision)
        if any("\0" in s for s in strings):
            raise ValueError("a tag, model or backend name contains a NUL byte")
        blob = b"".join(s.encode() + b"\0" for s in strings)
        section = struct.pack("<HI", len(tags), len(blob)) + blob
        return cls(tags, model, backend, section, zlib.crc32(section), {t: i for i, t in enumerate(tags)})

    @classmethod
    def parse(cls, section: bytes) -> Vocabulary:
        n, nbytes = struct.unpack_from("<HI", section)
        strings = [s.decode() for s in section[6 : 6 + nbytes].split(b"\0")[: n + _EXTRA_NAMES]]
        if len(strings) != n + _EXTRA_NAMES:
            raise ValueError("truncated names section")
        tags = tuple(strings[:n])
        model = ModelInfo(name=strings[n], weights_sha256=strings[n + 1])
        backend = BackendInfo(name=strings[n + 2], device=strings[n + 3], precision=strings[n + 4])
        return cls(tags, model, backend, bytes(section[: 6 + nbytes]), zlib.crc32(section[: 6 + nbytes]),
                   {t: i for i, t in enumerate(tags)})  # fmt: skip


@lru_cache(maxsize=256)
def _lists_struct(n_top: int, n_active: int, n_events: int) -> struct.Struct:
    # top: indices then float32 scores; active: indices; events: indices, states (1 on, 0 off), f64 times
    return struct.Struct(f"<{n_top}H{n_top}f{n_active}H{n_events}H{n_events}B{n_events}d")


def _f(x) -> float:
    return _NAN if x is None else x


def encode(msg: TagMessage, vocab: Vocabulary | None, *, names: bool = False) -> bytearray:
    """The compact frame of ``msg`` (a bytearray, so the publisher can patch the publish times).

    Args:
        msg: the message; its scores come from ``msg._score_array`` (the aggregator's float32
            vector, set by the stream state) or else ``msg.scores``.
        vocab: the stream's names; ``None`` (unknown) sends the JSON body as the tail instead.
        names: include the names section.
    """
    flags = 0
    w = msg.window
    if w is not None:
        flags |= F_WINDOW
        ws = (w.start_sample, w.end_sample, w.start_s, w.end_s)
    else:
        ws = (0, 0, _NAN, _NAN)
    cap = msg.capture_wall_time
    if cap is not None:
        flags |= F_CAPTURE
    else:
        cap = _NAN
    backlog = msg.backlog_s
    if backlog is not None:
        flags |= F_BACKLOG
    else:
        backlog = _NAN
    d = msg.drops
    t = msg.timings_ms
    tim = (_NAN,) * 5 if t is None else (
        _f(t.capture_to_ring), _f(t.framing_mel), _f(t.inference), _f(t.aggregation), _f(t.publish)
    )  # fmt: skip
    tail = msg.kind == "end" or vocab is None
    scores = b""
    lists = b""
    n_scores = n_top = n_active = n_events = 0
    if not tail:
        arr = msg.__pydantic_private__.get("_score_array")  # msg._score_array, without pydantic's __getattr__
        if arr is None and msg.scores is not None:
            arr = msg.scores
        if arr is not None:
            if type(arr) is not np.ndarray or arr.dtype != _F4:
                arr = np.asarray(arr, dtype=_F4)
            scores = arr.tobytes()
            n_scores = len(scores) // 4
        idx = vocab.index
        top, active, events = msg.top, msg.active, msg.events
        n_top, n_active, n_events = len(top), len(active), len(events)
        if n_top or n_active or n_events:
            try:
                lists = _lists_struct(n_top, n_active, n_events).pack(
                    *[idx[s.tag] for s in top],
                    *[s.score for s in top],
                    *[idx[a] for a in active],
                    *[idx[e.tag] for e in events],
                    *[e.state == "on" for e in events],
                    *[e.time_s for e in events],
                )
            except KeyError:  # a tag that is not in the names: say everything in the JSON tail
                tail = True
    if tail:
        flags |= F_JSON_TAIL
        scores = lists = b""
        n_scores = n_top = n_active = n_events = 0
    if names and vocab is not None:
        flags |= F_NAMES
    emb = msg.embedding
    if emb is not None and not tail:
        flags |= F_EMBEDDING
    out = bytearray(
        HEADER.pack(
            COMPACT_VERSION, _KIND[msg.kind], _STATE[msg.state], _HB[msg.heartbeat_reason], flags, n_scores,
            msg.seq, *ws, cap, msg.publish_wall_time, backlog, 0 if vocab is None else vocab.vocab_id,
            min(d.publisher_dropped, _U32), min(d.ring_overflow_samples, _U32),
            min(d.ring_underflow_events, _U32), min(d.input_status_flags, _U32),
            min(d.resampler_dropped_samples, _U32), min(d.device_reopens, _U32),
            min(d.ingest_dropped_samples, _U32), min(d.ingest_lost_chunks, _U32), d.input_blocked_s,
            *tim, n_top, n_active, n_events,
        )
    )  # fmt: skip
    out += scores
    out += lists
    if flags & F_NAMES:
        out += vocab.section
    if flags & F_EMBEDDING:
        out += struct.pack("<H", len(emb)) + np.asarray(emb, dtype="<f4").tobytes()
    if tail:
        out += msg.to_bytes()
    return out


@dataclass
class RowMessages:
    """The messages of one window of many streams that share its timing (a stream group): row
    ``i`` is stream ``i``. Rows with ``kind`` heartbeat carry no scores or top (silent windows)."""

    seq: np.ndarray  # (R,) u8
    kind: np.ndarray  # (R,) KINDS index
    state: np.ndarray  # (R,) STATES index
    heartbeat_reason: np.ndarray  # (R,) HB_REASONS index
    window: tuple[int, int, float, float]  # start_sample, end_sample, start_s, end_s
    capture_wall_time: float | None
    backlog_s: float | None
    counters: tuple[int, ...]  # COUNTERS, the same for every row (publisher_dropped first)
    timings: tuple[float | None, ...]  # TIMINGS
    scores: np.ndarray  # (R, n_tags) float32
    top: np.ndarray  # (R, top_k) tag indices
    active: np.ndarray  # (R, n_tags) bool
    turned_on: np.ndarray  # (R, n_tags) bool
    turned_off: np.ndarray  # (R, n_tags) bool
    event_time_s: float
    embedding: np.ndarray | None = None  # (R, dim) float32


class RowFrames:
    """Many compact frames back to back in one byte array: row ``i`` is ``buf[offsets[i]:offsets[i + 1]]``
    (what :func:`encode_rows` builds, and what a group frame's frame area is)."""

    def __init__(self, buf: np.ndarray, offsets: np.ndarray) -> None:
        self.buf = buf  # uint8
        self.offsets = offsets  # int64, rows + 1

    @classmethod
    def join(cls, frames) -> RowFrames:
        lengths = np.fromiter((len(f) for f in frames), np.int64, len(frames))
        offsets = np.zeros(len(frames) + 1, np.int64)
        offsets[1:] = np.cumsum(lengths)
        return cls(np.frombuffer(bytearray().join(frames), np.uint8), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> bytearray:
        """Row ``i``'s frame, a copy the caller may patch (the publish times)."""
        return bytearray(self.buf[self.offsets[i] : self.offsets[i + 1]])

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def _place(out: np.ndarray, starts: np.ndarray, data: np.ndarray) -> None:
    """Write row ``j`` of ``data`` ``(n, width)`` uint8 at ``out[starts[j]:]`` (compiled; imported
    here so that decoding never loads numba)."""
    from rt_tagger.row_bytes import place_rows

    place_rows(out, starts, data)


def encode_rows(m: RowMessages, vocab: Vocabulary, names: np.ndarray) -> RowFrames:
    """The compact frame of every row of ``m`` (what :func:`encode` gives for each message), built
    section by section for all rows at once (Python work per row only for events and names);
    ``names`` ``(R,)`` bool: rows that carry the names."""
    rows = len(m.seq)
    tags_row = m.kind == _KIND["tags"]
    has_top = tags_row & (m.state != _STATE["not_music"])
    n_top = np.where(has_top, m.top.shape[1], 0)
    events = (m.turned_on | m.turned_off) & tags_row[:, None]
    n_events = events.sum(axis=1)
    n_active = m.active.sum(axis=1)
    if max(int(n_active.max(initial=0)), int(n_events.max(initial=0)), int(n_top.max(initial=0))) > 255:
        raise ValueError("more than 255 tags in one list: the compact header counts them in a byte")
    emb = m.embedding is not None
    flags = np.full(rows, F_WINDOW | F_BACKLOG * (m.backlog_s is not None), np.uint16)
    flags |= F_CAPTURE * (m.capture_wall_time is not None)
    flags[names] |= F_NAMES
    if emb:
        flags[tags_row] |= F_EMBEDDING
    n_scores = np.where(tags_row, m.scores.shape[1], 0)
    h = np.zeros(rows, HEADER_DTYPE)
    h["version"] = COMPACT_VERSION
    h["kind"], h["state"], h["hb"], h["flags"] = m.kind, m.state, m.heartbeat_reason, flags
    h["n_scores"] = n_scores
    h["seq"] = m.seq
    h["start_sample"], h["end_sample"], h["start_s"], h["end_s"] = m.window
    h["capture"] = _f(m.capture_wall_time)
    h["publish"] = _NAN
    h["backlog"] = _f(m.backlog_s)
    h["vocab_id"] = vocab.vocab_id
    h["counters"] = [min(c, _U32) for c in m.counters[:8]]
    h["blocked"] = 0.0
    h["timings"] = [_f(t) for t in m.timings]
    h["n_top"], h["n_active"], h["n_events"] = n_top, n_active, n_events
    section = vocab.section
    dim = m.embedding.shape[1] if emb else 0
    # per row: header, scores, top (u2 indices, f32 scores), active (u2), events (u2, u1, f8),
    # names, embedding (u2 dim, f32 values): the order decode_frame reads
    lengths = (HEADER.size + 4 * n_scores + 6 * n_top + 2 * n_active + 11 * n_events
               + len(section) * names + (2 + 4 * dim) * (tags_row & emb))  # fmt: skip
    offsets = np.zeros(rows + 1, np.int64)
    offsets[1:] = np.cumsum(lengths)
    out = np.zeros(int(offsets[-1]), np.uint8)
    pos = offsets[:-1].copy()
    _place(out, pos, h.view(np.uint8).reshape(rows, HEADER.size))
    pos += HEADER.size
    tr = np.flatnonzero(tags_row)
    _place(out, pos[tr], np.ascontiguousarray(m.scores[tr], _F4).view(np.uint8))
    pos += 4 * n_scores
    ht = np.flatnonzero(n_top)
    if len(ht):
        top = m.top[ht]
        idx_b = np.ascontiguousarray(top, "<u2").view(np.uint8)
        top_b = np.ascontiguousarray(np.take_along_axis(m.scores[ht], top, axis=1), _F4).view(np.uint8)
        _place(out, pos[ht], np.concatenate([idx_b, top_b], axis=1))
    pos += 6 * n_top
    act_rows, act_tags = np.nonzero(m.active)
    if len(act_rows):  # the k-th active tag of a row at its active section + 2k
        rank = np.arange(len(act_rows)) - (np.cumsum(n_active) - n_active)[act_rows]
        _place(out, pos[act_rows] + 2 * rank, act_tags.astype("<u2").view(np.uint8).reshape(-1, 2))
    pos += 2 * n_active
    for i in np.flatnonzero(n_events):
        on, off = np.flatnonzero(m.turned_on[i]), np.flatnonzero(m.turned_off[i])
        k = len(on) + len(off)
        b = struct.pack(f"<{k}H{k}B{k}d", *on.tolist(), *off.tolist(), *([1] * len(on) + [0] * len(off)),
                        *([m.event_time_s] * k))  # fmt: skip
        out[pos[i] : pos[i] + len(b)] = np.frombuffer(b, np.uint8)
    pos += 11 * n_events
    for i in np.flatnonzero(names):
        out[pos[i] : pos[i] + len(section)] = np.frombuffer(section, np.uint8)
    pos += len(section) * names
    if emb and len(tr):
        head = np.frombuffer(struct.pack("<H", dim), np.uint8)
        emb_b = np.ascontiguousarray(m.embedding[tr], _F4).view(np.uint8)
        _place(out, pos[tr], np.concatenate([np.broadcast_to(head, (len(tr), 2)), emb_b], axis=1))
    return RowFrames(out, offsets)


def group_frame(ids_block: bytes, frames, publish_wall_time: float, publish_ms: float) -> bytearray:
    """One window of a stream group as one message body (topic :func:`group_topic`).

    ``ids_block`` is the group's stream ids joined by NUL, in row order; ``frames`` every row's
    compact frame (a :class:`RowFrames` from :func:`encode_rows`, or a list of :func:`encode`
    frames). Each row's ``publish_wall_time`` and ``timings_ms.publish`` are set to the given
    values. Layout (docs/messages.md, "Group frames"): header, the ids, ``rows + 1`` u32 offsets
    into the frame area, the frames back to back.
    """
    if not isinstance(frames, RowFrames):
        frames = RowFrames.join(frames)
    rows = len(frames)
    head = GROUP_HEADER.pack(GROUP_MAGIC, GROUP_VERSION, 0, rows, len(ids_block))
    offsets = frames.offsets.astype("<u4")
    body = bytearray().join([head, ids_block, offsets.tobytes(), frames.buf])
    starts = len(head) + len(ids_block) + offsets.nbytes + frames.offsets[:-1]
    view = np.frombuffer(body, np.uint8)
    _place(
        view,
        starts + OFF_PUBLISH_WALL_TIME,
        np.broadcast_to(np.frombuffer(struct.pack("<d", publish_wall_time), np.uint8), (rows, 8)),
    )
    _place(view, starts + OFF_TIMING_PUBLISH,
           np.broadcast_to(np.frombuffer(struct.pack("<f", publish_ms), np.uint8), (rows, 4)))  # fmt: skip
    return body


def split_group_frame(body: bytes) -> list[tuple[str, memoryview]]:
    """A group frame's rows as ``(stream_id, compact frame)``; ``ValueError`` if it is not one."""
    body = memoryview(body)
    if len(body) < GROUP_HEADER.size:
        raise ValueError(
            f"group frame of {len(body)} bytes, shorter than its {GROUP_HEADER.size}-byte header"
        )
    magic, version, _, rows, ids_len = GROUP_HEADER.unpack_from(body)
    if magic != GROUP_MAGIC or version != GROUP_VERSION:
        raise ValueError(
            f"not a version-{GROUP_VERSION} group frame (magic {bytes(magic)!r}, version {version})"
        )
    pos = GROUP_HEADER.size
    ids = bytes(body[pos : pos + ids_len]).decode().split("\0") if rows else []
    pos += ids_len
    if len(ids) != rows:
        raise ValueError(f"group frame names {len(ids)} streams for {rows} rows")
    offsets = np.frombuffer(body, "<u4", count=rows + 1, offset=pos).astype(np.int64)
    base = pos + 4 * (rows + 1)
    if offsets[0] != 0 or np.any(np.diff(offsets) < 0) or base + offsets[-1] != len(body):
        raise ValueError("group frame offsets do not match its length")
    return [(ids[i], body[base + offsets[i] : base + offsets[i + 1]]) for i in range(rows)]


@dataclass
class CompactFrame:
    """A compact frame taken apart (no names resolved yet)."""

    kind: str
    state: str | None
    heartbeat_reason: str | None
    flags: int
    seq: int
    window: tuple[int, int, float, float] | None
    capture_wall_time: float | None
    publish_wall_time: float
    backlog_s: float | None
    vocab_id: int
    drops: dict
    timings_ms: dict
    scores: np.ndarray  # (n_scores,) float32
    top: list[tuple[int, float]]
    active: list[int]
    events: list[tuple[int, str, float]]
    names: Vocabulary | None  # the names section, when this frame has one
    embedding: np.ndarray | None
    json_tail: bytes | None


def _opt(x: float) -> float | None:
    return None if math.isnan(x) else x


def decode_frame(frame: bytes) -> CompactFrame:
    """Take one compact frame apart; ``ValueError`` if it is not one (version, length)."""
    frame = memoryview(frame)
    if len(frame) < HEADER.size:
        raise ValueError(f"compact frame of {len(frame)} bytes, shorter than its {HEADER.size}-byte header")
    h = HEADER.unpack_from(frame)
    if h[0] != COMPACT_VERSION:
        raise ValueError(f"compact frame version {h[0]}, this decoder reads {COMPACT_VERSION}")
    (_, kind, state, hb, flags, n_scores, seq, s0, s1, t0, t1, cap, pub, backlog, vocab_id) = h[:15]
    counters = h[15:23]
    blocked = h[23]
    timings = h[24:29]
    n_top, n_active, n_events = h[29:32]
    pos = HEADER.size
    scores = np.frombuffer(frame, dtype="<f4", count=n_scores, offset=pos).copy()
    pos += 4 * n_scores
    lst = _lists_struct(n_top, n_active, n_events)
    v = lst.unpack_from(frame, pos)
    pos += lst.size
    a = 2 * n_top
    b = a + n_active
    c = b + n_events
    top = list(zip(v[:n_top], v[n_top:a], strict=True))
    active = list(v[a:b])
    events = [
        (i, "on" if on else "off", ts)
        for i, on, ts in zip(v[b:c], v[c : c + n_events], v[c + n_events :], strict=True)
    ]
    names = None
    if flags & F_NAMES:
        _, nbytes = struct.unpack_from("<HI", frame, pos)
        names = Vocabulary.parse(bytes(frame[pos : pos + 6 + nbytes]))
        pos += 6 + nbytes
    emb = None
    if flags & F_EMBEDDING:
        (dim,) = struct.unpack_from("<H", frame, pos)
        emb = np.frombuffer(frame, dtype="<f4", count=dim, offset=pos + 2).copy()
        pos += 2 + 4 * dim
    tail = bytes(frame[pos:]) if flags & F_JSON_TAIL else None
    if tail is None and pos != len(frame):
        raise ValueError(f"compact frame has {len(frame) - pos} bytes after its last section")
    return CompactFrame(
        kind=KINDS[kind], state=STATES[state], heartbeat_reason=HB_REASONS[hb], flags=flags, seq=seq,
        window=(s0, s1, t0, t1) if flags & F_WINDOW else None,
        capture_wall_time=cap if flags & F_CAPTURE else None, publish_wall_time=pub,
        backlog_s=backlog if flags & F_BACKLOG else None, vocab_id=vocab_id,
        drops={**dict(zip(COUNTERS, counters, strict=True)), "input_blocked_s": blocked},
        timings_ms={k: _opt(x) for k, x in zip(TIMINGS, timings, strict=True)},
        scores=scores, top=top, active=active, events=events, names=names, embedding=emb, json_tail=tail,
    )  # fmt: skip


_UNKNOWN_MODEL = ModelInfo(name="?", weights_sha256="?")
_UNKNOWN_BACKEND = BackendInfo(name="?", device="?", precision="?")


class CompactDecoder:
    """Turns compact frames back into :class:`TagMessage` objects, remembering names sections.

    Until a frame with the names of its ``vocab_id`` has arrived, tags are named ``#<index>`` and
    model / backend are ``"?"`` (:attr:`TagMessage.tags` is then None).
    """

    def __init__(self) -> None:
        self.vocabularies: dict[int, Vocabulary] = {}
        self.unnamed = 0  # frames decoded before their names were known

    def decode_group(self, body: bytes) -> list[TagMessage]:
        """Every stream's message in one group frame (topic ``tagg.<group_id>\\0``), in row order."""
        return [self.decode(compact_topic(stream_id), frame) for stream_id, frame in split_group_frame(body)]

    def decode(self, topic: bytes, frame: bytes) -> TagMessage:
        """The message of one ``[topic, frame]`` pair (topic ``tagb.<stream_id>\\0``)."""
        f = decode_frame(frame)
        if f.json_tail is not None:
            return TagMessage.from_bytes(f.json_tail)
        if f.names is not None:
            self.vocabularies[f.vocab_id] = f.names
        vocab = self.vocabularies.get(f.vocab_id)
        if vocab is None:
            self.unnamed += 1

        def name(i: int) -> str:
            return vocab.tags[i] if vocab is not None and i < len(vocab.tags) else f"#{i}"

        stream_id = bytes(topic).removeprefix(COMPACT_PREFIX).rstrip(b"\0").decode()
        w = f.window
        return TagMessage(
            kind=f.kind,
            stream_id=stream_id,
            seq=f.seq,
            window=None
            if w is None
            else WindowInfo(start_sample=w[0], end_sample=w[1], start_s=w[2], end_s=w[3]),
            capture_wall_time=f.capture_wall_time,
            publish_wall_time=f.publish_wall_time,
            timings_ms=StageTimings(**f.timings_ms),
            top=[TagScore(tag=name(i), score=s) for i, s in f.top],
            scores=f.scores.tolist() if f.scores.size else None,
            tags=list(vocab.tags) if vocab is not None and f.scores.size else None,
            events=[TagEvent(tag=name(i), state=st, time_s=ts) for i, st, ts in f.events],
            active=[name(i) for i in f.active],
            drops=DropCounters(**f.drops),
            backend=vocab.backend if vocab is not None else _UNKNOWN_BACKEND,
            model=vocab.model if vocab is not None else _UNKNOWN_MODEL,
            heartbeat_reason=f.heartbeat_reason,
            backlog_s=f.backlog_s,
            state=f.state,
            embedding=None if f.embedding is None else f.embedding.tolist(),
        )
