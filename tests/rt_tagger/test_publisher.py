"""Publisher over real ZeroMQ sockets, with the publisher and subscribers in separate OS processes.

The subscriber side is the real ``python -m rt_tagger.subscribe`` (what users run); the publisher
runs in a spawned process (helpers: zmq_helpers.py).
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys

import pytest
import zmq

from engines.errors import UserError
from rt_tagger.curve_keys import generate_keys
from rt_tagger.messages import TagMessage
from rt_tagger.publisher import Publisher, parse_endpoint, stream_topic
from rt_tagger.subscribe import SubscribeTimeout
from tests.rt_tagger.zmq_helpers import (
    ipc_endpoint,
    json_lines,
    make_message,
    publisher_process,
    start_subscriber,
    subscribe_in_thread,
)


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


def test_allow_remote_needs_curve_or_insecure_remote(tmp_path):
    with pytest.raises(UserError, match="without encryption.*--insecure-remote"):
        Publisher("tcp://0.0.0.0:*", allow_remote=True)
    with Publisher("tcp://0.0.0.0:*", allow_remote=True, insecure_remote=True, linger_ms=0) as pub:
        assert pub.endpoint.startswith("tcp://0.0.0.0:")
    keys = generate_keys(tmp_path / "keys")
    with Publisher("tcp://0.0.0.0:*", allow_remote=True, curve_server_secret=keys.server_secret, linger_ms=0):
        pass


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
    with Publisher("inproc://fill-test", linger_ms=0, context=zmq.Context.instance()) as pub:
        sub = zmq.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect("inproc://fill-test")
        assert pub.wait_for_subscriber(5)
        msg = make_message(3, n_scores=4)
        assert pub.publish(msg)
        topic, body = sub.recv_multipart()
        sub.close(linger=0)
    assert topic == b"tags.test\0" == stream_topic("test")
    back = TagMessage.from_bytes(body)
    assert back == msg and json.loads(body)["timings_ms"]["publish"] == msg.timings_ms.publish
    assert back.publish_wall_time > 0


def test_keygen_cli(tmp_path, capsys):
    from rt_tagger.curve_keys import keygen_main

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


# -- a slow subscriber loses only its own messages ---------------------------------------------------
def test_sigstopped_subscriber_loses_only_its_own_messages_and_they_are_counted():
    """Two subscriber processes over ipc with a small send queue; one is SIGSTOPped (with
    XPUB_NODROP alone, the healthy one then saw the same seq gap). The healthy one gets every
    message; the stopped one misses some, and the publisher's counter is a lower bound of them
    (see the publisher's docstring for what it counts)."""
    n = 600
    with publisher_process(
        ipc_endpoint(), n=n, period_s=0.002, n_scores=400, sndhwm=50, wait_topics=2, send_end=True
    ) as pub:
        # Different subscriptions, so that the publisher sees two arrive (XPUB reports each topic once).
        stalled = start_subscriber(pub.endpoint, "--json", "--topic", "tags.", "--timeout", "5")
        healthy = None
        try:
            pub.get("subscribed", timeout=60)
            stalled.send_signal(signal.SIGSTOP)  # subscribed, and stopped before anything is published
            healthy = start_subscriber(pub.endpoint, "--json", "--stream", "test", "--timeout", "60")
            _, sent, dropped = pub.get("done", timeout=120)
            stalled.send_signal(signal.SIGCONT)  # it reads its backlog, then times out or gets the end
            pub.end_on.set()
            h_out, h_err = healthy.communicate(timeout=60)
            s_out, s_err = stalled.communicate(timeout=60)
        finally:
            for p in (stalled, healthy):
                if p is not None and p.poll() is None:
                    p.send_signal(signal.SIGCONT)
                    p.kill()
    assert healthy.returncode == 0, h_err
    assert [m.seq for m in json_lines(h_out)] == list(range(n)), h_err
    assert "0 gaps (0 missing)" in h_err
    got = [m.seq for m in json_lines(s_out)]
    assert got == sorted(got) and len(got) < n, s_err
    assert 0 < dropped <= n - len(got) and sent + dropped == n


# -- exact per-stream topics ---------------------------------------------------------------------------
def test_stream_topic_is_exact_and_prefixes_still_work():
    streams = ("alpha", "alpha2", "beta")
    with publisher_process(
        "tcp://127.0.0.1:*", n=50, streams=streams, wait_topics=3, period_s=0.002, send_end=True
    ) as pub:
        exact = start_subscriber(pub.endpoint, "--json", "--stream", "alpha", "--timeout", "30")
        prefix = start_subscriber(pub.endpoint, "--json", "--topic", "tags.alpha", "--timeout", "30")
        everything = start_subscriber(pub.endpoint, "--json", "--timeout", "30")
        pub.get("done", timeout=60)
        pub.end_on.set()
        outs = [p.communicate(timeout=60) for p in (exact, prefix, everything)]
    assert [p.returncode for p in (exact, prefix, everything)] == [0, 0, 0], outs
    seen = [sorted({m.stream_id for m in json_lines(out)}) for out, _ in outs]
    assert seen == [["alpha"], ["alpha", "alpha2"], ["alpha", "alpha2", "beta"]]
    assert [len(json_lines(out)) for out, _ in outs] == [50, 100, 150]


def test_curve_clients_folder_without_keys_is_refused(tmp_path):
    keys = generate_keys(tmp_path / "keys")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"no client public keys \(\*\.key\)"):
        Publisher(
            "tcp://127.0.0.1:*", curve_server_secret=keys.server_secret, curve_clients=tmp_path / "empty"
        )


def test_one_warning_per_burst_of_drops(caplog):
    """A subscriber that reads now and then makes its queue fill again and again: many counted
    drops, one warning line."""
    ctx = zmq.Context()
    with Publisher("tcp://127.0.0.1:*", sndhwm=2, linger_ms=0, context=ctx) as pub:
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.RCVHWM, 2)
        sub.setsockopt(zmq.RCVBUF, 4096)
        sub.setsockopt(zmq.SUBSCRIBE, b"tags.")
        sub.connect(pub.endpoint)
        try:
            assert pub.wait_for_subscriber(30)
            with caplog.at_level("WARNING", logger="rt_tagger.publisher"):
                for seq in range(3000):
                    pub.publish(make_message(seq, n_scores=400))
                    if seq % 100 == 99:  # read what arrived: the queue reopens, then fills again
                        while sub.poll(50):
                            sub.recv_multipart()
        finally:
            sub.close(linger=0)
    ctx.term()
    warnings = [r for r in caplog.records if r.name == "rt_tagger.publisher"]
    assert pub.dropped >= 2, pub.dropped
    assert len(warnings) == 1 and "not keeping up" in warnings[0].getMessage()
