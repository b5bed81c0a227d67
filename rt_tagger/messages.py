"""The wire format: one versioned JSON message per hop on ZeroMQ topic ``tags.<stream_id>``.

Pydantic v2 models are the single definition. The JSON Schema in
``rt_tagger/schema/tag_message.schema.json`` is generated from them (``python -m rt_tagger.messages``)
and a test checks that the committed file never drifts. docs/messages.md explains every field.

Three kinds share one model: ``kind="tags"`` (one per hop), ``kind="heartbeat"`` (while the input is
silent or stalled, so subscribers can tell "nothing to say" from "dead") and ``kind="end"`` (the
stream's last message, on every exit path that can still send: why it ended and the final
counters). All carry ``seq`` (per stream, +1 per message, heartbeats included), the cumulative drop
counters and the input backlog, so a subscriber sees gaps and lag without any other channel.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

__all__ = [
    "SCHEMA_PATH",
    "SCHEMA_VERSION",
    "BackendInfo",
    "DropCounters",
    "END_REASONS",
    "STATES",
    "EndInfo",
    "ModelInfo",
    "StageTimings",
    "TagEvent",
    "TagMessage",
    "TagScore",
    "WindowInfo",
    "export_schema",
    "json_schema",
]

# 1.1 added kind="end", `end`, `backlog_s`, two drop counters; 1.2 added `state` and `embedding`.
SCHEMA_VERSION = "1.2"
SCHEMA_PATH = Path(__file__).with_name("schema") / "tag_message.schema.json"


class _Model(BaseModel):
    # extra="ignore": a newer publisher may add fields; older subscribers must still parse.
    model_config = ConfigDict(extra="ignore")


class WindowInfo(_Model):
    """The stream-time span of the analysed window (end exclusive)."""

    start_sample: int = Field(description="First sample of the window, in model-rate samples of stream time.")
    end_sample: int = Field(description="One past the last sample of the window (model-rate samples).")
    start_s: float = Field(description="Window start in seconds of stream time.")
    end_s: float = Field(description="Window end in seconds of stream time.")


class StageTimings(_Model):
    """Milliseconds spent in each stage for this hop."""

    capture_to_ring: float | None = Field(
        None, description="Capture of the window's last sample until it was in the ring buffer."
    )
    framing_mel: float | None = Field(None, description="Framing, windowing and log-mel of the new frames.")
    inference: float | None = Field(None, description="Backend inference.")
    aggregation: float | None = Field(None, description="Rolling aggregation, top-k and hysteresis.")
    publish: float | None = Field(
        None,
        description="Set by the publisher: Publisher.publish() entry until the body was serialised "
        "(the non-blocking send that follows is not included).",
    )


class TagScore(_Model):
    tag: str
    score: float = Field(description="Aggregated probability in [0, 1].")


class TagEvent(_Model):
    """A tag switching on or off (hysteresis: on above the high threshold, off below the low one)."""

    tag: str
    state: Literal["on", "off"]
    time_s: float = Field(description="Stream time of the change, in seconds.")


class DropCounters(_Model):
    """Cumulative counters since the stream started; never reset while it runs."""

    ring_overflow_samples: int = Field(0, description="Samples lost because the ring buffer was full.")
    ring_underflow_events: int = Field(
        0,
        description="Times the consumer waited for audio that was due: a live source (microphone, stdin, "
        "real-time replay) delivered nothing for more than one hop plus one block after its previous block "
        "(counted once per gap).",
    )
    input_status_flags: int = Field(0, description="PortAudio callbacks that reported overflow/underflow.")
    resampler_dropped_samples: int = Field(
        0, description="Non-finite (NaN/Inf) input samples the resampler replaced with 0 (nonfinite=zero)."
    )
    publisher_dropped: int = Field(
        0, description="Messages dropped at the ZeroMQ send high-water mark (filled by the publisher)."
    )
    input_blocked_s: float = Field(
        0.0,
        description="Seconds the source's reader waited for room in the full ring (stdin/file backpressure: "
        "the writer upstream was held back because the tagger fell behind).",
    )
    device_reopens: int = Field(0, description="Times a silent capture device was closed and opened again.")
    ingest_dropped_samples: int = Field(
        0,
        description="rt-tagger serve: input frames dropped because a live stream ran further ahead of real "
        "time than the server's buffer.",
    )
    ingest_lost_chunks: int = Field(
        0,
        description="rt-tagger serve: chunks missing from the stream's chunk sequence numbers (lost input).",
    )


class BackendInfo(_Model):
    name: str = Field(description='Backend name, e.g. "torch".')
    device: str = Field(description='e.g. "cpu", "cuda:0".')
    precision: str = Field(description='e.g. "fp32", "fp16".')


class ModelInfo(_Model):
    name: str
    weights_sha256: str = Field(description="First 12 hex digits of the weights' SHA-256.")


EndReason = Literal[
    "eof", "duration", "sigterm", "sigint", "stopped", "error", "device_lost", "closed", "idle", "shard_lost"
]
END_REASONS: tuple[str, ...] = get_args(EndReason)


class EndInfo(_Model):
    """Why and how a stream ended (only in ``kind="end"``)."""

    reason: EndReason = Field(
        description="eof: the input ended; duration: --duration elapsed; sigterm/sigint: the process was "
        "asked to stop; stopped: stopped by the program embedding the pipeline; error: the input or the "
        "tagger failed (see `error`); device_lost: the capture device stopped and could not be reopened. "
        "rt-tagger serve: closed: the client closed the stream; idle: no audio for the idle timeout; "
        "shard_lost: the shard or server process holding the stream died; under `serve --ray` the stream "
        "continues on another shard from seq 0, under `serve --processes` the client reopens it."
    )
    error: str | None = Field(None, description="The one-line error for reason error/device_lost.")
    stream_s: float = Field(description="Seconds of input audio consumed over the whole stream.")
    windows: int = Field(description="Windows tagged (kind=tags messages built) over the whole stream.")
    heartbeats: int = Field(description="Heartbeats built over the whole stream.")


STATES = ("music", "not_music", "silence")


class TagMessage(_Model):
    """One message on topic ``tags.<stream_id>``: rolling tags for a hop, or a heartbeat."""

    model_config = ConfigDict(extra="ignore", title="TagMessage")

    schema_version: str = Field(SCHEMA_VERSION, description="Major.minor; a major change breaks parsers.")
    kind: Literal["tags", "heartbeat", "end"] = "tags"
    stream_id: str
    seq: int = Field(description="Per stream, starts at 0, +1 per message (heartbeats included).")
    window: WindowInfo | None = None
    capture_wall_time: float | None = Field(
        None, description="Unix time (s) when the window's last sample was captured."
    )
    publish_wall_time: float = Field(
        0.0, description="Unix time (s) set by the publisher just before sending."
    )
    timings_ms: StageTimings | None = None
    top: list[TagScore] = Field(default_factory=list, description="Top-k tags, best first.")
    scores: list[float] | None = Field(None, description="Full score vector in `tags` order (optional).")
    tags: list[str] | None = Field(
        None, description="Tag names of the model; sent in a stream's first message and with `scores`."
    )
    events: list[TagEvent] = Field(default_factory=list)
    active: list[str] = Field(default_factory=list, description="Tags currently on.")
    drops: DropCounters = Field(default_factory=DropCounters)
    backend: BackendInfo
    model: ModelInfo
    heartbeat_reason: Literal["silent", "stalled"] | None = Field(
        None, description='Only for kind="heartbeat": the input is silent, or no audio arrives.'
    )
    backlog_s: float | None = Field(
        None,
        description="Seconds of input audio waiting when the message was built: in the ring buffer, held by "
        "a blocked reader, and (stdin) unread in the pipe. Grows when the tagger falls behind.",
    )
    end: EndInfo | None = Field(None, description='Only for kind="end": why the stream ended.')
    state: Literal["music", "not_music", "silence"] | None = Field(
        None,
        description='What the window holds. "silence": a silent heartbeat (input below the silence floor). '
        '"music" / "not_music": the model\'s music head (the tag in manifest group "music") is on / off; '
        'while "not_music", `top` and `active` are empty. null: the model has no music head (it cannot '
        "tell), or the message is a stalled heartbeat or the end.",
    )
    embedding: list[float] | None = Field(
        None,
        description="The window's embedding (the model's penultimate layer, embed_dim floats); only with "
        "publish.embedding / --embedding, only in kind=tags.",
    )

    # Not part of the schema, never serialised: the aggregator's full score vector ((n_tags,) float32,
    # manifest order) for the compact encoding (rt_tagger.compact), which always carries every score
    # while the JSON carries `scores` only with --full-scores. Set by whoever builds the message.
    _score_array: object = PrivateAttr(default=None)

    @property
    def topic(self) -> bytes:
        """The ZeroMQ topic frame, ``b"tags.<stream_id>"``."""
        return b"tags." + self.stream_id.encode()

    def to_bytes(self) -> bytes:
        """Compact UTF-8 JSON (pydantic-core serialiser; a few microseconds, see the bench)."""
        return self.__pydantic_serializer__.to_json(self)

    @classmethod
    def from_bytes(cls, data: bytes | str) -> TagMessage:
        """Parse and validate one message body (raises pydantic.ValidationError on bad input)."""
        return cls.model_validate_json(data)

    @classmethod
    def heartbeat(
        cls,
        stream_id: str,
        seq: int,
        reason: Literal["silent", "stalled"],
        *,
        drops: DropCounters | None = None,
        backend: BackendInfo,
        model: ModelInfo,
        window: WindowInfo | None = None,
        capture_wall_time: float | None = None,
        active: list[str] | None = None,
    ) -> TagMessage:
        """Build a heartbeat: no tags, but seq, drops and (if known) the stream position."""
        return cls(
            kind="heartbeat",
            stream_id=stream_id,
            seq=seq,
            heartbeat_reason=reason,
            state="silence" if reason == "silent" else None,
            drops=drops if drops is not None else DropCounters(),
            backend=backend,
            model=model,
            window=window,
            capture_wall_time=capture_wall_time,
            active=list(active or []),
        )


def json_schema() -> dict:
    """The JSON Schema (draft 2020-12) of :class:`TagMessage`, as committed in the repo."""
    schema = TagMessage.model_json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://rt-tagger/schema/tag_message/{SCHEMA_VERSION}",
        **schema,
    }


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


def export_schema(path: Path = SCHEMA_PATH) -> Path:
    """Write the schema atomically (temp file + rename, never half-written)."""
    from engines.cache import write_atomic  # only the exporter needs it; messages stay a light import

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, schema_text())
    return path


if __name__ == "__main__":  # python -m rt_tagger.messages [OUT]: regenerate the committed schema
    out = export_schema(Path(sys.argv[1]) if len(sys.argv) > 1 else SCHEMA_PATH)
    print(out)
