"""Training recipes: one TOML file (configs/train_*.toml) validated by pydantic, plus overrides.

Every stage reads its section: ``[data]``, ``[model]``, ``[frontend]``, ``[pretrain]``,
``[probe]``, ``[finetune]``, ``[jetatag]``. Command-line flags override fields afterwards
(``--set pretrain.loop.steps=200``). A recipe that does not validate fails with one line naming
the field and the reason.
"""

from __future__ import annotations

import difflib
import json
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engines.errors import UserError
from engines.frontend import FrontEndSpec
from training.augment import AugmentSpec
from training.loop import LoopSpec

__all__ = ["Recipe", "RecipeError", "load_recipe", "apply_overrides", "dump_toml", "loop_warnings", "LOOPS"]


class RecipeError(UserError):
    """A recipe file or override that cannot be used."""


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelCfg(_M):
    width: int = Field(32, gt=0)
    blocks: tuple[int, ...] = (2, 2, 2, 2)
    embed_dim: int = Field(256, gt=0)


class DataCfg(_M):
    pretrain: list[str] = Field(
        default_factory=list, description="corpora (dirs or packs) whose audio is used unlabelled"
    )
    labelled: str = Field(
        "", description="labelled corpus: its train/valid splits train the probe and fine-tune"
    )
    valid: str = Field(
        "",
        description="labelled corpus for thresholds and model selection; empty: the labelled corpus' valid split",
    )
    test: str = Field(
        "",
        description="held-out labelled corpus (e.g. another soundfont); empty: the labelled corpus' test split",
    )
    real: str = Field("", description="unlabelled real music for the top-tag report")
    valid_fraction: float = Field(
        0.15, gt=0, lt=1, description="used when the labelled corpus has no valid split"
    )
    test_fraction: float = Field(
        0.15,
        ge=0,
        lt=1,
        description="carved from train when there is no test split nor data.test (0: refuse)",
    )
    min_tracks_per_tag: int = Field(
        3, ge=1, description="tags with fewer labelled tracks are left out, with a warning"
    )
    max_seconds: float = Field(
        0.0, ge=0, description="crop long tracks to this length at load time (0: keep)"
    )


class PretrainCfg(_M):
    pretext: str = "byol"
    n_views: int = Field(2, ge=2)
    min_gap_s: float = Field(
        1.0, ge=0, description="seconds between the end of one view and the start of the next"
    )
    options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the pretext")
    loop: LoopSpec = LoopSpec(steps=2000, batch_size=256, lr=2e-3, warmup_steps=100)
    augment: AugmentSpec = AugmentSpec()


class ProbeCfg(_M):
    label_fractions: list[float] = Field(default_factory=lambda: [0.1, 1.0])
    min_tracks: int = Field(8, ge=2, description="label fractions giving fewer tracks are skipped (not 1.0)")
    crops_per_track: int = Field(8, ge=1)
    loop: LoopSpec = LoopSpec(
        steps=600, batch_size=256, lr=1e-3, warmup_steps=20, ckpt_every=0, log_every=100, eval_every=100
    )


class FinetuneCfg(_M):
    backbone_lr_scale: float = Field(0.3, gt=0, le=1, description="backbone LR relative to the head's")
    loop: LoopSpec = LoopSpec(steps=1500, batch_size=128, lr=1e-3, warmup_steps=50, eval_every=250)
    augment: AugmentSpec = AugmentSpec(noise_p=0.2, mix_p=0.0, pitch_semitones=0.0, eq_p=0.3, mask_p=0.3)


class JetatagCfg(_M):
    enabled: bool = False
    tag_dim: int = Field(64, gt=0)
    weight: float = Field(1.0, ge=0)
    loop: LoopSpec = LoopSpec(
        steps=600, batch_size=256, lr=1e-3, warmup_steps=20, ckpt_every=0, log_every=100, eval_every=100
    )


class Recipe(_M):
    name: str = "rt-tagger"
    seed: int = 0
    device: str = Field("auto", pattern="^(auto|cpu|cuda(:[0-9]+)?)$")
    frontend: FrontEndSpec = FrontEndSpec()
    model: ModelCfg = ModelCfg()
    data: DataCfg = DataCfg()
    pretrain: PretrainCfg = PretrainCfg()
    probe: ProbeCfg = ProbeCfg()
    finetune: FinetuneCfg = FinetuneCfg()
    jetatag: JetatagCfg = JetatagCfg()


LOOPS = ("pretrain", "probe", "finetune", "jetatag")


def _first_error(e: ValidationError, where: str, flags: dict[str, str]) -> RecipeError:
    """One line naming the field and the reason, blaming the flag that set it when one did."""
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    blame = next((flag for key, flag in flags.items() if loc == key or loc.startswith(key + ".")), None)
    if blame:
        return RecipeError(f"{blame}: {loc}: {err['msg']}")
    return RecipeError(f"invalid recipe {where}: {loc}: {err['msg']}")


