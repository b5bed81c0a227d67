"""The ingest protocol of ``rt-tagger serve``: clients open streams, send PCM chunks, close them.

Transport: a client's ZeroMQ DEALER socket connects to the server's ROUTER socket (default
``tcp://127.0.0.1:5557``). Every message is multipart: one JSON header frame, then zero or more
binary payload frames. Pydantic models are the single definition; the JSON Schema in
``rt_tagger/schema/ingest.schema.json`` is generated from them (``python -m rt_tagger.ingest``)
and docs/ingest.md explains the exchange.

Client → server (header ``type``):

- ``open``: stream id, sample rate, channels, sample format and per-stream options. The server
  answers ``opened`` or ``refused`` (with the reason: at capacity, id in use, bad parameters).
- ``audio``: a list of chunks, each ``{stream_id, seq, frames}``, followed by one payload frame
  per chunk holding exactly ``frames × channels`` samples in the stream's format. One message may
  carry chunks of many streams (what a gateway in front of many clients sends); ``seq`` counts
  chunks per stream from 0, and a gap is counted as lost input.
- ``close``: the stream's audio is complete; its last window is tagged, an ``end`` message is
  published, and the server answers ``closed``.

Server → client: ``opened``, ``refused``, ``closed`` (also when the server closes an idle
stream or shuts down) and ``error`` (a malformed message: the reason, never silence).

Version 1.1 (additive): an ``open`` with ``redirect: true`` may be answered ``redirect`` with the
``endpoint`` of the process that holds the stream (``rt-tagger serve --processes N``); the client
sends that process the same ``open`` and then the stream's audio and close. A client that does not
set ``redirect`` is served through the first endpoint as before.

Version 1.2 (additive): *stream groups*, what a gateway in front of many same-format sources
sends. ``open_group`` names a group and its streams (each gets its own topic and messages, as if
opened alone); ``group_audio`` then carries one chunk of *every* stream of the group in a single
payload frame (``frames`` samples per stream, stream after stream, in the ``stream_ids`` order)
with one ``seq`` for the group; ``close_group`` ends them all. The streams of a group run in
lockstep, so the server frames, tags and encodes them as arrays (the path that holds 100 000
streams); they must be at the model's sample rate, mono, 16-bit (``s16le``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Literal, NotRequired

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from typing_extensions import TypedDict  # pydantic needs this one, not typing's, on Python < 3.12

__all__ = [
    "PROTOCOL_VERSION",
    "AudioChunk",
    "AudioHeader",
    "CloseGroupHeader",
    "CloseHeader",
    "GroupAudioHeader",
    "OpenGroupHeader",
    "OpenHeader",
    "ProtocolError",
    "Reply",
    "StreamOptions",
    "decode_pcm",
    "encode_message",
    "parse_client_message",
    "parse_reply",
]

PROTOCOL_VERSION = "1.2"  # 1.1: open.redirect, the redirect reply; 1.2: stream groups
SCHEMA_PATH = Path(__file__).with_name("schema") / "ingest.schema.json"
STREAM_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
PCM_DTYPES = {"s16le": ("<i2", 1.0 / 32768.0), "f32le": ("<f4", 1.0)}


class ProtocolError(ValueError):
    """A message that does not follow the protocol (the reason is sent back as ``error``)."""


class _Header(BaseModel):
    model_config = ConfigDict(extra="forbid")

    v: str = Field(PROTOCOL_VERSION, description="Protocol version, major.minor; the major must match.")


class StreamOptions(BaseModel):
    """Per-stream options a client may set when opening a stream."""

    model_config = ConfigDict(extra="forbid")

    hop_s: float | None = Field(None, description="Hop in seconds (default: the server's).")
    full_scores: bool | None = Field(None, description="Send the full score vector in every message.")
    pace: Literal["live", "batch"] = Field(
        "live",
        description='"live": audio may run ahead of real time by at most the buffer, the rest is dropped '
        'and counted; "batch": no rate limit, the client is slowed by back-pressure instead.',
    )


class OpenHeader(_Header):
    type: Literal["open"] = "open"
    stream_id: str = Field(pattern=STREAM_ID_PATTERN, description="Unique among the server's open streams.")
    sample_rate: int = Field(gt=0, le=384000, description="Frames per second of the PCM the client sends.")
    channels: int = Field(1, ge=1, le=32)
    format: Literal["s16le", "f32le"] = "s16le"
    options: StreamOptions = Field(default_factory=StreamOptions)
    redirect: bool | None = Field(
        None,
        description="(1.1) The client follows a redirect reply: it then sends this stream's open, audio "
        "and close to the endpoint named there. Without it a server of several processes forwards.",
    )


# A typed dict, not a model: a gateway's message carries thousands of chunks, and validating them
# as dicts costs ~0.8 µs each against ~2.9 µs as models with a pattern (the server's hottest path).
class AudioChunk(TypedDict):
    """One chunk of an audio message: its stream, sequence number and frame count."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]

    # no pattern here: an id that was never opened is refused by the server anyway
    stream_id: Annotated[str, Field(min_length=1, max_length=128)]
    seq: Annotated[int, Field(ge=0, description="Per stream: 0, 1, 2, … ; a gap counts as lost input.")]
    frames: Annotated[int, Field(ge=0, le=1 << 22, description="Frames in this chunk's payload frame.")]
    capture_wall_time: NotRequired[
        Annotated[
            float | None,
            Field(
                description="Unix time the chunk's last frame was captured (default: when the server received it)."
            ),
        ]
    ]


class AudioHeader(_Header):
    type: Literal["audio"] = "audio"
    chunks: list[AudioChunk] = Field(
        min_length=1, description="One payload frame follows per chunk, in order."
    )


