"""``rt-tagger bench model``: inference latency and throughput per backend and batch size.

For every runner (an engines backend through ``infer()``, or the model alone under the backend's
CUDA graphs, see :mod:`bench.runners`) and batch size: p50/p95/p99/max over many timed runs after warm-up,
windows/s, and the achieved TFLOP/s from the counted FLOPs per window, next to the GPU's dense
fp16/bf16 peak where it is known (CPU: GFLOP/s only).
"""

from __future__ import annotations

import argparse

from bench.common import bundle_info, new_document, open_bench_bundle
from bench.machine import machine_info
from bench.runners import auto_runners, flops_per_window, make_runner, measure
from bench.stats import summarize

__all__ = ["add_arguments", "run", "COLUMNS", "plot"]

COLUMNS = [
    ("runner", "runner"),
    ("device", "device"),
    ("precision", "prec"),
    ("batch", "batch"),
    ("n", "runs"),
    ("p50_ms", "p50 ms"),
    ("p95_ms", "p95 ms"),
    ("p99_ms", "p99 ms"),
    ("max_ms", "max ms"),
    ("device_p99_ms", "dev p99 ms"),
    ("windows_per_s", "windows/s"),
    ("achieved_gflops", "GFLOP/s"),
    ("pct_of_peak", "% peak"),
]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--runners",
        default="auto",
        help="comma list of runner specs: an engines backend name (torch-cpu, onnxruntime-cpu, torch-cuda, "
        "tensorrt, triton-fused; options as NAME:key=value, e.g. torch-cuda:precision=bf16) timed through "
        "infer(), or the model alone under the backend's CUDA graphs: cuda-graph-bf16 / cuda-graph-fp16 "
        "(torch-cuda), compiled-graph-bf16[-autotune] (torch.compile), triton-fused-bf16[-cudnn] / "
        "triton-fused-fp16[-cudnn] (engines/triton/: fused Triton kernels, tuned per GPU and cached). "
        "auto (default): every backend that opens here (GPU ones + CUDA graphs on a GPU machine, else the "
        "CPU ones); backends: auto without CUDA graphs",
    )
    p.add_argument(
        "--batches",
        type=_ints,
        default=None,
        help="comma list of batch sizes (default 1..64 on CPU, 1..4096 on GPU)",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's own choice)"
    )
    p.add_argument("--warmup", type=int, default=10, help="untimed runs before measuring (default 10)")
    p.add_argument("--iters", type=int, default=200, help="timed runs per point at most (default 200)")
    p.add_argument("--min-iters", type=int, default=10, help="timed runs per point at least (default 10)")
    p.add_argument("--max-seconds", type=float, default=3.0, help="time budget per point (default 3 s)")


def run(args: argparse.Namespace) -> dict:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    bundle, label = open_bench_bundle(args.bundle)
    info = machine_info()
    gpu = bool(info.get("gpu"))
    if args.batches is None:
        args.batches = [2**i for i in range(13 if gpu else 7)]
    doc = new_document(
        "model",
        info,
        {
            k: getattr(args, k)
            for k in ("runners", "batches", "threads", "warmup", "iters", "min_iters", "max_seconds")
        },
    )
    doc["bundle"] = bundle_info(bundle, label)
    flops = flops_per_window(bundle)
    doc["bundle"]["flops_per_window"] = flops
    peak = (info.get("gpu") or {}).get("peak_fp16_bf16_dense_tflops")
    samples: dict[str, list[float]] = {}
    if args.runners in ("auto", "backends"):
        runners, notes = auto_runners(bundle, max(args.batches), gpu, graphs=args.runners == "auto")
        doc["notes"] += notes
    else:
        runners = [
            make_runner(bundle, s.strip(), max(args.batches)) for s in args.runners.split(",") if s.strip()
        ]
    for runner in runners:
        try:
            for batch in args.batches:
                if batch > runner.max_batch:
                    doc["notes"].append(
                        f"{runner.name}: batch {batch} above its maximum {runner.max_batch}, skipped"
                    )
                    continue
                ms = measure(runner, batch, args.warmup, args.iters, args.min_iters, args.max_seconds)
                s = summarize(ms)
                gflops = flops * batch / (s["mean"] / 1e3) / 1e9
                on_gpu = runner.device.startswith("cuda")
                row = {
                    **runner.describe(),
                    "batch": batch,
                    **{k if k == "n" else f"{k}_ms": v for k, v in s.items()},
                    "windows_per_s": batch / (s["mean"] / 1e3),
                    "achieved_gflops": gflops,
                    "achieved_tflops": gflops / 1e3,
                    "peak_tflops": peak if on_gpu else None,
                    "pct_of_peak": 100 * gflops / 1e3 / peak if (on_gpu and peak) else None,
                    "samples_ms": [round(x, 4) for x in ms],
                }
                dev = summarize(runner.device_ms)
                if dev["n"]:  # GPU backends: CUDA-event time of copy-in + compute + copy-out
                    row.update({"device_p50_ms": dev["p50"], "device_p99_ms": dev["p99"]})
                doc["results"].append(row)
                samples[f"{runner.name} b{batch}"] = ms
        finally:
            runner.close()
    best = max(doc["results"], key=lambda r: r["windows_per_s"], default=None)
    if best:
        doc["summary"] = {
            "gflop_per_window": flops / 1e9,
            "best_windows_per_s": best["windows_per_s"],
            "best_at": f"{best['runner']} batch {best['batch']}",
            "best_tflops": best["achieved_tflops"],
            "device_peak_tflops": best["peak_tflops"],
        }
        b1 = [r for r in doc["results"] if r["batch"] == 1]
        for r in b1:
            doc["summary"][f"{r['runner']} batch-1 p99 ms"] = r["p99_ms"]
    doc["notes"].append("FLOPs counted with torch.utils.flop_counter (multiply and add counted separately)")
    doc["notes"].append(
        "graph timer (cuda-graph-*, compiled-graph-*, triton-fused-*): model alone, input resident on the GPU, "
        "the backend's CUDA graph replayed between CUDA events; infer timer (backends): numpy in/out through "
        "engines' infer(), wall clock, copies included"
    )
    return doc


def plot(doc: dict, stem) -> list:
    from bench.plots import latency_plot, throughput_plot

    out = [
        throughput_plot(
            doc["results"], stem.with_name(stem.name + "-throughput.png"), "model: throughput vs batch"
        )
    ]
    b1 = {r["runner"]: r["samples_ms"] for r in doc["results"] if r["batch"] == 1}
    if b1:
        out.append(latency_plot(b1, stem.with_name(stem.name + "-latency-b1.png"), "model: batch-1 latency"))
    return out
