"""``rt-tagger bench stream``: end-to-end latency through the real streaming pipeline.

Three OS processes, as users run them:

1. the tagger: ``rt-tagger stream -`` (raw f32le PCM on stdin, publishing on a loopback port);
2. the writer (this process): plays an audio file into the tagger's stdin at real-time pace in
   small blocks (default 10 ms), each block written when its wall-clock time comes;
3. the subscriber (:mod:`bench.stream_sub`): receives every message and records when it arrived.

From the messages: per-stage timings (``timings_ms``: capture→ring, framing+mel, inference,
aggregation, publish), capture→publish (``publish_wall_time - capture_wall_time``: the processing
latency of the window's last sample), publish→receive and capture→receive, each as p50/p99/max;
write→capture and write→publish from the writer's own clock (the block's write into the pipe:
what the tagger's capture stamp cannot see, such as its reader thread waiting for the GIL);
the drop counters; the time from starting the tagger to its first tags message; the tagger's
resident memory (peak). Messages from the start-up backlog (before the tagger was ready, audio
queued in the pipe) are kept apart: steady-state statistics start ``--skip-s`` seconds of stream
time after the first message.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.common import BenchError, bundle_info, free_port, new_document, open_bench_bundle
from bench.machine import machine_info
from bench.stats import summarize

__all__ = ["add_arguments", "run", "COLUMNS", "plot", "STAGES"]

DEMO = Path(__file__).resolve().parents[1] / "rt_tagger" / "demo" / "demo.ogg"
STAGES = ("capture_to_ring", "framing_mel", "inference", "aggregation", "publish")
TRACE_STEPS = ("pickup", "push", "model", "complete", "publish")
TRACE_DIR = Path(__file__).resolve().parent / "stream_trace"
COLUMNS = [
    ("stage", "stage"),
    ("n", "messages"),
    ("p50_ms", "p50 ms"),
    ("p95_ms", "p95 ms"),
    ("p99_ms", "p99 ms"),
    ("max_ms", "max ms"),
    ("mean_ms", "mean ms"),
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--file",
        type=Path,
        default=DEMO,
        help=f"audio to play (default: the demo clip {DEMO.name}); looped to --seconds",
    )
    p.add_argument("--seconds", type=float, default=30.0, help="seconds of audio to play (default 30)")
    p.add_argument(
        "--rate",
        type=int,
        default=None,
        help="PCM rate sent to the tagger (default: the file's; others resampled offline)",
    )
    p.add_argument("--channels", type=int, default=None, help="PCM channels sent (default: the file's)")
    p.add_argument(
        "--block-ms",
        type=float,
        default=10.0,
        help="writer block in ms (default 10); also the tagger's read size",
    )
    p.add_argument("--hop", type=float, default=0.5, help="tagger hop in seconds (default 0.5)")
    p.add_argument(
        "--source",
        choices=("stdin", "mic"),
        default="stdin",
        help="stdin (default): PCM written into `rt-tagger stream -`; mic: the audio played into the "
        "PulseAudio null sink (scripts/start_test_audio.sh) and captured by `rt-tagger listen --device "
        "pulse`, the microphone path",
    )
    p.add_argument("--backend", default="auto", help="tagger backend (default auto)")
    p.add_argument(
        "--skip-s",
        type=float,
        default=2.0,
        help="stream seconds after the first message left out of steady-state stats (default 2)",
    )
    p.add_argument(
        "--trace",
        action="store_true",
        help="also time each step of every window inside the tagger (pickup, push, model, complete, "
        "publish: bench/stream_trace), as rows 'trace <step>'",
    )
    p.add_argument(
        "--consumer-core",
        type=int,
        default=None,
        help="pin the tagger's consumer thread to this core (settings consumer_core) and keep the "
        "bench's writer and subscriber off it (default: no pinning)",
    )
    p.add_argument(
        "--rt-priority",
        type=int,
        default=None,
        help="SCHED_FIFO priority of the tagger's consumer thread (settings realtime_priority; "
        "needs CAP_SYS_NICE)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="give up when the tagger runs this much past the audio (default 120 s)",
    )


def _audio(path: Path, seconds: float, rate: int | None, channels: int | None) -> tuple[np.ndarray, int]:
    import soundfile as sf

    try:
        x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (OSError, RuntimeError) as e:
        raise BenchError(f"cannot read audio {path}: {e}") from None
    if channels is not None and channels != x.shape[1]:
        x = np.repeat(x.mean(axis=1, keepdims=True), channels, axis=1)
    if rate is not None and rate != sr:
        import torch
        import torchaudio.functional as F

        x = F.resample(torch.from_numpy(np.ascontiguousarray(x.T)), sr, rate).numpy().T
        sr = rate
    n = int(seconds * sr)
    if x.shape[0] == 0:
        raise BenchError(f"audio {path} is empty")
    reps = -(-n // x.shape[0])
    return np.ascontiguousarray(np.tile(x, (reps, 1))[:n], dtype=np.float32), sr


class _RssWatcher(threading.Thread):
    """Samples VmRSS/VmHWM of a process from /proc every 100 ms (Linux)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak_kib, self.hwm_kib, self.last_kib = pid, 0, 0, 0
        self.stop = threading.Event()

    def run(self) -> None:
        status = Path(f"/proc/{self.pid}/status")
        while not self.stop.is_set():
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        self.last_kib = int(line.split()[1])
                        self.peak_kib = max(self.peak_kib, self.last_kib)
                    elif line.startswith("VmHWM:"):
                        self.hwm_kib = max(self.hwm_kib, int(line.split()[1]))
            except (OSError, ValueError, IndexError):
                return
            self.stop.wait(0.1)


