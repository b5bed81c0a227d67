"""``rt-tagger bench serve``: how many real-time streams one ``rt-tagger serve`` holds.

Three kinds of OS process, as users run them: the server (``rt-tagger serve``), subscribers
(:mod:`bench.stream_sub`; ``--subscribers`` split the topics by prefix) and load generators
(``--generators`` processes forked from this one, the streams split among them), which open N
streams over the ingest protocol and send each one's audio in real time: real music looped, each
stream from its own random offset and joining at its own random moment within the first hop (as
independent live streams do, so their windows fall due spread over the hop), one multi-stream
message per generator every ``--chunk-ms`` (what a gateway in front of many clients sends).

For every N of ``--streams``: every stream's sequence numbers at the subscriber (gaps = lost
messages), capture→publish and capture→receive latency p50/p99 over all streams (capture = when
the generator sent the chunk holding the window's last sample), the drop counters of the end
messages, the server's CPU share, and the server's batch-size histogram (its stats messages).
A level holds when nothing was lost or dropped, every stream delivered the windows its audio
holds, and capture→publish p99 ≤ ``--bound-ms``; the knee is the largest N that holds.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from bench.common import BenchError, bundle_info, free_port, new_document, open_bench_bundle
from bench.machine import machine_info
from bench.stats import summarize
from bench.stream import DEMO, _audio

__all__ = ["add_arguments", "run", "plot", "COLUMNS"]

COLUMNS = [
    ("streams", "streams"),
    ("messages", "messages"),
    ("lost", "lost"),
    ("dropped", "dropped"),
    ("p50_ms", "cap->pub p50"),
    ("p99_ms", "cap->pub p99"),
    ("recv_p99_ms", "cap->recv p99"),
    ("server_cpu_pct", "server CPU %"),
    ("gpu_util_pct", "GPU busy %"),
    ("mean_batch", "mean batch"),
    ("holds", "holds"),
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--file", type=Path, default=DEMO, help=f"music to loop (default {DEMO.name})")
    p.add_argument("--streams", default="10,50,100,200,300,400", help="stream counts to try, ascending")
    p.add_argument("--seconds", type=float, default=30.0, help="seconds of real-time audio per level")
    p.add_argument("--chunk-ms", type=float, default=20.0, help="audio per chunk and message period (ms)")
    p.add_argument("--hop", type=float, default=0.5, help="hop in seconds (default 0.5)")
    p.add_argument("--backend", default="auto", help="server backend (default auto)")
    p.add_argument("--bound-ms", type=float, default=150.0, help="capture→publish p99 a level must hold")
    p.add_argument(
        "--skip-s", type=float, default=5.0, help="stream seconds left out at the start of a level"
    )
    p.add_argument("--max-batch-delay-ms", type=float, default=20.0, help="the server's batching delay")
    p.add_argument("--stop-at-failure", action="store_true", help="stop at the first level that fails")
    p.add_argument(
        "--generators", type=int, default=1, help="load generator processes (streams split among them)"
    )
    p.add_argument(
        "--subscribers", type=int, default=1, help="subscriber processes (topics split among them)"
    )
    p.add_argument(
        "--frontend", choices=("auto", "stream", "batch"), help="the server's front end (default its auto)"
    )
    p.add_argument("--max-batch", type=int, help="the server's largest batch (default the backend's)")
    p.add_argument(
        "--processes", type=int, default=1, help="server processes (serve --processes; CPU %% counts all)"
    )
    p.add_argument(
        "--group-size",
        type=int,
        default=0,
        help="streams per stream group (ingest protocol 1.2: a gateway sends one block of all its "
        "streams per chunk; subscribers read the compact encoding); 0: every stream on its own",
    )
    p.add_argument(
        "--aligned-groups",
        action="store_true",
        help="with --group-size: all groups send on one chunk clock, so the windows of a fifth of them "
        "(at 100-ms chunks, 0.5-s hop) fall due together every chunk period; default: each group's "
        "clock is offset by its own share of the hop, as independent gateways' would be",
    )
    p.add_argument(
        "--read-groups",
        action="store_true",
        help="with --group-size: subscribers read whole groups (one frame per group and window, topic "
        "tagg.<group>) instead of every stream's compact topic",
    )


def _cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and every live process under it (``serve --processes``: its children)."""
    stats = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stats[int(d.name)] = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # gone meanwhile
                pass
    tree, todo = set(), [pid]
    while todo:
        p = todo.pop()
        tree.add(p)
        todo += [q for q, st in stats.items() if int(st[1]) == p and q not in tree]
    return sum(int(stats[p][11]) + int(stats[p][12]) for p in tree if p in stats) / os.sysconf("SC_CLK_TCK")


