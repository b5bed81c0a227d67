"""The one training loop shared by pretraining, fine-tuning and probes.

What it owns: seeds and the run's random generator, AdamW with warm-up + cosine learning rate,
mixed precision (bf16 autocast on CUDA), DistributedDataParallel when started by torchrun,
atomic checkpoints every ``ckpt_every`` steps and a resume that loses nothing (model, optimizer,
generator and RNG states, history), a progress bar, a concise log line every ``log_every`` steps
with the collapse indicators (embedding std, effective rank), and optional periodic evaluation.
Ctrl-C (SIGINT) finishes the current step, saves a checkpoint and raises :class:`Interrupted`;
a checkpoint made by another stage or model is refused with :class:`ResumeMismatch`.

The caller supplies ``step_fn(module, gen) -> StepOut``: it draws its batch from ``gen`` (a
generator on the training device whose state is checkpointed), runs the forward pass and returns
the loss. Nothing else in a step may consume randomness, or resumed runs would diverge.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from engines.cache import write_atomic
from engines.errors import UserError
from training.metrics import effective_rank, embedding_std

__all__ = [
    "LoopSpec",
    "StepOut",
    "Dist",
    "setup_distributed",
    "run_loop",
    "lr_at",
    "UtilSampler",
    "CKPT_FILE",
    "Interrupted",
    "ResumeMismatch",
    "DeviceError",
]

log = logging.getLogger(__name__)
CKPT_FILE = "ckpt.pt"


class LoopSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: int = Field(1000, ge=1)
    batch_size: int = Field(256, ge=2)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_steps: int = Field(100, ge=0)
    warmup_fraction: float = Field(0.0, ge=0, lt=1, description="> 0: warm-up is this share of steps")
    min_lr_ratio: float = Field(0.01, ge=0, le=1)
    grad_clip: float = Field(0.0, ge=0, description="0: off")
    amp: bool = Field(True, description="bf16 autocast on CUDA (ignored on CPU)")
    ckpt_every: int = Field(500, ge=0, description="0: only at the end (and on Ctrl-C)")
    ckpt_seconds: float = Field(0.0, ge=0, description="> 0: also checkpoint when this much time passed")
    log_every: int = Field(50, ge=0, description="0: about ten log lines per run")
    eval_every: int = Field(0, ge=0, description="0: no periodic evaluation")
    seed: int = 0

    @property
    def warmup(self) -> int:
        """Warm-up steps: ``warmup_fraction × steps`` when set, else ``warmup_steps``."""
        return round(self.warmup_fraction * self.steps) if self.warmup_fraction else self.warmup_steps

    @property
    def log_interval(self) -> int:
        return self.log_every or max(1, self.steps // 10)


class Interrupted(UserError):
    """Ctrl-C during a loop: the checkpoint is saved; the message says where."""

    exit_code = 130


class ResumeMismatch(UserError):
    """The run folder holds a checkpoint of another stage, pretext or model."""


class DeviceError(UserError):
    """The device asked for is not available here."""


@dataclass
class StepOut:
    loss: torch.Tensor
    embeddings: torch.Tensor | None = None  # (B, D) for the collapse indicators
    n_views: int = 0  # crops processed this step (for views/s)
    extra: dict = field(default_factory=dict)


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str = "auto") -> Dist:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1; pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"--device {device}: no CUDA GPU is available here; use --device cpu (or auto)")
    if device.startswith("cuda") and (torch.device(device).index or 0) >= torch.cuda.device_count():
        raise DeviceError(f"--device {device}: only {torch.cuda.device_count()} CUDA GPU(s) here")
    if device.startswith("cuda"):
        dev = torch.device("cuda", local if world > 1 else (torch.device(device).index or 0))
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, local, dev)


def lr_at(step: int, spec: LoopSpec) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio × lr``."""
    warmup = spec.warmup
    if step < warmup:
        return spec.lr * (step + 1) / warmup
    t = (step - warmup) / max(1, spec.steps - warmup)
    return spec.lr * (
        spec.min_lr_ratio + (1 - spec.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    )


class UtilSampler:
    """Samples GPU utilisation (NVML 'busy' percent) on a background thread."""

    def __init__(self, device: torch.device, period: float = 0.2) -> None:
        self.device, self.period, self.samples = device, period, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.samples.append(float(torch.cuda.utilization(self.device)))
            except Exception:  # noqa: BLE001 - NVML missing: report no samples, never crash training
                return

    def __enter__(self) -> UtilSampler:
        if self.device.type == "cuda":
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()

    @property
    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


def _rng_state(gen: torch.Generator) -> dict:
    state = {"gen": gen.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, gen: torch.Generator) -> None:
    gen.set_state(state["gen"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_atomic(obj, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_atomic(path, buf.getvalue())


def _write_json_atomic(obj, path: Path) -> None:
    write_atomic(path, (json.dumps(obj, indent=1) + "\n").encode())


def _check_resumable(out_dir: Path, desc: str) -> None:
    """Refuse a checkpoint written by another stage/pretext (``desc``) or another model shape."""
    meta = json.loads((out_dir / "ckpt.json").read_text()) if (out_dir / "ckpt.json").exists() else {}
    have = meta.get("desc")
    if have is not None and have != desc:
        raise ResumeMismatch(
            f"{out_dir} holds a {have} checkpoint (step {meta.get('step')}), not {desc}: "
            "choose another --out or pass --no-resume to start over"
        )


class _StopFlag:
    """SIGINT sets a flag the loop checks between steps (so the saved state is a whole step)."""

    def __init__(self, enabled: bool = True) -> None:
        self.set, self._old, self.enabled = False, None, enabled

    def __enter__(self) -> _StopFlag:
        if self.enabled and threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.set = True
        signal.signal(signal.SIGINT, self._old)  # a second Ctrl-C stops at once
        log.warning("Ctrl-C: finishing this step and saving a checkpoint (Ctrl-C again to stop now)")

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def run_loop(
    module: nn.Module,
    step_fn: Callable[[nn.Module, torch.Generator], StepOut],
    spec: LoopSpec,
    out_dir: Path,
    dist: Dist,
    after_step: Callable[[int], None] | None = None,
    eval_fn: Callable[[int], dict] | None = None,
    lr_scale: Callable[[str], float] | None = None,
    resume: bool = True,
    desc: str = "train",
    progress: bool = True,
) -> list[dict]:
    """Train ``module`` for ``spec.steps`` steps; returns the history (one dict per log/eval step).

    Checkpoints go to ``out_dir/ckpt.pt`` (atomically replaced) with ``out_dir/ckpt.json`` naming
    the step; with ``resume`` a run picks up from there. ``history.json`` mirrors the history.
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    module.to(dist.device)
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    groups: dict[tuple[float, bool], list] = {}
    for n, p in named:  # biases and norms get no weight decay; lr_scale may slow parts (e.g. a backbone)
        groups.setdefault((lr_scale(n) if lr_scale else 1.0, p.ndim > 1), []).append(p)
    opt = torch.optim.AdamW(
        [
            {"params": ps, "weight_decay": spec.weight_decay if dec else 0.0, "lr_scale": sc}
            for (sc, dec), ps in groups.items()
        ],
        lr=spec.lr,
    )
    gen = torch.Generator(device=dist.device)
    gen.manual_seed(spec.seed * 1000 + dist.rank)
    torch.manual_seed(spec.seed * 1000 + dist.rank)
    step, history = 0, []
    ckpt = out_dir / CKPT_FILE
    if resume and ckpt.exists():
        _check_resumable(out_dir, desc)
        # CPU first: RNG states must stay CPU ByteTensors; load_state_dict moves the rest to the device.
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        try:
            module.load_state_dict(state["module"])
            opt.load_state_dict(state["opt"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise ResumeMismatch(
                f"{ckpt} was written by another model or recipe ({str(e).splitlines()[0][:120]}): "
                "choose another --out or pass --no-resume to start over"
            ) from None
        _set_rng_state(state["rng"][min(dist.rank, len(state["rng"]) - 1)], gen)
        step, history = int(state["step"]), json.loads(state["history"])
        if dist.is_main:
            log.info("%s: resumed from %s at step %d of %d", desc, ckpt, step, spec.steps)
    fwd = module
    if dist.world > 1:
        fwd = nn.parallel.DistributedDataParallel(
            module, device_ids=[dist.device.index] if dist.device.type == "cuda" else None
        )
    use_amp = spec.amp and dist.device.type == "cuda"

    def save(at: int) -> None:
        rng = [_rng_state(gen)]
        if dist.world > 1:  # every rank's generator, so each resumes its own stream
            gathered = [None] * dist.world
            torch.distributed.all_gather_object(
                gathered,
                {k: (v.cpu() if torch.is_tensor(v) else [t.cpu() for t in v]) for k, v in rng[0].items()},
            )
            rng = gathered
        if dist.is_main:
            _save_atomic(
                {
                    "module": module.state_dict(),
                    "opt": opt.state_dict(),
                    "rng": rng,
                    "step": at,
                    "history": json.dumps(history),
                },
                ckpt,
            )
            _write_json_atomic({"step": at, "steps": spec.steps, "desc": desc}, out_dir / "ckpt.json")
            _write_json_atomic(history, out_dir / "history.json")

    bar = tqdm(
        total=spec.steps,
        initial=step,
        desc=desc,
        disable=not (progress and dist.is_main),
        mininterval=2.0,
        leave=False,
    )
    module.train()
    t_log, views_log = time.perf_counter(), 0
    t_ckpt = time.monotonic()
    stop = _StopFlag(enabled=dist.world == 1)  # under DDP every rank would have to agree on the step
    with stop:
        while step < spec.steps:
            for g in opt.param_groups:
                g["lr"] = lr_at(step, spec) * g["lr_scale"]
            with torch.autocast(device_type=dist.device.type, dtype=torch.bfloat16, enabled=use_amp):
                out = step_fn(fwd, gen)
            if not torch.isfinite(out.loss.detach()):
                raise FloatingPointError(f"{desc}: loss is {out.loss.item()} at step {step}")
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            if spec.grad_clip > 0:
                nn.utils.clip_grad_norm_(params, spec.grad_clip)
            opt.step()
            if after_step is not None:
                after_step(step)
            step += 1
            views_log += out.n_views * dist.world
            bar.update(1)
            if step % spec.log_interval == 0 or step == spec.steps:
                dt = time.perf_counter() - t_log
                rec = {
                    "step": step,
                    "loss": float(out.loss.detach()),
                    "lr": lr_at(step - 1, spec),
                    "views_per_s": views_log / max(dt, 1e-9),
                }
                if out.embeddings is not None:
                    rec["emb_std"] = embedding_std(out.embeddings.detach())
                    rec["eff_rank"] = effective_rank(out.embeddings.detach())
                rec.update({k: float(v) for k, v in out.extra.items()})
                history.append(rec)
                if dist.is_main:
                    bar.write(
                        f"{desc} step {step}/{spec.steps} "
                        + " ".join(f"{k}={v:.4g}" for k, v in rec.items() if k != "step")
                    )
                t_log, views_log = time.perf_counter(), 0
            if (
                eval_fn is not None
                and spec.eval_every
                and (step % spec.eval_every == 0 or step == spec.steps)
            ):
                module.eval()
                rec = {"step": step, **eval_fn(step)}
                module.train()
                history.append(rec)
                if dist.is_main:
                    bar.write(
                        f"{desc} eval step {step}: "
                        + " ".join(f"{k}={v:.4g}" for k, v in rec.items() if isinstance(v, float))
                    )
            if step < spec.steps and (
                (spec.ckpt_every and step % spec.ckpt_every == 0)
                or (spec.ckpt_seconds and time.monotonic() - t_ckpt >= spec.ckpt_seconds)
            ):
                save(step)
                t_ckpt = time.monotonic()
            if stop.set and step < spec.steps:
                save(step)
                bar.close()
                raise Interrupted(
                    f"{desc} interrupted at step {step} of {spec.steps}; checkpoint saved in {ckpt}"
                )
    bar.close()
    save(step)
    return history
