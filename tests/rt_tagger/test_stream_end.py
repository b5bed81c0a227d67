"""End of stream across processes: `rt-tagger stream -` in its own process, a real ZeroMQ SUB
socket here. Every way a stream can end (input EOF, SIGTERM, SIGINT, --duration) must reach the
subscriber as one ``kind="end"`` message naming the reason, with the final counters, and the
tagger must exit cleanly: 0 for all four. SIGTERM/SIGINT arrive while stdin is open and idle
(no audio ever written), the state that used to abort the interpreter
(``Fatal Python error: _enter_buffered_busy``, exit 134).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zmq

from rt_tagger.messages import TagMessage
from tests.rt_tagger.conftest import ROOT, cli_env


class _Tagger:
    """``rt-tagger stream -`` publishing on an ipc endpoint, and a SUB socket reading it."""

    def __init__(self, bundle, tmp_path, *extra: str) -> None:
        self.endpoint = f"ipc://{tmp_path}/pub.sock"
        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"tags.")
        self.sub.connect(self.endpoint)  # before the publisher binds: ZeroMQ retries until it does
        cmd = [
            sys.executable, "-m", "rt_tagger.cli", "stream", "-", "--rate", "16000", "--bundle", str(bundle.path),
            "--hop", "0.5", "--publish", self.endpoint, "--stream-id", "end-test", "-q", *extra,
        ]  # fmt: skip
        self.stderr = open(tmp_path / "stderr.txt", "w+b")  # a file: a full pipe cannot block the tagger
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self.stderr, env=cli_env(), cwd=ROOT
        )
        self.messages: list[TagMessage] = []

    def receive_until(self, done, timeout_s: float = 90.0) -> TagMessage | None:
        """Receive until ``done(msg)``; the matching message, or None (timeout or the tagger exited)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.sub.poll(200):
                msg = TagMessage.from_bytes(self.sub.recv_multipart()[1])
                self.messages.append(msg)
                if done(msg):
                    return msg
            elif self.proc.poll() is not None and not self.sub.poll(500):
                return None
        return None

    def finish(self) -> tuple[int, str]:
        try:  # stdin stays open (and idle) until the tagger has exited: the state under test
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:  # data still buffered for a tagger that has exited
                pass
        self.sub.close()
        self.ctx.term()
        self.stderr.seek(0)
        return self.proc.returncode, self.stderr.read().decode(errors="replace")


def _pcm(demo_audio, seconds: float) -> bytes:
    x, sr = demo_audio
    assert sr == 16000
    return (np.clip(x[: int(seconds * sr)], -1, 1) * 32767).astype("<i2").tobytes()


@pytest.mark.parametrize("how", ["eof", "sigterm", "sigint", "duration"])
def test_every_way_of_ending_sends_end_and_exits_cleanly(sensitive_bundle, demo_audio, tmp_path, how):
    extra = ("--duration", "4") if how == "duration" else ()
    t = _Tagger(sensitive_bundle, tmp_path, *extra)
    try:
        if how == "eof":
            t.proc.stdin.write(_pcm(demo_audio, 3.0))
            t.proc.stdin.flush()
        # The first message (tags, or "stalled" heartbeats for an idle pipe) shows the tagger runs
        # and that this subscriber is connected.
        assert t.receive_until(lambda m: True) is not None, "no message from the tagger"
        if how == "eof":
            t.proc.stdin.close()
        elif how in ("sigterm", "sigint"):
            t.proc.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGINT)
        end = t.receive_until(lambda m: m.kind == "end")
    finally:
        rc, err = t.finish()
    assert "Fatal Python error" not in err and "Traceback" not in err, err
    assert rc == 0, err
    assert end is not None, f"no end message; got {[m.kind for m in t.messages]}; stderr: {err}"
    assert end.end.reason == how and end.end.error is None
    assert end.stream_id == "end-test" and end.seq == t.messages[-2].seq + 1 if len(t.messages) > 1 else True
    assert end.drops.ring_overflow_samples == 0 and end.backlog_s is not None
    if how == "eof":
        assert end.end.stream_s == pytest.approx(3.0) and end.end.windows >= 3
        assert sum(m.kind == "tags" for m in t.messages) == end.end.windows
    else:
        assert end.end.stream_s == 0.0 and end.end.windows == 0  # nothing was ever written
        assert all(m.heartbeat_reason == "stalled" for m in t.messages[:-1])


def test_error_sends_end_with_reason_and_exits_nonzero(sensitive_bundle, demo_audio, tmp_path):
    """NaN samples (f32le) are rejected: one error line, exit 2 (bad input), and subscribers are told why."""
    x, _ = demo_audio
    y = x[: 2 * 16000].copy()
    t = _Tagger(sensitive_bundle, tmp_path, "--format", "f32le")
    try:
        t.proc.stdin.write(y.astype("<f4").tobytes())
        t.proc.stdin.flush()
        assert t.receive_until(lambda m: True) is not None, "no message from the tagger"
        y[100] = np.nan
        try:
            t.proc.stdin.write(y.astype("<f4").tobytes())
            t.proc.stdin.close()
        except BrokenPipeError:  # it may stop reading at the first NaN, before all of it is written
            pass
        end = t.receive_until(lambda m: m.kind == "end")
    finally:
        rc, err = t.finish()
    assert rc == 2 and err.strip().splitlines()[-1].startswith("rt-tagger: error: input has NaN/Inf"), err
    assert end is not None and end.end.reason == "error" and "NaN/Inf" in end.end.error