class _GpuSampler:
    """GPU utilisation (NVML busy %, every 200 ms) through ``nvidia-smi``; no samples without one."""

    def __init__(self) -> None:
        try:
            self.proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "200"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )  # fmt: skip
        except OSError:
            self.proc = None

    def stop(self) -> float | None:
        """Mean busy percent of the first GPU over the sampling, or None."""
        if self.proc is None:
            return None
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=10)
        gpu0 = [
            float(x) for x in out.split()[:: max(1, _gpu_count())] if x.strip().replace(".", "").isdigit()
        ]
        return round(sum(gpu0) / len(gpu0), 1) if gpu0 else None


def _gpu_count() -> int:
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 1
    return max(1, len(out.splitlines()))


def _stream_ids(n: int) -> list[str]:
    """Ids whose first two digits spread streams evenly over 100 topic prefixes (subscriber shards)."""
    return [f"s{i % 100:02d}{i // 100:04d}" for i in range(n)]


def _group_id(g: int) -> str:
    return f"g{g:05d}"


def _subscriber_topics(j: int, count: int, prefix: str = "tags.") -> str:
    if count == 1 and prefix == "tags.":
        return ""
    topics = [f"{prefix}s{g:02d}" for g in range(100) if g % count == j]
    return ",".join(topics + (["stats"] if j == 0 else []))


def _generate(endpoint, ids, audio, sr, chunk, offsets, join, periods, t0, hop, results) -> None:
    """One load generator process: opens its streams, then sends one multi-stream message per period."""
    from rt_tagger.client import IngestClient

    period = chunk / sr
    late = 0
    with IngestClient(endpoint, timeout_s=300.0, sndhwm=100000) as client:
        for sid in ids:
            client.open(sid, sr, 1, "s16le", hop_s=hop)
        results.put(("opened", 0))
        start = t0.get()  # every generator starts at the same moment
        for k in range(periods):
            due = start + (k + 1) * period  # a chunk leaves once its last frame was "captured"
            now = time.time()
            if due > now:
                time.sleep(due - now)
            elif now - due > 0.1:
                late += 1
            items = []
            for i, sid in enumerate(ids):
                if k < join[i]:
                    continue
                begin = (offsets[i] + (k - join[i]) * chunk) % (len(audio) - chunk)
                items.append((sid, audio[begin : begin + chunk]))
            if items:
                client.send_many(items)
        for sid in ids:
            client.close_stream(sid, wait=False)
        time.sleep(2.0)
    results.put(("late", late))


_GROUP_SPACING = 1237  # samples (77 ms) between the start offsets of neighbouring streams of a group


def _generate_groups(endpoint, groups, tiled, chunk, join, lags, periods, t0, hop, results) -> None:
    """One load generator process of stream groups: one ``group_audio`` message per group and period.

    Group ``i`` sends its first chunk at period ``join[i]``, each ``lags[i]`` seconds into the period.
    Stream ``i`` of a group plays the looped music from ``base + i * _GROUP_SPACING``: the block
    of a period is a strided view of one long array, copied once into the message."""
    from numpy.lib.stride_tricks import as_strided

    from rt_tagger.client import IngestClient

    period = chunk / 16000
    late = 0
    order = sorted(range(len(groups)), key=lambda i: lags[i])
    with IngestClient(endpoint, timeout_s=300.0, sndhwm=1000) as client:
        for gid, ids, _ in groups:
            client.open_group(gid, ids, 16000, hop_s=hop)
        results.put(("opened", 0))
        start = t0.get()
        for k in range(periods):
            behind = False
            for i in order:
                gid, ids, base = groups[i]
                if k < join[i]:
                    continue
                due = start + (k + 1) * period + lags[i]  # the chunk's last frame was "captured" now
                now = time.time()
                if due > now:
                    time.sleep(due - now)
                elif now - due > 0.1:
                    behind = True
                pos = base + (k - join[i]) * chunk
                view = as_strided(tiled[pos:], shape=(len(ids), chunk), strides=(2 * _GROUP_SPACING, 2))
                client.send_group(gid, view, capture_wall_time=due)
            late += behind
        for gid, _, _ in groups:
            client.close_group(gid, wait=False)
        time.sleep(2.0)
    results.put(("late", late))