def _play(proc: subprocess.Popen, audio: np.ndarray, sr: int, block: int) -> dict:
    """Write ``audio`` to the tagger's stdin in blocks at real-time pace; returns pacing stats."""
    period = block / sr
    late, written = [], []
    caught_up = 0.0  # stream time from which every block was written on time
    t0 = time.perf_counter()
    try:
        for k, start in enumerate(range(0, audio.shape[0], block)):
            due = t0 + k * period
            now = time.perf_counter()
            if due > now:
                time.sleep(due - now)
            late.append((time.perf_counter() - due) * 1e3)
            written.append(time.time())
            proc.stdin.write(audio[start : start + block].tobytes())
            if late[-1] > 2e3 * period:  # still behind: the pipe was full while the tagger started
                caught_up = (k + 1) * period
    except BrokenPipeError:
        raise BenchError("the tagger closed its input early (see its stderr above)") from None
    finally:
        try:
            proc.stdin.close()
        except BrokenPipeError:
            pass
    return {
        "blocks": len(late),
        "writer_late_ms": summarize(late),
        "writer_on_time_from_s": caught_up,
        "written_wall": written,
    }


@dataclass
class _Setup:
    """What both sources share: the bundle, the audio, the endpoint, the document, a scratch folder."""

    bundle: object
    audio: np.ndarray
    sr: int
    block: int
    endpoint: str
    stream_id: str
    doc: dict
    tmp: Path
    consumer_core: int | None = None
    rt_priority: int | None = None

    @classmethod
    def make(cls, args: argparse.Namespace, source: str) -> _Setup:
        bundle, label = open_bench_bundle(args.bundle)
        audio, sr = _audio(args.file, args.seconds, args.rate, args.channels)
        block = max(1, int(round(args.block_ms * sr / 1e3)))
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        doc = new_document("stream", machine_info(), {
            "file": str(args.file), "seconds": audio.shape[0] / sr, "rate": sr, "channels": audio.shape[1],
            "block_frames": block, "hop_s": args.hop, "backend": args.backend, "endpoint": endpoint,
            "skip_s": args.skip_s, "source": source, "consumer_core": args.consumer_core,
            "realtime_priority": args.rt_priority,
        })  # fmt: skip
        doc["bundle"] = bundle_info(bundle, label)
        tmp = Path(tempfile.mkdtemp(prefix="rt-bench-stream-"))
        return cls(
            bundle,
            audio,
            sr,
            block,
            endpoint,
            f"bench{os.getpid()}",
            doc,
            tmp,
            args.consumer_core,
            args.rt_priority,
        )

    def tagger(self, command: str, args: argparse.Namespace, *extra: str) -> list[str]:
        return [
            sys.executable, "-m", "rt_tagger.cli", command, *extra, "--channels", str(self.audio.shape[1]),
            "--bundle", str(self.bundle.path), "--publish", self.endpoint, "--stream-id", self.stream_id,
            "--hop", str(args.hop), "--backend", args.backend, "-q",
        ]  # fmt: skip

    def env(self) -> dict[str, str]:
        env = dict(os.environ, RT_TAGGER_AUDIO__BLOCK_SIZE=str(self.block), PYTHONUNBUFFERED="1")
        if self.consumer_core is not None:
            env["RT_TAGGER_CONSUMER_CORE"] = str(self.consumer_core)
        if self.rt_priority is not None:
            env["RT_TAGGER_REALTIME_PRIORITY"] = str(self.rt_priority)
        return env

    def off_consumer_core(self) -> None:
        """Keep the calling thread (and what it starts from now on) off the consumer's core."""
        if self.consumer_core is not None:
            others = os.sched_getaffinity(0) - {self.consumer_core}
            if not others:
                raise BenchError(f"--consumer-core {self.consumer_core}: no other core left for the bench")
            os.sched_setaffinity(0, others)

    @contextlib.contextmanager
    def subscriber(self):
        """The bench subscriber (:mod:`bench.stream_sub`) in its own process; yields the file it
        writes every message to, one JSON line each."""
        jsonl = self.tmp / "messages.jsonl"
        sub = subprocess.Popen(
            [sys.executable, "-m", "bench.stream_sub", self.endpoint, f"tags.{self.stream_id}", str(jsonl)],
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=self.off_consumer_core,
        )
        try:
            if sub.stdout.readline().strip() != "ready":
                raise BenchError("the bench subscriber did not start")
            yield jsonl
        finally:
            sub.terminate()
            sub.wait(timeout=10)

    def finish(self, rc: int, rss: _RssWatcher, stderr_path: Path, command: str) -> str:
        """The tagger's stderr once it exited (an error if it failed); RSS into the summary later."""
        rss.stop.set()
        rss.join()
        time.sleep(0.5)  # let the last messages cross
        stderr = stderr_path.read_text()
        if rc != 0:
            raise BenchError(
                f"rt-tagger {command} exited with {rc}: {stderr.strip().splitlines()[-1:] or ''}"
            )
        return stderr

    def summarise(self, rss: _RssWatcher, stderr: str) -> None:
        self.doc["summary"]["tagger_peak_rss_mib"] = round(max(rss.peak_kib, rss.hwm_kib) / 1024, 1)
        self.doc["tagger_stderr_tail"] = stderr.strip().splitlines()[-5:]


