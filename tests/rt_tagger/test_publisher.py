"""Publisher over real ZeroMQ sockets, with the publisher and subscribers in separate OS processes.

The subscriber side is the real ``python -m rt_tagger.subscribe`` (what users run); the publisher
runs in a spawned process. Helpers here are reused by test_subscribe.py and test_example_c.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from engines.errors import UserError
from rt_tagger.curve import generate_keys
from rt_tagger.messages import (
    BackendInfo,
    DropCounters,
    ModelInfo,
    TagMessage,
    TagScore,
    WindowInfo,
)
from rt_tagger.publisher import Publisher, PublisherError, parse_endpoint
from rt_tagger.subscribe import SubscribeTimeout, run_subscribe

ROOT = Path(__file__).resolve().parents[2]
TAGS = ["piano", "guitar", "drums", "strings"]


# -- helpers (also used by the other test modules) -------------------------------------------------
def make_message(seq: int, stream_id: str = "test", n_scores: int = 0) -> TagMessage:
    """A plausible tags message; ``n_scores`` > 0 adds a full score vector (bigger body)."""
    hop = 8000
    scores = [((seq * 7 + i) % 100) / 100 for i in range(n_scores)] or None
    return TagMessage(
        stream_id=stream_id,
        seq=seq,
        window=WindowInfo(
            start_sample=seq * hop, end_sample=seq * hop + 64000, start_s=seq * 0.5, end_s=seq * 0.5 + 4
        ),
        capture_wall_time=time.time(),
        top=[TagScore(tag=t, score=round(1 / (i + 2), 3)) for i, t in enumerate(TAGS)],
        scores=scores,
        tags=[f"t{i}" for i in range(n_scores)] if scores else None,
        active=["piano"],
        drops=DropCounters(),
        backend=BackendInfo(name="torch", device="cpu", precision="fp32"),
        model=ModelInfo(name="test", weights_sha256="0123456789ab"),
    )


def run_publisher(
    endpoint: str,
    q,
    stop,
    n: int | None = None,
    period_s: float = 0.0,
    heartbeat_every: int = 0,
    skip: tuple[int, ...] = (),
    wait_sub_s: float = 0.0,
    progress_at: int | None = None,
    max_s: float = 60.0,
    **pub_kw,
) -> None:
    """Process target: bind, report the endpoint, publish ``n`` messages (or until ``stop``)."""
    try:
        pub = Publisher(endpoint, linger_ms=3000, **pub_kw)
    except UserError as e:
        q.put(("error", str(e)))
        return
    with pub:
        q.put(("endpoint", pub.endpoint))
        if wait_sub_s:
            pub.wait_for_subscriber(wait_sub_s)
        t_end = time.monotonic() + max_s
        seq = 0
        while (n is None or seq < n) and not stop.is_set() and time.monotonic() < t_end:
            if seq not in skip:  # a deliberate gap: the seq number is used up but not sent
                if heartbeat_every and seq % heartbeat_every == heartbeat_every - 1:
                    beat = TagMessage.heartbeat(
                        "test",
                        seq,
                        "silent",
                        backend=BackendInfo(name="torch", device="cpu", precision="fp32"),
                        model=ModelInfo(name="test", weights_sha256="0123456789ab"),
                    )
                    pub.publish(beat)
                else:
                    pub.publish(make_message(seq))
            if progress_at is not None and seq == progress_at:
                q.put(("progress", seq))
            seq += 1
            if period_s:
                time.sleep(period_s)
        q.put(("done", pub.sent, pub.dropped))
        stop.wait(10)  # keep the socket up until the test has read what it needs


@dataclass
class PubHandle:
    endpoint: str
    q: object
    stop: object
    proc: object

    def get(self, kind: str, timeout: float = 30.0):
        while True:
            item = self.q.get(timeout=timeout)
            if item[0] == kind:
                return item


@contextlib.contextmanager
def publisher_process(endpoint: str, **kw):
    """Start :func:`run_publisher` in a spawned process; yields a :class:`PubHandle`."""
    ctx = mp.get_context("spawn")
    q, stop = ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=run_publisher, args=(endpoint, q, stop), kwargs=kw, daemon=True)
    proc.start()
    try:
        kind, value = q.get(timeout=60)
        if kind == "error":
            raise PublisherError(value)
        yield PubHandle(value, q, stop, proc)
    finally:
        stop.set()
        proc.join(15)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)


def start_subscriber(endpoint: str, *args: str) -> subprocess.Popen:
    """The real CLI subscriber in its own process."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONIOENCODING="utf-8")
    return subprocess.Popen(
        [sys.executable, "-m", "rt_tagger.subscribe", "--endpoint", endpoint, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )


def json_lines(stdout: str) -> list[TagMessage]:
    return [TagMessage.from_bytes(line) for line in stdout.splitlines() if line.strip()]


def ipc_endpoint() -> str:
    # A short path: ipc socket paths are limited to ~107 bytes.
    return f"ipc://{tempfile.mkdtemp(prefix='rtt-')}/pub.sock"


# -- two processes, no gaps -------------------------------------------------------------------------
@pytest.mark.parametrize("transport", ["tcp", "ipc"])
def test_two_processes_receive_every_message_in_order(transport):
    endpoint = "tcp://127.0.0.1:*" if transport == "tcp" else ipc_endpoint()
    n = 300
    with publisher_process(endpoint, n=n, heartbeat_every=50, wait_sub_s=30) as pub:
        if transport == "tcp":  # the CLI in its own process
            sub = start_subscriber(pub.endpoint, "--json", "--count", str(n), "--timeout", "30")
            out, err = sub.communicate(timeout=90)
            assert sub.returncode == 0, err
        else:  # run_subscribe in this process (the publisher is still another process)
            t, res = subscribe_in_thread(pub.endpoint, count=n, timeout_s=30)
            t.join(90)
            assert res.get("rc") == 0, res
            out, err = res["out"].getvalue(), res["err"].getvalue()
        _, sent, dropped = pub.get("done")
    msgs = json_lines(out)
    assert [m.seq for m in msgs] == list(range(n))
    assert (sent, dropped) == (n, 0)
    assert all(m.stream_id == "test" for m in msgs)
    beats = [m for m in msgs if m.kind == "heartbeat"]
    assert [m.seq for m in beats] == list(range(49, n, 50)) and all(
        m.heartbeat_reason == "silent" for m in beats
    )
    assert all(m.publish_wall_time >= m.capture_wall_time for m in msgs if m.kind == "tags")
    assert all(m.timings_ms is not None and m.timings_ms.publish >= 0 for m in msgs)
    assert "0 gaps" in err


def test_late_subscriber_gets_well_formed_consecutive_messages():
    with publisher_process("tcp://127.0.0.1:*", period_s=0.005, progress_at=30) as pub:
        pub.get("progress")  # 30+ messages already went out to nobody
        t, res = subscribe_in_thread(pub.endpoint, count=20, timeout_s=30)
        t.join(90)
    assert res.get("rc") == 0, res
    msgs = json_lines(res["out"].getvalue())  # from_bytes validates every field
    seqs = [m.seq for m in msgs]
    assert len(msgs) == 20 and seqs[0] > 30
    assert seqs == list(range(seqs[0], seqs[0] + 20))


# -- never blocks, drops counted --------------------------------------------------------------------
STALLED_SUBSCRIBER = """
import sys, zmq
ctx = zmq.Context()
s = ctx.socket(zmq.SUB)
s.setsockopt(zmq.RCVHWM, 1)
s.setsockopt(zmq.RCVBUF, 4096)
s.setsockopt(zmq.SUBSCRIBE, b"tags.")
s.connect(sys.argv[1])
print("connected", flush=True)
sys.stdin.read()  # never receive: a stalled consumer
"""


def test_stalled_subscriber_never_blocks_and_drops_are_counted_exactly():
    n = 10_000
    with Publisher("tcp://127.0.0.1:*", sndhwm=1, linger_ms=0) as pub:
        stalled = subprocess.Popen(
            [sys.executable, "-c", STALLED_SUBSCRIBER, pub.endpoint],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        try:
            assert pub.wait_for_subscriber(30), "the stalled subscriber never subscribed"
            results = []
            for seq in range(n):
                msg = make_message(seq, n_scores=400)  # ~8 KB each: far more than socket buffers hold
                dropped_before = pub.dropped
                results.append(pub.publish(msg))
                assert msg.drops.publisher_dropped == dropped_before
        finally:
            stalled.kill()
            stalled.wait()
        assert results.count(False) == pub.dropped > 0
        assert pub.sent == results.count(True) == n - pub.dropped


def test_absent_subscriber_costs_nothing_and_drops_nothing():
    with Publisher("tcp://127.0.0.1:*", sndhwm=1, linger_ms=0) as pub:
        assert all(pub.publish(make_message(seq)) for seq in range(10_000))
        assert (pub.sent, pub.dropped) == (10_000, 0)


# -- user errors ------------------------------------------------------------------------------------
def test_port_in_use_is_one_clear_user_error():
    with Publisher("tcp://127.0.0.1:*") as first:
        with pytest.raises(UserError, match=r"^address already in use: tcp://127\.0\.0\.1:\d+$") as e:
            Publisher(first.endpoint)
        assert "\n" not in str(e.value)


def test_ipc_path_in_use_is_refused_but_a_stale_file_is_reused(tmp_path):
    url = f"ipc://{tmp_path}/pub.sock"
    with Publisher(url, linger_ms=0):
        with pytest.raises(UserError, match=r"^address already in use: ipc://"):
            Publisher(url)  # libzmq alone would silently take the path over
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))  # a socket file nobody listens on (as after a crash)
    s.close()
    with Publisher(f"ipc://{stale}", linger_ms=0) as pub:
        assert pub.endpoint == f"ipc://{stale}"


