"""``rt-tagger serve --processes 2`` across real processes: the parent, two child servers (spawned by
it, the shipped default model on the CPU backend), ingest clients and a subscriber in this process.

What is checked: streams opened through one client land on both children (redirects), a client
without redirects is forwarded, every stream's messages reach the public PUB endpoint with
gap-free ``seq``; a child killed with SIGKILL: its streams get ``end`` (``shard_lost``, ``seq`` =
last + 1), their client gets ``closed``, new streams go to the live child, the child is restarted
and takes streams again.
"""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pytest
import soundfile as sf
import zmq

from rt_tagger.client import IngestClient
from rt_tagger.cluster import HashRing
from rt_tagger.compact import CompactDecoder, group_topic

from .conftest import ROOT
from .test_serve import Server

DEMO = ROOT / "rt_tagger" / "demo" / "demo.ogg"
RING = HashRing(["serve.p0", "serve.p1"])  # the parent's ring while both children live


def _ids(child: str, n: int, prefix: str) -> list[str]:
    """``n`` stream ids that the ring puts on ``child``."""
    out = [f"{prefix}{i}" for i in range(200) if RING.lookup(f"{prefix}{i}") == child]
    return out[:n]


def _audio(seconds: float) -> np.ndarray:
    x, sr = sf.read(str(DEMO), dtype="float32", always_2d=True)
    return np.ascontiguousarray(x[: int(seconds * sr), 0]), sr


class ProcServer(Server):
    """``rt-tagger serve --processes 2`` in a subprocess plus a subscriber to all it publishes."""

    def __init__(self, *flags: str) -> None:
        super().__init__("--processes", "2", "--stats-interval", "0.5", *flags, quiet=False)
        line = self.proc.stdout.readline().decode()  # printed once every child is ready
        assert line.startswith("serving with 2 processes"), self.stderr_tail()

    def processes(self) -> list[dict]:
        """The latest processes stats message, received after this call."""
        n = len(self.messages)
        ms = self.receive(lambda ms: any(m["kind"] == "processes" for m in ms[n:]))
        return [m for m in ms[n:] if m["kind"] == "processes"][-1]["processes"]


@pytest.fixture
def server():
    s = ProcServer()
    yield s
    s.close()


def _gap_free(server: ProcServer, sid: str) -> list[int]:
    seqs = [m["seq"] for m in server.of(sid)]
    assert seqs == list(range(len(seqs))), (sid, seqs)
    return seqs


def test_streams_spread_over_children_and_reach_the_public_publisher(server):
    audio, sr = _audio(5.0)
    ids = _ids("serve.p0", 3, "s") + _ids("serve.p1", 3, "s")
    legacy = _ids("serve.p0", 1, "old") + _ids("serve.p1", 1, "old")
    with server.client() as c, server.client() as old:
        old._redirect = False  # a 1.0 client: it never sees a redirect, the parent forwards for it
        for sid in ids:
            assert c.open(sid, sr, 1, "f32le", pace="batch").topic == f"tags.{sid}"
        for sid in legacy:
            old.open(sid, sr, 1, "f32le", pace="batch")
        children = {sid: c._streams[sid].sock.getsockopt_string(zmq.LAST_ENDPOINT) for sid in ids}
        assert len(set(children.values())) == 2  # both children hold streams of this one client
        assert all(st.sock is old.sock for st in old._streams.values())
        for start in range(0, len(audio), 1600):  # one message: chunks of all streams, split per child
            block = audio[start : start + 1600]
            c.send_many([(sid, block) for sid in ids])
            old.send_many([(sid, block) for sid in legacy])
        for sid in ids:
            assert c.close_stream(sid).type == "closed"
        for sid in legacy:
            assert old.close_stream(sid).reason == "closed"
    n = len(server.receive(server.ended(*ids, *legacy)))
    stats = server.receive(
        lambda ms: {m.get("server") for m in ms[n:] if m["kind"] == "stats"} >= {"serve.p0", "serve.p1"}
    )[n:]
    for sid in ids + legacy:
        assert len(_gap_free(server, sid)) >= 4
        assert len(server.of(sid, "tags")) >= 3
        assert server.of(sid, "end")[0]["end"]["reason"] == "closed"
    opened = {m["server"]: m["streams_opened"] for m in stats if m["kind"] == "stats"}
    assert opened == {"serve.p0": 4, "serve.p1": 4}
    procs = server.processes()
    assert [p["live"] for p in procs] == [True, True] and len({p["pid"] for p in procs}) == 2
    assert server.stop() == 0