def _messages(jsonl: Path) -> list[dict]:
    return [json.loads(ln) for ln in jsonl.read_text().splitlines() if ln.strip()]


def run(args: argparse.Namespace) -> dict:
    if args.source == "mic":
        return _run_mic(args)
    st = _Setup.make(args, "stdin PCM f32le (rt-tagger stream -), real-time pace")
    with st.subscriber() as jsonl:
        env = st.env()
        trace = st.tmp / "trace.json"
        if args.trace:  # the tagger imports bench/stream_trace/sitecustomize.py at start-up
            path = [str(TRACE_DIR), str(TRACE_DIR.parents[1]), env.get("PYTHONPATH", "")]
            env.update(PYTHONPATH=os.pathsep.join(p for p in path if p), BENCH_STREAM_TRACE=str(trace))
        cmd = st.tagger("stream", args, "-", "--rate", str(st.sr), "--format", "f32le")
        stderr_path = st.tmp / "tagger.stderr"
        with open(stderr_path, "w") as err:
            t_start_wall = time.time()
            proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err, bufsize=0, env=env
            )
            rss = _RssWatcher(proc.pid)
            rss.start()
            st.off_consumer_core()  # the writer: this thread, started the tagger with every core
            pacing = _play(proc, st.audio, st.sr, st.block)
            try:
                rc = proc.wait(timeout=args.timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise BenchError(
                    f"the tagger did not finish within {args.timeout} s after the audio ended"
                ) from None
            finally:
                rss.stop.set()
        stderr = st.finish(rc, rss, stderr_path, "stream")
    doc = st.doc
    written = np.asarray(pacing.pop("written_wall"))
    _analyse(doc, _messages(jsonl), t_start_wall, args.skip_s, pacing["writer_on_time_from_s"], written)
    if args.trace:
        _add_trace(doc, trace)
    doc["settings"]["writer"] = pacing
    st.summarise(rss, stderr)
    doc["notes"].append(
        "capture = the tagger's stdin read of the block holding the window's last sample (wall clock)"
    )
    doc["notes"].append(
        f"steady-state rows skip messages in the first {args.skip_s} s of stream time after the first message "
        f"and after the writer was back on schedule (stream time {pacing['writer_on_time_from_s']:.2f} s)"
    )
    return doc


def _run_mic(args: argparse.Namespace) -> dict:
    """The microphone path: ``paplay`` plays the audio into the null sink in real time while
    ``rt-tagger listen --device pulse`` captures the sink's monitor."""
    import signal

    import soundfile as sf

    if args.trace:
        raise BenchError("--trace times the stdin path only")
    ready = subprocess.run(
        ["bash", str(DEMO.parents[2] / "scripts" / "start_test_audio.sh")], capture_output=True, text=True
    )
    if ready.returncode != 0:
        raise BenchError(f"no PulseAudio test device: {ready.stderr.strip() or ready.stdout.strip()}")
    st = _Setup.make(
        args, "microphone: paplay into the PulseAudio null sink rt_null, rt-tagger listen --device pulse"
    )
    wav, stderr_path = st.tmp / "play.wav", st.tmp / "tagger.stderr"
    sf.write(str(wav), st.audio, st.sr, subtype="FLOAT")
    with st.subscriber() as jsonl:
        with open(stderr_path, "w") as err:
            t_start_wall = time.time()
            proc = subprocess.Popen(
                st.tagger("listen", args, "--device", "pulse"),
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=st.env(),
            )
            rss = _RssWatcher(proc.pid)
            rss.start()
            try:
                _wait_for_messages(jsonl, proc, args.timeout)
                play_from = time.time()
                subprocess.run(
                    ["paplay", "--device=rt_null", str(wav)],
                    check=True,
                    timeout=args.seconds + 60,
                    preexec_fn=st.off_consumer_core,
                )
                play_to = time.time()
                time.sleep(1.0)  # the last windows
            finally:
                proc.send_signal(signal.SIGINT)
                try:
                    rc = proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    rc = proc.wait()
                rss.stop.set()
        stderr = st.finish(rc, rss, stderr_path, "listen")
    window_s = st.bundle.manifest.frontend.window_seconds
    # only windows made of the played audio: the monitor is silent before and after it
    played = [
        r for r in _messages(jsonl)
        if play_from + window_s <= (r["msg"].get("capture_wall_time") or r["msg"].get("publish_wall_time", 0)) <= play_to
    ]  # fmt: skip
    doc = st.doc
    _analyse(doc, played, t_start_wall, args.skip_s)
    doc["summary"]["time_to_first_message_s"] = None  # the listener was started long before the audio
    st.summarise(rss, stderr)
    doc["notes"].append(
        "capture = the capture time PortAudio reports for the block holding the window's last sample "
        "(its ADC time on the unix clock; the block's arrival where the host API gives none)"
    )
    doc["notes"].append(
        f"windows whose audio was all played (capture from {window_s:g} s after paplay started until it ended); "
        f"steady-state rows skip the first {args.skip_s} s of stream time after the first of them"
    )
    return doc


def _wait_for_messages(jsonl: Path, proc: subprocess.Popen, timeout: float) -> None:
    """Until the listener publishes (it is up, the device open) or exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"rt-tagger listen exited with {proc.returncode} before publishing")
        if jsonl.exists() and jsonl.stat().st_size > 0:
            return
        time.sleep(0.1)
    raise BenchError(f"rt-tagger listen published nothing in {timeout} s")


def _add_trace(doc: dict, path: Path) -> None:
    """The steady-state windows' step timings from the tagger's trace, as rows ``trace <step>``."""
    if not path.exists():
        raise BenchError("--trace: the tagger wrote no trace (did it exit normally?)")
    steady_from = doc["summary"]["steady_from_stream_s"]
    rows = [r for r in json.loads(path.read_text()) if r["end_s"] >= steady_from]
    for step in TRACE_STEPS:
        vals = [r[step] for r in rows]
        doc["results"].append(
            {
                "stage": f"trace {step}",
                **{k if k == "n" else f"{k}_ms": v for k, v in summarize(vals).items()},
            }
        )
        doc["series_ms"][f"trace {step}"] = [round(v, 4) for v in vals]
    doc["notes"].append(
        "trace rows: each step of a window timed inside the tagger (bench/stream_trace/sitecustomize.py); "
        "trace publish includes the send, which the publish stage and capture->publish leave out"
    )


def _analyse(
    doc: dict,
    received: list[dict],
    t_start_wall: float,
    skip_s: float,
    on_time_s: float = 0.0,
    written: np.ndarray | None = None,
) -> None:
    tags = [r for r in received if r["msg"].get("kind") == "tags"]
    beats = [r for r in received if r["msg"].get("kind") == "heartbeat"]
    seqs = [r["msg"]["seq"] for r in received]
    gaps = sum(b - a - 1 for a, b in zip(seqs, seqs[1:], strict=False) if b > a + 1)
    if not tags:
        raise BenchError(f"no tags message received ({len(received)} messages in all)")
    first_end = tags[0]["msg"]["window"]["end_s"]
    # Steady state: skip_s after the first message and after the writer is back on its real-time
    # schedule (audio queued in the pipe during start-up is a backlog a live source would not have).
    steady_from = max(first_end, on_time_s) + skip_s
    steady = [r for r in tags if r["msg"]["window"]["end_s"] >= steady_from]
    series: dict[str, list[float]] = {}

    def add(name: str, rows: list[dict], fn) -> None:
        vals = [v for v in (fn(r) for r in rows) if v is not None]
        series[name] = vals
        doc["results"].append(
            {"stage": name, **{k if k == "n" else f"{k}_ms": v for k, v in summarize(vals).items()}}
        )

    for stage in STAGES:
        add(stage, steady, lambda r, s=stage: (r["msg"].get("timings_ms") or {}).get(s))

    def cap(r):
        return (
            (r["msg"]["publish_wall_time"] - r["msg"]["capture_wall_time"]) * 1e3
            if r["msg"].get("capture_wall_time")
            else None
        )  # noqa: E731

    add("capture->publish", steady, cap)
    add("publish->receive", steady, lambda r: (r["recv"] - r["msg"]["publish_wall_time"]) * 1e3)
    add(
        "capture->receive",
        steady,
        lambda r: (
            (r["recv"] - r["msg"]["capture_wall_time"]) * 1e3 if r["msg"].get("capture_wall_time") else None
        ),
    )
    if written is not None and written.size:

        def write_to(key: str):
            def since_write(r):
                capture = r["msg"].get("capture_wall_time")
                if not capture:
                    return None
                # The captured block is the last one written before its capture (blocks are
                # 10 ms apart, the read follows the write by far less).
                k = int(np.searchsorted(written, capture, side="right")) - 1
                return (r["msg"][key] - written[k]) * 1e3 if k >= 0 else None

            return since_write

        add("write->capture", steady, write_to("capture_wall_time"))
        add("write->publish", steady, write_to("publish_wall_time"))
    add("capture->publish (all, incl. start-up)", tags, cap)
    doc["series_ms"] = {k: [round(v, 4) for v in vals] for k, vals in series.items()}
    last = tags[-1]["msg"]
    cp = summarize(series["capture->publish"])
    wp = summarize(series["write->publish"]) if "write->publish" in series else None
    doc["summary"] = {
        "messages": len(received),
        "tags_messages": len(tags),
        "heartbeats": len(beats),
        "steady_messages": len(steady),
        "steady_from_stream_s": round(steady_from, 3),
        "seq_gaps_at_subscriber": gaps,
        "time_to_first_message_s": tags[0]["recv"] - t_start_wall,
        "first_window_s": first_end,
        "capture->publish p50 ms": cp["p50"],
        "capture->publish p99 ms": cp["p99"],
        "capture->publish max ms": cp["max"],
        **{f"write->publish {k} ms": wp[k] for k in ("p50", "p99") if wp},
        "drops": last.get("drops"),
        "backend": last.get("backend"),
    }


def plot(doc: dict, stem) -> list:
    from bench.plots import latency_plot

    s = doc.get("series_ms", {})
    keys = ("capture->publish", "inference", "framing_mel", "capture->receive")
    return [
        latency_plot(
            {k: s[k] for k in keys if s.get(k)},
            stem.with_name(stem.name + "-latency.png"),
            "stream: end-to-end latency",
        )
    ]
