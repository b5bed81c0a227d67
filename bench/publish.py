"""``rt-tagger bench publish``: where the time of one published message goes, JSON vs compact.

Per message, timed one by one (perf_counter_ns): building the :class:`TagMessage` the way the
stream state does, the publisher's JSON serialisation, the compact encoding, the ZeroMQ send alone,
and the whole :meth:`Publisher.publish` with no subscriber, a JSON subscriber, a compact subscriber
and both. Subscribers are real SUB sockets in another process over loopback TCP, draining as fast
as they can. The target load (100 000 streams at a 0.5-s hop) is 200 000 messages/s per machine:
``msgs_per_s_core`` says how many one core would sustain at the median.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import numpy as np

from bench.common import new_document
from bench.machine import machine_info
from bench.stats import summarize

__all__ = ["COLUMNS", "add_arguments", "run"]

COLUMNS = [
    ("case", "case"),
    ("n", "messages"),
    ("p50_us", "p50 µs"),
    ("p99_us", "p99 µs"),
    ("mean_us", "mean µs"),
    ("bytes", "bytes/msg"),
    ("msgs_per_s_core", "msg/s per core (p50)"),
    ("dropped", "dropped"),
]

TARGET_MSGS_PER_S = 200_000

_SUB = r"""
import sys, zmq
ctx = zmq.Context(); s = ctx.socket(zmq.SUB); s.setsockopt(zmq.RCVHWM, 0)
for t in sys.argv[2:]:
    s.setsockopt(zmq.SUBSCRIBE, t.encode())
s.connect(sys.argv[1]); print("ready", flush=True)
n = 0
while s.poll(5000):
    s.recv_multipart(); n += 1
print(n, flush=True)
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--messages", type=int, default=20000, help="messages per case (default 20000)")
    p.add_argument("--streams", type=int, default=1000, help="distinct stream ids (default 1000)")
    p.add_argument(
        "--tags", type=int, default=33, help="tags in the vocabulary (default 33, the shipped model)"
    )
    p.add_argument("--full-scores", action="store_true", help="JSON carries every score (--full-scores)")


class _Maker:
    """Builds messages like rt_tagger.stream_state does (top 5, two active tags, the occasional event)."""

    def __init__(self, n_tags: int, n_streams: int, full_scores: bool) -> None:
        from rt_tagger.messages import BackendInfo, ModelInfo

        self.tags = [f"tag{i:02d}" for i in range(n_tags)]
        self.ids = [f"stream{i:05d}" for i in range(n_streams)]
        self.backend = BackendInfo(name="onnxruntime", device="cpu", precision="fp32")
        self.model = ModelInfo(name="default", weights_sha256="0123456789ab")
        self.full = full_scores
        self.rng = np.random.default_rng(0)
        self.scores = self.rng.random((64, n_tags), dtype=np.float32)

    def __call__(self, i: int):
        from rt_tagger.messages import DropCounters, StageTimings, TagEvent, TagMessage, TagScore, WindowInfo

        sid = self.ids[i % len(self.ids)]
        seq = i // len(self.ids)
        sc = self.scores[i % 64]
        top = np.argsort(sc)[::-1][:5]
        msg = TagMessage(
            kind="tags",
            stream_id=sid,
            seq=seq,
            window=WindowInfo(
                start_sample=seq * 8000,
                end_sample=seq * 8000 + 64000,
                start_s=seq * 0.5,
                end_s=seq * 0.5 + 4.0,
            ),
            capture_wall_time=time.time(),
            timings_ms=StageTimings(capture_to_ring=0.1, framing_mel=0.3, inference=2.0, aggregation=0.05),
            top=[TagScore(tag=self.tags[j], score=float(sc[j])) for j in top],
            scores=[float(x) for x in sc] if self.full else None,
            tags=list(self.tags) if (self.full or seq == 0) else None,
            events=[TagEvent(tag=self.tags[top[0]], state="on", time_s=seq * 0.5 + 4.0)]
            if i % 10 == 0
            else [],
            active=[self.tags[top[0]], self.tags[top[1]]],
            drops=DropCounters(),
            backend=self.backend,
            model=self.model,
            backlog_s=0.01,
            state="music",
        )
        msg._score_array = sc
        return msg


def _timed(fn, n: int) -> list[float]:
    out = []
    pc = time.perf_counter_ns
    for i in range(n):
        t = pc()
        fn(i)
        out.append((pc() - t) / 1e3)
    return out


def _row(case: str, us: list[float], **extra) -> dict:
    s = summarize(us)
    return {
        "case": case,
        **{k if k == "n" else f"{k}_us": v for k, v in s.items()},
        "msgs_per_s_core": 1e6 / s["p50"] if s["p50"] else None,
        **extra,
    }


def _subscriber(endpoint: str, topics: list[str]) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", _SUB, endpoint, *topics], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


