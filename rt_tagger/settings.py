"""Runtime settings: one pydantic-settings model, four layers.

Precedence, lowest to highest:

1. defaults in code (mirrored, field for field, in ``configs/runtime.toml``),
2. ``configs/runtime.toml`` when the checkout has it,
3. the file given with ``--config FILE``,
4. environment variables ``RT_TAGGER_<FIELD>`` (nested with ``__``: ``RT_TAGGER_AGGREGATOR__MODE=ema``),
5. command-line flags.

An invalid value fails at start with a :class:`SettingsError` (a ``UserError``) naming the field,
the value and the reason, e.g. ``invalid setting hop_seconds=0.01: Input should be greater than or
equal to 0.1``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from engines.errors import UserError

__all__ = [
    "AggregatorSettings",
    "AudioSettings",
    "PublishSettings",
    "RuntimeSettings",
    "SettingsError",
    "DEFAULT_CONFIG",
    "load_settings",
]

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "runtime.toml"  # configs/ links to it
MIN_HOP_SECONDS = 0.1


class SettingsError(UserError):
    """A setting that cannot be used; one line naming the field and the reason."""


class AggregatorSettings(BaseModel):
    """Rolling horizon, top-k and hysteresis of the tag aggregator."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["mean", "ema"] = Field("mean", description="mean over the last N windows, or EMA")
    horizon_windows: int = Field(4, ge=1, le=1000, description="N for mode=mean")
    ema_alpha: float = Field(0.3, gt=0.0, le=1.0, description="weight of the newest window for mode=ema")
    top_k: int = Field(5, ge=1, description="tags listed per message")
    off_ratio: float = Field(
        0.8, gt=0.0, le=1.0, description="off threshold = bundle threshold × off_ratio (hysteresis)"
    )
    min_dwell_s: float = Field(0.0, ge=0.0, description="a tag stays on/off at least this long (stream time)")


class AudioSettings(BaseModel):
    """Capture and replay of audio."""

    model_config = ConfigDict(extra="forbid")

    device: str | None = Field(None, description="input device index or name substring (None: default)")
    sample_rate: int | None = Field(None, gt=0, description="capture rate (None: the device's default)")
    channels: int = Field(1, ge=1, le=64)
    block_size: int = Field(1024, ge=16, le=1 << 20, description="frames per source block")
    ring_seconds: float = Field(10.0, ge=1.0, le=600.0, description="ring buffer capacity")


class PublishSettings(BaseModel):
    """ZeroMQ PUB output."""

    model_config = ConfigDict(extra="forbid")

    endpoint: str = Field("tcp://127.0.0.1:5556", pattern=r"^(tcp|ipc)://.+")
    sndhwm: int = Field(1000, ge=1)
    allow_remote: bool = False
    curve_server_secret: Path | None = None
    full_scores: bool = Field(False, description="send the whole score vector in every message")


class RuntimeSettings(BaseSettings):
    """Everything the streaming path can be told; see the module docstring for precedence."""

    model_config = SettingsConfigDict(
        env_prefix="RT_TAGGER_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    bundle: Path | None = Field(None, description="model bundle directory (None: the shipped default)")
    backend: str = Field("auto", min_length=1, description="engines backend name, or auto")
    hop_seconds: float | None = Field(
        None, ge=MIN_HOP_SECONDS, le=60.0, description="seconds between windows (None: the bundle's)"
    )
    stream_id: str = Field("default", pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    silence_rms: float = Field(1e-4, ge=0.0, description="hop RMS below this counts as silent (heartbeat)")
    stall_hops: float = Field(
        2.0, gt=0.0, description="no new samples for this many hops: stalled (heartbeat)"
    )
    nonfinite: Literal["reject", "zero"] = Field(
        "reject", description="NaN/Inf input samples: reject the input, or replace them with 0 and count"
    )
    aggregator: AggregatorSettings = Field(default_factory=AggregatorSettings)
    audio: AudioSettings = Field(default_factory=AudioSettings)
    publish: PublishSettings = Field(default_factory=PublishSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        files = getattr(cls, "toml_files", [])
        toml = [TomlConfigSettingsSource(settings_cls, toml_file=f) for f in reversed(files)]
        return (init_settings, env_settings, *toml)


def _read_toml(path: Path) -> None:
    """Fail with one line when a config file is missing or not valid TOML."""
    if not path.is_file():
        raise SettingsError(f"config file not found: {path}")
    try:
        with open(path, "rb") as f:
            tomllib.load(f)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise SettingsError(f"config file {path} is not valid TOML: {e}") from None


def _describe(err: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        return f"unknown setting {loc}"
    value = err.get("input")
    if isinstance(value, dict):
        return f"invalid setting {loc}: {err['msg']}"
    return f"invalid setting {loc}={value}: {err['msg']}"


def load_settings(config: str | Path | None = None, **overrides: Any) -> RuntimeSettings:
    """Build the settings from all layers.

    Args:
        config: An extra TOML file (``--config``); it overrides ``configs/runtime.toml``.
        **overrides: Command-line values (highest precedence). ``None`` values are ignored, and
            nested fields are given as dicts, e.g. ``aggregator={"mode": "ema"}``.

    Raises:
        SettingsError: a missing/unparsable file or an invalid value (field and reason in the message).
    """
    files: list[Path] = []
    if DEFAULT_CONFIG.is_file():
        _read_toml(DEFAULT_CONFIG)
        files.append(DEFAULT_CONFIG)
    if config is not None:
        path = Path(config)
        _read_toml(path)
        files.append(path)
    clean = {k: v for k, v in overrides.items() if v is not None}
    for k, v in list(clean.items()):
        if isinstance(v, dict):
            clean[k] = {kk: vv for kk, vv in v.items() if vv is not None}
            if not clean[k]:
                del clean[k]

    cls = type(
        "RuntimeSettingsFromFiles",
        (RuntimeSettings,),
        {"__annotations__": {"toml_files": ClassVar[list[Path]]}, "toml_files": files},
    )
    try:
        loaded = cls(**clean)
    except ValidationError as e:
        raise SettingsError(_describe(e.errors()[0])) from None
    return loaded