def _level(args, bundle_path: Path, audio: np.ndarray, sr: int, n: int, tmp: Path) -> dict:
    import multiprocessing

    ingest, publish = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    n_sub = max(1, min(args.subscribers, 100))
    subs, outputs = [], []
    for j in range(n_sub):
        out = tmp / f"messages-{n}-{j}.jsonl"
        if args.group_size and args.read_groups:
            n_groups = -(-n // args.group_size)
            # fixed-width ids: the prefix tagg.g00003 matches only that group (argv holds no NUL)
            topics = ",".join(f"tagg.{_group_id(g)}" for g in range(j, n_groups, n_sub))
        else:
            topics = _subscriber_topics(j, n_sub, "tagb." if args.group_size else "tags.")
        if args.group_size and j == 0:
            topics += ",stats"
        mode = ("groups" if args.read_groups else "compact") if args.group_size else None
        sub = subprocess.Popen(
            [sys.executable, "-m", "bench.stream_sub", publish, topics, str(out), *([mode] if mode else [])],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        if sub.stdout.readline().strip() != "ready":
            raise BenchError("the bench subscriber did not start")
        subs.append(sub)
        outputs.append(out)
    cmd = [
        sys.executable, "-m", "rt_tagger.cli", "serve", "--bundle", str(bundle_path), "--ingest", ingest,
        "--publish", publish, "--backend", args.backend, "--hop", str(args.hop), "--max-streams", str(n),
        "--max-batch-delay-ms", str(args.max_batch_delay_ms), "--stats-interval", "1", "-q",
        *(["--frontend", args.frontend] if args.frontend else []),
        *(["--max-batch", str(args.max_batch)] if args.max_batch else []),
        "--processes", str(args.processes),
    ]  # fmt: skip
    err = open(tmp / f"server-{n}.stderr", "w")  # noqa: SIM115 - closed below
    # A group's window is a burst of messages as large as the group: the publisher's queue per
    # subscriber must hold a few of them (the default 1000 would drop).
    env = {**os.environ, "RT_TAGGER_PUBLISH__SNDHWM": str(max(1000, 4 * args.group_size))}
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
    chunk = max(1, int(round(args.chunk_ms * sr / 1e3)))
    period = chunk / sr
    rng = np.random.default_rng(n)
    offsets = rng.integers(0, len(audio), size=n)
    # Live streams start at independent times: stream i joins at a random period within the
    # first hop, so windows fall due spread over the hop, not all in the same instant.
    join = rng.integers(0, max(1, int(round(args.hop / period))), size=n)
    periods = int(args.seconds * 1e3 / args.chunk_ms) + int(join.max())
    ids = _stream_ids(n)
    n_gen = max(1, min(args.generators, n))
    ctx = multiprocessing.get_context("fork")
    results, t0 = ctx.Queue(), ctx.Queue()
    if args.group_size:
        gens = _group_generators(ctx, args, ingest, ids, audio, chunk, period, results, t0, rng)
        periods = gens[0]._periods
    else:
        gens = _stream_generators(
            ctx, args, ingest, ids, audio, sr, chunk, offsets, join, periods, results, t0, n_gen
        )
    try:
        for p in gens:
            p.start()
        for _ in gens:  # every stream open before the clock starts
            results.get(timeout=600)
        start = time.time() + 0.5
        for _ in gens:
            t0.put(start)
        time.sleep(max(0.0, start - time.time()))
        cpu0, w0 = _cpu_seconds(server.pid), time.perf_counter()
        gpu = _GpuSampler()
        late = sum(results.get(timeout=args.seconds + 600)[1] for _ in gens)
        cpu1, w1 = _cpu_seconds(server.pid), time.perf_counter()
        gpu_pct = gpu.stop()
        for p in gens:
            p.join(timeout=60)
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        time.sleep(0.5)
    finally:
        for p in gens:
            if p.is_alive():
                p.kill()
        if server.poll() is None:
            server.kill()
        err.close()
        for sub in subs:
            sub.terminate()
            sub.wait(timeout=60)
    rows = [json.loads(ln) for out in outputs for ln in out.read_text().splitlines() if ln.strip()]
    seconds = period * (periods - (gens[0]._last_join if args.group_size else int(join.max())))
    cpu_pct = (cpu1 - cpu0) / (w1 - w0) * 100
    if args.group_size:
        row = _analyse_compact(args, rows, outputs, ids, n, seconds, cpu_pct, late)
    else:
        row = _analyse(args, rows, ids, n, seconds, cpu_pct, late)
    row["gpu_util_pct"] = gpu_pct
    return row


def _stream_generators(ctx, args, ingest, ids, audio, sr, chunk, offsets, join, periods, results, t0, n_gen):
    return [
        ctx.Process(
            target=_generate,
            args=(
                ingest,
                ids[g::n_gen],
                audio,
                sr,
                chunk,
                offsets[g::n_gen],
                join[g::n_gen],
                periods,
                t0,
                args.hop,
                results,
            ),
        )  # fmt: skip
        for g in range(n_gen)
    ]


def _group_generators(ctx, args, ingest, ids, audio, chunk, period, results, t0, rng):
    """Groups of ``--group-size`` streams, spread over the generators. Group ``g`` starts
    ``g / groups`` of a hop after the first, so the groups' windows fall due spread over the hop;
    with ``--aligned-groups`` the starts are rounded down to the chunk period (one shared clock)."""
    size = args.group_size
    groups = [(_group_id(g), ids[i : i + size]) for g, i in enumerate(range(0, len(ids), size))]
    starts = [g * args.hop / len(groups) for g in range(len(groups))]
    join = [int(s // period + 1e-9) for s in starts]
    lags = [0.0 if args.aligned_groups else s - j * period for s, j in zip(starts, join, strict=True)]
    periods = int(args.seconds / period) + max(join)
    bases = rng.integers(0, len(audio), size=len(groups))
    need = int(bases.max()) + (periods + 1) * chunk + size * _GROUP_SPACING
    tiled = np.tile(audio, need // len(audio) + 1)
    n_gen = max(1, min(args.generators, len(groups)))
    gens = []
    for k in range(n_gen):
        mine = list(range(k, len(groups), n_gen))
        spec = [(*groups[g], int(bases[g])) for g in mine]
        gens.append(
            ctx.Process(
                target=_generate_groups,
                args=(
                    ingest,
                    spec,
                    tiled,
                    chunk,
                    [join[g] for g in mine],
                    [lags[g] for g in mine],
                    periods,
                    t0,
                    args.hop,
                    results,
                ),
            )  # fmt: skip
        )
    gens[0]._periods, gens[0]._last_join = periods, max(join)
    return gens


def _analyse_compact(args, rows, outputs, ids, n, seconds, cpu_pct, late) -> dict:
    """:func:`_analyse` for compact frames (``bench.stream_sub`` ``compact`` files)."""
    from rt_tagger.compact import HEADER_DTYPE, TIMINGS

    head_dtype = HEADER_DTYPE
    heads, topics, recvs = [], [], []
    for out in outputs:
        z = np.load(str(out) + ".npz")
        heads.append(np.frombuffer(z["head"].tobytes(), head_dtype))
        topics.append(z["topic"])
        recvs.append(z["recv"])
    h, topic, recv = np.concatenate(heads), np.concatenate(topics), np.concatenate(recvs)
    stats = [r["msg"] for r in rows if r["msg"].get("kind") == "stats"]
    ends = {r["msg"]["stream_id"]: r["msg"] for r in rows if r["msg"].get("kind") == "end"}
    names, stream = np.unique(topic, return_inverse=True)
    index = {bytes(t).rstrip(b"\0")[5:].decode(): i for i, t in enumerate(names)}  # "S" drops the NUL
    # lost: per stream, the seqs up to its end that never arrived
    order = np.lexsort((h["seq"], stream))
    s_sorted, q_sorted = stream[order], h["seq"][order]
    distinct = np.ones(len(order), bool)
    distinct[1:] = (s_sorted[1:] != s_sorted[:-1]) | (q_sorted[1:] != q_sorted[:-1])
    received = np.bincount(s_sorted[distinct], minlength=len(names))
    tags = np.bincount(stream[h["kind"] == 0], minlength=len(names))
    lost = dropped = short = 0
    for sid in ids:
        i = index.get(sid)
        end = ends.get(sid)
        expected = end["seq"] if end else (int(h["seq"][stream == i].max()) + 1 if i is not None else 1)
        lost += expected - (int(received[i]) if i is not None else 0)
        if end:
            d = end["drops"]
            dropped += d.get("ingest_dropped_samples", 0) + d.get("publisher_dropped", 0)
        if i is None or tags[i] < int((seconds - 3.2) / args.hop):
            short += 1
    ok = (h["kind"] == 0) & (h["end_s"] >= args.skip_s) & np.isfinite(h["capture"])
    cp = summarize(((h["publish"] - h["capture"])[ok] * 1e3).tolist())
    stages = {  # where a window's time went (the messages' timings_ms), medians and p99s
        name: summarize(h["timings"][ok, i].astype(np.float64).tolist()) for i, name in enumerate(TIMINGS)
    }
    cr = summarize(((recv - h["capture"])[ok] * 1e3).tolist())
    # latency over the level (2-s bins of capture time): a backlog from the start that drains shows
    # here, a steady overload grows
    t_cap = h["capture"][ok]
    lat = (h["publish"] - h["capture"])[ok] * 1e3
    over_time = []
    if len(t_cap):
        bins = ((t_cap - t_cap.min()) // 2.0).astype(int)
        for b in range(int(bins.max()) + 1):
            sel = lat[bins == b]
            if len(sel):
                over_time.append({"t_s": 2 * b, "n": int(len(sel)), "p50_ms": float(np.percentile(sel, 50)),
                                  "p99_ms": float(np.percentile(sel, 99))})  # fmt: skip
    hist: Counter = Counter()
    last = {m.get("server"): m for m in stats}
    for m in last.values():
        hist.update({int(k): v for k, v in m["batch_size_histogram"].items()})
    total = sum(hist.values())
    mean_batch = sum(k * v for k, v in hist.items()) / total if total else None
    holds = lost == 0 and dropped == 0 and short == 0 and cp["p99"] is not None and cp["p99"] <= args.bound_ms
    return {
        "streams": n, "messages": int(len(h) + len(ends)), "lost": int(lost), "dropped": int(dropped),
        "streams_short": short, "p50_ms": cp["p50"], "p99_ms": cp["p99"], "max_ms": cp["max"],
        "recv_p50_ms": cr["p50"], "recv_p99_ms": cr["p99"], "server_cpu_pct": round(cpu_pct, 1),
        "generator_late_periods": late, "mean_batch": None if mean_batch is None else round(mean_batch, 1),
        "batch_size_histogram": dict(hist), "last_stats": list(last.values()), "holds": holds,
        "timings_ms": {k: {"p50": v["p50"], "p99": v["p99"]} for k, v in stages.items()},
        "latency_over_time": over_time,
    }  # fmt: skip


def _analyse(
    args, rows: list[dict], ids: list[str], n: int, seconds: float, cpu_pct: float, late: int
) -> dict:
    by_stream: dict[str, list[dict]] = {sid: [] for sid in ids}
    stats = []
    for r in rows:
        m = r["msg"]
        if m.get("kind") == "stats":
            stats.append(m)
        elif m.get("stream_id") in by_stream:
            by_stream[m["stream_id"]].append(r)
    lost = dropped = short = 0
    lat, recv = [], []
    for rs in by_stream.values():
        seqs = [r["msg"]["seq"] for r in rs]
        ends = [r["msg"] for r in rs if r["msg"]["kind"] == "end"]
        expected = ends[0]["seq"] + 1 if ends else (max(seqs) + 1 if seqs else 1)
        lost += expected - len(set(seqs))
        if ends:
            d = ends[0]["drops"]
            dropped += d.get("ingest_dropped_samples", 0) + d.get("publisher_dropped", 0)
        windows = sum(r["msg"]["kind"] == "tags" for r in rs)
        if windows < int((seconds - 3.2) / args.hop):  # the windows its audio holds
            short += 1
        for r in rs:
            m = r["msg"]
            if m["kind"] == "tags" and m["window"]["end_s"] >= args.skip_s and m.get("capture_wall_time"):
                lat.append((m["publish_wall_time"] - m["capture_wall_time"]) * 1e3)
                recv.append((r["recv"] - m["capture_wall_time"]) * 1e3)
    cp, cr = summarize(lat), summarize(recv)
    hist: Counter = Counter()
    last = {m.get("server"): m for m in stats}  # serve --processes: one stats message per child
    for m in last.values():
        hist.update({int(k): v for k, v in m["batch_size_histogram"].items()})
    total = sum(hist.values())
    mean_batch = sum(k * v for k, v in hist.items()) / total if total else None  # bucket upper bounds
    holds = lost == 0 and dropped == 0 and short == 0 and cp["p99"] is not None and cp["p99"] <= args.bound_ms
    return {
        "streams": n, "messages": len(rows), "lost": lost, "dropped": dropped, "streams_short": short,
        "p50_ms": cp["p50"], "p99_ms": cp["p99"], "max_ms": cp["max"], "recv_p50_ms": cr["p50"],
        "recv_p99_ms": cr["p99"], "server_cpu_pct": round(cpu_pct, 1), "generator_late_periods": late,
        "mean_batch": None if mean_batch is None else round(mean_batch, 1), "batch_size_histogram": dict(hist),
        "last_stats": list(last.values()) if len(last) > 1 else (stats[-1] if stats else None), "holds": holds,
    }  # fmt: skip


def run(args: argparse.Namespace) -> dict:
    bundle, label = open_bench_bundle(args.bundle)
    levels = sorted({int(x) for x in str(args.streams).split(",") if x.strip()})
    if not levels or levels[0] < 1:
        raise BenchError("--streams needs positive stream counts, e.g. 10,50,100")
    audio_f, sr = _audio(args.file, 120.0, 16000, 1)
    audio = np.clip(np.round(audio_f[:, 0] * 32767), -32768, 32767).astype("<i2")
    doc = new_document("serve", machine_info(), {
        "file": str(args.file), "streams": levels, "seconds": args.seconds, "chunk_ms": args.chunk_ms,
        "hop_s": args.hop, "backend": args.backend, "bound_ms": args.bound_ms, "skip_s": args.skip_s,
        "max_batch_delay_ms": args.max_batch_delay_ms,
        "frontend": args.frontend, "max_batch": args.max_batch, "processes": args.processes,
        "group_size": args.group_size, "read_groups": args.read_groups,
        "aligned_groups": args.aligned_groups,
        "load": (
            f"{args.generators} generator process(es), each multiplexing its streams into one ingest "
            f"message per chunk period; {args.subscribers} subscriber process(es); 16 kHz mono s16le; "
            "each stream starts at its own random offset of the looped file"
            if not args.group_size else
            f"{args.generators} generator process(es) sending stream groups of {args.group_size} "
            "(ingest protocol 1.2: one message per group and chunk period; groups "
            + ("joining at chunk periods spread over the first hop, one shared chunk clock"
               if args.aligned_groups else "starting spread evenly over the first hop, each on its own clock")
            + f"); {args.subscribers} subscriber process(es) reading "
            f"{'group frames' if args.read_groups else 'every stream compact'}; 16 kHz mono s16le; "
            "stream i of a group plays the looped file from the group's random offset + i × 77 ms"
        ),
    })  # fmt: skip
    doc["bundle"] = bundle_info(bundle, label)
    tmp = Path(tempfile.mkdtemp(prefix="rt-bench-serve-"))
    for n in levels:
        print(f"bench serve: {n} streams for {args.seconds:g} s …", file=sys.stderr, flush=True)
        row = _level(args, bundle.path, audio, sr, n, tmp)
        doc["results"].append(row)
        if not row["holds"] and args.stop_at_failure:
            break
    held = [r["streams"] for r in doc["results"] if r["holds"]]
    doc["summary"] = {
        "knee_streams": max(held) if held else 0,
        "hit_search_limit": bool(held) and max(held) == levels[-1],
    }
    doc["notes"].append(
        "the generator and the subscriber run on the same machine as the server and share its cores"
    )
    return doc


def plot(doc: dict, stem) -> list:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in doc["results"] if r.get("p99_ms") is not None]
    if not rows:
        return []
    out = []
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["streams"] for r in rows], [r["p99_ms"] for r in rows], "o-", label="capture→publish p99")
    ax.plot([r["streams"] for r in rows], [r["p50_ms"] for r in rows], "s--", label="p50")
    ax.axhline(doc["settings"]["bound_ms"], color="grey", lw=0.8, label="bound")
    ax.set_xlabel("concurrent real-time streams")
    ax.set_ylabel("ms")
    ax.legend()
    ax.set_title("serve: capacity curve")
    p = stem.with_name(stem.name + "-capacity.png")
    fig.savefig(p, dpi=100)
    plt.close(fig)
    out.append(p)
    last = rows[-1]
    if last.get("batch_size_histogram"):
        fig, ax = plt.subplots(figsize=(6, 4))
        h = sorted((int(k), v) for k, v in last["batch_size_histogram"].items())
        ax.bar([str(k) for k, _ in h], [v for _, v in h])
        ax.set_xlabel("batch size (power-of-two bucket, upper bound)")
        ax.set_ylabel("batches")
        ax.set_title(f"serve: batch sizes at {last['streams']} streams")
        p = stem.with_name(stem.name + "-batches.png")
        fig.savefig(p, dpi=100)
        plt.close(fig)
        out.append(p)
    return out
