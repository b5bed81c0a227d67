"""Self-supervised pretraining stage: multi-view crops → GPU augmentations → log-mel → pretext.

Writes ``<out>/backbone.safetensors`` (the ResNet's weights; its tag head is a placeholder) and
``<out>/pretrain.json`` (recipe section, pretext, throughput, GPU utilisation, collapse
indicators), besides the loop's checkpoint and history.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from engines.atomic import atomic_path
from engines.logmel_torch import LogMel
from engines.model import ModelSpec, ResNetTagger
from training.augment import augment_mel, augment_wave
from training.bank import AudioBank
from training.loop import Dist, StepOut, UtilSampler, run_loop
from training.pretexts import build_pretext
from training.recipe import Recipe
from training.views import sample_views

__all__ = ["pretrain", "model_spec", "save_backbone", "load_backbone", "BACKBONE_FILE"]

log = logging.getLogger(__name__)
BACKBONE_FILE = "backbone.safetensors"


def model_spec(recipe: Recipe, n_tags: int) -> ModelSpec:
    m = recipe.model
    return ModelSpec(width=m.width, blocks=m.blocks, embed_dim=m.embed_dim, n_tags=max(1, n_tags))


def save_backbone(model: ResNetTagger, path: Path) -> None:
    """The ResNet's weights without its tag head (safetensors, atomic)."""
    from safetensors.torch import save_file

    state = {
        k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if not k.startswith("head.")
    }
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))


def load_backbone(model: ResNetTagger, path: Path) -> None:
    """Load pretrained weights into ``model``; only the tag head may be missing."""
    from safetensors.torch import load_file

    missing, unexpected = model.load_state_dict(load_file(str(path)), strict=False)
    bad = [k for k in missing if not k.startswith("head.")] + list(unexpected)
    if bad:
        raise ValueError(f"pretrained weights {path} do not fit the model: {bad[:3]}")


def pretrain(
    recipe: Recipe,
    bank: AudioBank,
    out_dir: Path,
    dist: Dist,
    n_tags: int = 1,
    resume: bool = True,
    progress: bool = True,
) -> dict:
    """Run the recipe's pretext on ``bank`` (already on ``dist.device``); returns the summary."""
    cfg = recipe.pretrain
    spec = recipe.frontend
    torch.manual_seed(recipe.seed)
    model = ResNetTagger(model_spec(recipe, n_tags))
    pretext = build_pretext(cfg.pretext, model, **cfg.options).to(dist.device)
    logmel = LogMel(spec).to(dist.device)
    window = spec.window_samples
    gap = int(round(cfg.min_gap_s * spec.sample_rate))
    loop = cfg.loop.model_copy(update={"seed": recipe.seed})
    per_rank = max(2, loop.batch_size // dist.world)

    def step_fn(fwd, gen: torch.Generator) -> StepOut:
        views, _ = sample_views(bank, per_rank, cfg.n_views, window, gap, gen, cfg.augment.pitch_semitones)
        v, b, w = views.shape
        x = augment_wave(views.reshape(v * b, w), bank, cfg.augment, gen)
        mel = augment_mel(logmel(x), cfg.augment, gen)
        loss, emb = fwd(list(mel.view(v, b, *mel.shape[1:]).unbind(0)))
        return StepOut(loss, emb, n_views=v * b)

    if dist.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        pretext.to(memory_format=torch.channels_last)  # NHWC convolutions are the fast path for bf16
    t0 = time.perf_counter()
    with UtilSampler(dist.device) as util:
        history = run_loop(
            pretext,
            step_fn,
            loop,
            out_dir,
            dist,
            after_step=lambda s: pretext.after_step(s, loop.steps),
            resume=resume,
            desc=f"pretrain[{cfg.pretext}]",
            progress=progress,
        )
    seconds = time.perf_counter() - t0
    train_recs = [h for h in history if "views_per_s" in h]
    steady = train_recs[1:] or train_recs  # the first interval includes warm-up (cuDNN autotune)
    summary = {
        "pretext": cfg.pretext,
        "steps": loop.steps,
        "batch_size": loop.batch_size,
        "n_views": cfg.n_views,
        "seconds_this_process": seconds,
        "views_per_s": sum(h["views_per_s"] for h in steady) / max(1, len(steady)),
        "gpu_util_mean": util.mean,
        "gpu_util_samples": len(util.samples),
        "final": train_recs[-1] if train_recs else {},
        "world_size": dist.world,
        "device": str(torch.cuda.get_device_name(dist.device)) if dist.device.type == "cuda" else "cpu",
        "tracks": len(bank),
    }
    if dist.is_main:
        save_backbone(pretext.model, Path(out_dir) / BACKBONE_FILE)
        (Path(out_dir) / "pretrain.json").write_text(
            json.dumps({"summary": summary, "recipe": recipe.pretrain.model_dump(mode="json")}, indent=1)
            + "\n"
        )
    return summary
