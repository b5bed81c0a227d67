"""``rt-tagger bench capacity``: how many concurrent real-time streams one backend sustains.

Every hop period each of N streams contributes one new log-mel window; the N windows are batched
(in chunks of at most ``--max-batch``) and run back to back. N is sustainable when the p99 of that
per-hop inference time stays under the bound (default: the hop itself, i.e. the runner keeps up in
real time; ``--bound-ms`` sets a tighter latency bound). N is found by doubling, then bisection.

This is the MODEL side only: framing/log-mel, aggregation and publishing of N streams are not
included (see ``bench frontend`` and ``bench stream`` for those costs per stream).
"""

from __future__ import annotations

import argparse
import math
import time

from bench.common import bundle_info, new_document, open_bench_bundle
from bench.machine import machine_info
from bench.runners import Runner, make_runner
from bench.stats import summarize

__all__ = ["add_arguments", "run", "COLUMNS", "plot", "hop_times", "search"]

COLUMNS = [
    ("runner", "runner"),
    ("streams", "streams"),
    ("chunks", "batches/hop"),
    ("n", "hops"),
    ("p50_ms", "p50 ms"),
    ("p99_ms", "p99 ms"),
    ("max_ms", "max ms"),
    ("bound_ms", "bound ms"),
    ("ok", "ok"),
    ("windows_per_s", "windows/s needed"),
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--runner",
        default=None,
        help="engines backend name or cuda-graph-bf16/fp16 (default: cuda-graph-bf16 on a GPU, else torch-cpu)",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's own choice)"
    )
    p.add_argument(
        "--hop",
        type=float,
        default=0.5,
        help="hop in seconds: each stream sends one window per hop (default 0.5)",
    )
    p.add_argument("--bound-ms", type=float, default=None, help="p99 bound per hop in ms (default: the hop)")
    p.add_argument(
        "--max-batch",
        type=int,
        default=None,
        help="largest batch per inference call (default: 64 on CPU, 4096 on GPU)",
    )
    p.add_argument("--hops", type=int, default=30, help="hops timed per candidate N at most (default 30)")
    p.add_argument("--min-hops", type=int, default=5, help="hops timed per candidate N at least (default 5)")
    p.add_argument("--max-seconds", type=float, default=8.0, help="time budget per candidate N (default 8 s)")
    p.add_argument("--max-streams", type=int, default=1 << 21, help="stop searching above this N")
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.02,
        help="bisection stops within this fraction of N (default 0.02)",
    )


def _chunks(n: int, max_batch: int) -> list[int]:
    full, rest = divmod(n, max_batch)
    return [max_batch] * full + ([rest] if rest else [])


def hop_times(
    runner: Runner, n: int, max_batch: int, hops: int, min_hops: int, max_seconds: float
) -> list[float]:
    """Milliseconds to run the windows of ``n`` streams (one hop), repeated; after one warm-up hop."""
    chunks = _chunks(n, max_batch)
    sizes = sorted(set(chunks))
    for b in sizes:
        runner.prepare(b)
    try:
        for b in chunks:  # warm-up hop
            runner.time_batch(b)
        out: list[float] = []
        t_end = time.perf_counter() + max_seconds
        while len(out) < hops and (len(out) < min_hops or time.perf_counter() < t_end):
            out.append(sum(runner.time_batch(b) for b in chunks))
        return out
    finally:
        for b in sizes:
            if b != max_batch:
                runner.release(b)


def search(probe, max_streams: int, tolerance: float) -> int:
    """Largest N with ``probe(N)`` true, assuming monotonicity: doubling from 1, then bisection. 0 if none."""
    lo, hi = 0, None
    n = 1
    while n <= max_streams:
        if probe(n):
            lo, n = n, n * 2
        else:
            hi = n
            break
    if hi is None:
        return lo
    while hi - lo > max(1, math.floor(lo * tolerance)):
        mid = (lo + hi) // 2
        if probe(mid):
            lo = mid
        else:
            hi = mid
    return lo


def run(args: argparse.Namespace) -> dict:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    bundle, label = open_bench_bundle(args.bundle)
    info = machine_info()
    if args.runner is None:
        args.runner = "cuda-graph-bf16" if info.get("gpu") else "torch-cpu"
    bound = args.bound_ms if args.bound_ms is not None else args.hop * 1e3
    settings = {
        k: getattr(args, k)
        for k in (
            "runner",
            "hop",
            "bound_ms",
            "max_batch",
            "hops",
            "min_hops",
            "max_seconds",
            "max_streams",
            "tolerance",
            "threads",
        )
    }
    settings["bound_ms"] = bound
    doc = new_document("capacity", info, settings)
    doc["bundle"] = bundle_info(bundle, label)
    max_batch = args.max_batch or (4096 if args.runner.startswith("cuda") or info.get("gpu") else 64)
    runner = make_runner(bundle, args.runner, max_batch)
    max_batch = min(max_batch, runner.max_batch)
    doc["settings"]["max_batch"] = max_batch

    def probe(n: int) -> bool:
        s = summarize(hop_times(runner, n, max_batch, args.hops, args.min_hops, args.max_seconds))
        ok = s["p99"] <= bound
        doc["results"].append(
            {
                **runner.describe(),
                "streams": n,
                "chunks": len(_chunks(n, max_batch)),
                **{k if k == "n" else f"{k}_ms": v for k, v in s.items()},
                "bound_ms": bound,
                "ok": ok,
                "windows_per_s": n / args.hop,
                "achieved_windows_per_s": n / (s["mean"] / 1e3),
            }
        )
        return ok

    try:
        n_max = search(probe, args.max_streams, args.tolerance)
    finally:
        runner.close()
    at = [r for r in doc["results"] if r["streams"] == n_max]
    doc["summary"] = {
        "runner": runner.name,
        "max_streams": n_max,
        "hop_s": args.hop,
        "bound_ms": bound,
        "p99_ms_at_max": at[0]["p99_ms"] if at else None,
        "windows_per_s_at_max": n_max / args.hop,
        "hit_search_limit": n_max * 2 > args.max_streams,
    }
    doc["notes"].append(
        "model side only: windows are synthetic log-mel; front end, aggregation and publishing excluded"
    )
    doc["notes"].append(f"N windows per hop run as batches of at most {max_batch}, back to back")
    return doc


def plot(doc: dict, stem) -> list:
    from bench.plots import _figure, _save

    plt = _figure()
    rows = sorted(doc["results"], key=lambda r: r["streams"])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["streams"] for r in rows], [r["p99_ms"] for r in rows], "o-", label="p99 per hop")
    ax.axhline(doc["settings"]["bound_ms"], color="red", linestyle="--", label="bound")
    ax.axvline(
        doc["summary"]["max_streams"],
        color="green",
        linestyle=":",
        label=f"N = {doc['summary']['max_streams']}",
    )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("concurrent streams")
    ax.set_ylabel("inference time per hop (ms)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title(f"capacity: {doc['summary']['runner']}, hop {doc['summary']['hop_s']} s")
    try:
        return [_save(fig, stem.with_name(stem.name + "-capacity.png"))]
    finally:
        plt.close(fig)
