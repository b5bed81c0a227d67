"""The fused Triton kernels as an engines backend: ``triton-fused``.

Activation builds :class:`~engines.triton.network.FusedResNet` from the bundle, then finds the
tuning for this GPU in the bundle's compiled directory (:mod:`engines.triton.keys`): one tile
plan per batch bucket (1, 2, 4, … ``max_batch``). A tuning whose key does not match (other GPU,
Triton, weights, kernels…) is never used: with ``tune=True`` (the default when the backend is
forced) the backend tunes now and caches the result, which takes minutes for the ``full``
catalogue; with ``tune=False`` (what ``auto`` passes) it uses the ``full`` catalogue's tuning, else
the ``quick`` one's (same key otherwise), else refuses with the reason, so ``auto`` picks this
backend only on GPUs where it was tuned. ``python -m engines.triton tune BUNDLE [--catalogue quick]``
tunes ahead of time.

Running is the torch CUDA backend's way: pinned buffers and a stream (:class:`engines.cuda_io.CudaIO`),
one CUDA graph per power-of-two batch bucket (:class:`engines.cuda_graphs.GraphCache`) running the
plan of its tuning bucket, CUDA events for ``last_device_time``. Precisions bf16 (default) and fp16.

Without a GPU, under Triton's interpreter (``TRITON_INTERPRET=1`` set before the kernels are
imported), the same kernels run on the CPU in fp32 with default tiles and no graphs: slow, for
tests only.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from engines.base import Backend, BackendError, Inference
from engines.cache import load_or_build
from engines.cuda_graphs import GraphCache, infer_on_device
from engines.cuda_io import CudaIO, require_cuda
from engines.triton.keys import bucket_of, buckets, tuning_artifact
from engines.triton.tiles import TilePlan

__all__ = ["TritonFusedBackend", "PRECISIONS", "interpreted"]

log = logging.getLogger(__name__)

PRECISIONS = ("bf16", "fp16")


def interpreted() -> bool:
    """True when the kernels were defined under Triton's interpreter (they run on the CPU)."""
    from triton.runtime.interpreter import InterpretedFunction

    from engines.triton.kernels_conv import conv_kernel

    return isinstance(conv_kernel, InterpretedFunction)