@pytest.mark.slow
def test_a_killed_child_ends_its_streams_and_is_restarted(server):
    audio, sr = _audio(4.0)
    lost, kept = _ids("serve.p0", 3, "k"), _ids("serve.p1", 3, "k")
    with server.client() as c:
        for sid in lost + kept:
            c.open(sid, sr, 1, "f32le", pace="batch")
        ep = {sid: c._streams[sid].sock.getsockopt_string(zmq.LAST_ENDPOINT) for sid in lost + kept}
        for start in range(0, len(audio), 1600):
            c.send_many([(sid, audio[start : start + 1600]) for sid in lost + kept])
        server.receive(lambda ms: all(len(server.of(s, "tags")) >= 1 for s in lost + kept))
        p0 = server.processes()[0]
        t_kill = time.time()
        os.kill(p0["pid"], signal.SIGKILL)
        server.receive(server.ended(*lost), timeout_s=10)
        for sid in lost:
            end = server.of(sid, "end")[0]
            assert end["end"]["reason"] == "shard_lost" and "serve.p0" in end["end"]["error"]
            _gap_free(server, sid)  # the end follows the last message the child sent: seq = last + 1
        notices = []
        deadline = time.monotonic() + 5
        while {n.stream_id for n in notices if n.reason == "shard_lost"} < set(
            lost
        ) and time.monotonic() < deadline:
            notices += c.poll_notices(0.2)
        assert {n.stream_id for n in notices if n.type == "closed" and n.reason == "shard_lost"} == set(lost)
        assert not any(server.of(s, "end") for s in kept)
        # While p0 restarts, a stream that hashes to it goes to the live child.
        c.open(lost[0], sr, 1, "f32le", pace="batch")
        assert c._streams[lost[0]].sock.getsockopt_string(zmq.LAST_ENDPOINT) == ep[kept[0]]
        # The restarted p0 rejoins the ring on its endpoint and takes new streams.
        deadline = time.monotonic() + 60
        while not (procs := server.processes())[0]["live"]:
            assert time.monotonic() < deadline, server.stderr_tail()
        assert (
            procs[0]["restarts"] == 1 and procs[0]["pid"] != p0["pid"] and procs[0]["ingest"] == p0["ingest"]
        )
        restart_s = time.time() - t_kill
        fresh = _ids("serve.p0", 1, "fresh")[0]
        c.open(fresh, sr, 1, "f32le", pace="batch")
        assert c._streams[fresh].sock.getsockopt_string(zmq.LAST_ENDPOINT) == ep[lost[1]]
        for start in range(0, len(audio), 1600):
            c.send_many([(sid, audio[start : start + 1600]) for sid in (fresh, lost[0], *kept)])
        for sid in (fresh, lost[0], *kept):
            c.close_stream(sid)
    closed = lambda sid: [m for m in server.of(sid, "end") if m["end"]["reason"] == "closed"]  # noqa: E731
    server.receive(lambda ms: all(closed(sid) for sid in (fresh, lost[0], *kept)))
    for sid in kept:
        assert server.of(sid, "end")[0]["end"]["reason"] == "closed"
        _gap_free(server, sid)
    assert len(server.of(fresh, "tags")) >= 2
    ms = server.of(lost[0])
    marker = next(i for i, m in enumerate(ms) if m["kind"] == "end")  # shard_lost; then the reopened stream
    assert [m["seq"] for m in ms[: marker + 1]] == list(range(marker + 1))
    assert [m["seq"] for m in ms[marker + 1 :]] == list(range(len(ms) - marker - 1))
    assert ms[-1]["end"]["reason"] == "closed" and len(ms) - marker - 1 >= 3
    print(f"child restarted {restart_s:.1f} s after SIGKILL")
    assert server.stop() == 0


