"""Shared ZeroMQ test helpers: a publisher in a spawned process, real CLI subscribers, messages.

Used by test_publisher.py, test_subscribe.py, test_example_c.py and test_cli.py (no test module
imports another).
"""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import zmq

from engines.errors import UserError
from rt_tagger.compact import compact_topic
from rt_tagger.compact import encode as encode_compact
from rt_tagger.messages import BackendInfo, DropCounters, EndInfo, ModelInfo, TagMessage, TagScore, WindowInfo
from rt_tagger.publisher import Publisher, PublisherError, stream_topic
from rt_tagger.subscribe import run_subscribe

ROOT = Path(__file__).resolve().parents[2]
TAGS = ["piano", "guitar", "drums", "strings"]
BACKEND = BackendInfo(name="torch", device="cpu", precision="fp32")
MODEL = ModelInfo(name="test", weights_sha256="0123456789ab")


def ipc_endpoint() -> str:
    # A short path: ipc socket paths are limited to ~107 bytes.
    return f"ipc://{tempfile.mkdtemp(prefix='rtt-')}/pub.sock"


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
        tags=(TAGS + [f"t{i}" for i in range(len(TAGS), n_scores)])[:n_scores] if scores else None,
        active=["piano"],
        drops=DropCounters(),
        backend=BACKEND,
        model=MODEL,
    )


def end_body(seq: int, stream_id: str = "test", reason: str = "eof") -> bytes:
    """A ``kind="end"`` message body as a publisher sends it (compact JSON)."""
    msg = make_message(seq, stream_id)
    msg.kind, msg.top, msg.active, msg.window, msg.timings_ms = "end", [], [], None, None
    msg.end = EndInfo(reason=reason, stream_s=seq * 0.5, windows=seq, heartbeats=0)
    msg.publish_wall_time = time.time()
    return msg.to_bytes()


def send_until_queued(sock: zmq.Socket, frames: list[bytes], timeout_s: float = 30.0) -> None:
    """Send with ``XPUB_NODROP`` semantics: retry until every subscriber's queue takes it."""
    sock.setsockopt(zmq.XPUB_NODROP, 1)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            sock.send_multipart(frames, flags=zmq.NOBLOCK)
            return
        except zmq.Again:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _wait_subscriptions(pub: Publisher, n: int, timeout_s: float, q) -> None:
    """Wait until ``n`` subscriptions arrived (one per subscriber and topic); each is
    reported on ``q`` as ``("subscribed", topic)``."""
    seen = 0
    deadline = time.monotonic() + timeout_s
    while seen < n and time.monotonic() < deadline:
        for topic in pub.poll_subscriptions(max(1, int((deadline - time.monotonic()) * 1000))):
            seen += 1
            q.put(("subscribed", topic))


def run_publisher(
    endpoint: str,
    q,
    stop,
    n: int | None = None,
    period_s: float = 0.0,
    heartbeat_every: int = 0,
    skip: tuple[int, ...] = (),
    wait_sub_s: float = 0.0,
    wait_topics: int = 0,
    progress_at: int | None = None,
    max_s: float = 60.0,
    streams: tuple[str, ...] = ("test",),
    n_scores: int = 0,
    end_on=None,
    **pub_kw,
) -> None:
    """Process target: bind, report the endpoint, publish ``n`` messages per stream (or until
    ``stop``); then, if ``end_on`` is given, wait for it and send each stream's end message."""
    try:
        pub = Publisher(endpoint, linger_ms=3000, **pub_kw)
    except UserError as e:
        q.put(("error", str(e)))
        return
    with pub:
        q.put(("endpoint", pub.endpoint))
        if wait_topics:
            _wait_subscriptions(pub, wait_topics, wait_sub_s or 30, q)
        elif wait_sub_s:
            pub.wait_for_subscriber(wait_sub_s)
        t_end = time.monotonic() + max_s
        seq = 0
        while (n is None or seq < n) and not stop.is_set() and time.monotonic() < t_end:
            for stream in streams:
                if seq in skip:  # a deliberate gap: the seq number is used up but not sent
                    continue
                if heartbeat_every and seq % heartbeat_every == heartbeat_every - 1:
                    msg = TagMessage.heartbeat(stream, seq, "silent", backend=BACKEND, model=MODEL)
                else:
                    msg = make_message(seq, stream, n_scores)
                pub.publish(msg)
            if progress_at is not None and seq == progress_at:
                q.put(("progress", seq))
            seq += 1
            if period_s:
                time.sleep(period_s)
        q.put(("done", pub.sent, pub.dropped))
        q.put(("encoded", pub.encoded))
        if end_on is not None and end_on.wait(60):
            for stream in streams:
                send_until_queued(pub.sock, [stream_topic(stream), end_body(seq, stream)])
                # and for compact subscribers (topic tagb.), as the publisher encodes an end message
                end = TagMessage(
                    kind="end", stream_id=stream, seq=seq, backend=BACKEND, model=MODEL,
                    end=EndInfo(reason="eof", stream_s=seq * 0.5, windows=seq, heartbeats=0),
                )  # fmt: skip
                send_until_queued(pub.sock, [compact_topic(stream), bytes(encode_compact(end, None))])
        stop.wait(10)  # keep the socket up until the test has read what it needs


@dataclass
class PubHandle:
    endpoint: str
    q: object
    stop: object
    proc: object
    end_on: object

    def get(self, kind: str, timeout: float = 30.0):
        while True:
            item = self.q.get(timeout=timeout)
            if item[0] == kind:
                return item


@contextlib.contextmanager
def publisher_process(endpoint: str, **kw):
    """Start :func:`run_publisher` in a spawned process; yields a :class:`PubHandle`.

    With ``send_end=True`` the publisher sends end messages once ``handle.end_on`` is set.
    """
    ctx = mp.get_context("spawn")
    q, stop = ctx.Queue(), ctx.Event()
    end_on = ctx.Event() if kw.pop("send_end", False) else None
    proc = ctx.Process(
        target=run_publisher, args=(endpoint, q, stop), kwargs=dict(kw, end_on=end_on), daemon=True
    )
    proc.start()
    try:
        kind, value = q.get(timeout=60)
        if kind == "error":
            raise PublisherError(value)
        yield PubHandle(value, q, stop, proc, end_on)
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
    """The tags/heartbeat messages of a ``--json`` output (end messages left out)."""
    docs = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    return [TagMessage.model_validate(d) for d in docs if d.get("kind") != "end"]


def subscribe_in_thread(endpoint: str, **kw) -> tuple[threading.Thread, dict]:
    """run_subscribe in a thread of this (test) process; the publisher is another process."""
    result: dict = {"out": io.StringIO(), "err": io.StringIO()}
    kw.setdefault("raw_json", True)

    def target():
        try:
            result["rc"] = run_subscribe(endpoint, out=result["out"], err=result["err"], **kw)
        except UserError as e:
            result["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, result
