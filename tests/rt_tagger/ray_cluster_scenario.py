"""A real Ray cluster on this machine: head + two worker nodes, ``rt-tagger serve --ray``, streams,
and one worker node killed while they run. Prints one JSON document (the test reads it).

Run inside a network namespace of its own (``unshare -n``; the test does that), where every Ray
socket stays on 127.0.0.1: Ray otherwise binds the machine's interface address.

    unshare -n python tests/rt_tagger/ray_cluster_scenario.py [--streams 6] [--before-s 12] [--after-s 25]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import soundfile as sf
import zmq

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from rt_tagger.client import IngestClient  # noqa: E402

RAY = str(Path(sys.executable).with_name("ray"))


def _log(text: str) -> None:
    print(f"scenario {time.strftime('%H:%M:%S')}: {text}", file=sys.stderr, flush=True)


def _ray(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([RAY, *args], capture_output=True, text=True, timeout=180, **kw)


def _collect(endpoint: str, out: list, stop: threading.Event) -> None:
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.connect(endpoint)
    while not stop.is_set():
        if sub.poll(100):
            topic, body = sub.recv_multipart()
            out.append((time.time(), topic, json.loads(body)))
    sub.close(linger=0)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", type=int, default=6)
    ap.add_argument("--before-s", type=float, default=12.0, help="streaming before the kill")
    ap.add_argument("--after-s", type=float, default=25.0, help="streaming after the kill")
    args = ap.parse_args()
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(ROOT))
    port, ingest, publish = 6380, "tcp://127.0.0.1:5557", "tcp://127.0.0.1:5556"
    result: dict = {"streams": args.streams}
    workers: list[subprocess.Popen] = []
    gateway = None
    t_start = time.time()
    try:
        r = _ray("start", "--head", f"--port={port}", "--num-cpus=0", "--include-dashboard=false",
                 "--disable-usage-stats", env=env)  # fmt: skip
        if r.returncode:
            raise RuntimeError(f"ray start --head failed: {r.stderr[-500:]}")
        for i in range(2):  # each worker node in its own session, so killing its group kills the node
            base = 21000 + 1000 * i  # explicit ports: two nodes on one host may otherwise pick the same one
            ports = [f"--node-manager-port={base + 1}", f"--object-manager-port={base + 2}",
                     f"--metrics-export-port={base + 3}", f"--runtime-env-agent-port={base + 4}",
                     f"--dashboard-agent-grpc-port={base + 5}", f"--dashboard-agent-listen-port={base + 6}",
                     f"--min-worker-port={base + 100}", f"--max-worker-port={base + 199}"]  # fmt: skip
            workers.append(subprocess.Popen(
                [RAY, "start", f"--address=127.0.0.1:{port}", "--num-cpus=1", '--resources={"rt_shard": 1}',
                 "--block", "--disable-usage-stats", *ports],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            ))  # fmt: skip
            _log(f"worker node {i} starting")
            time.sleep(5)
        gateway = subprocess.Popen(
            [sys.executable, "-m", "rt_tagger.cli", "serve", "--ray", f"127.0.0.1:{port}", "--shards", "2",
             "--shard-resources", '{"rt_shard": 1}', "--shard-timeout", "5", "--ingest", ingest, "--publish", publish,
             "--backend", "onnxruntime-cpu", "--idle-timeout", "60"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        )  # fmt: skip
        line = gateway.stdout.readline()
        if "serving on Ray" not in line:
            raise RuntimeError(f"gateway did not start: {line!r} {gateway.stderr.read()[-2000:]}")
        result["cluster_ready_s"] = round(time.time() - t_start, 1)
        _log(f"gateway ready: {line.strip()}")
        received: list = []
        stop = threading.Event()
        collector = threading.Thread(target=_collect, args=(publish, received, stop), daemon=True)
        collector.start()
        time.sleep(1.0)
        x, sr = sf.read(str(ROOT / "rt_tagger" / "demo" / "demo.ogg"), dtype="float32", always_2d=True)
        audio = x.mean(axis=1)
        ids = [f"radio{i}" for i in range(args.streams)]
        chunk = sr // 10
        with IngestClient(ingest, timeout_s=60) as client:
            for sid in ids:
                client.open(sid, sr, 1, "f32le")
            t0 = time.perf_counter()
            kill_wall = None
            total = int((args.before_s + args.after_s) * 10)
            for k in range(total):
                due = t0 + (k + 1) * 0.1
                if due > time.perf_counter():
                    time.sleep(due - time.perf_counter())
                start = (k * chunk) % (len(audio) - chunk)
                client.send_many([(sid, audio[start : start + chunk]) for sid in ids])
                if kill_wall is None and k >= args.before_s * 10:
                    os.killpg(workers[0].pid, signal.SIGKILL)  # the whole worker node: raylet and actors
                    kill_wall = time.time()
                    _log("worker node 0 killed")
            for sid in ids:
                client.close_stream(sid, wait=False)
            time.sleep(3.0)
        stop.set()
        collector.join()
        result.update(_analyse(received, ids, kill_wall))
    finally:
        if gateway is not None and gateway.poll() is None:
            gateway.send_signal(signal.SIGTERM)
            try:
                gateway.wait(timeout=60)
            except subprocess.TimeoutExpired:
                gateway.kill()
        if gateway is not None:
            result["gateway_stderr_tail"] = gateway.stderr.read()[-3000:].splitlines()[-15:]
        for w in workers:
            try:
                os.killpg(w.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _ray("stop", "--force", env=env)
    print(json.dumps(result))
    return 0


def _analyse(received: list, ids: list[str], kill_wall: float) -> dict:
    per: dict[str, list] = {sid: [] for sid in ids}
    events = []
    for t, _topic, m in received:
        if m.get("kind") == "cluster":
            events.append(
                {k: m[k] for k in ("event", "shard") if k in m} | {"t_after_kill_s": round(t - kill_wall, 2)}
            )
        elif m.get("stream_id") in per:
            per[m["stream_id"]].append((t, m))
    moved, recovery, gaps_unmoved = [], {}, 0
    for sid, rows in per.items():
        lost = [
            i for i, (_, m) in enumerate(rows) if m["kind"] == "end" and m["end"]["reason"] == "shard_lost"
        ]
        if lost:
            moved.append(sid)
            i = lost[0]
            before = [m["seq"] for _, m in rows[:i]]
            after = [m["seq"] for _, m in rows[i + 1 :]]
            first_tags = next((t for t, m in rows[i + 1 :] if m["kind"] == "tags"), None)
            recovery[sid] = {
                "marker_after_kill_s": round(rows[i][0] - kill_wall, 2),
                "first_tags_after_kill_s": None if first_tags is None else round(first_tags - kill_wall, 2),
                "seq_before_contiguous": before == list(range(len(before))),
                "marker_seq": rows[i][1]["seq"],
                "seq_after_restarts_at_0": bool(after) and after == list(range(len(after))),
                "end_reason": rows[-1][1]["end"]["reason"] if rows[-1][1]["kind"] == "end" else None,
            }
        else:
            seqs = [m["seq"] for _, m in rows]
            gaps_unmoved += len(seqs) - len(set(seqs)) + (max(seqs) + 1 - len(set(seqs)) if seqs else 1)
    firsts = [r["first_tags_after_kill_s"] for r in recovery.values()]
    return {
        "moved": moved,
        "recovery": recovery,
        "max_recovery_s": None if not firsts or None in firsts else max(firsts),
        "unmoved_seq_problems": gaps_unmoved,
        "tags_messages": {sid: sum(m["kind"] == "tags" for _, m in rows) for sid, rows in per.items()},
        "cluster_events": events,
    }


if __name__ == "__main__":
    sys.exit(main())
