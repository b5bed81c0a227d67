"""The compact encoding: byte layout round trip, and negotiation by topic across real processes."""

from __future__ import annotations

import signal
import struct
import time

import numpy as np
import pytest
import zmq

from rt_tagger.compact import (
    F_JSON_TAIL,
    F_NAMES,
    HEADER,
    CompactDecoder,
    Vocabulary,
    compact_topic,
    decode_frame,
    encode,
)
from rt_tagger.messages import EndInfo, StageTimings, TagEvent, TagMessage
from tests.rt_tagger.zmq_helpers import (
    BACKEND,
    MODEL,
    TAGS,
    ipc_endpoint,
    json_lines,
    make_message,
    publisher_process,
    start_subscriber,
)

N_TAGS = 40
VOCAB_TAGS = (TAGS + [f"t{i}" for i in range(len(TAGS), N_TAGS)])[:N_TAGS]


def _message(seq: int = 7) -> TagMessage:
    msg = make_message(seq, "mic", n_scores=N_TAGS)
    msg.events = [
        TagEvent(tag="drums", state="on", time_s=4.5),
        TagEvent(tag="piano", state="off", time_s=4.5),
    ]
    msg.active = ["guitar", "drums"]
    msg.timings_ms = StageTimings(inference=1.25, aggregation=None)
    msg.drops.ring_overflow_samples = 12
    msg.drops.input_blocked_s = 0.5
    msg.backlog_s = 0.02
    msg.state = "music"
    msg.publish_wall_time = 1.7e9
    msg.embedding = [0.5, -1.0, 2.25]
    return msg


def test_round_trip_gives_the_same_fields():
    msg = _message()
    vocab = Vocabulary.build(msg.tags, MODEL, BACKEND)
    frame = bytes(encode(msg, vocab, names=True))
    assert frame[0] == 1 and len(frame) > HEADER.size
    back = CompactDecoder().decode(compact_topic("mic"), frame)
    expect = msg.model_dump()
    got = back.model_dump()
    for key in ("scores", "top", "embedding"):  # float32 on the wire
        e, g = expect.pop(key), got.pop(key)
        if key == "top":
            assert [t["tag"] for t in e] == [t["tag"] for t in g]
            e, g = [t["score"] for t in e], [t["score"] for t in g]
        np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-7)
    expect["timings_ms"] = {
        k: (None if v is None else pytest.approx(v)) for k, v in expect["timings_ms"].items()
    }
    expect["backlog_s"] = pytest.approx(expect["backlog_s"])
    assert got == expect


def test_scores_come_from_the_score_array_when_json_has_none():
    msg = make_message(3, "mic")  # no `scores` in the JSON
    arr = np.linspace(0, 1, len(TAGS), dtype=np.float32)
    msg._score_array = arr
    frame = encode(msg, Vocabulary.build(TAGS, MODEL, BACKEND))
    np.testing.assert_array_equal(decode_frame(bytes(frame)).scores, arr)
    assert "_score_array" not in msg.to_bytes().decode()


def test_names_are_known_only_after_a_frame_that_carries_them():
    msg = _message()
    vocab = Vocabulary.build(msg.tags, MODEL, BACKEND)
    dec = CompactDecoder()
    first = dec.decode(compact_topic("mic"), bytes(encode(msg, vocab)))
    assert first.active == ["#1", "#2"] and first.model.name == "?" and dec.unnamed == 1
    dec.decode(compact_topic("mic"), bytes(encode(msg, vocab, names=True)))
    later = dec.decode(compact_topic("mic"), bytes(encode(msg, vocab)))
    assert later.active == ["guitar", "drums"] and later.model == MODEL and later.tags == list(vocab.tags)


def test_end_and_unknown_names_travel_as_a_json_tail():
    end = TagMessage(
        kind="end", stream_id="mic", seq=9, backend=BACKEND, model=MODEL,
        end=EndInfo(reason="error", error="bad input: NaN", stream_s=4.0, windows=8, heartbeats=1),
    )  # fmt: skip
    f = decode_frame(bytes(encode(end, None)))
    assert f.kind == "end" and f.seq == 9 and f.flags & F_JSON_TAIL
    assert TagMessage.from_bytes(f.json_tail) == end
    f = decode_frame(bytes(encode(make_message(1, "x"), None)))  # no names known: nothing lost either
    assert f.flags & F_JSON_TAIL and TagMessage.from_bytes(f.json_tail).top == make_message(1, "x").top