def test_client_opens_again_without_redirect_on_a_1_0_server():
    """A server that rejects the 1.1 ``redirect`` field (as 1.0 servers do): the client retries without it."""
    import threading

    from rt_tagger.ingest import Reply, encode_message

    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    seen: list[dict] = []

    def serve() -> None:
        for _ in range(2):
            identity, header = router.recv_multipart()
            h = json.loads(header)
            seen.append(h)
            reply = (
                Reply(type="error", reason="bad header: redirect: Extra inputs are not permitted")
                if "redirect" in h
                else Reply(type="opened", stream_id=h["stream_id"], topic=f"tags.{h['stream_id']}")
            )
            router.send_multipart([identity, *encode_message(reply)])

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    with IngestClient(f"tcp://127.0.0.1:{port}", timeout_s=5) as c:
        assert c.open("x", 16000).type == "opened"
    t.join(5)
    router.close(linger=0)
    ctx.term()
    assert [("redirect" in h) for h in seen] == [True, False]


def test_a_group_on_a_killed_child_ends_every_stream_of_it(server):
    """Protocol 1.2 through `serve --processes 2`: a group is redirected to the child its group id
    hashes to; when that child is killed, every stream of the group gets its `shard_lost` end with
    `seq` = its last + 1, and the client gets `closed` for the group. A subscriber of the group's
    frames (topic tagg.<group>) gets the same ends in one group frame."""
    audio, sr = _audio(4.0)
    group = _ids("serve.p0", 1, "grp")[0]
    whole = server.ctx.socket(zmq.SUB)
    whole.setsockopt(zmq.SUBSCRIBE, group_topic(group))
    whole.setsockopt(zmq.RCVHWM, 0)
    whole.connect(server.publish)
    time.sleep(0.3)
    ids = ["ga", "gb", "gc"]
    block = np.clip(np.round(np.stack([audio, audio * 0.5, audio[::-1]]) * 32768), -32768, 32767).astype(
        np.int16
    )
    with server.client() as c:
        c.open_group(group, ids, sr, pace="batch")
        for start in range(0, block.shape[1], 1600):
            c.send_group(group, block[:, start : start + 1600])
        server.receive(lambda ms: all(len(server.of(s, "tags")) >= 1 for s in ids))
        os.kill(server.processes()[0]["pid"], signal.SIGKILL)
        server.receive(server.ended(*ids), timeout_s=10)
        for sid in ids:
            end = server.of(sid, "end")[0]
            assert end["end"]["reason"] == "shard_lost"
            _gap_free(server, sid)
        notices = []
        deadline = time.monotonic() + 5
        while not any(n.stream_id == group for n in notices) and time.monotonic() < deadline:
            notices += c.poll_notices(0.2)
        assert any(n.stream_id == group and n.reason == "shard_lost" for n in notices)
    assert server.stop() == 0
    decoder, grouped = CompactDecoder(), []
    while whole.poll(200):
        grouped.append(decoder.decode_group(whole.recv_multipart()[1]))
    whole.close(linger=0)
    assert grouped and all([m.stream_id for m in rows] == ids for rows in grouped)
    *windows, ends = grouped
    assert [m.kind for m in ends] == ["end"] * 3
    for k, sid in enumerate(ids):
        assert ends[k].end.reason == "shard_lost"
        assert ends[k].seq == server.of(sid, "end")[0]["seq"] == windows[-1][k].seq + 1


def test_groups_go_to_the_process_with_the_fewest_group_streams(server):
    """Two groups whose ids both hash to serve.p0: the second goes to serve.p1, which holds none
    (the processes stats count each process's group streams)."""
    first, second = _ids("serve.p0", 2, "grp")
    with server.client() as c:
        for gid in (first, second):
            assert c.open_group(gid, [f"{gid}a", f"{gid}b", f"{gid}c"], 16000, pace="batch").type == "opened"
        # a stats message already on its way may predate the second open: wait for one that counts both
        counts = server.receive(
            lambda ms: any(
                m["kind"] == "processes" and sum(p["group_streams"] for p in m["processes"]) == 6 for m in ms
            )
        )
        last = [
            m
            for m in counts
            if m["kind"] == "processes" and sum(p["group_streams"] for p in m["processes"]) == 6
        ]
        assert [p["group_streams"] for p in last[0]["processes"]] == [3, 3]
        for gid in (first, second):
            assert c.close_group(gid).type == "closed"
    assert server.stop() == 0
