"""The C subscriber in examples/ builds with make and follows a live publisher in another process."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from rt_tagger.messages import TagMessage
from tests.rt_tagger.zmq_helpers import make_message, publisher_process

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "c_subscriber"


@pytest.fixture(scope="module")
def c_subscriber(tmp_path_factory) -> Path:
    for tool in ("make", "cc", "pkg-config"):
        if shutil.which(tool) is None:
            pytest.skip(
                f"{tool} not found: cannot build the C example (apt-get install build-essential pkg-config)"
            )
    if subprocess.run(["pkg-config", "--exists", "libzmq"]).returncode != 0:
        pytest.skip("libzmq headers not found (apt-get install libzmq3-dev)")
    binary = tmp_path_factory.mktemp("c_sub") / "rt_tagger_sub"
    build = subprocess.run(["make", "-C", str(EXAMPLE), f"BIN={binary}"], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    assert "warning" not in build.stderr.lower(), build.stderr
    return binary


def test_c_subscriber_receives_well_formed_consecutive_messages_and_reports_the_gap(c_subscriber):
    n, missing = 200, 150  # the publisher skips seq 150: the C program must say so
    with publisher_process("tcp://127.0.0.1:*", n=n, skip=(missing,), wait_sub_s=30) as pub:
        proc = subprocess.run(
            [str(c_subscriber), "-e", pub.endpoint, "-n", str(n - 1), "-w", "30000"],
            capture_output=True,
            text=True,
            timeout=90,
        )
        _, sent, dropped = pub.get("done")
    assert proc.returncode == 0, proc.stderr
    assert (sent, dropped) == (n - 1, 0)
    lines = proc.stdout.splitlines()
    assert len(lines) == n - 1
    msgs = []
    for line in lines:
        topic, body = line.split(" ", 1)
        assert topic == "tags.test"
        msgs.append(TagMessage.from_bytes(body))  # the C program passes the JSON through intact
    assert [m.seq for m in msgs] == [s for s in range(n) if s != missing]
    assert f"seq gap {missing - 1} -> {missing + 1} (1 missing)" in proc.stderr
    assert f"-- {n - 1} messages, 1 gaps (1 missing), 0 malformed" in proc.stderr


def test_c_subscriber_times_out_with_status_1(c_subscriber, tmp_path):
    proc = subprocess.run(
        [str(c_subscriber), "-e", f"ipc://{tmp_path}/nobody.sock", "-n", "1", "-w", "200"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1 and proc.stdout == ""
    assert "no message from" in proc.stderr


def test_c_subscriber_follows_exactly_one_stream_and_stops_at_its_end(c_subscriber):
    with publisher_process(
        "tcp://127.0.0.1:*", n=30, streams=("alpha", "alpha2"), wait_topics=1, send_end=True
    ) as pub:
        proc = subprocess.Popen(
            [str(c_subscriber), "-e", pub.endpoint, "-s", "alpha", "-w", "30000"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        pub.get("done", timeout=60)
        pub.end_on.set()
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    topics = [line.split(" ", 1)[0] for line in out.splitlines()]
    assert topics == ["tags.alpha"] * 31  # 30 messages and the end; never alpha2
    assert '"kind":"end"' in out.splitlines()[-1]
    assert "-- 31 messages, 0 gaps (0 missing), 0 malformed, 1 streams" in err


def test_c_subscriber_reads_compact_frames(c_subscriber):
    """-b: the compact encoding (topic tagb.), printed as JSON lines that carry the same seq,
    scores and tag names as the publisher's messages; a gap is reported; it stops at the end."""
    n, missing, n_scores = 60, 20, 40
    with publisher_process(
        "tcp://127.0.0.1:*", n=n, skip=(missing,), n_scores=n_scores, streams=("alpha", "alpha2"),
        wait_topics=1, send_end=True,
    ) as pub:  # fmt: skip
        proc = subprocess.Popen(
            [str(c_subscriber), "-b", "-e", pub.endpoint, "-s", "alpha", "-w", "30000"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        pub.get("done", timeout=60)
        _, encoded = pub.get("encoded")
        pub.end_on.set()
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert encoded == {"json": 0, "compact": n - 1, "group": 0}  # only alpha's frames were wanted
    lines = out.splitlines()
    assert all(line.startswith("tagb.alpha ") for line in lines)
    docs = [json.loads(line.split(" ", 1)[1]) for line in lines]
    assert docs[-1]["kind"] == "end"  # the end message's JSON tail, as it came
    msgs = [TagMessage.model_validate({**d, "stream_id": "alpha"}) for d in docs[:-1]]
    assert [m.seq for m in msgs] == [s for s in range(n) if s != missing]
    for m in msgs:
        sent = make_message(m.seq, "alpha", n_scores)
        np.testing.assert_allclose(m.scores, sent.scores, rtol=1e-6)
        assert m.tags == sent.tags and [t.tag for t in m.top] == [t.tag for t in sent.top]
        assert m.window == sent.window and m.model == sent.model and m.backend == sent.backend
    assert f"seq gap {missing - 1} -> {missing + 1} (1 missing)" in err
    assert f"-- {n} messages, 1 gaps (1 missing), 0 malformed, 1 streams" in err  # n - 1 and the end