def test_bad_frames_are_refused():
    frame = bytearray(encode(_message(), Vocabulary.build(VOCAB_TAGS, MODEL, BACKEND)))
    with pytest.raises(ValueError, match="shorter than"):
        decode_frame(bytes(frame[:100]))
    with pytest.raises(ValueError, match="after its last section"):
        decode_frame(bytes(frame + b"xx"))
    frame[0] = 2
    with pytest.raises(ValueError, match="version 2"):
        decode_frame(bytes(frame))


# -- across processes ----------------------------------------------------------------------------------
def _sub(ctx: zmq.Context, endpoint: str, topic: bytes) -> zmq.Socket:
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SUBSCRIBE, topic)
    s.connect(endpoint)
    return s


def _drain(sock: zmq.Socket, n: int) -> list[list[bytes]]:
    out = []
    while len(out) < n and sock.poll(30_000):
        out.append(sock.recv_multipart())
    return out


def test_compact_and_json_subscribers_get_the_same_messages():
    n = 60
    ctx = zmq.Context()
    try:
        with publisher_process(
            "tcp://127.0.0.1:*", n=n, streams=("a", "b"), n_scores=N_TAGS, wait_topics=2, period_s=0.002
        ) as pub:
            js = _sub(ctx, pub.endpoint, b"tags.")
            cs = _sub(ctx, pub.endpoint, b"tagb.")
            got_json, got_compact = _drain(js, 2 * n), _drain(cs, 2 * n)
            _, encoded = pub.get("encoded")
    finally:
        ctx.destroy(linger=0)
    assert len(got_json) == len(got_compact) == 2 * n
    assert encoded == {"json": 2 * n, "compact": 2 * n, "group": 0}
    dec = CompactDecoder()
    for (jt, jb), (ct, cb) in zip(got_json, got_compact, strict=True):
        j = TagMessage.from_bytes(jb)
        f = decode_frame(cb)
        assert not f.flags & F_JSON_TAIL  # really binary, not the JSON fallback
        c = dec.decode(ct, cb)
        assert (jt, ct) == (b"tags." + j.stream_id.encode() + b"\0", compact_topic(j.stream_id))
        assert (c.stream_id, c.seq, c.kind) == (j.stream_id, j.seq, j.kind)
        np.testing.assert_allclose(c.scores, j.scores, rtol=1e-6)
        assert [t.tag for t in c.top] == [t.tag for t in j.top] and c.active == j.active
        assert c.publish_wall_time == j.publish_wall_time and c.window == j.window
        assert c.drops.publisher_dropped == j.drops.publisher_dropped == 0
    # every stream's first frame names its tags; the later ones only refer to them
    names = [decode_frame(cb).flags & F_NAMES != 0 for _, cb in got_compact]
    assert names[:2] == [True, True] and not any(names[2:]) and dec.unnamed == 0


@pytest.mark.parametrize(
    ("topics", "expect"),
    [
        ((b"tags.",), {"json": 40, "compact": 0, "group": 0}),
        ((b"tagb.a\0",), {"json": 0, "compact": 40, "group": 0}),
    ],
)
def test_an_encoding_nobody_subscribes_to_is_never_made(topics, expect):
    ctx = zmq.Context()
    try:
        with publisher_process(
            "tcp://127.0.0.1:*", n=40, n_scores=N_TAGS, wait_topics=1, streams=("a",)
        ) as pub:
            socks = [_sub(ctx, pub.endpoint, t) for t in topics]
            got = _drain(socks[0], 40)
            _, encoded = pub.get("encoded")
    finally:
        ctx.destroy(linger=0)
    assert len(got) == 40 and encoded == expect


