"""Runtime settings: one pydantic-settings model, four layers.

Precedence, lowest to highest:

1. defaults in code (mirrored, field for field, in ``configs/runtime.toml``),
2. ``configs/runtime.toml`` when the checkout has it,
3. the file given with ``--config FILE``,
4. environment variables ``RT_TAGGER_<FIELD>`` (nested with ``__``: ``RT_TAGGER_AGGREGATOR__MODE=ema``),
5. command-line flags.

An ``RT_TAGGER_*`` variable that names no setting (and none of the few read elsewhere, see
:data:`OTHER_ENV`) is an error, like an unknown key in a TOML file: a typo must not be ignored.

An invalid value fails at start with a :class:`SettingsError` (a ``UserError``) naming the field,
the value and the reason, e.g. ``invalid setting hop_seconds=0.01: Input should be greater than or
equal to 0.1``.
"""

from __future__ import annotations

import json
import os
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
from pydantic_settings import SettingsError as SourceError

from engines.cache import ENV_COMPILED_DIR
from engines.errors import UserError
from engines.trt.api import ENV_FLAVOUR

__all__ = [
    "AggregatorSettings",
    "AudioSettings",
    "PublishSettings",
    "RuntimeSettings",
    "SettingsError",
    "DEFAULT_CONFIG",
    "OTHER_ENV",
    "STREAM_ID_PATTERN",
    "load_settings",
]

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "runtime.toml"  # configs/ links to it
MIN_HOP_SECONDS = 0.1
STREAM_ID_PATTERN = r"^[A-Za-z0-9_.\-]{1,64}$"
ENV_PREFIX = "RT_TAGGER_"
# RT_TAGGER_* variables that are not runtime settings but are read elsewhere (where, in the comment).
OTHER_ENV = {
    ENV_COMPILED_DIR,  # engines/cache.py: where compiled artifacts go
    ENV_FLAVOUR,  # engines/trt/api.py: which TensorRT module
    "RT_TAGGER_COMMIT",  # engines/provenance.py: the commit when there is no git checkout
    "RT_TAGGER_MUSICNN_VENV",  # bench/peers.py: the musicnn comparison's virtual environment
}


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
    sample_rate: int | None = Field(
        None,
        gt=0,
        description="listen: capture rate (None: the device's); stream: rate of the raw PCM (required)",
    )
    channels: int = Field(1, ge=1, le=64)
    block_size: int = Field(1024, ge=16, le=1 << 20, description="frames per source block")
    ring_seconds: float = Field(10.0, ge=1.0, le=600.0, description="ring buffer capacity")
    device_timeout_s: float = Field(
        3.0, gt=0.0, le=600.0, description="capture device silent this long (no callbacks): reopen it"
    )
    reopen_attempts: int = Field(3, ge=0, le=1000, description="reopens in a row before giving up (exit 3)")


class PublishSettings(BaseModel):
    """ZeroMQ PUB output."""

    model_config = ConfigDict(extra="forbid")

    endpoint: str = Field("tcp://127.0.0.1:5556", pattern=r"^(tcp|ipc)://.+")
    sndhwm: int = Field(1000, ge=1)
    allow_remote: bool = False
    curve_server_secret: Path | None = Field(None, description="the publisher's server.key_secret (CURVE)")
    curve_clients: Path | None = Field(
        None, description="folder of accepted subscriber public keys (*.key); ZAP authentication"
    )
    insecure_remote: bool = Field(False, description="allow binding beyond loopback without CURVE")
    full_scores: bool = Field(False, description="send the whole score vector in every message")
    embedding: bool = Field(False, description="send each window's embedding (embed_dim floats)")