@pytest.mark.parametrize(
    "endpoint", ["tcp://0.0.0.0:5556", "tcp://*:5556", "tcp://192.168.1.20:5556", "tcp://eth0:5556"]
)
def test_binding_beyond_loopback_needs_allow_remote(endpoint):
    with pytest.raises(UserError, match="beyond loopback"):
        Publisher(endpoint)


def test_allow_remote_binds_all_interfaces():
    with Publisher("tcp://0.0.0.0:*", allow_remote=True, linger_ms=0) as pub:
        assert pub.endpoint.startswith("tcp://0.0.0.0:")


@pytest.mark.parametrize(
    "endpoint",
    [
        "",
        "localhost:5556",
        "tcp://127.0.0.1",
        "tcp://127.0.0.1:0",
        "tcp://127.0.0.1:70000",
        "udp://x:1",
        "ipc://",
    ],
)
def test_invalid_endpoints_are_user_errors(endpoint):
    with pytest.raises(UserError, match="invalid endpoint"):
        Publisher(endpoint)


def test_loopback_forms_are_local():
    for url in ["tcp://127.0.0.1:1", "tcp://localhost:1", "tcp://[::1]:1", "ipc:///tmp/x", "inproc://x"]:
        assert parse_endpoint(url).is_local, url


def test_missing_ipc_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="ipc folder does not exist"):
        Publisher(f"ipc://{tmp_path}/nope/pub.sock")