def test_a_late_compact_subscriber_gets_the_names():
    ctx = zmq.Context()
    try:
        with publisher_process(
            "tcp://127.0.0.1:*", n=400, n_scores=N_TAGS, wait_topics=1, period_s=0.005, progress_at=50
        ) as pub:
            first = _sub(ctx, pub.endpoint, b"tagb.")
            pub.get("progress", timeout=60)  # the stream's first frame (with names) went long ago
            late = _sub(ctx, pub.endpoint, b"tagb.test\0")
            frames = _drain(late, 20)
            _drain(first, 1)
    finally:
        ctx.destroy(linger=0)
    dec = CompactDecoder()
    msgs = [dec.decode(t, b) for t, b in frames]
    assert len(msgs) == 20 and msgs[-1].tags == VOCAB_TAGS
    # at most the frames sent before the publisher read the subscription come without names
    assert dec.unnamed <= 2 and any(decode_frame(b).flags & F_NAMES for _, b in frames[:3])


def test_cli_subscribe_compact_shows_the_same_messages_as_json():
    n = 30
    with publisher_process(
        "tcp://127.0.0.1:*", n=n, n_scores=N_TAGS, wait_topics=2, period_s=0.002, send_end=True
    ) as pub:
        cj = start_subscriber(pub.endpoint, "--json", "--compact", "--timeout", "30")
        jj = start_subscriber(pub.endpoint, "--json", "--timeout", "30")
        pub.get("done", timeout=60)
        pub.end_on.set()
        (c_out, c_err), (j_out, j_err) = cj.communicate(timeout=60), jj.communicate(timeout=60)
    assert cj.returncode == 0 and jj.returncode == 0, (c_err, j_err)
    c, j = json_lines(c_out), json_lines(j_out)
    assert [m.seq for m in c] == [m.seq for m in j] == list(range(n))
    for a, b in zip(c, j, strict=True):
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)
        assert [t.tag for t in a.top] == [t.tag for t in b.top]
    assert "0 gaps (0 missing), 0 malformed" in c_err and "ended: test" in c_err


def test_a_stalled_compact_subscriber_loses_only_its_own_messages_and_they_are_counted():
    """As for JSON (test_publisher.py): NODROP first, then lossy, per encoding."""
    n = 600
    with publisher_process(
        ipc_endpoint(), n=n, period_s=0.002, n_scores=400, sndhwm=50, wait_topics=2, send_end=True
    ) as pub:
        stalled = start_subscriber(pub.endpoint, "--json", "--compact", "--timeout", "5")
        healthy = None
        try:
            pub.get("subscribed", timeout=60)
            stalled.send_signal(signal.SIGSTOP)
            healthy = start_subscriber(
                pub.endpoint, "--json", "--compact", "--stream", "test", "--timeout", "60"
            )
            _, sent, dropped = pub.get("done", timeout=120)
            _, encoded = pub.get("encoded")
            stalled.send_signal(signal.SIGCONT)
            pub.end_on.set()
            h_out, h_err = healthy.communicate(timeout=60)
            s_out, s_err = stalled.communicate(timeout=60)
        finally:
            for p in (stalled, healthy):
                if p is not None and p.poll() is None:
                    p.send_signal(signal.SIGCONT)
                    p.kill()
    assert [m.seq for m in json_lines(h_out)] == list(range(n)), h_err
    got = [m.seq for m in json_lines(s_out)]
    assert got == sorted(got) and len(got) < n, s_err
    assert 0 < dropped <= n - len(got) and sent + dropped == n
    assert encoded == {"json": 0, "compact": n, "group": 0}


def test_header_offsets_match_the_documented_layout():
    """docs/messages.md gives byte offsets; the publisher patches the publish times in place."""
    msg = _message()
    frame = encode(msg, Vocabulary.build(msg.tags, MODEL, BACKEND))
    assert struct.unpack_from("<Q", frame, 8)[0] == msg.seq
    assert struct.unpack_from("<d", frame, 56)[0] == msg.publish_wall_time
    assert struct.unpack_from("<I", frame, 72)[0] == msg.drops.publisher_dropped
    assert struct.unpack_from("<I", frame, 76)[0] == 12
    assert struct.unpack_from("<f", frame, 116)[0] == 1.25  # timings_ms.inference
    assert struct.unpack_from("<H", frame, 6)[0] == N_TAGS
    assert abs(struct.unpack_from("<d", frame, 48)[0] - time.time()) < 600  # capture_wall_time