class ServeSettings(BaseModel):
    """``rt-tagger serve``: the ingest socket, admission, batching and housekeeping."""

    model_config = ConfigDict(extra="forbid")

    ingest: str = Field(
        "tcp://127.0.0.1:5557", pattern=r"^(tcp|ipc)://.+", description="ROUTER endpoint clients send to"
    )
    allow_remote_ingest: bool = Field(False, description="accept ingest beyond loopback")
    max_streams: int = Field(1000, ge=1, description="open streams at most; further opens are refused")
    max_batch: int | None = Field(
        None, ge=1, description="windows per backend batch at most (None: the backend's)"
    )
    max_batch_delay_ms: float = Field(
        20.0, ge=0.0, le=10000.0, description="how long a due window may wait for others to fill a batch"
    )
    frontend: Literal["auto", "stream", "batch"] = Field(
        "auto",
        description="log-mel per stream on the CPU (stream), or of all streams' new frames in one batch "
        "on the backend's device (batch); auto: batch on a GPU backend",
    )
    buffer_s: float = Field(
        2.0, gt=0.0, le=600.0, description="how far a live stream may run ahead of real time"
    )
    idle_timeout_s: float = Field(10.0, gt=0.0, description="a stream without audio this long is ended")
    stats_interval_s: float = Field(5.0, gt=0.0, description="seconds between stats messages")
    full_gc_interval_s: float = Field(
        300.0,
        ge=0.0,
        description="seconds between the interpreter's full garbage collections, which pause the "
        "server (0: Python's own schedule, every ~15 s under load)",
    )
    rcvhwm: int = Field(10000, ge=1, description="ingest messages queued before clients feel back-pressure")
    processes: int = Field(
        1, ge=1, le=256, description="server processes sharing the machine and its GPU (1: this process)"
    )


class RuntimeSettings(BaseSettings):
    """Everything the streaming path can be told; see the module docstring for precedence."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    bundle: Path | None = Field(None, description="model bundle directory (None: the shipped default)")
    backend: str = Field("auto", min_length=1, description="engines backend name, or auto")
    hop_seconds: float | None = Field(
        None, ge=MIN_HOP_SECONDS, le=60.0, description="seconds between windows (None: the bundle's)"
    )
    stream_id: str = Field("default", pattern=STREAM_ID_PATTERN)
    silence_rms: float = Field(1e-4, ge=0.0, description="hop RMS below this counts as silent (heartbeat)")
    stall_hops: float = Field(
        2.0, gt=0.0, description="no new samples for this many hops: stalled (heartbeat)"
    )
    nonfinite: Literal["reject", "zero"] = Field(
        "reject", description="NaN/Inf input samples: reject the input, or replace them with 0 and count"
    )
    prewarm_ms: float = Field(
        20.0,
        ge=0.0,
        le=1000.0,
        description="GPU backends, one stream: in the last this-many ms of audio before a window is "
        "due, wait for audio in short steps and run the model on silence between blocks, so that "
        "the core and the GPU are at speed when the window comes (0: off; CPU backends: never)",
    )
    consumer_core: int | None = Field(
        None,
        ge=0,
        description="one stream: run the consumer thread (framing, model, publishing) on this CPU "
        "core only (None: wherever the OS puts it; see rt_tagger/placement.py)",
    )
    realtime_priority: int | None = Field(
        None,
        ge=1,
        le=99,
        description="one stream: SCHED_FIFO priority of the consumer thread (None: normal scheduling; "
        "needs CAP_SYS_NICE or an rtprio limit)",
    )
    aggregator: AggregatorSettings = Field(default_factory=AggregatorSettings)
    audio: AudioSettings = Field(default_factory=AudioSettings)
    publish: PublishSettings = Field(default_factory=PublishSettings)
    serve: ServeSettings = Field(default_factory=ServeSettings)

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


def _env_names() -> dict[str, str]:
    """Upper-case variable name -> setting, for every setting an environment variable can give."""
    names = {}
    for name, info in RuntimeSettings.model_fields.items():
        names[f"{ENV_PREFIX}{name}".upper()] = name
        section = info.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            for sub in section.model_fields:
                names[f"{ENV_PREFIX}{name}__{sub}".upper()] = f"{name}.{sub}"
    return names


def _check_environment() -> None:
    """Unknown ``RT_TAGGER_*`` variables, and sections given as bad JSON, fail with one line."""
    known = _env_names()
    for var, value in os.environ.items():
        key = var.upper()
        if not key.startswith(ENV_PREFIX) or key in OTHER_ENV:
            continue
        if key not in known:
            raise SettingsError(f"unknown environment variable {var} (no setting of that name)")
        field = RuntimeSettings.model_fields.get(known[key])
        if (
            field is not None
            and isinstance(field.annotation, type)
            and issubclass(field.annotation, BaseModel)
        ):
            try:
                json.loads(value)
            except ValueError as e:
                raise SettingsError(f"environment variable {var} is not valid JSON: {e}") from None


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
    _check_environment()
    try:
        loaded = cls(**clean)
    except ValidationError as e:
        raise SettingsError(_describe(e.errors()[0])) from None
    except SourceError as e:  # a value no source could parse (one line, never an internal error)
        raise SettingsError(str(e)) from None
    return loaded
