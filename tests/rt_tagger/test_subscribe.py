"""`rt-tagger subscribe`: the terminal view, gap reports, bad input, and its user errors."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading

import pytest
import zmq

from engines.errors import UserError, UserErrorParser
from rt_tagger.message_line import format_message
from rt_tagger.messages import BackendInfo, DropCounters, ModelInfo, TagEvent
from rt_tagger.publisher import stream_topic
from rt_tagger.subscribe import (
    SeqTracker,
    SubscribeTimeout,
    add_arguments,
    main_from_args,
    run_subscribe,
)
from tests.rt_tagger.zmq_helpers import ROOT, end_body, make_message, publisher_process, start_subscriber


def test_seq_tracker_reports_gaps_and_restarts_per_stream():
    t = SeqTracker()
    assert [t.check("a", s) for s in (0, 1, 2)] == [None, None, None]
    assert t.check("b", 10) is None  # first message of another stream: no gap
    assert t.check("a", 5) == "!! a: seq gap 2 -> 5 (2 missing)"
    assert t.check("b", 11) is None
    assert "went back" in t.check("a", 0)
    assert (t.gaps, t.missing) == (1, 2)


def test_format_message_shows_tags_latency_events_and_drops():
    msg = make_message(42)
    msg.publish_wall_time = msg.capture_wall_time + 0.0073
    msg.events = [
        TagEvent(tag="piano", state="on", time_s=25.0),
        TagEvent(tag="drums", state="off", time_s=25.0),
    ]
    msg.drops = DropCounters(ring_overflow_samples=12, publisher_dropped=3)
    line = format_message(msg, top_n=2)
    assert "\n" not in line
    assert " test " in line and "#42" in line and "t=25.0s" in line
    assert "piano" in line and "guitar" in line and "drums ▏" not in line  # top_n=2
    assert "█" in line  # a score bar
    assert "on piano" in line and "+piano -drums" in line
    assert "lat 7.3ms" in line
    assert "drops ovf=12 pub=3" in line
    ascii_line = format_message(msg, top_n=2, ascii_only=True)
    ascii_line.encode("ascii")
    assert "##" in ascii_line


def test_format_heartbeat():
    from rt_tagger.messages import TagMessage

    hb = TagMessage.heartbeat(
        "mic",
        3,
        "stalled",
        backend=BackendInfo(name="t", device="c", precision="f"),
        model=ModelInfo(name="m", weights_sha256="a"),
    )
    hb.publish_wall_time = 1.0
    assert "♥ heartbeat (stalled)" in format_message(hb)
    assert "<3 heartbeat (stalled)" in format_message(hb, ascii_only=True)


def test_live_view_from_another_process_marks_heartbeats_and_gaps():
    out, err = io.StringIO(), io.StringIO()
    with publisher_process("tcp://127.0.0.1:*", n=12, heartbeat_every=5, skip=(7,), wait_sub_s=30) as pub:
        rc = run_subscribe(pub.endpoint, count=11, timeout_s=30, out=out, err=err)
    lines = out.getvalue().splitlines()
    assert rc == 0
    assert sum("#" in ln and " test " in ln for ln in lines) == 11
    assert sum("♥ heartbeat (silent)" in ln for ln in lines) == 2  # seq 4 and 9
    assert "!! test: seq gap 6 -> 8 (1 missing)" in lines
    assert lines[-1].startswith("-- 11 messages, 1 gaps (1 missing), 0 malformed, streams: test")


def test_malformed_messages_are_reported_and_skipped(tmp_path):
    ctx = zmq.Context()
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(f"ipc://{tmp_path}/raw.sock")
    out, err = io.StringIO(), io.StringIO()
    result = {}
    t = threading.Thread(
        target=lambda: result.setdefault(
            "rc",
            run_subscribe(
                f"ipc://{tmp_path}/raw.sock", raw_json=True, count=3, timeout_s=20, out=out, err=err
            ),
        )
    )
    t.start()
    try:
        assert pub.poll(20_000) and pub.recv()[:1] == b"\x01"  # the subscription arrived
        pub.send_multipart([b"tags.x", b"{not json"])
        pub.send_multipart([b"tags.x", b"a", b"b"])
        pub.send_multipart([b"tags.test", make_message(0).to_bytes()])
        t.join(30)
    finally:
        pub.close()
        ctx.term()
    assert result["rc"] == 0
    assert len(out.getvalue().splitlines()) == 1  # only the valid message reaches stdout
    assert err.getvalue().count("!! malformed message") == 2
    assert "3 frames, expected 2" in err.getvalue()


def test_timeout_is_a_user_error(tmp_path):
    with pytest.raises(SubscribeTimeout, match=r"no message from ipc://.* for 0.2 s \(received 0 of 2\)"):
        run_subscribe(f"ipc://{tmp_path}/none.sock", count=2, timeout_s=0.2, out=io.StringIO())


def test_arguments_and_their_checks():
    p = UserErrorParser()
    add_arguments(p)
    a = p.parse_args([])
    assert (a.endpoint, a.stream, a.topic, a.json, a.count, a.timeout) == (
        None,
        None,
        "tags.",
        False,
        None,
        None,
    )
    with pytest.raises(UserError, match="not allowed with argument"):
        p.parse_args(["--stream", "a", "--topic", "tags.a"])
    with pytest.raises(UserError, match="invalid stream id"):
        main_from_args(p.parse_args(["--stream", "a b", "--count", "1"]))
    with pytest.raises(UserError, match="--count"):
        main_from_args(p.parse_args(["--count", "0"]))
    with pytest.raises(UserError, match="invalid endpoint"):
        main_from_args(p.parse_args(["--endpoint", "nonsense", "--count", "1"]))
    with pytest.raises(UserError, match="needs --curve-public"):
        main_from_args(p.parse_args(["--curve-client-dir", "k", "--count", "1"]))


def test_cli_errors_are_one_line_and_nonzero():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "rt_tagger.subscribe", "--endpoint", "tcp://nowhere", "--count", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "rt-tagger: error: invalid endpoint: tcp://nowhere (expected tcp://HOST:PORT, e.g. tcp://127.0.0.1:5556)"
    ]
    assert "Traceback" not in proc.stderr


# -- the end of a stream ------------------------------------------------------------------------------
@pytest.mark.parametrize("view", ["lines", "json"])
def test_cli_prints_the_end_message_and_exits_0_also_with_timeout(view):
    """A publisher process sends 5 messages, then ``kind="end"``: the CLI subscriber (its own
    process, with --timeout) prints it and exits 0 instead of waiting for the timeout."""
    with publisher_process("tcp://127.0.0.1:*", n=5, wait_topics=1, send_end=True) as pub:
        sub = start_subscriber(pub.endpoint, *(["--json"] if view == "json" else []), "--timeout", "60")
        pub.get("done", timeout=60)
        pub.end_on.set()
        out, err = sub.communicate(timeout=60)
    assert sub.returncode == 0, err
    if view == "json":
        docs = [json.loads(line) for line in out.splitlines()]
        assert [d["seq"] for d in docs] == [0, 1, 2, 3, 4, 5] and docs[-1]["kind"] == "end"
        assert docs[-1]["end"]["reason"] == "eof" and "drops" in docs[-1]
        summary = err
    else:
        lines = out.splitlines()
        assert "#5" in lines[-2] and "end of stream: eof after 2.5 s (5 windows, 0 heartbeats)" in lines[-2]
        assert lines[-2].endswith("| drops 0")
        summary = lines[-1]
    assert summary.strip().endswith(
        "-- 6 messages, 0 gaps (0 missing), 0 malformed, streams: test, ended: test"
    )


def test_subscriber_waits_until_every_stream_it_saw_ended(tmp_path):
    ctx = zmq.Context()
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(f"ipc://{tmp_path}/raw.sock")
    out, err = io.StringIO(), io.StringIO()
    result = {}
    t = threading.Thread(
        target=lambda: result.setdefault(
            "rc", run_subscribe(f"ipc://{tmp_path}/raw.sock", timeout_s=20, out=out, err=err)
        )
    )
    t.start()
    try:
        assert pub.poll(20_000) and pub.recv()[:1] == b"\x01"  # the subscription arrived
        for stream in ("a", "b"):
            pub.send_multipart([stream_topic(stream), make_message(0, stream).to_bytes()])
        pub.send_multipart([stream_topic("a"), end_body(1, "a")])
        pub.send_multipart([stream_topic("b"), make_message(1, "b").to_bytes()])
        pub.send_multipart([stream_topic("b"), end_body(2, "b", reason="sigterm")])
        t.join(30)
    finally:
        pub.close()
        ctx.term()
    assert result["rc"] == 0
    lines = out.getvalue().splitlines()
    assert [ln.split()[1] for ln in lines[:-1]] == ["a", "b", "a", "b", "b"]
    assert "end of stream: eof" in lines[2] and "end of stream: sigterm" in lines[4]
    assert lines[-1].endswith("streams: a, b, ended: a, b")


def test_end_line_says_why_how_much_and_what_was_lost():
    from rt_tagger.message_line import format_end

    doc = json.loads(end_body(7, "mic", reason="error"))
    doc["end"]["error"] = "input has NaN/Inf samples"
    doc["drops"]["ring_overflow_samples"] = 3
    doc["events"] = [{"tag": "piano", "state": "off", "time_s": 3.5}]
    doc["from_a_newer_publisher"] = {"x": 1}
    line = format_end(doc)
    assert "mic" in line and "#7" in line
    assert (
        "end of stream: error after 3.5 s (7 windows, 0 heartbeats) | error: input has NaN/Inf samples"
        in line
    )
    assert '| -piano | {"from_a_newer_publisher":{"x":1}} | drops ring_overflow_samples=3' in line