@pytest.mark.parametrize("with_embedding", [False, True])
def test_rows_encode_as_each_message_encodes(with_embedding):
    """encode_rows (a stream group's window, from arrays) gives the bytes encode gives for the same
    messages one by one: tags with events and top, not music, a silent heartbeat, with names."""
    from rt_tagger.compact import RowMessages, encode_rows
    from rt_tagger.messages import DropCounters, TagScore, WindowInfo

    vocab = Vocabulary.build(VOCAB_TAGS, MODEL, BACKEND)
    rng = np.random.default_rng(0)
    scores = rng.random((3, N_TAGS)).astype(np.float32)
    top = np.argsort(-scores, axis=1, kind="stable")[:, :3]
    active = np.zeros((3, N_TAGS), bool)
    active[0, [1, 4]] = active[2, 4] = True
    on = np.zeros((3, N_TAGS), bool)
    on[0, 4] = True
    off = np.zeros((3, N_TAGS), bool)
    off[0, 7] = True
    rows = RowMessages(
        seq=np.full(3, 5, np.uint64), kind=np.array([0, 0, 1], np.uint8), state=np.array([1, 2, 3], np.uint8),
        heartbeat_reason=np.array([0, 0, 1], np.uint8), window=(16000, 65408, 1.0, 4.088),
        capture_wall_time=1234.5, backlog_s=0.0, counters=(2, 0, 0, 0, 0, 0, 30, 1),
        timings=(1.5, 2.0, 3.0, 0.5, None), scores=scores, top=top, active=active, turned_on=on,
        turned_off=off, event_time_s=4.088,
        embedding=rng.random((3, 8)).astype(np.float32) if with_embedding else None,
    )  # fmt: skip
    frames = encode_rows(rows, vocab, np.array([True, False, False]))
    window = WindowInfo(start_sample=16000, end_sample=65408, start_s=1.0, end_s=4.088)
    drops = DropCounters(publisher_dropped=2, ingest_dropped_samples=30, ingest_lost_chunks=1)
    timings = StageTimings(capture_to_ring=1.5, framing_mel=2.0, inference=3.0, aggregation=0.5)
    common = dict(stream_id="s", seq=5, window=window, capture_wall_time=1234.5, drops=drops, backend=BACKEND,
                  model=MODEL, backlog_s=0.0, timings_ms=timings, publish_wall_time=float("nan"))  # fmt: skip
    names = [VOCAB_TAGS[i] for i in range(N_TAGS)]
    msgs = [
        TagMessage(kind="tags", state="music", top=[TagScore(tag=names[i], score=float(scores[0, i])) for i in top[0]],
                   active=[names[1], names[4]], events=[TagEvent(tag=names[4], state="on", time_s=4.088),
                   TagEvent(tag=names[7], state="off", time_s=4.088)], **common),
        TagMessage(kind="tags", state="not_music", top=[], active=[], events=[], **common),
        TagMessage(kind="heartbeat", heartbeat_reason="silent", state="silence", active=[names[4]], **common),
    ]  # fmt: skip
    msgs[0]._score_array, msgs[1]._score_array = scores[0], scores[1]
    if with_embedding:  # tags rows carry it, the heartbeat does not
        msgs[0].embedding, msgs[1].embedding = rows.embedding[0].tolist(), rows.embedding[1].tolist()
    for i, (frame, msg) in enumerate(zip(frames, msgs, strict=True)):
        assert bytes(frame) == bytes(encode(msg, vocab, names=i == 0)), i