def _await_subscription(pub, topic: bytes, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if hasattr(pub, "poll_subscriptions"):
            if topic in pub.poll_subscriptions(1000):
                return
        elif pub.sock.poll(1000) and pub.sock.recv()[1:] == topic:  # a publisher from before the compact form
            return


def run(args: argparse.Namespace) -> dict:
    from rt_tagger.messages import TagMessage
    from rt_tagger.publisher import _TAIL, Publisher

    try:
        from rt_tagger.compact import Vocabulary, encode
    except ImportError:  # measuring a checkout from before the compact encoding
        encode = None
    n = args.messages
    make = _Maker(args.tags, args.streams, args.full_scores)
    doc = new_document(
        "publish",
        machine_info(),
        {"messages": n, "streams": args.streams, "tags": args.tags, "full_scores": args.full_scores,
         "target_msgs_per_s": TARGET_MSGS_PER_S, "transport": "tcp loopback, subscriber in another process",
         "compact_encoding": encode is not None},
    )  # fmt: skip
    pool = [make(i) for i in range(min(n, 200))]  # prebuilt: the stages below time only themselves
    ser = TagMessage.__pydantic_serializer__
    rows = [
        _row("build TagMessage", _timed(make, n)),
        _row("JSON serialise (publisher's)", _timed(lambda i: ser.to_json(pool[i % len(pool)], exclude=_TAIL), n),
             bytes=len(ser.to_json(pool[1]))),
    ]  # fmt: skip
    cases = [("publish, no subscriber", []), ("publish, JSON subscriber", ["tags."])]
    if encode is not None:
        vocab = Vocabulary.build(make.tags, make.model, make.backend)
        rows.append(
            _row("compact encode", _timed(lambda i: encode(pool[i % len(pool)], vocab), n),
                 bytes=len(encode(pool[1], vocab)))
        )  # fmt: skip
        cases += [
            ("publish, compact subscriber", ["tagb."]),
            ("publish, JSON + compact subscribers", ["tags.", "tagb."]),
        ]
    pub = Publisher("tcp://127.0.0.1:*", sndhwm=n * 2, linger_ms=0)
    sub = _subscriber(pub.endpoint, ["tags."])
    _await_subscription(pub, b"tags.")
    body = ser.to_json(pool[1])
    rows.append(
        _row(
            "ZeroMQ send_multipart alone (JSON body)",
            _timed(lambda i: pub.sock.send_multipart((b"tags.x\0", body), flags=1), n),
        )
    )
    sub.communicate(timeout=60)
    pub.close(linger_ms=0)
    # The publisher's own CPU work: subscribers on inproc SUB sockets of this process, not read
    # (queues large enough for every message), so no other thread or process competes for the cores.
    for case, topics in cases[1:]:
        import zmq

        ctx = zmq.Context()
        pub = Publisher(f"inproc://bench-{len(rows)}", sndhwm=n * 2 + 10, linger_ms=0, context=ctx)
        socks = []
        for t in topics:
            s = ctx.socket(zmq.SUB)
            s.setsockopt(zmq.RCVHWM, n * 2 + 10)
            s.setsockopt(zmq.SUBSCRIBE, t.encode())
            s.connect(pub.endpoint)
            socks.append(s)
            _await_subscription(pub, t.encode())
        us = []
        pc = time.perf_counter_ns
        for i in range(n):
            msg = make(i)
            t0 = pc()
            pub.publish(msg)
            us.append((pc() - t0) / 1e3)
        rows.append(_row(case.replace("subscribers", "inproc subscribers, unread").replace("subscriber", "inproc subscriber, unread"), us, dropped=pub.dropped,
                         encoded=getattr(pub, "encoded", None)))  # fmt: skip
        for s in socks:
            s.close(linger=0)
        pub.close(linger_ms=0)
        ctx.term()
    for case, topics in cases:
        case = case.replace("subscribers", "TCP subscriber processes").replace(
            "subscriber", "TCP subscriber process"
        )
        pub = Publisher("tcp://127.0.0.1:*", sndhwm=max(n, 1000) * 2, linger_ms=0)
        subs = []
        try:
            for t in topics:
                subs.append(_subscriber(pub.endpoint, [t]))
                _await_subscription(pub, t.encode())
            us = []  # each message built just before its publish(), which alone is timed
            pc = time.perf_counter_ns
            for i in range(n):
                msg = make(i)
                t = pc()
                pub.publish(msg)
                us.append((pc() - t) / 1e3)
            got = []
            for p in subs:
                out, _ = p.communicate(timeout=60)
                got.append(int(out.split()[-1]))
            rows.append(
                _row(case, us, dropped=pub.dropped, received=got, encoded=getattr(pub, "encoded", None))
            )
        finally:
            for p in subs:
                if p.poll() is None:
                    p.kill()
            pub.close(linger_ms=0)
    doc["results"] = rows
    by = {r["case"]: r for r in rows}
    doc["summary"] = {
        f"{c} p50/p99 µs": f"{by[c]['p50_us']:.1f} / {by[c]['p99_us']:.1f}"
        for c in by
        if c.startswith("publish")
    }
    for label, case in (
        ("JSON", "publish, JSON inproc subscriber, unread"),
        ("compact", "publish, compact inproc subscriber, unread"),
    ):
        if case in by:
            doc["summary"][f"cores for 200k msg/s, {label} publish() alone (p50)"] = (
                TARGET_MSGS_PER_S / by[case]["msgs_per_s_core"]
            )
    doc["notes"].append(
        "build TagMessage is not part of publish(): the stream state builds the message; it is listed "
        "because it is per-message Python work of the same order. Timings include perf_counter_ns overhead "
        "(~0.1 µs). The machine is shared (2 cores): medians are the numbers to compare."
    )
    return doc