class TritonFusedBackend(Backend):
    name = "triton-fused"
    overlaps_host_work = True

    def __init__(
        self,
        bundle,
        max_batch: int = 64,
        precision: str = "bf16",
        device: int = 0,
        cudnn: bool = True,
        catalogue: str = "full",
        tune: bool = True,
        retune: bool = False,
        cuda_graphs: bool = True,
    ) -> None:
        from engines.triton.tune import CATALOGUES

        super().__init__(bundle, max_batch)
        if precision not in (*PRECISIONS, "fp32"):
            raise BackendError(
                f"backend {self.name}: precision must be one of {', '.join(PRECISIONS)}, got {precision!r}"
            )
        if catalogue not in CATALOGUES:
            raise BackendError(
                f"backend {self.name}: catalogue must be one of {', '.join(CATALOGUES)}, got {catalogue!r}"
            )
        self.precision = precision
        self.device_index = device
        self.cudnn = cudnn
        self.catalogue = catalogue
        self.tune = tune
        self.retune = retune  # tune even if a matching tuning is cached
        self.cuda_graphs = cuda_graphs
        self.device = f"cuda:{device}"
        self.tuning_path: Path | None = None
        self.tuning_info: dict = {}  # what tuning recorded (seconds, per-bucket layer times)
        self.graphs: GraphCache | None = None
        self.plans: dict[int, TilePlan] = {}

    # -- activation ------------------------------------------------------------------------------
    def activate_impl(self) -> None:
        import torch

        from engines.triton.network import FusedResNet

        self._torch = torch
        model = self.bundle.build_model().eval()
        if model.spec.width % 16:
            raise BackendError(
                f"backend {self.name} unavailable for this bundle: its width {model.spec.width} is not a "
                "multiple of 16 (the kernels' smallest tile side)"
            )
        if interpreted():
            self._activate_interpreted(model)
            return
        if self.precision == "fp32":
            raise BackendError(
                f"backend {self.name}: fp32 runs only under Triton's interpreter (TRITON_INTERPRET=1, "
                f"CPU, for tests); on a GPU use {' or '.join(PRECISIONS)}"
            )
        dev = require_cuda(self.name, self.device_index)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]
        if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            raise BackendError(
                f"backend {self.name}: bf16 is not supported on {torch.cuda.get_device_name(dev)}"
            )
        artifact = self._artifact(dev)
        problem = "re-tuning requested" if self.retune else artifact.problem()
        if problem is not None and not self.tune and self.catalogue == "full":
            # The quick catalogue's tuning is as valid for this GPU and bundle (same key otherwise),
            # only its tiles may be slower: better than refusing when the full one was never run.
            self.catalogue = "quick"
            quick = self._artifact(dev)
            if quick.problem() is None:
                artifact, problem = quick, None
            else:
                self.catalogue = "full"
        if problem is not None and not self.tune:
            raise BackendError(
                f"backend {self.name} not tuned for this GPU and bundle ({artifact.path.name}: {problem}); "
                f"tune it with `python -m engines.triton tune {self.bundle.path}` or force --backend {self.name}"
            )
        with torch.cuda.device(dev):
            self.net = FusedResNet(model, dev, dtype, cudnn_candidates=self.cudnn)
            self.plans = self._load_or_tune(artifact, problem)
            m = self.bundle.manifest.model
            self.io = CudaIO(
                dev, self.max_batch, self.input_shape, {"probabilities": m.n_tags, "embeddings": m.embed_dim}
            )
        if self.cuda_graphs:
            self.graphs = GraphCache(self._forward, self.io.dev_in, self.io.stream, self._cudnn_mode)
        self.device = f"cuda:{dev.index}"
        self.device_input = True

    def _activate_interpreted(self, model) -> None:
        from engines.triton.network import FusedResNet

        if self.precision != "fp32":
            raise BackendError(
                f"backend {self.name}: under Triton's interpreter only fp32 runs (numpy has no "
                f"{self.precision}); pass precision='fp32'"
            )
        self.net = FusedResNet(model, "cpu", self._torch.float32)
        self.plans = {b: TilePlan() for b in buckets(self.max_batch)}  # nothing to time on a CPU
        self.device = "cpu (Triton interpreter)"

    def _artifact(self, dev):
        import triton

        torch = self._torch
        props = torch.cuda.get_device_properties(dev)
        versions = {"triton": triton.__version__, "torch": torch.__version__}
        if self.cudnn:
            versions["cudnn"] = str(torch.backends.cudnn.version())
        return tuning_artifact(
            self.bundle,
            gpu=props.name,
            capability=(props.major, props.minor),
            versions=versions,
            precision=self.precision,
            catalogue=self.catalogue,
            cudnn=self.cudnn,
            max_batch=self.max_batch,
        )

    def _load_or_tune(self, artifact, problem: str | None) -> dict[int, TilePlan]:
        if problem is not None:
            log.warning(
                "tuning %s for %d batch sizes up to %d (%s catalogue; once per GPU, cached in %s)",
                self.name, len(buckets(self.max_batch)), self.max_batch, self.catalogue, artifact.path,
            )  # fmt: skip
        path = load_or_build(artifact, self._tune_into, rebuild=self.retune, what="Triton tuning")
        self.tuning_path, self.tuning_info = path, artifact.info()
        data = json.loads(path.read_text())
        return {int(b): TilePlan.from_json(p) for b, p in data["plans"].items()}

    def _tune_into(self, tmp: Path) -> dict:
        """Time every bucket's candidates on random log-mel windows and write the plans to ``tmp``."""
        from engines.triton.tune import tune_plan

        torch = self._torch
        t0 = time.perf_counter()
        spec = self.bundle.frontend
        g = torch.Generator(device=self.net.stem_w.device).manual_seed(0)
        mel = torch.randn(
            (self.max_batch, spec.n_mels, spec.window_frames), generator=g, device=self.net.stem_w.device
        )
        mel = mel * 20.0 - 40.0  # a log-mel-like dB range
        plans, ms = {}, {}  # bucket → plan, and the sum of its layers' tuned milliseconds
        with torch.inference_mode(), self._cudnn_mode():
            for b in buckets(self.max_batch):
                plan, report = tune_plan(self.net, mel[:b], self.catalogue)
                plans[str(b)] = plan.to_json()
                ms[str(b)] = round(
                    report[0]["stem"][1] + sum(r["conv1"][1] + r["conv2"][1] for r in report[1:]), 4
                )
        tmp.write_text(json.dumps({"plans": plans}, indent=1) + "\n")
        seconds = time.perf_counter() - t0
        log.info("tuned %s in %.0f s", self.name, seconds)
        return {"tune_seconds": round(seconds, 1), "layers_ms_per_bucket": ms}

    @contextmanager
    def _cudnn_mode(self):
        """cuDNN's benchmark mode for the cuDNN candidates, while tuning and capturing (restored after)."""
        cudnn = self._torch.backends.cudnn
        with cudnn.flags(
            enabled=True, benchmark=True, deterministic=cudnn.deterministic, allow_tf32=cudnn.allow_tf32
        ):
            yield

    # -- running ---------------------------------------------------------------------------------
    def _forward(self, x) -> dict:
        """The network on device windows ``x`` (float32) with the plan of its batch bucket."""
        plan = self.plans[bucket_of(x.shape[0], sorted(self.plans))]
        logits, emb = self.net(x, plan)
        return {"probabilities": self._torch.sigmoid(logits), "embeddings": emb}

    def infer_impl(self, mel: np.ndarray, while_waiting=None) -> Inference:
        torch = self._torch
        if self.device.startswith("cpu"):
            with torch.inference_mode():
                outs = self._forward(torch.from_numpy(mel))
            return Inference(outs["probabilities"].numpy(), outs["embeddings"].numpy())
        host, self.last_device_time = infer_on_device(
            torch, mel, self.io, self._forward, self.graphs, self._cudnn_mode, while_waiting
        )
        return Inference(host["probabilities"], host["embeddings"])

    def describe(self) -> dict:
        return {
            **super().describe(),
            "catalogue": self.catalogue,
            "cudnn_candidates": self.cudnn,
            "tuning": str(self.tuning_path) if self.tuning_path else None,
        }

    def deactivate_impl(self) -> None:
        if self.graphs is not None:
            self.graphs.clear()
            self.graphs = None
        self.net = None
        self.io = None
