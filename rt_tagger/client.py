"""A Python client of ``rt-tagger serve``'s ingest protocol (:mod:`rt_tagger.ingest`).

    from rt_tagger.client import IngestClient

    with IngestClient("tcp://127.0.0.1:5557") as c:
        c.open("kitchen", sample_rate=44100, channels=2)     # raises ClientError if refused
        for block in blocks:                                 # float32 or int16 (frames, channels)
            c.send("kitchen", block)
        c.close_stream("kitchen")                            # waits for "closed"

Tags come from the server's PUB socket (topic ``tags.<stream_id>``), as with ``rt-tagger stream``.
``send_many`` puts chunks of several streams into one message, as a gateway would. A gateway
whose sources share one clock and format opens them as a *group* (protocol 1.2): ``open_group``,
then ``send_group`` with one ``(streams, frames)`` block of all of them per chunk, and
``close_group``; the server then tags them as arrays (the path for tens of thousands of streams).

Redirects (protocol 1.1, ``rt-tagger serve --processes N``): ``open`` asks for them; when the
server answers ``redirect``, the client connects one more DEALER socket to the named child
process (one per child, shared by its streams) and opens the stream there; the stream's audio and
close then go straight to that child. ``send_many`` splits a message per child. A server older
than 1.1 rejects the ``redirect`` field: the client then opens again without it.
"""

from __future__ import annotations

import re
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import zmq

from engines.errors import UserError
from rt_tagger.ingest import (
    AudioChunk,
    AudioHeader,
    CloseGroupHeader,
    CloseHeader,
    GroupAudioHeader,
    OpenGroupHeader,
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
    sock: zmq.Socket
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
        self._sndhwm = sndhwm
        self._redirect = True  # until the server turns out not to know the field (protocol < 1.1)
        self._children: dict[str, zmq.Socket] = {}  # redirect endpoint -> its DEALER
        self._poller = zmq.Poller()
        self._poller.register(self.sock, zmq.POLLIN)

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
            options=StreamOptions(**options), redirect=self._redirect or None,
        )  # fmt: skip
        sock = self.sock
        self.sock.send_multipart(encode_message(header))
        reply = self._wait_for(stream_id, ("opened", "refused", "error", "redirect"))
        if reply.type == "error" and header.redirect and "redirect" in (reply.reason or ""):
            self._redirect = False  # a 1.0 server: open as before
            return self.open(stream_id, sample_rate, channels, format, **options)
        if reply.type == "redirect":
            sock = self._child(reply.endpoint or "")
            sock.send_multipart(encode_message(header.model_copy(update={"redirect": None})))
            reply = self._wait_for(stream_id, ("opened", "refused", "error"))
        if reply.type != "opened":
            raise ClientError(f"stream {stream_id!r} {reply.type}: {reply.reason}")
        self._streams[stream_id] = _Stream(format, channels, sock)
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
        per_sock: dict[zmq.Socket, tuple[list, list]] = {}  # redirected streams: one message per child
        for stream_id, pcm in items:
            st = self._streams.get(stream_id)
            if st is None:
                raise ClientError(f"stream {stream_id!r} is not open on this client")
            data = _pcm_bytes(pcm, st.format, st.channels)
            frames = len(data) // _frame_bytes(st)
            chunks, payloads = per_sock.setdefault(st.sock, ([], []))
            chunks.append(AudioChunk(stream_id=stream_id, seq=st.seq, frames=frames, capture_wall_time=t))
            payloads.append(data)
            st.seq += 1
        for sock, (chunks, payloads) in per_sock.items():
            sock.send_multipart(encode_message(AudioHeader(chunks=chunks), payloads), copy=False)

    def close_stream(self, stream_id: str, *, wait: bool = True) -> Reply | None:
        """End a stream (its last window is tagged and an ``end`` message published)."""
        st = self._streams.pop(stream_id, None)
        (st.sock if st else self.sock).send_multipart(encode_message(CloseHeader(stream_id=stream_id)))
        return self._wait_for(stream_id, ("closed", "error")) if wait else None

    def open_group(self, group_id: str, stream_ids: list[str], sample_rate: int = 16000, **options) -> Reply:
        """Open a group of mono s16le streams at ``sample_rate`` (the model's); returns the ``opened``
        reply; raises :class:`ClientError` if refused."""
        header = OpenGroupHeader(
            group_id=group_id, stream_ids=list(stream_ids), sample_rate=sample_rate,
            options=StreamOptions(**options), redirect=self._redirect or None,
        )  # fmt: skip
        sock = self.sock
        sock.send_multipart(encode_message(header))
        reply = self._wait_for(group_id, ("opened", "refused", "error", "redirect"))
        if reply.type == "redirect":
            sock = self._child(reply.endpoint or "")
            sock.send_multipart(encode_message(header.model_copy(update={"redirect": None})))
            reply = self._wait_for(group_id, ("opened", "refused", "error"))
        if reply.type != "opened":
            raise ClientError(f"group {group_id!r} {reply.type}: {reply.reason}")
        self._streams[group_id] = _Stream("s16le", len(header.stream_ids), sock)
        return reply

    def send_group(self, group_id: str, pcm: np.ndarray, capture_wall_time: float | None = None) -> None:
        """Send one chunk of every stream of a group: ``(streams, frames)`` int16 (or float in
        [-1, 1], converted), captured at ``capture_wall_time`` (default: now)."""
        st = self._streams.get(group_id)
        if st is None:
            raise ClientError(f"group {group_id!r} is not open on this client")
        x = np.asarray(pcm)
        if x.ndim != 2 or x.shape[0] != st.channels:
            raise ClientError(f"group block of shape {x.shape}: expected ({st.channels} streams, frames)")
        if x.dtype.kind == "f":
            x = np.clip(np.round(x * 32768.0), -32768, 32767)
        data = np.ascontiguousarray(x, dtype="<i2")
        t = time.time() if capture_wall_time is None else capture_wall_time
        header = GroupAudioHeader(group_id=group_id, seq=st.seq, frames=x.shape[1], capture_wall_time=t)
        st.sock.send_multipart(encode_message(header, [data]), copy=False)
        st.seq += 1

    def close_group(self, group_id: str, *, wait: bool = True) -> Reply | None:
        """End every stream of a group (their last windows are tagged, ``end`` messages published)."""
        st = self._streams.pop(group_id, None)
        (st.sock if st else self.sock).send_multipart(encode_message(CloseGroupHeader(group_id=group_id)))
        return self._wait_for(group_id, ("closed", "error")) if wait else None

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
    def _child(self, endpoint: str) -> zmq.Socket:
        """The DEALER to a child process named in a redirect (a wildcard host: the server's host)."""
        m = re.match(r"^tcp://(0\.0\.0\.0|\*|\[::\]|::):(\d+)$", endpoint)
        if m:
            host = re.match(r"^tcp://(\[[^\]]+\]|[^:/]+):", self.endpoint)
            endpoint = f"tcp://{host.group(1) if host else '127.0.0.1'}:{m.group(2)}"
        sock = self._children.get(endpoint)
        if sock is None:
            sock = self._ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 2000)
            sock.setsockopt(zmq.SNDHWM, self._sndhwm)
            sock.connect(endpoint)
            self._children[endpoint] = sock
            self._poller.register(sock, zmq.POLLIN)
        return sock

    def _receive(self, timeout_s: float) -> None:
        for sock, _ in self._poller.poll(int(timeout_s * 1000)):
            while True:
                try:
                    self.notices.append(parse_reply(sock.recv_multipart(zmq.NOBLOCK)))
                except zmq.Again:
                    break

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
        for sock in self._children.values():
            sock.close()
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
