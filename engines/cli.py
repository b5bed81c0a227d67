"""`rt-tagger compile BUNDLE`: export the bundle to ONNX and build a TensorRT plan beside it.

Examples::

    rt-tagger compile path/to/bundle                      # fp16 plan, batch 1..64, for this GPU
    rt-tagger compile path/to/bundle --precision fp32 --max-batch 256
    rt-tagger compile path/to/bundle --target sm89,sm120  # TensorRT-RTX, no GPU needed
    rt-tagger compile path/to/bundle --onnx-only          # only the ONNX files (fp32 and fp16)
                                                          # and the front-end constants
"""

from __future__ import annotations

import argparse
import json

from engines.bundle import Bundle
from engines.onnx_export import PRECISIONS as ONNX_PRECISIONS
from engines.onnx_export import export_onnx
from engines.trt.api import FLAVOURS

__all__ = ["compile_main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rt-tagger compile", description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", help="model bundle directory")
    p.add_argument(
        "--precision", choices=("fp32", "fp16"), default="fp16", help="plan precision (default: fp16)"
    )
    p.add_argument(
        "--max-batch", type=int, default=64, help="optimisation profile covers batch 1..N (default: 64)"
    )
    p.add_argument(
        "--opt-batch", type=int, default=None, help="batch the profile is tuned for (default: min(N, 16))"
    )
    p.add_argument(
        "--flavour", choices=("auto", *FLAVOURS), default="auto", help="TensorRT module (default: auto)"
    )
    p.add_argument(
        "--target",
        default="auto",
        help="auto (this GPU, else every cc TensorRT-RTX supports), current, or a cc list like sm89,sm120",
    )
    p.add_argument("--rebuild", action="store_true", help="build even if a plan with the same key exists")
    p.add_argument(
        "--onnx-only",
        action="store_true",
        help="only what CPU runs need: the ONNX files (fp32 and fp16)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def compile_main(argv: list[str]) -> int:
    """Entry point of ``rt-tagger compile``; returns the exit status."""
    args = _parser().parse_args(argv)
    bundle = Bundle.load(args.bundle)
    if args.onnx_only:
        paths = {p: str(export_onnx(bundle, p, rebuild=args.rebuild)) for p in ONNX_PRECISIONS}
        print(json.dumps({"onnx": paths}, indent=2) if args.json else "\n".join(paths.values()))
        return 0
    from engines.trt.builder import compile_bundle

    artifact = compile_bundle(
        bundle,
        args.precision,
        args.max_batch,
        flavour=args.flavour,
        target=args.target,
        opt_batch=args.opt_batch,
        rebuild=args.rebuild,
    )
    stored = artifact.stored() or {}
    if args.json:
        print(json.dumps({"plan": str(artifact.path), **stored}, indent=2))
        return 0
    key, info = stored.get("key", {}), stored.get("info", {})
    where = (
        key.get("gpu")
        and f"{key['gpu']} (cc {key['compute_capability']})"
        or "cc " + ", ".join(key.get("build_target", []))
    )
    print(f"plan: {artifact.path}")
    print(
        f"  {key.get('flavour')} {key.get('tensorrt_version')} for {where}, {key.get('precision')}, batch {key.get('batch_min')}..{key.get('batch_max')}"
    )
    for t in info.get("io", []):
        print(f"  {t['mode']:6s} {t['name']:14s} {t['dtype']:6s} {t['shape']}")
    if "build_seconds" in info:
        print(f"  built in {info['build_seconds']} s from {info.get('source_onnx')}")
    return 0
