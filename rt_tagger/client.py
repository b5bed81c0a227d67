"""A Python client of ``rt-tagger serve``'s ingest protocol (:mod:`rt_tagger.ingest`).

    from rt_tagger.client import IngestClient

    with IngestClient("tcp://127.0.0.1:5557") as c:
        c.open("kitchen", sample_rate=44100, channels=2)     # raises ClientError if refused
        for block in blocks:                                 # float32 or int16 (frames, channels)
            c.send("kitchen", block)
        c.close_stream("kitchen")                            # waits for "closed"

Tags come from the server's PUB socket (topic ``tags.<stream_id>``), as with ``rt-tagger stream``.
``send_many`` puts chunks of several streams into one message, as a gateway would.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import zmq

from engines.errors import UserError
from rt_tagger.ingest import (
    AudioChunk,
    AudioHeader,
    CloseHeader,
    OpenHeader,
    Reply,
    StreamOptions,
    encode_message,
    parse_reply,
)

__all__ = ["ClientError", "IngestClient"]

DEFAULT_INGEST = "tcp://127.0.0.1:5557"


class ClientError(UserError):
    """The server refused a request or did not answer in time."""


@dataclass
class _Stream:
    format: str
    channels: int
    seq: int = 0


class IngestClient:
    """One DEALER socket to a server; any number of streams over it.

    Args:
        endpoint: the server's ingest endpoint.
        timeout_s: how long ``open``/``close_stream`` wait for the server's answer.
        sndhwm: messages queued towards the server before ``send`` blocks (back-pressure).
        context: a ZeroMQ context (default: a private one).
    """

    def __init__(
        self,
        endpoint: str = DEFAULT_INGEST,
        *,
        timeout_s: float = 5.0,
        sndhwm: int = 1000,
        context: zmq.Context | None = None,
    ) -> None:
        self._own_ctx = context is None
        self._ctx = context or zmq.Context()
        self.sock = self._ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 2000)
        self.sock.setsockopt(zmq.SNDHWM, sndhwm)
        self.sock.connect(endpoint)
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.notices: deque[Reply] = deque()  # replies nobody waited for (e.g. an idle stream closed)
        self._streams: dict[str, _Stream] = {}

    # ------------------------------------------------------------------ requests
    def open(
        self,
        stream_id: str,
        sample_rate: int,
        channels: int = 1,
        format: str = "s16le",
        **options,
    ) -> Reply:
        """Open a stream; returns the ``opened`` reply (hop, buffer, topic); raises :class:`ClientError` if refused."""
        header = OpenHeader(
            stream_id=stream_id, sample_rate=sample_rate, channels=channels, format=format,
            options=StreamOptions(**options),
        )  # fmt: skip
        self.sock.send_multipart(encode_message(header))
        reply = self._wait_for(stream_id, ("opened", "refused", "error"))
        if reply.type != "opened":
            raise ClientError(f"stream {stream_id!r} {reply.type}: {reply.reason}")
        self._streams[stream_id] = _Stream(format, channels)
        return reply

    def send(self, stream_id: str, pcm: np.ndarray, capture_wall_time: float | None = None) -> None:
        """Send one chunk of ``(frames, channels)`` (or ``(frames,)`` mono) audio.

        ``capture_wall_time``: Unix time the chunk's last frame was captured (default: now), the
        start of the capture→publish latency its window reports.
        """
        self.send_many([(stream_id, pcm)], capture_wall_time)

    def send_many(self, items: list[tuple[str, np.ndarray]], capture_wall_time: float | None = None) -> None:
        """Send chunks of several streams in one message (all captured at ``capture_wall_time``)."""
        t = time.time() if capture_wall_time is None else capture_wall_time
        chunks, payloads = [], []
        for stream_id, pcm in items:
            st = self._streams.get(stream_id)
            if st is None:
                raise ClientError(f"stream {stream_id!r} is not open on this client")
            data = _pcm_bytes(pcm, st.format, st.channels)
            frames = len(data) // _frame_bytes(st)
            chunks.append(AudioChunk(stream_id=stream_id, seq=st.seq, frames=frames, capture_wall_time=t))
            payloads.append(data)
            st.seq += 1
        self.sock.send_multipart(encode_message(AudioHeader(chunks=chunks), payloads), copy=False)

    def close_stream(self, stream_id: str, *, wait: bool = True) -> Reply | None:
        """End a stream (its last window is tagged and an ``end`` message published)."""
        self.sock.send_multipart(encode_message(CloseHeader(stream_id=stream_id)))
        self._streams.pop(stream_id, None)
        return self._wait_for(stream_id, ("closed", "error")) if wait else None

    def poll_notices(self, timeout_s: float = 0.0) -> list[Reply]:
        """Replies that arrived without a request waiting for them (idle closes, errors)."""
        self._receive(timeout_s)
        out = list(self.notices)
        self.notices.clear()
        for r in out:
            if r.type == "closed" and r.stream_id:
                self._streams.pop(r.stream_id, None)
        return out

    # ------------------------------------------------------------------ plumbing
    def _receive(self, timeout_s: float) -> None:
        if self.sock.poll(int(timeout_s * 1000)):
            while True:
                try:
                    self.notices.append(parse_reply(self.sock.recv_multipart(zmq.NOBLOCK)))
                except zmq.Again:
                    return

    def _wait_for(self, stream_id: str, types: tuple[str, ...]) -> Reply:
        deadline = time.monotonic() + self.timeout_s
        while True:
            for r in list(self.notices):
                if r.type in types and r.stream_id in (stream_id, None):
                    self.notices.remove(r)
                    return r
            left = deadline - time.monotonic()
            if left <= 0:
                raise ClientError(f"no answer from the server at {self.endpoint} within {self.timeout_s:g} s")
            self._receive(left)

    def close(self) -> None:
        self.sock.close()
        if self._own_ctx:
            self._ctx.term()

    def __enter__(self) -> IngestClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _frame_bytes(st: _Stream) -> int:
    return st.channels * (2 if st.format == "s16le" else 4)


def _pcm_bytes(pcm: np.ndarray, fmt: str, channels: int) -> bytes:
    x = np.asarray(pcm)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[1] != channels:
        raise ClientError(f"audio of shape {x.shape} does not match the stream's {channels} channel(s)")
    if fmt == "f32le":
        return np.ascontiguousarray(x, dtype="<f4").tobytes()
    if x.dtype.kind == "f":
        x = np.clip(np.round(x * 32768.0), -32768, 32767)
    return np.ascontiguousarray(x, dtype="<i2").tobytes()
