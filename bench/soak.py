"""``rt-tagger bench soak``: hours of real-time streaming with a healthy and a stalled subscriber.

Four OS processes, as users run them:

1. the tagger: ``rt-tagger stream -`` (raw f32le PCM on stdin, publishing on a loopback port);
2. the writer (this process): loops an audio file into the tagger's stdin at real-time pace;
3. a healthy subscriber (:mod:`bench.stream_sub`) that receives everything;
4. a second subscriber that is SIGSTOPped for ``--stall-s`` seconds in the middle of the run.

What it records: per subscriber the messages expected (the tagger's sequence numbers, ended by
its ``end`` message when it sends one) against received and every gap; every drop counter of the
last message; the tagger's RSS and CPU share sampled every ``--sample-s``; capture→publish and
capture→receive latency p50/p99 per ``--bucket-s`` of stream time at the healthy subscriber.
What it asserts nothing about: the numbers are the result (bench/results/soak-*.json).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench.common import BenchError, bundle_info, free_port, new_document, open_bench_bundle
from bench.machine import machine_info
from bench.stats import summarize
from bench.stream import DEMO, _audio

__all__ = ["add_arguments", "run", "plot", "COLUMNS"]

COLUMNS = [
    ("from_s", "from s"),
    ("n", "messages"),
    ("capture_publish_p50_ms", "cap->pub p50 ms"),
    ("capture_publish_p99_ms", "cap->pub p99 ms"),
    ("capture_receive_p50_ms", "cap->recv p50 ms"),
    ("capture_receive_p99_ms", "cap->recv p99 ms"),
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--file", type=Path, default=DEMO, help=f"audio to loop (default {DEMO.name})")
    p.add_argument("--minutes", type=float, default=60.0, help="minutes of real-time audio (default 60)")
    p.add_argument("--rate", type=int, default=16000, help="PCM rate sent (default 16000)")
    p.add_argument("--block-ms", type=float, default=10.0, help="writer block in ms (default 10)")
    p.add_argument("--hop", type=float, default=0.5, help="tagger hop in seconds (default 0.5)")
    p.add_argument("--backend", default="auto", help="tagger backend (default auto)")
    p.add_argument("--stall-s", type=float, default=60.0, help="seconds the second subscriber is stopped")
    p.add_argument("--sndhwm", type=int, default=20, help="publisher send high-water mark (default 20)")
    p.add_argument("--sample-s", type=float, default=10.0, help="RSS/CPU sampling period (default 10 s)")
    p.add_argument(
        "--bucket-s", type=float, default=300.0, help="latency bucket of stream time (default 300 s)"
    )


class _ProcSampler(threading.Thread):
    """Samples a process's RSS (MiB) and CPU share (% of one core) every ``period`` seconds."""

    def __init__(self, pid: int, period: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.period = pid, period
        self.samples: list[dict] = []
        self.stop = threading.Event()
        self._tick = os.sysconf("SC_CLK_TCK")

    def _read(self) -> tuple[float, float]:
        stat = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu_s = (int(stat[11]) + int(stat[12])) / self._tick  # utime + stime
        rss_kib = next(
            int(ln.split()[1]) for ln in Path(f"/proc/{self.pid}/status").read_text().splitlines()
            if ln.startswith("VmRSS:")
        )  # fmt: skip
        return cpu_s, rss_kib / 1024

    def run(self) -> None:
        t0 = time.monotonic()
        try:
            prev_t, (prev_cpu, _) = t0, self._read()
            while not self.stop.wait(self.period):
                now = time.monotonic()
                cpu, rss = self._read()
                self.samples.append({
                    "t_s": round(now - t0, 1), "rss_mib": round(rss, 1),
                    "cpu_pct": round(100 * (cpu - prev_cpu) / (now - prev_t), 1),
                })  # fmt: skip
                prev_t, prev_cpu = now, cpu
        except (OSError, ValueError, IndexError, StopIteration):
            return  # the process ended


def _subscriber(endpoint: str, topic: str, out: Path) -> subprocess.Popen:
    sub = subprocess.Popen(
        [sys.executable, "-m", "bench.stream_sub", endpoint, topic, str(out)],
        stdout=subprocess.PIPE,
        text=True,
    )
    if sub.stdout.readline().strip() != "ready":
        raise BenchError("a bench subscriber did not start")
    return sub


def _play_looped(
    proc: subprocess.Popen, audio: np.ndarray, sr: int, block: int, seconds: float, on_time
) -> int:
    """Write ``audio`` looped for ``seconds`` at real-time pace; returns how often the schedule was reset.

    ``on_time(t)`` is called with the stream time of every block written.
    """
    period = block / sr
    n_blocks = int(seconds / period)
    pos = 0
    t0 = time.perf_counter()
    resets = 0
    try:
        for k in range(n_blocks):
            due = t0 + k * period
            now = time.perf_counter()
            if due > now:
                time.sleep(due - now)
            elif now - due > 0.5:
                # The pipe was full (tagger starting or behind): restart the schedule from now
                # rather than bursting to catch up, which a live source could never do.
                t0 += now - due
                resets += 1
            end = pos + block
            chunk = (
                audio[pos:end]
                if end <= len(audio)
                else np.concatenate([audio[pos:], audio[: end - len(audio)]])
            )
            pos = end % len(audio)
            proc.stdin.write(chunk.tobytes())
            on_time(k * period)
    except BrokenPipeError:
        raise BenchError("the tagger closed its input early (see its stderr)") from None
    finally:
        try:
            proc.stdin.close()
        except BrokenPipeError:
            pass
    return resets


def _seq_report(rows: list[dict], expected: int | None) -> dict:
    seqs = [r["msg"]["seq"] for r in rows]
    gaps = [(a, b) for a, b in zip(seqs, seqs[1:], strict=False) if b > a + 1]
    return {
        "received": len(rows),
        "expected": expected,
        "lost": None if expected is None else expected - len(set(seqs)),
        "gaps": [{"after_seq": a, "next_seq": b, "missing": b - a - 1} for a, b in gaps],
        "kinds": {k: sum(r["msg"].get("kind") == k for r in rows) for k in ("tags", "heartbeat", "end")},
    }


def run(args: argparse.Namespace) -> dict:
    bundle, label = open_bench_bundle(args.bundle)
    loop, sr = _audio(args.file, min(120.0, args.minutes * 60), args.rate, 1)
    block = max(1, int(round(args.block_ms * sr / 1e3)))
    seconds = args.minutes * 60
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    stream_id = f"soak{os.getpid()}"
    doc = new_document("soak", machine_info(), {
        "file": str(args.file), "minutes": args.minutes, "rate": sr, "channels": 1, "block_frames": block,
        "hop_s": args.hop, "backend": args.backend, "endpoint": endpoint, "sndhwm": args.sndhwm,
        "stall_s": args.stall_s, "source": "stdin PCM f32le (rt-tagger stream -), real-time pace, file looped",
    })  # fmt: skip
    doc["bundle"] = bundle_info(bundle, label)
    tmp = Path(tempfile.mkdtemp(prefix="rt-bench-soak-"))
    topic = f"tags.{stream_id}"
    healthy = _subscriber(endpoint, topic, tmp / "healthy.jsonl")
    stalled = _subscriber(endpoint, topic, tmp / "stalled.jsonl")
    stall_at = max(0.0, seconds / 2 - args.stall_s / 2)
    stall = {"stopped_at_s": None, "resumed_at_s": None}

    def on_time(t: float) -> None:
        if stall["stopped_at_s"] is None and t >= stall_at:
            stalled.send_signal(signal.SIGSTOP)
            stall["stopped_at_s"] = round(t, 2)
        elif (
            stall["resumed_at_s"] is None
            and stall["stopped_at_s"] is not None
            and t >= stall_at + args.stall_s
        ):
            stalled.send_signal(signal.SIGCONT)
            stall["resumed_at_s"] = round(t, 2)

    env = dict(
        os.environ, RT_TAGGER_AUDIO__BLOCK_SIZE=str(block), RT_TAGGER_PUBLISH__SNDHWM=str(args.sndhwm),
        PYTHONUNBUFFERED="1",
    )  # fmt: skip
    cmd = [
        sys.executable, "-m", "rt_tagger.cli", "stream", "-", "--rate", str(sr), "--channels", "1",
        "--format", "f32le", "--bundle", str(bundle.path), "--publish", endpoint, "--stream-id", stream_id,
        "--hop", str(args.hop), "--backend", args.backend, "-q",
    ]  # fmt: skip
    print(
        f"soak: {args.minutes:g} min of real-time audio; results when it ends (files in {tmp})",
        file=sys.stderr,
    )
    stderr_path = tmp / "tagger.stderr"
    try:
        with open(stderr_path, "w") as err:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err, env=env
            )
            sampler = _ProcSampler(proc.pid, args.sample_s)
            sampler.start()
            late = _play_looped(proc, loop, sr, block, seconds, on_time)
            rc = proc.wait(timeout=300)
            sampler.stop.set()
            sampler.join()
        time.sleep(1.0)  # let the last messages cross
    finally:
        if stall["stopped_at_s"] is not None and stall["resumed_at_s"] is None:
            stalled.send_signal(signal.SIGCONT)
        for sub in (healthy, stalled):
            sub.terminate()
            sub.wait(timeout=30)
    stderr = stderr_path.read_text()
    if rc != 0:
        raise BenchError(f"rt-tagger stream exited with {rc}: {stderr.strip().splitlines()[-1:]}")
    rows = {
        name: [json.loads(ln) for ln in (tmp / f"{name}.jsonl").read_text().splitlines() if ln.strip()]
        for name in ("healthy", "stalled")
    }
    _analyse(doc, rows, args.bucket_s)
    doc["settings"]["stall"] = stall
    doc["summary"]["writer_schedule_resets"] = late
    doc["resources"] = sampler.samples
    rss = [s["rss_mib"] for s in sampler.samples]
    cpu = [s["cpu_pct"] for s in sampler.samples]
    warm = [s["rss_mib"] for s in sampler.samples if s["t_s"] >= 60] or rss  # after start-up
    doc["summary"]["tagger_rss_mib"] = (
        {"after_first_minute": warm[0], "last": rss[-1], "min_after_first_minute": min(warm), "max": max(rss)}
        if rss
        else None
    )
    doc["summary"]["tagger_cpu_pct"] = summarize(cpu) if cpu else None
    doc["tagger_stderr_tail"] = stderr.strip().splitlines()[-10:]
    doc["notes"].append(
        "expected = highest sequence number the tagger sent + 1, read from its end message when present, "
        "else from the union of both subscribers' messages"
    )
    return doc


