"""Where the GPU time of the default model goes, kernel by kernel, and how the fused kernels compare.

    python3 scripts/gpu_probe_fused.py [--batches 1024,4096] [--out probe.json]

Prints, for each precision and batch: the accuracy of the fused kernels (engines/triton/) against the fp32
torch model (and of torch eager at the same precision, for scale), every fused convolution's
chosen tile and CUDA-event time with its achieved TFLOP/s, the stem and tail times, and the whole
network under a CUDA graph against torch eager (cuDNN, CUDA graph) and cuDNN's own fused
conv+bias(+add)+ReLU ops in the same run. A development tool: `rt-tagger bench model` is what
users run (runner `triton-fused-bf16`).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from bench.machine import machine_info
from bench.runners import flops_per_window, random_windows
from engines.bundle import Bundle
from engines.cuda_graphs import GraphCache
from engines.triton.network import FusedResNet
from engines.triton.packing import fold_resnet, oihw_weight
from engines.triton.tune import cuda_event_ms, tune_plan

PEAK_TFLOPS = 989.4  # H100/H200 SXM dense fp16/bf16 (datasheet)


def graph_ms(fn, x, iters: int = 30) -> float:
    """``fn(x)`` under a CUDA graph captured the way the backends capture it, by CUDA events."""
    graphs = GraphCache(lambda inp: {"out": fn(inp)}, x, torch.cuda.Stream(), warmup=3)
    graph, _ = graphs.get(x.shape[0])
    with torch.cuda.stream(graphs.stream):
        ms = cuda_event_ms(graph.replay, iters)
    graphs.clear()
    return ms


class CudnnFused:
    """The folded network through cuDNN's fused conv+bias+ReLU / conv+bias+add+ReLU (NHWC)."""

    def __init__(self, model, dtype):
        f = fold_resnet(model.eval())
        self.f = f
        dev = "cuda"

        def w4(w, k):  # (k²·C_in, C_out) → (C_out, C_in, k, k) channels_last
            return oihw_weight(w, k).to(dev, dtype).to(memory_format=torch.channels_last)

        self.dtype = dtype
        self.stem_w = w4(f["stem"][0], 3)
        self.stem_b = f["stem"][1].to(dev, dtype)
        self.blocks = [
            (
                w4(b.w1, 3),
                b.b1.to(dev, dtype),
                w4(b.w2, 3),
                b.b2.to(dev, dtype),
                b.stride,
                None if b.ws is None else w4(b.ws, 1),
            )
            for b in f["blocks"]
        ]
        self.norm = f["norm"]

    def __call__(self, mel):
        x = (mel.unsqueeze(1).float() * self.norm[0] + self.norm[1]).to(self.dtype)
        x = x.contiguous(memory_format=torch.channels_last)
        y = torch.cudnn_convolution_relu(x, self.stem_w, self.stem_b, [2, 2], [1, 1], [1, 1], 1)
        y = torch.nn.functional.max_pool2d(y, 2)
        for w1, b1, w2, b2, s, ws in self.blocks:
            h = torch.cudnn_convolution_relu(y, w1, b1, [s, s], [1, 1], [1, 1], 1)
            z = y if ws is None else torch.nn.functional.conv2d(y, ws, None, s)
            y = torch.cudnn_convolution_add_relu(h, w2, z, 1.0, b2, [1, 1], [1, 1], [1, 1], 1)
        return y


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", default="rt_tagger/default_model")
    ap.add_argument("--batches", default="1024,4096")
    ap.add_argument("--precisions", default="bf16,fp16")
    ap.add_argument("--out", default=None)
    ap.add_argument("--no-compare", action="store_true", help="time only the fused kernels")
    ap.add_argument("--cudnn", action="store_true", help="let cuDNN's fused ops compete per layer")
    ap.add_argument("--trace", action="store_true", help="print every tuning candidate's time")
    ap.add_argument(
        "--stem-precisions",
        default="",
        help="also run the network with these stem precisions, e.g. bf16,tf32",
    )
    args = ap.parse_args()
    torch.backends.cudnn.benchmark = True
    bundle = Bundle.load(args.bundle)
    model = bundle.build_model().eval()
    gflop = flops_per_window(bundle) / 1e9
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    out: dict = {"machine": machine_info(), "gflop_per_window": gflop, "accuracy": {}, "runs": []}
    print(f"{torch.cuda.get_device_name(0)}  torch {torch.__version__}  {gflop:.4f} GFLOP/window")

    x64 = torch.from_numpy(random_windows(bundle, 64, seed=1))
    with torch.inference_mode():
        ref = torch.sigmoid(model(x64)[0])
        for p in args.precisions.split(","):
            dt = dtypes[p]
            fused = FusedResNet(model, "cuda", dt)
            got = torch.sigmoid(fused(x64.cuda().to(dt))[0]).cpu()
            for sp in filter(None, args.stem_precisions.split(",")):
                other = FusedResNet(model, "cuda", dt, stem_precision=sp)
                d = float((torch.sigmoid(other(x64.cuda().to(dt))[0]).cpu() - ref).abs().max())
                out["accuracy"][f"{p}_stem_{sp}"] = d
                print(f"accuracy {p} with a {sp} stem: fused {d:.2e}")
            eager = bundle.build_model().eval().to("cuda", dt).to(memory_format=torch.channels_last)
            got_eager = torch.sigmoid(eager(x64.cuda().to(dt))[0].float()).cpu()
            acc = {
                "fused_max_abs_prob_diff": float((got - ref).abs().max()),
                "torch_eager_max_abs_prob_diff": float((got_eager - ref).abs().max()),
            }
            out["accuracy"][p] = acc
            print(
                f"accuracy {p}: fused {acc['fused_max_abs_prob_diff']:.2e}  "
                f"torch eager {acc['torch_eager_max_abs_prob_diff']:.2e} (vs fp32 torch, 64 windows)"
            )

    for p in args.precisions.split(","):
        dt = dtypes[p]
        fused = FusedResNet(model, "cuda", dt, cudnn_candidates=args.cudnn)
        eager = bundle.build_model().eval().to("cuda", dt).to(memory_format=torch.channels_last)
        cudnn_fused = CudnnFused(model, dt)
        for batch in [int(b) for b in args.batches.split(",")]:
            x = torch.from_numpy(random_windows(bundle, batch)).to("cuda", dt)
            with torch.inference_mode():
                t0 = time.perf_counter()
                trace: list = []
                _, report = tune_plan(fused, x, trace=trace)
                tune_s = time.perf_counter() - t0
                f = fused
                stem_ms = cuda_event_ms(lambda f=f, x=x: f.stem(x), 20)
                run = {"precision": p, "batch": batch, "tune_s": tune_s, "stem_ms": stem_ms, "layers": []}
                run["candidates"] = [(layer, str(c), ms) for layer, c, ms in trace]
                print(f"\n== {p} batch {batch}: tuning {tune_s:.1f} s; stem+pool {stem_ms:.3f} ms")
                if args.trace:
                    for layer, c, ms in trace:
                        print(f"    {layer:>14} {'failed' if ms is None else f'{ms:.3f} ms':>9}  {c}")
                for sp in filter(None, args.stem_precisions.split(",")):
                    fused.stem_precision = sp
                    sp_ms = cuda_event_ms(lambda f=f, x=x: f.stem(x), 20)
                    print(f"  stem in {sp}: {sp_ms:.3f} ms")
                    run[f"stem_ms_{sp}"] = sp_ms
                fused.stem_precision = None
                print(f"  stem config (pixels, warps) {report[0]['stem'][0]}: {report[0]['stem'][1]:.3f} ms")
                for r in report[1:]:
                    for name in ("conv1", "conv2"):
                        tile, ms = r[name]
                        run["layers"].append({"block": r["block"], "conv": name, "tile": str(tile), "ms": ms})
                        print(f"  block {r['block']} {name}: {ms:.3f} ms  tile {tile}")
                sum_layers = sum(layer["ms"] for layer in run["layers"])
                timings = {"triton_fused": graph_ms(fused, x)}
                if not args.no_compare:
                    timings["torch_eager_cudnn"] = graph_ms(eager, x)
                    try:
                        timings["cudnn_fused_ops"] = graph_ms(cudnn_fused, x)
                    except Exception as e:  # noqa: BLE001  a probe: report and go on
                        print(f"  cudnn fused ops failed: {type(e).__name__}: {str(e).splitlines()[0]}")
                run["sum_conv_ms"] = sum_layers
                run["graph_ms"] = timings
                print(f"  sum of convolutions {sum_layers:.3f} ms")
                for k, ms in timings.items():
                    tflops = gflop * batch / ms  # GFLOP per ms = TFLOP/s
                    print(
                        f"  {k:>20}: {ms:8.3f} ms  {batch / ms * 1e3:>12,.0f} windows/s  "
                        f"{tflops:7.1f} TFLOP/s  {100 * tflops / PEAK_TFLOPS:5.1f} % of peak"
                    )
                out["runs"].append(run)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(out, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