# -- CURVE ------------------------------------------------------------------------------------------
def subscribe_in_thread(endpoint: str, **kw) -> tuple[threading.Thread, dict]:
    """run_subscribe in a thread of this (test) process; the publisher is another process."""
    result: dict = {"out": io.StringIO(), "err": io.StringIO()}

    def target():
        try:
            result["rc"] = run_subscribe(endpoint, raw_json=True, out=result["out"], err=result["err"], **kw)
        except UserError as e:
            result["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, result


def test_curve_right_key_receives_wrong_key_and_plaintext_receive_nothing(tmp_path):
    keys = generate_keys(tmp_path / "keys")
    other = generate_keys(tmp_path / "other")
    assert oct(keys.server_secret.stat().st_mode & 0o777) == "0o600"
    with publisher_process(
        "tcp://127.0.0.1:*",
        period_s=0.01,
        curve_server_secret=keys.server_secret,
        curve_clients=keys.authorized_clients,
    ) as pub:
        # The user's path (CLI, own process) with the right keys...
        good = start_subscriber(
            pub.endpoint,
            *("--json", "--count", "3", "--timeout", "30"),
            *("--curve-public", str(keys.server_public), "--curve-client-dir", str(tmp_path / "keys")),
        )
        # ...and three wrong ones at the same time, each waiting at most 3 s.
        bad = {
            "wrong server key": dict(
                curve_server_public=other.server_public, curve_client_dir=keys.client_secret
            ),
            "unknown client key": dict(
                curve_server_public=keys.server_public, curve_client_dir=other.client_secret
            ),
            "ephemeral client key": dict(curve_server_public=keys.server_public),
            "no CURVE": {},
        }
        threads = {
            why: subscribe_in_thread(pub.endpoint, count=3, timeout_s=3.0, **kw) for why, kw in bad.items()
        }
        out, err = good.communicate(timeout=90)
        assert good.returncode == 0, err
        assert len(json_lines(out)) == 3
        for why, (t, res) in threads.items():
            t.join(30)
            assert isinstance(res.get("error"), SubscribeTimeout), why
            assert res["out"].getvalue() == "", why


def test_curve_key_problems_are_user_errors(tmp_path):
    keys = generate_keys(tmp_path)
    with pytest.raises(UserError, match="already exist"):
        generate_keys(tmp_path)
    with pytest.raises(UserError, match="holds no secret key"):
        Publisher("tcp://127.0.0.1:*", curve_server_secret=keys.server_public)
    with pytest.raises(UserError, match="not found"):
        Publisher("tcp://127.0.0.1:*", curve_server_secret=tmp_path / "missing.key_secret")
    with pytest.raises(UserError, match="needs --curve-secret"):
        Publisher("tcp://127.0.0.1:*", curve_clients=keys.authorized_clients)
    (tmp_path / "junk.key_secret").write_text("hello\n")
    with pytest.raises(UserError, match="not a ZeroMQ CURVE key file"):
        Publisher("tcp://127.0.0.1:*", curve_server_secret=tmp_path / "junk.key_secret")


def test_messages_from_publish_are_valid_json_with_filled_fields():
    """The publisher's own serialisation (timings appended last) parses like to_bytes()."""
    import zmq

    with Publisher("inproc://fill-test", linger_ms=0, context=zmq.Context.instance()) as pub:
        sub = zmq.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect("inproc://fill-test")
        assert pub.wait_for_subscriber(5)
        msg = make_message(3, n_scores=4)
        assert pub.publish(msg)
        topic, body = sub.recv_multipart()
        sub.close(linger=0)
    assert topic == b"tags.test"
    back = TagMessage.from_bytes(body)
    assert back == msg and json.loads(body)["timings_ms"]["publish"] == msg.timings_ms.publish
    assert back.publish_wall_time > 0


def test_keygen_cli(tmp_path, capsys):
    from rt_tagger.curve import keygen_main

    assert keygen_main([str(tmp_path / "k")]) == 0
    assert "server.key_secret" in capsys.readouterr().out
    old = (tmp_path / "k" / "server.key").read_text()
    with pytest.raises(UserError, match="already exist"):
        keygen_main([str(tmp_path / "k")])
    assert keygen_main([str(tmp_path / "k"), "--force"]) == 0
    assert (tmp_path / "k" / "server.key").read_text() != old
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == [
        "authorized_clients",
        "client.key",
        "client.key_secret",
        "server.key",
        "server.key_secret",
    ]