def _sub_model(cls: type[BaseModel], key: str) -> type[BaseModel] | None:
    ann = cls.model_fields[key].annotation
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def check_keys(raw: dict, source: str, cls: type[BaseModel] = None, prefix: str = "") -> None:
    """Raise RecipeError for the first unknown field of ``raw``, with the closest known name."""
    cls = cls or Recipe
    for key, value in raw.items():
        fields = list(cls.model_fields)
        if key not in fields:
            near = difflib.get_close_matches(key, fields, n=1, cutoff=0.6)
            hint = f"did you mean {prefix}{near[0]}?" if near else f"known here: {', '.join(fields)}"
            raise RecipeError(f"{source}: unknown field {prefix}{key}; {hint}")
        sub = _sub_model(cls, key)
        if sub is not None and isinstance(value, dict):
            check_keys(value, source, sub, f"{prefix}{key}.")


def _set_path(d: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
        if not isinstance(d, dict):
            raise RecipeError(f"override {dotted}: {k} is not a section")
    d[keys[-1]] = value


def _parse_value(text: str) -> Any:
    """TOML value syntax (``3``, ``0.1``, ``true``, ``"x"``, ``[1, 2]``); bare words stay strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(
    raw: dict,
    overrides: list[str],
    blame: dict[str, str] | None = None,
    cls: type[BaseModel] | None = None,
) -> dict:
    """Apply ``section.field=value`` strings to a raw recipe dict (unknown fields refused).

    ``blame`` collects ``{dotted key: "--set key=value"}`` for error messages; ``cls`` is the
    recipe model whose fields are known (Default: :class:`Recipe`).
    """
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"--set {item!r} must look like section.field=value")
        key, text = (part.strip() for part in item.split("=", 1))
        probe: dict = {}
        _set_path(probe, key, None)
        check_keys(probe, f"--set {item}", cls)
        _set_path(raw, key, _parse_value(text))
        if blame is not None:
            blame[key] = f"--set {item}"
    return raw


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "options":
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def load_recipe(
    path: str | Path | None,
    overrides: list[str] | None = None,
    flags: dict[str, tuple[str, Any]] | None = None,
) -> Recipe:
    """Read and validate a recipe (``None``: all defaults), then apply flags and overrides.

    Args:
        path: TOML recipe.
        overrides: ``section.field=value`` strings (``--set``), applied last.
        flags: ``{dotted field: (flag name, value)}`` from dedicated options (``--labelled``...),
            applied before ``overrides``; errors in those fields name the flag.
    """
    raw: dict = {}
    where = "(defaults)"
    if path is not None:
        path = Path(path)
        where = str(path)
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise RecipeError(f"recipe not found: {path}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise RecipeError(f"cannot read recipe {path}: {e}") from None
        except tomllib.TOMLDecodeError as e:
            raise RecipeError(f"recipe {path} is not valid TOML: {e}") from None
        check_keys(raw, f"recipe {path}")
    blame: dict[str, str] = {}
    for key, (flag, value) in (flags or {}).items():
        _set_path(raw, key, value)
        blame[key] = flag
    raw = apply_overrides(raw, overrides or [], blame)
    try:
        # Merge onto the defaults so a partial section keeps its other defaults (e.g. a recipe
        # giving only pretrain.loop.steps keeps pretrain's own learning rate).
        return Recipe.model_validate(_merge(Recipe().model_dump(), raw))
    except ValidationError as e:
        raise _first_error(e, where, blame) from None


def loop_warnings(recipe: Recipe) -> list[str]:
    """Settings that run but are probably not meant: warm-up that never ends."""
    out = []
    for name in LOOPS:
        if name == "jetatag" and not recipe.jetatag.enabled:
            continue
        loop = getattr(recipe, name).loop
        if loop.warmup >= loop.steps:
            out.append(
                f"{name}.loop: warm-up ({loop.warmup} steps) >= steps ({loop.steps}): the learning rate "
                f"never reaches {name}.loop.lr; lower warmup_steps or set warmup_fraction"
            )
    return out


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, str):
        return json.dumps(v)
    return repr(v)


def dump_toml(recipe: Recipe) -> str:
    """The resolved recipe as TOML (loads back to the same Recipe)."""
    lines: list[str] = []

    def table(d: dict, name: str) -> None:
        scalars = {k: v for k, v in d.items() if not isinstance(v, dict)}
        if name:
            lines.append(f"\n[{name}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in scalars.items() if v is not None)
        for k, v in d.items():
            if isinstance(v, dict):
                table(v, f"{name}.{k}" if name else k)

    table(recipe.model_dump(mode="json"), "")
    return "\n".join(lines).lstrip() + "\n"
