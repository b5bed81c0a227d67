"""ONNX → serialized TensorRT plan, for both flavours, cached beside the bundle.

Polygraphy's loader chain (NetworkFromOnnxPath → EngineFromNetwork → SaveEngine) collapsed into
one function, :func:`compile_bundle`, which owns the cache-key check (:mod:`engines.cache`):

- RTX: strongly typed network; the FP16 plan is built from the FP16 ONNX graph; without a GPU the
  plan targets an explicit list of compute capabilities.
- full TensorRT: weakly typed network from the FP32 graph; FP16 through ``BuilderFlag.FP16``;
  TF32 is cleared for FP32 plans so they keep FP32 parity; a persistent timing cache per target.
- one optimisation profile over batch 1..max (opt at ``opt_batch``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from engines.bundle import Bundle
from engines.cache import Artifact, compiled_dir, load_or_build, write_atomic
from engines.errors import UserError
from engines.onnx_export import DEFAULT_OPSET, INPUT_NAME, export_onnx
from engines.trt.api import TrtApi, load_trt
from engines.trt.keys import Target, plan_artifact, resolve_target

__all__ = [
    "TrtBuildError",
    "PRECISIONS",
    "make_logger",
    "parse_onnx",
    "network_io",
    "build_plan",
    "compile_bundle",
]

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16")


class TrtBuildError(UserError):
    """A TensorRT plan that cannot be built from this ONNX file."""


def make_logger(api: TrtApi):
    """A TensorRT logger that forwards to :mod:`logging` and keeps the last errors for messages."""
    trt = api.module

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg) -> None:  # noqa: D401 - TensorRT's callback
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.errors.append(str(msg))
                log.debug("[TRT] %s", msg)
            elif severity == trt.ILogger.Severity.WARNING:
                log.debug("[TRT] %s", msg)

    return _Logger()


def parse_onnx(api: TrtApi, onnx_path: Path, logger=None):
    """Parse ``onnx_path`` into a network; returns (builder, network, parser).

    Raises:
        TrtBuildError: the file is unreadable or not a model TensorRT can parse.
    """
    trt = api.module
    logger = logger or make_logger(api)
    builder = trt.Builder(logger)
    # RTX only knows strongly typed networks; full TensorRT 10 has explicit batch by default.
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if api.strongly_typed_only else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    try:
        data = Path(onnx_path).read_bytes()
    except OSError as e:
        raise TrtBuildError(f"cannot read ONNX file {onnx_path}: {e.strerror}") from None
    if not parser.parse(data, str(onnx_path)):
        errs = [str(parser.get_error(i)) for i in range(parser.num_errors)] or ["no details"]
        raise TrtBuildError(f"{api.flavour} cannot parse ONNX file {onnx_path}: {errs[0]}")
    return builder, network, parser


def network_io(network) -> list[dict]:
    """Name, direction, shape (-1 = dynamic) and dtype of the network's I/O tensors."""
    out = []
    for mode, n, get in (
        ("input", network.num_inputs, network.get_input),
        ("output", network.num_outputs, network.get_output),
    ):
        for i in range(n):
            t = get(i)
            out.append(
                {"name": t.name, "mode": mode, "shape": list(t.shape), "dtype": str(t.dtype).split(".")[-1]}
            )
    return out


def _timing_cache_path(bundle: Bundle, api: TrtApi, target: Target) -> Path:
    return compiled_dir(bundle) / f"timing.{api.flavour}-{api.version}.{target.slug()}.cache"


def build_plan(
    api: TrtApi,
    onnx_path: Path,
    out_path: Path,
    *,
    precision: str,
    target: Target,
    batch_range: tuple[int, int],
    opt_batch: int | None = None,
    timing_cache: Path | None = None,
) -> dict:
    """Build and write one plan; returns what the key file records as ``info``."""
    trt = api.module
    logger = make_logger(api)
    builder, network, _parser = parse_onnx(api, onnx_path, logger)
    config = builder.create_builder_config()
    if api.is_rtx:
        if target.gpu is None:  # no GPU: say which devices the plan must run on
            config.num_compute_capabilities = len(target.ccs)
            for i, cc in enumerate(target.ccs):
                config.set_compute_capability(api.cc_enum(cc), i)
    else:
        if precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        else:
            config.clear_flag(trt.BuilderFlag.TF32)

    lo, hi = batch_range
    opt = min(max(opt_batch or min(hi, 16), lo), hi)
    profile = builder.create_optimization_profile()
    inp = network.get_input(0)
    if inp.name != INPUT_NAME:
        raise TrtBuildError(f"ONNX file {onnx_path} has input {inp.name!r}, expected {INPUT_NAME!r}")
    feat = tuple(inp.shape)[1:]
    profile.set_shape(INPUT_NAME, (lo, *feat), (opt, *feat), (hi, *feat))
    config.add_optimization_profile(profile)

    cache = None
    if api.has_timing_cache and timing_cache is not None:
        blob = timing_cache.read_bytes() if timing_cache.is_file() else b""
        cache = config.create_timing_cache(blob)
        if cache is None and blob:
            log.warning("ignoring unreadable timing cache %s", timing_cache)
            cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)

    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - t0
    if plan is None:
        why = logger.errors[-1] if logger.errors else "no details"
        raise TrtBuildError(
            f"{api.flavour} {api.version} could not build a plan from {onnx_path.name}: {why}"
        )
    data = bytes(memoryview(plan))
    write_atomic(out_path, data)
    if cache is not None:
        write_atomic(timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
    return {
        "io": network_io(network),
        "profile": {"min": [lo, *feat], "opt": [opt, *feat], "max": [hi, *feat]},
        "build_seconds": round(seconds, 3),
        "source_onnx": onnx_path.name,
        "timing_cache": timing_cache.name if cache is not None else None,
    }


def onnx_precision_for(api: TrtApi, precision: str) -> str:
    """RTX takes FP16 from the graph; full TensorRT lowers the FP32 graph with a builder flag."""
    return precision if api.strongly_typed_only else "fp32"


def compile_bundle(
    bundle: Bundle,
    precision: str = "fp16",
    max_batch: int = 64,
    *,
    flavour: str = "auto",
    target: str = "auto",
    opt_batch: int | None = None,
    rebuild: bool = False,
    api: TrtApi | None = None,
) -> Artifact:
    """The bundle's plan for (flavour, target, precision, 1..max_batch), built now if missing or stale.

    Raises:
        BackendError: no TensorRT module, or no GPU/target to build for.
        TrtBuildError: parsing or building failed.
        CacheError: the plan is stale and the bundle directory is read-only.
    """
    if precision not in PRECISIONS:
        raise TrtBuildError(f"TensorRT precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if max_batch < 1:
        raise TrtBuildError(f"--max-batch must be ≥ 1, got {max_batch}")
    api = api or load_trt(flavour)
    tgt = resolve_target(api, target, precision=precision)
    artifact = plan_artifact(bundle, api, tgt, precision, (1, max_batch), DEFAULT_OPSET)

    def build(tmp: Path) -> dict:
        onnx_path = export_onnx(bundle, onnx_precision_for(api, precision), DEFAULT_OPSET)
        return build_plan(
            api,
            onnx_path,
            tmp,
            precision=precision,
            target=tgt,
            batch_range=(1, max_batch),
            opt_batch=opt_batch,
            timing_cache=_timing_cache_path(bundle, api, tgt),
        )

    load_or_build(artifact, build, rebuild=rebuild, what="TensorRT plan")
    return artifact
