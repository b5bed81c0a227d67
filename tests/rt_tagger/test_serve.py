"""``rt-tagger serve`` across real processes: the server, a ZeroMQ subscriber and ingest clients.

The server runs as a subprocess (as users run it); the test process is both the ingest client
(:class:`rt_tagger.client.IngestClient`) and a SUB socket on the server's publisher.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
import zmq

from bench.common import free_port
from rt_tagger.client import ClientError, IngestClient
from rt_tagger.compact import CompactDecoder, group_topic

from .conftest import ROOT, cli_env, run_cli

DEMO = ROOT / "rt_tagger" / "demo" / "demo.ogg"


def _demo(seconds: float) -> tuple[np.ndarray, int]:
    """The demo clip at its own rate and channels (the server resamples and mixes down per stream)."""
    x, sr = sf.read(str(DEMO), dtype="float32", always_2d=True)
    return np.ascontiguousarray(x[: int(seconds * sr)]), sr


class Server:
    """``rt-tagger serve`` in a subprocess plus a subscriber to everything it publishes."""

    def __init__(
        self, *flags: str, backend: str = "onnxruntime-cpu", quiet: bool = True, env: dict | None = None
    ) -> None:
        self.ingest = f"tcp://127.0.0.1:{free_port()}"
        self.publish = f"tcp://127.0.0.1:{free_port()}"
        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.setsockopt(zmq.RCVHWM, 0)
        self.sub.connect(self.publish)
        cmd = [sys.executable, "-m", "rt_tagger.cli", "serve", "--ingest", self.ingest, "--publish", self.publish,
               "--backend", backend, *(["-q"] if quiet else []), *flags]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(**(env or {})), cwd=ROOT
        )
        self.messages: list[dict] = []
        self.flags = flags

    def client(self, **kw) -> IngestClient:
        return IngestClient(self.ingest, timeout_s=kw.pop("timeout_s", 60.0), **kw)

    def receive(self, until, timeout_s: float = 30.0) -> list[dict]:
        """Collect messages until ``until(messages)`` is true; fails the test on timeout."""
        deadline = time.monotonic() + timeout_s
        while not until(self.messages):
            if time.monotonic() > deadline:
                pytest.fail(
                    f"timed out; got {len(self.messages)} messages; server stderr: {self.stderr_tail()}"
                )
            if self.sub.poll(100):
                topic, body = self.sub.recv_multipart()
                if topic.startswith((b"tagb.", b"tagg.")):  # binary frames someone else asked for
                    continue
                msg = json.loads(body)
                msg["_topic"] = topic
                self.messages.append(msg)
        return self.messages

    def of(self, stream_id: str, kind: str | None = None) -> list[dict]:
        return [
            m
            for m in self.messages
            if m.get("stream_id") == stream_id and (kind is None or m["kind"] == kind)
        ]

    def ended(self, *stream_ids: str):
        return lambda ms: all(
            any(m.get("stream_id") == s and m["kind"] == "end" for m in ms) for s in stream_ids
        )

    def stderr_tail(self) -> str:
        if self.proc.poll() is None:
            return "(running)"
        return self.proc.stderr.read().decode(errors="replace")[-2000:]

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.sub.close(linger=0)
        self.ctx.term()


@pytest.fixture
def server(request):
    flags = getattr(request, "param", ())
    s = Server(*flags)
    yield s
    s.close()


@pytest.mark.parametrize(
    "server",
    [(), ("--frontend", "batch", "--stats-interval", "0.5")],
    indirect=True,
    ids=["stream_fe", "batch_fe"],
)
def test_serve_gives_the_messages_stream_gives(server):
    """Same audio through serve (batch pace, odd chunks) and through `stream -`: same windows, same
    scores; also with the batch front end (all streams' frames at once, torch on the CPU here)."""
    audio, sr = _demo(8.0)
    with server.client() as c:
        c.open("same", sr, audio.shape[1], "f32le", pace="batch", full_scores=True)
        for i, start in enumerate(range(0, len(audio), 1733)):
            c.send("same", audio[start : start + 1733], capture_wall_time=1000.0 + i)
        assert c.close_stream("same").type == "closed"
    served = [m for m in server.receive(server.ended("same")) if m.get("stream_id") == "same"]
    stats = server.receive(lambda ms: any(m["kind"] == "stats" for m in ms))
    frontend = next(m for m in stats if m["kind"] == "stats")["frontend"]
    assert frontend == ("batch" if "--frontend" in server.flags else "stream")
    assert server.stop() == 0
    p = run_cli(
        "stream", "-", "--rate", str(sr), "--channels", str(audio.shape[1]), "--format", "f32le", "--backend", "onnxruntime-cpu",
        "--full-scores", "--json", "--no-publish", "--stream-id", "same", input=audio.tobytes(),
    )  # fmt: skip
    assert p.returncode == 0, p.stderr_text
    streamed = [json.loads(ln) for ln in p.stdout_text.splitlines() if ln.startswith("{")]
    assert [m["kind"] for m in served] == [m["kind"] for m in streamed]
    assert [m["seq"] for m in served] == list(range(len(served)))
    tags = [(a, b) for a, b in zip(served, streamed, strict=True) if a["kind"] == "tags"]
    assert len(tags) >= 8
    for a, b in tags:
        assert a["window"] == b["window"]
        assert np.allclose(a["scores"], b["scores"], atol=1e-4)
        assert a["active"] == b["active"]
    assert served[-1]["end"]["reason"] == "closed" and streamed[-1]["end"]["reason"] == "eof"
    assert served[0]["_topic"] == b"tags.same\0"


@pytest.mark.parametrize("server", [("--max-streams", "2", "--stats-interval", "0.5")], indirect=True)
def test_admission_multi_stream_messages_and_stats(server):
    audio, sr = _demo(5.0)
    audio = audio[:, 0].copy()
    with server.client() as c:
        opened = c.open("a", sr, 1, "f32le", pace="batch")
        assert opened.topic == "tags.a" and opened.hop_s == pytest.approx(0.5, abs=0.02)
        c.open("b", sr, 1, "f32le", pace="batch")
        with pytest.raises(ClientError, match="at capacity: 2 of 2"):
            c.open("c", 16000, 1, "f32le")
        with pytest.raises(ClientError, match="already open"):
            c.open("a", 16000, 1, "f32le")
        for start in range(0, len(audio), 4000):  # one message carries a chunk of each stream
            c.send_many([("a", audio[start : start + 4000]), ("b", audio[start : start + 4000] * 0.5)])
        c.close_stream("a")
        c.close_stream("b")
    n = len(server.receive(server.ended("a", "b")))
    ms = server.receive(lambda ms: any(m["kind"] == "stats" for m in ms[n:]))  # stats after both ended
    for sid in ("a", "b"):
        seqs = [m["seq"] for m in server.of(sid)]
        assert seqs == list(range(len(seqs))) and len(server.of(sid, "tags")) >= 4
    stats = [m for m in ms if m["kind"] == "stats"]
    assert stats[-1]["streams_refused"] == 2 and stats[-1]["batches"] >= 1
    assert sum(stats[-1]["batch_size_histogram"].values()) == stats[-1]["batches"]
    assert stats[0]["_topic"] == b"stats\0"
    assert server.stop() == 0


@pytest.mark.parametrize("interval_s, expect_full", [("300", False), ("0.4", True)])
def test_full_garbage_collections_run_on_the_servers_schedule(interval_s, expect_full):
    """Python's own full collections (pauses of 15-40 ms under load) are replaced by the server's
    schedule, ``serve.full_gc_interval_s``: none within a short run at the default, several at 0.4 s."""
    server = Server("--stats-interval", "0.5", env={"RT_TAGGER_SERVE__FULL_GC_INTERVAL_S": interval_s})
    try:
        audio, sr = _demo(3.0)
        with server.client() as c:
            c.open("a", sr, audio.shape[1], "f32le", pace="batch")
            for start in range(0, len(audio), 2000):
                c.send("a", audio[start : start + 2000])
            c.close_stream("a")
        server.receive(server.ended("a"))
        time.sleep(1.5)  # a few more housekeeping passes and stats messages
        after = time.time()  # messages are read lazily: older stats still wait in the socket

        def fresh_stats(ms):
            return [m for m in ms if m["kind"] == "stats" and m["wall_time"] >= after]

        stats = fresh_stats(server.receive(fresh_stats))[0]
        full = stats["gc"]["full_collections"]
        assert (full >= 2) if expect_full else (full == 0), f"{full} full collections at {interval_s} s"
        assert server.stop() == 0
    finally:
        server.close()


@pytest.mark.parametrize("server", [("--idle-timeout", "1", "--buffer-s", "0.5")], indirect=True)
def test_idle_streams_end_and_live_streams_cannot_run_ahead(server):
    audio, sr = _demo(6.0)
    audio = audio[:, 0].copy()
    with server.client() as c:
        c.open("live", sr, 1, "f32le")  # pace live: at most 0.5 s ahead of real time
        c.open("quiet", sr, 1, "f32le")
        c.send("quiet", audio[:sr])
        for start in range(0, len(audio), 8000):  # 6 s of audio at once
            c.send("live", audio[start : start + 8000])
        c.send_many([("live", audio[:100])])
        c._streams["live"].seq += 3  # the client skips three chunk numbers: counted as lost input
        c.send("live", audio[:100])
        ms = server.receive(server.ended("live", "quiet"), timeout_s=30)
        notices, deadline = [], time.monotonic() + 5
        while len({n.stream_id for n in notices if n.type == "closed"}) < 2 and time.monotonic() < deadline:
            notices += c.poll_notices(0.5)
    end = {m["stream_id"]: m for m in ms if m["kind"] == "end"}
    assert end["quiet"]["end"]["reason"] == "idle" and end["live"]["end"]["reason"] == "idle"
    assert end["live"]["drops"]["ingest_dropped_samples"] >= 4 * sr
    assert end["live"]["drops"]["ingest_lost_chunks"] == 3
    assert {(n.type, n.stream_id) for n in notices} >= {("closed", "live"), ("closed", "quiet")}
    assert server.stop() == 0


def test_protocol_errors_get_an_answer_and_sigterm_ends_every_stream(server):
    with server.client() as c:
        c.sock.send_multipart([b'{"type": "open", "stream_id": "x"}'])
        reply = c._wait_for("x", ("error",))
        assert reply.type == "error" and "sample_rate" in reply.reason
        c.sock.send_multipart([b"not json"])
        assert "bad header" in c._wait_for(None, ("error",)).reason
        c.open("held", 16000, 1, "s16le")
        c.send("held", np.zeros(16000, dtype=np.int16))
        time.sleep(0.5)
        assert server.stop() == 0
    ends = [m for m in server.receive(server.ended("held"), timeout_s=5) if m["kind"] == "end"]
    assert ends[0]["end"]["reason"] == "sigterm"


def test_serve_rejects_a_busy_ingest_port_with_one_line():
    with zmq.Context() as ctx, ctx.socket(zmq.ROUTER) as held:
        port = free_port()
        held.bind(f"tcp://127.0.0.1:{port}")
        p = run_cli("serve", "--ingest", f"tcp://127.0.0.1:{port}", "--publish", f"tcp://127.0.0.1:{free_port()}",
                    "--backend", "onnxruntime-cpu", timeout=120)  # fmt: skip
    assert p.returncode == 2
    lines = [ln for ln in p.stderr_text.splitlines() if ln.strip()]
    assert len(lines) == 1 and "ingest" in lines[0], p.stderr_text


def test_c_ingest_example_sends_a_stream(server, tmp_path):
    import shutil

    for tool in ("make", "cc", "pkg-config"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not found: cannot build the C example")
    binary = tmp_path / "rt_tagger_send"
    build = subprocess.run(
        ["make", "-C", str(ROOT / "examples" / "c_ingest"), f"BIN={binary}"], capture_output=True, text=True
    )
    assert build.returncode == 0 and "warning" not in build.stderr.lower(), build.stderr
    audio, sr = _demo(5.0)
    pcm = np.clip(np.round(audio * 32767), -32768, 32767).astype("<i2").tobytes()
    p = subprocess.run(
        [str(binary), "-e", server.ingest, "-r", str(sr), "-c", str(audio.shape[1]), "-i", "from-c", "-f", "3000"],
        input=pcm, capture_output=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr.decode()
    assert b"stream closed" in p.stderr
    msgs = [m for m in server.receive(server.ended("from-c")) if m.get("stream_id") == "from-c"]
    assert [m["seq"] for m in msgs] == list(range(len(msgs)))
    assert sum(m["kind"] == "tags" for m in msgs) >= 4 and msgs[-1]["end"]["reason"] == "closed"
    refused = subprocess.run([str(binary), "-e", server.ingest, "-r", "0"], capture_output=True, timeout=30)
    assert refused.returncode == 2 and b"-r RATE" in refused.stderr


def test_ingest_schema_file_is_in_sync():
    from rt_tagger.ingest import SCHEMA_PATH, schema_text

    assert SCHEMA_PATH.read_text() == schema_text(), "run: python -m rt_tagger.ingest"


def test_subscribe_shows_stats_messages(server):
    p = subprocess.Popen(
        [sys.executable, "-m", "rt_tagger.cli", "subscribe", "--endpoint", server.publish, "--topic", "stats",
         "--count", "1", "--timeout", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(), cwd=ROOT,
    )  # fmt: skip
    out, err = p.communicate(timeout=90)
    assert p.returncode == 0, err.decode()
    doc = json.loads(out.decode().splitlines()[0])
    assert doc["kind"] == "stats" and doc["streams_open"] == 0 and "batch_size_histogram" in doc


def test_a_stream_group_gives_each_stream_the_messages_stream_gives(server):
    """Protocol 1.2: three streams in one group (two of music, one silent), sent as one block per
    chunk; every stream gets what `rt-tagger stream` gives for its audio alone (windows, scores,
    active tags, silent heartbeats), as JSON and as compact frames, and its own `end`."""
    audio, sr = _demo(8.0)
    assert sr == 16000 and audio.shape[1] == 1
    mono = audio[:, 0]
    shifted = np.concatenate([mono[sr * 3 :], mono[: sr * 3]])
    block = np.stack([mono, shifted, np.zeros_like(mono)])
    pcm = np.clip(np.round(block * 32768.0), -32768, 32767).astype(np.int16)
    ids = ["g0", "g1", "g2"]
    compact = server.ctx.socket(zmq.SUB)
    whole = server.ctx.socket(zmq.SUB)
    view = subprocess.Popen(  # `rt-tagger subscribe --group`: the user's view of the group frames
        [sys.executable, "-m", "rt_tagger.cli", "subscribe", "-e", server.publish, "--group", "gw", "--json",
         "--timeout", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(), cwd=ROOT,
    )  # fmt: skip
    try:
        time.sleep(2.0)  # the view's subscription reaches the server before the first window
        frames, grouped = _group_round_trip(server, compact, whole, pcm, ids, sr)
        view_out, view_err = view.communicate(timeout=60)
    finally:
        compact.close(linger=0)
        whole.close(linger=0)
        view.kill()
    assert server.stop() == 0
    silent = server.of("g2")
    assert [m["kind"] for m in silent[:-1]] == ["heartbeat"] * (len(silent) - 1)
    assert all(m["heartbeat_reason"] == "silent" for m in silent[:-1]) and silent[-1]["kind"] == "end"
    for k, stream_id in enumerate(ids[:2]):
        served = server.of(stream_id)
        p = run_cli(
            "stream", "-", "--rate", "16000", "--channels", "1", "--format", "s16le", "--backend", "onnxruntime-cpu",
            "--full-scores", "--json", "--no-publish", "--stream-id", stream_id, input=pcm[k].tobytes(),
        )  # fmt: skip
        assert p.returncode == 0, p.stderr_text
        streamed = [json.loads(ln) for ln in p.stdout_text.splitlines() if ln.startswith("{")]
        assert [m["kind"] for m in served] == [m["kind"] for m in streamed]
        assert [m["seq"] for m in served] == list(range(len(served)))
        pairs = [(a, b) for a, b in zip(served, streamed, strict=True) if a["kind"] == "tags"]
        assert len(pairs) >= 8
        for a, b in pairs:
            assert a["window"] == b["window"]
            assert np.allclose(a["scores"], b["scores"], atol=1e-4)
            assert a["active"] == b["active"] and a["events"] == b["events"]
            assert [t["tag"] for t in a["top"]] == [t["tag"] for t in b["top"]]
        assert served[-1]["end"]["windows"] == streamed[-1]["end"]["windows"]
        binary = [m for m in frames if m.stream_id == stream_id and m.kind == "tags"]
        assert len(binary) == len(pairs)
        for m, (a, _) in zip(binary, pairs, strict=True):
            assert m.seq == a["seq"] and m.active == a["active"]
            assert np.allclose(m.scores, a["scores"], atol=1e-6)
    # the group frames (topic tagg.gw) hold every stream's messages, its end included, in row order
    assert [[m.stream_id for m in rows] for rows in grouped] == [ids] * len(grouped)
    for k, stream_id in enumerate(ids):
        mine = [rows[k] for rows in grouped]
        assert [m.seq for m in mine] == list(range(len(mine)))
        own = [json.loads(m.to_bytes()) for m in frames if m.stream_id == stream_id]
        in_group = [json.loads(m.to_bytes()) for m in mine]
        for doc in (*own, *in_group):
            doc.pop("publish_wall_time", None)
            doc.get("timings_ms", {}).pop("publish", None)
        assert in_group == own
    assert view.returncode == 0, view_err.decode()
    shown = [json.loads(ln) for ln in view_out.decode().splitlines()]
    assert len(shown) == len(grouped) * len(ids) and "0 gaps (0 missing), 0 malformed" in view_err.decode()
    assert [m["kind"] for m in shown[-3:]] == ["end"] * 3


def _group_round_trip(server, compact, whole, pcm, ids, sr):
    compact.setsockopt(zmq.SUBSCRIBE, b"tagb.")
    whole.setsockopt(zmq.SUBSCRIBE, group_topic("gw"))
    for sock in (compact, whole):
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.connect(server.publish)
    time.sleep(0.3)  # both subscriptions reach the server before the first window
    with server.client() as c:
        reply = c.open_group("gw", ids, sr, pace="batch")
        assert reply.type == "opened" and reply.hop_s == pytest.approx(31 * 256 / 16000)
        for i, start in enumerate(range(0, pcm.shape[1], 1733)):
            c.send_group("gw", pcm[:, start : start + 1733], capture_wall_time=1000.0 + i)
        assert c.close_group("gw").type == "closed"
    server.receive(server.ended(*ids))
    decoder = CompactDecoder()
    frames = []
    while compact.poll(500):
        frames.append(decoder.decode(*compact.recv_multipart()))
    grouped, group_decoder = [], CompactDecoder()
    while whole.poll(200):
        topic, body = whole.recv_multipart()
        assert topic == group_topic("gw")
        grouped.append(group_decoder.decode_group(body))
    return frames, grouped


@pytest.mark.parametrize(
    "server",
    [
        (
            "--max-streams",
            "4",
        )
    ],
    indirect=True,
)
def test_stream_groups_are_admitted_whole_and_bad_group_input_gets_a_reason(server):
    """A group counts all its streams against max_streams, its ids cannot be reused, its rate must
    be the model's, and a payload of the wrong size is answered with an error, not a crash."""
    with server.client() as c:
        with pytest.raises(ClientError, match="at capacity: 0 of 4 streams open, the group has 5"):
            c.open_group("big", [f"b{i}" for i in range(5)], 16000)
        with pytest.raises(ClientError, match="model's rate, 16000 Hz"):
            c.open_group("slow", ["x"], 44100)
        c.open_group("ok", ["a", "b", "c"], 16000, pace="batch")
        with pytest.raises(ClientError, match="stream id 'a' is already open"):
            c.open("a", 16000)
        with pytest.raises(ClientError, match="at capacity"):
            c.open_group("more", ["d", "e"], 16000)
        c.send_group("ok", np.zeros((3, 1600), np.int16))
        c.sock.send_multipart(
            [b'{"type": "group_audio", "group_id": "ok", "seq": 1, "frames": 10}', b"\0" * 7]
        )
        err = c._wait_for(None, ("error",))
        assert "group chunk payload has 7 bytes, expected 3 streams × 10 frames × 2 B" in err.reason
        assert c.close_group("ok").type == "closed"
    ends = server.receive(server.ended("a", "b", "c"))
    assert {m["stream_id"] for m in ends if m["kind"] == "end"} == {"a", "b", "c"}
    assert server.stop() == 0, server.stderr_tail()