class CloseHeader(_Header):
    type: Literal["close"] = "close"
    stream_id: str = Field(pattern=STREAM_ID_PATTERN)


class OpenGroupHeader(_Header):
    """(1.2) Open many streams that share one clock and format; their audio arrives together."""

    type: Literal["open_group"] = "open_group"
    group_id: str = Field(pattern=STREAM_ID_PATTERN, description="Unique among the server's open groups.")
    stream_ids: list[Annotated[str, Field(pattern=STREAM_ID_PATTERN)]] = Field(
        min_length=1, max_length=1 << 20, description="The group's streams, in payload order."
    )
    sample_rate: int = Field(gt=0, le=384000, description="Must be the model's sample rate.")
    channels: Literal[1] = 1
    format: Literal["s16le"] = "s16le"
    options: StreamOptions = Field(default_factory=StreamOptions)
    redirect: bool | None = Field(None, description="As in open: the client follows a redirect reply.")

    @property
    def stream_id(self) -> str:  # what admission, routing and replies key on
        return self.group_id


class GroupAudioHeader(_Header):
    """(1.2) One chunk of every stream of a group: one payload frame of ``len(stream_ids) × frames``
    samples, stream after stream."""

    type: Literal["group_audio"] = "group_audio"
    group_id: str = Field(min_length=1, max_length=128)
    seq: int = Field(ge=0, description="Per group: 0, 1, 2, … ; a gap counts as lost input of every stream.")
    frames: int = Field(ge=0, le=1 << 22, description="Frames per stream in this chunk.")
    capture_wall_time: float | None = Field(
        None,
        description="Unix time the chunk's last frame was captured (default: when the server received it).",
    )


class CloseGroupHeader(_Header):
    """(1.2) Every stream of the group is complete."""

    type: Literal["close_group"] = "close_group"
    group_id: str = Field(pattern=STREAM_ID_PATTERN)


ClientHeader = Annotated[
    OpenHeader | AudioHeader | CloseHeader | OpenGroupHeader | GroupAudioHeader | CloseGroupHeader,
    Field(discriminator="type"),
]
_client_adapter: TypeAdapter = TypeAdapter(ClientHeader)


class Reply(BaseModel):
    """Server → client."""

    model_config = ConfigDict(extra="ignore")

    v: str = PROTOCOL_VERSION
    type: Literal["opened", "refused", "closed", "error", "redirect"]
    stream_id: str | None = None
    reason: str | None = Field(None, description="Why a stream was refused or closed, or what was malformed.")
    hop_s: float | None = Field(None, description='With "opened": the hop the stream runs at.')
    buffer_s: float | None = Field(None, description='With "opened": how far a live stream may run ahead.')
    topic: str | None = Field(None, description='With "opened": the PUB topic of the stream\'s messages.')
    endpoint: str | None = Field(
        None,
        description='With "redirect" (1.1): the ingest endpoint that holds the stream; send it the same '
        "open there. A wildcard host (0.0.0.0, *, ::) means the host the client reached this server on.",
    )


def encode_message(header: BaseModel, payloads: list[bytes] | tuple = ()) -> list[bytes]:
    """The frames of one message: the JSON header, then the payloads."""
    return [header.__pydantic_serializer__.to_json(header, exclude_none=True), *payloads]


def parse_client_message(frames: list[bytes]) -> tuple[OpenHeader | AudioHeader | CloseHeader, list[bytes]]:
    """Validate one client message; raises :class:`ProtocolError` with a one-line reason."""
    if not frames:
        raise ProtocolError("empty message")
    try:
        header = _client_adapter.validate_json(frames[0])
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err.get("loc", ())) or "header"
        raise ProtocolError(f"bad header: {where}: {err['msg']}") from None
    if header.v.split(".")[0] != PROTOCOL_VERSION.split(".")[0]:
        raise ProtocolError(f"protocol version {header.v} not supported (server speaks {PROTOCOL_VERSION})")
    payloads = frames[1:]
    want = (
        len(header.chunks)
        if isinstance(header, AudioHeader)
        else 1
        if isinstance(header, GroupAudioHeader)
        else 0
    )
    if len(payloads) != want:
        raise ProtocolError(f"{header.type} message has {len(payloads)} payload frame(s), expected {want}")
    return header, payloads


def parse_reply(frames: list[bytes]) -> Reply:
    return Reply.model_validate_json(frames[0])


def decode_pcm(payload: bytes, fmt: str, channels: int, frames: int) -> np.ndarray:
    """One chunk's payload as float32 ``(frames, channels)``; raises :class:`ProtocolError` on a size mismatch."""
    dtype, scale = PCM_DTYPES[fmt]
    itemsize = np.dtype(dtype).itemsize
    if len(payload) != frames * channels * itemsize:
        raise ProtocolError(
            f"chunk payload has {len(payload)} bytes, expected {frames} frames × {channels} ch × {itemsize} B"
        )
    x = np.frombuffer(payload, dtype=dtype).reshape(frames, channels).astype(np.float32)
    if scale != 1.0:
        x *= scale
    return x


def json_schema() -> dict:
    """JSON Schema of the client headers and the replies, as committed in the repo."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://rt-tagger/schema/ingest/{PROTOCOL_VERSION}",
        "title": "rt-tagger ingest protocol",
        "client_header": _client_adapter.json_schema(),
        "reply": Reply.model_json_schema(),
    }


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":  # python -m rt_tagger.ingest: regenerate the committed schema
    from engines.cache import write_atomic

    write_atomic(SCHEMA_PATH, schema_text().encode())
    print(SCHEMA_PATH, file=sys.stderr)