def _analyse(doc: dict, rows: dict[str, list[dict]], bucket_s: float) -> None:
    everything = [r for rs in rows.values() for r in rs]
    if not everything:
        raise BenchError("no message received by either subscriber")
    ends = [r["msg"] for r in everything if r["msg"].get("kind") == "end"]
    expected = (ends[0]["seq"] + 1) if ends else max(r["msg"]["seq"] for r in everything) + 1
    doc["summary"]["subscribers"] = {name: _seq_report(rs, expected) for name, rs in rows.items()}
    doc["summary"]["end_message"] = ends[0] if ends else None
    last = max(everything, key=lambda r: r["msg"]["seq"])["msg"]
    doc["summary"]["last_drops"] = last.get("drops")
    tags = [
        r for r in rows["healthy"] if r["msg"].get("kind") == "tags" and r["msg"].get("capture_wall_time")
    ]
    buckets: dict[int, list[dict]] = {}
    for r in tags:
        buckets.setdefault(int(r["msg"]["window"]["end_s"] // bucket_s), []).append(r)
    for b, rs in sorted(buckets.items()):
        cp = summarize([(r["msg"]["publish_wall_time"] - r["msg"]["capture_wall_time"]) * 1e3 for r in rs])
        cr = summarize([(r["recv"] - r["msg"]["capture_wall_time"]) * 1e3 for r in rs])
        doc["results"].append({
            "from_s": b * bucket_s, "n": cp["n"],
            "capture_publish_p50_ms": cp["p50"], "capture_publish_p99_ms": cp["p99"],
            "capture_receive_p50_ms": cr["p50"], "capture_receive_p99_ms": cr["p99"],
        })  # fmt: skip


def plot(doc: dict, stem) -> list:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = doc.get("resources") or []
    if not res:
        return []
    fig, ax = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
    t = [s["t_s"] / 60 for s in res]
    ax[0].plot(t, [s["rss_mib"] for s in res])
    ax[0].set_ylabel("RSS MiB")
    ax[1].plot(t, [s["cpu_pct"] for s in res])
    ax[1].set_ylabel("CPU % of a core")
    ax[1].set_xlabel("minutes")
    fig.suptitle("soak: tagger resources")
    out = stem.with_name(stem.name + "-resources.png")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return [out]