def test_a_group_frame_holds_every_row_and_refuses_damage():
    """group_frame / split_group_frame (topic tagg.<group>): rows come back as the same compact
    frames (publish time stamped in each), in order, with their stream ids; damage is a ValueError."""
    from rt_tagger.compact import group_frame, split_group_frame

    vocab = Vocabulary.build(VOCAB_TAGS, MODEL, BACKEND)
    msgs = [_message(seq) for seq in (3, 4, 5)]
    frames = [encode(m, vocab, names=i == 0) for i, m in enumerate(msgs)]
    body = group_frame(b"a\0bb\0c", frames, 1700000000.25, 0.75)
    rows = split_group_frame(bytes(body))
    assert [sid for sid, _ in rows] == ["a", "bb", "c"]
    dec = CompactDecoder()
    got = dec.decode_group(bytes(body))
    assert [m.stream_id for m in got] == ["a", "bb", "c"] and [m.seq for m in got] == [3, 4, 5]
    for m, sent in zip(got, msgs, strict=True):
        assert m.publish_wall_time == 1700000000.25 and m.timings_ms.publish == 0.75
        np.testing.assert_array_equal(m.scores, np.asarray(sent.scores, np.float32))
        assert m.tags == VOCAB_TAGS  # the names came with the first row
    assert split_group_frame(bytes(group_frame(b"", [], 0.0, 0.0))) == []
    with pytest.raises(ValueError, match="shorter than"):
        split_group_frame(bytes(body[:10]))
    with pytest.raises(ValueError, match="offsets"):
        split_group_frame(bytes(body[:-1]))
    with pytest.raises(ValueError, match="2 streams for 3 rows"):
        split_group_frame(bytes(group_frame(b"a\0b", frames, 0.0, 0.0)))
    bad = bytearray(body)
    bad[:4] = b"XXXX"
    with pytest.raises(ValueError, match="not a version-1 group frame"):
        split_group_frame(bytes(bad))


def test_many_random_rows_encode_as_each_message_encodes():
    """encode_rows places ragged sections (active tags, events, names) by offsets: 200 random rows
    of every kind, each compared with encode() of the same message."""
    from rt_tagger.compact import RowMessages, encode_rows
    from rt_tagger.messages import DropCounters, TagScore, WindowInfo

    vocab = Vocabulary.build(VOCAB_TAGS, MODEL, BACKEND)
    rng = np.random.default_rng(7)
    r = 200
    scores = rng.random((r, N_TAGS)).astype(np.float32)
    top = np.argsort(-scores, axis=1, kind="stable")[:, :5]
    kind = rng.choice([0, 0, 0, 1], r).astype(np.uint8)
    state = np.where(kind == 1, 3, rng.choice([1, 2], r)).astype(np.uint8)
    active = rng.random((r, N_TAGS)) < 0.15
    on = (rng.random((r, N_TAGS)) < 0.03) & (kind == 0)[:, None]
    off = (rng.random((r, N_TAGS)) < 0.03) & ~on & (kind == 0)[:, None]
    names = rng.random(r) < 0.1
    rows = RowMessages(
        seq=np.full(r, 11, np.uint64), kind=kind, state=state, heartbeat_reason=np.where(kind == 1, 1, 0).astype(np.uint8),
        window=(0, 49408, 0.0, 3.088), capture_wall_time=None, backlog_s=0.0, counters=(0,) * 8,
        timings=(None, 2.0, 3.0, 0.5, None), scores=scores, top=top, active=active, turned_on=on,
        turned_off=off, event_time_s=3.088,
    )  # fmt: skip
    frames = encode_rows(rows, vocab, names)
    assert len(frames) == r
    window = WindowInfo(start_sample=0, end_sample=49408, start_s=0.0, end_s=3.088)
    timings = StageTimings(framing_mel=2.0, inference=3.0, aggregation=0.5)
    for i in range(r):
        tags = kind[i] == 0
        msg = TagMessage(
            kind="tags" if tags else "heartbeat", stream_id="s", seq=11, window=window, drops=DropCounters(),
            backend=BACKEND, model=MODEL, backlog_s=0.0, timings_ms=timings, publish_wall_time=float("nan"),
            state={1: "music", 2: "not_music", 3: "silence"}[int(state[i])],
            heartbeat_reason=None if tags else "silent",
            top=[TagScore(tag=VOCAB_TAGS[j], score=float(scores[i, j])) for j in top[i]] if tags and state[i] == 1 else [],
            active=[VOCAB_TAGS[j] for j in np.flatnonzero(active[i])],
            events=[TagEvent(tag=VOCAB_TAGS[j], state="on", time_s=3.088) for j in np.flatnonzero(on[i])]
            + [TagEvent(tag=VOCAB_TAGS[j], state="off", time_s=3.088) for j in np.flatnonzero(off[i])],
        )  # fmt: skip
        if tags:
            msg._score_array = scores[i]
        assert bytes(frames[i]) == bytes(encode(msg, vocab, names=bool(names[i]))), i
