"""ZeroMQ publisher: one two-frame message ``[topic, body]`` per hop and encoding, never blocking.

Topics: ``tags.<stream_id>`` followed by one NUL byte (:func:`stream_topic`). ZeroMQ filters by
prefix, and the NUL cannot occur in a stream id, so subscribing to ``b"tags.mic\\0"`` receives
exactly stream ``mic`` (not ``mic2``); the old prefixes ``tags.`` and ``tags.mic`` still match.

Socket set-up follows the pyzmq/zguide habits (STYLE.md §5): SNDHWM and LINGER are set before
``bind``; every send uses ``NOBLOCK``. The socket is an XPUB, which subscribers see as a plain PUB
(they use SUB sockets) but which also tells us when a subscriber arrives (:meth:`wait_for_subscriber`).

Encodings, negotiated by topic (the XPUB sees every subscription): JSON on ``tags.<stream_id>\\0``
and the compact binary form (:mod:`rt_tagger.compact`) on ``tagb.<stream_id>\\0``. A message is
encoded and sent in an encoding only while some subscription is a prefix of that stream's topic in
it, so nobody pays for an encoding no one reads (:attr:`Publisher.encoded` counts the work done).

Drops: libzmq keeps one send queue per subscriber. A plain PUB drops silently for a subscriber
whose queue is full; with ``XPUB_NODROP`` the send fails for everybody instead (one stalled
subscriber made every subscriber miss the same messages). We use both: each message is first
offered with ``XPUB_NODROP``; if some subscriber's queue is full it fails (``zmq.Again``) without
sending, and we send it again in lossy mode, so every subscriber with room gets it and only the full
ones miss it. A healthy subscriber never loses a message because of a slow one; the pipeline never
waits.

What :attr:`Publisher.dropped` (``drops.publisher_dropped``) counts: the sends at which a
subscriber's queue was found full (each encoding is its own send). Each starts a burst in which that subscriber misses this message
and, silently for the publisher, every later one until it has read about half of its queue (libzmq
then reopens it; it reports neither which subscriber nor how many messages). So 0 means no
subscriber missed anything, and a positive count is a lower bound of the messages lost; the exact
number per subscriber is its own ``seq`` gaps (``rt-tagger subscribe`` prints them).

Not thread-safe (ZeroMQ sockets are not): call ``publish`` from one thread.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import re
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zmq

from engines.errors import UserError
from rt_tagger.compact import (
    COMPACT_PREFIX,
    GROUP_PREFIX,
    OFF_PUBLISH_WALL_TIME,
    OFF_TIMING_PUBLISH,
    CompactDecoder,
    Vocabulary,
    compact_topic,
    group_frame,
    group_topic,
)
from rt_tagger.compact import encode as encode_compact
from rt_tagger.curve_keys import load_secret
from rt_tagger.messages import StageTimings, TagMessage

__all__ = [
    "DEFAULT_ENDPOINT",
    "JSON_PREFIX",
    "Endpoint",
    "Publisher",
    "PublisherError",
    "compact_topic",
    "parse_endpoint",
    "stream_topic",
]

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5556"
BURST_GAP_S = 5.0  # drops closer together than this are one burst (one warning line)
SUB_CHECK_S = 0.001  # publish() looks for subscription changes at most this often
TOPIC_END = b"\0"  # ends every topic frame; not allowed in stream ids, so a stream's topic is exact
JSON_PREFIX = b"tags."
_F64 = struct.Struct("<d")
# Plain ints, not pyzmq's enum members: enum arithmetic costs microseconds per message.
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)
_NOBLOCK, _MORE = int(zmq.NOBLOCK), int(zmq.NOBLOCK | zmq.SNDMORE)
_F32 = struct.Struct("<f")
log = logging.getLogger(__name__)

_TCP = re.compile(r"^tcp://(?P<host>\[[^\]]+\]|[^:/\[\]]+):(?P<port>\d{1,5}|\*)$")
# Fields written after the rest of the body so that `publish` can time serialisation too.
_TAIL = {"timings_ms", "publish_wall_time"}


def stream_topic(stream_id: str) -> bytes:
    """The topic frame of one stream, ``b"tags.<stream_id>\\0"``; as a subscription it matches
    exactly that stream."""
    return JSON_PREFIX + stream_id.encode() + TOPIC_END


class _Route:
    """Per stream: its topics, which encodings someone subscribes to (for subscription generation
    ``gen``), its names and the compact-subscription epoch its names were last sent in."""

    __slots__ = ("gen", "json_topic", "compact_topic", "want_json", "want_compact", "vocab", "names_epoch")

    def __init__(self, stream_id: str) -> None:
        self.gen = -1
        self.json_topic = stream_topic(stream_id)
        self.compact_topic = compact_topic(stream_id)
        self.want_json = self.want_compact = False
        self.vocab: Vocabulary | None = None
        self.names_epoch = -1


class _GroupRoute:
    """Per stream group: its ``tagg.`` topic, whether someone subscribes there (for subscription
    generation ``gen``), the ids block of its frames and the epoch its names were last sent in."""

    __slots__ = ("gen", "topic", "want", "ids_block", "names_epoch")

    def __init__(self, group_id: str, stream_ids: list[str]) -> None:
        self.gen = -1
        self.topic = group_topic(group_id)
        self.want = False
        self.ids_block = "\0".join(stream_ids).encode()
        self.names_epoch = -1


class PublisherError(UserError):
    """Bad endpoint, busy port, remote bind not allowed, CURVE misconfiguration."""


@dataclass(frozen=True)
class Endpoint:
    url: str
    transport: str  # "tcp" | "ipc" | "inproc"
    host: str | None = None  # tcp only, brackets removed for IPv6
    port: str | None = None  # tcp only: digits or "*" (any free port)
    path: str | None = None  # ipc only

    @property
    def is_local(self) -> bool:
        """True when nothing beyond this machine can connect (loopback tcp, ipc, inproc)."""
        if self.transport != "tcp":
            return True
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:  # "*", an interface name or a hostname: treat as remote
            return False


def parse_endpoint(url: str) -> Endpoint:
    """Check a ZeroMQ endpoint (tcp://HOST:PORT, ipc://PATH, inproc://NAME); one-line error if bad."""
    url = str(url).strip()
    if url.startswith("tcp://"):
        m = _TCP.match(url)
        if not m or (m["port"] != "*" and not 0 < int(m["port"]) < 65536):
            raise PublisherError(
                f"invalid endpoint: {url} (expected tcp://HOST:PORT, e.g. {DEFAULT_ENDPOINT})"
            )
        return Endpoint(url, "tcp", host=m["host"].strip("[]"), port=m["port"])
    if url.startswith("ipc://"):
        path = url[len("ipc://") :]
        if not path or path.startswith("@"):
            raise PublisherError(f"invalid endpoint: {url} (expected ipc:///path/to/socket)")
        return Endpoint(url, "ipc", path=path)
    if url.startswith("inproc://") and len(url) > len("inproc://"):
        return Endpoint(url, "inproc")
    raise PublisherError(f"invalid endpoint: {url!r} (use tcp://HOST:PORT or ipc:///path)")


def _ipc_in_use(path: str) -> bool:
    """True if a live process listens on this ipc path (libzmq would silently take it over)."""
    p = Path(path)
    if not p.is_socket():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            s.connect(str(p))
        except OSError:  # refused: a stale file left by a process that died
            return False
    return True


def _bind_error(ep: Endpoint, e: zmq.ZMQError) -> PublisherError:
    if e.errno == errno.EADDRINUSE:
        return PublisherError(f"address already in use: {ep.url}")
    if e.errno == errno.EADDRNOTAVAIL:
        return PublisherError(f"address not available on this machine: {ep.url}")
    if e.errno == errno.ENODEV:
        return PublisherError(f"no such network interface: {ep.url}")
    if ep.transport == "ipc" and ep.path and not Path(ep.path).parent.is_dir():
        return PublisherError(f"ipc folder does not exist: {Path(ep.path).parent} ({ep.url})")
    return PublisherError(f"cannot bind {ep.url}: {e.strerror}")


class Publisher:
    """Bind a ZeroMQ publisher and send :class:`TagMessage` objects without ever blocking.

    Args:
        endpoint: ``tcp://HOST:PORT`` (port ``*`` = any free one, see :attr:`endpoint`),
            ``ipc:///path`` or ``inproc://name``. (Default: ``tcp://127.0.0.1:5556``)
        sndhwm: messages queued per subscriber before sends are dropped. (Default: ``1000``)
        allow_remote: required to bind anything beyond loopback (``*``, ``0.0.0.0``, a LAN IP).
        curve_server_secret: the publisher's ``server.key_secret``; turns on CURVE encryption.
            Required beyond loopback unless ``insecure_remote``.
        curve_clients: folder of accepted subscriber public keys (``*.key``); turns on ZAP
            authentication of clients (needs ``curve_server_secret``).
        insecure_remote: allow binding beyond loopback without CURVE (anyone on the network reads).
        linger_ms: how long ``close`` may wait to flush queued messages. (Default: ``200``)
        count_drops: detect and count messages a full subscriber queue misses (see the module
            docstring); ``False`` leaves libzmq to drop silently.
        connect: connect to ``endpoint`` instead of binding it: the peer is an XSUB socket that
            forwards (``rt-tagger serve --processes``: a child server into its parent's proxy).
            The endpoint checks for binding beyond loopback do not apply.
        context: a ZeroMQ context to use (default: a private one, terminated on close).

    Raises:
        PublisherError: invalid endpoint, port in use, remote bind without ``allow_remote``,
            bad key files, beyond loopback without CURVE (unless ``insecure_remote``).
    """

    _closed = True  # until the socket exists; makes close()/__del__ safe after a failed __init__

    @classmethod
    def from_settings(cls, publish) -> Publisher:
        """A publisher as ``publish`` (:class:`rt_tagger.settings.PublishSettings`) describes it."""
        return cls(
            publish.endpoint,
            sndhwm=publish.sndhwm,
            allow_remote=publish.allow_remote,
            curve_server_secret=publish.curve_server_secret,
            curve_clients=publish.curve_clients,
            insecure_remote=publish.insecure_remote,
        )

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        sndhwm: int = 1000,
        allow_remote: bool = False,
        curve_server_secret: Path | None = None,
        curve_clients: Path | None = None,
        insecure_remote: bool = False,
        linger_ms: int = 200,
        count_drops: bool = True,
        context: zmq.Context | None = None,
        connect: bool = False,
    ) -> None:
        ep = parse_endpoint(endpoint)
        if connect:
            allow_remote = insecure_remote = True  # connecting publishes nothing on that address
        if not ep.is_local and not allow_remote:
            raise PublisherError(
                f"refusing to bind {ep.url} beyond loopback; pass allow_remote (--allow-remote) "
                "and CURVE keys (--curve-secret, --curve-clients)"
            )
        if not ep.is_local and curve_server_secret is None and not insecure_remote:
            raise PublisherError(
                f"refusing to publish on {ep.url} without encryption: give CURVE keys (--curve-secret, "
                "--curve-clients) or accept an open stream with --insecure-remote"
            )
        if curve_clients is not None and curve_server_secret is None:
            raise PublisherError("--curve-clients needs --curve-secret (the publisher's server.key_secret)")
        if sndhwm < 1:
            raise PublisherError(f"sndhwm must be >= 1, got {sndhwm}")
        self._own_ctx = context is None
        self._ctx = context or zmq.Context()
        self._auth = None
        self._sent = 0
        self._dropped = 0
        self._last_drop = -float("inf")  # monotonic time of the last counted drop
        self._subscribed = False
        self._exact: set[bytes] = set()  # subscriptions ending in NUL: match one topic exactly
        self._prefixes: set[bytes] = set()  # the others: prefix matches
        self._sub_gen = 0  # +1 whenever the subscriptions change
        self._next_sub_check = 0.0  # perf_counter time of publish()'s next look at subscriptions
        self._compact_epoch = 0  # +1 whenever a subscription that can match a compact topic arrives
        self._routes: dict[str, _Route] = {}
        self._vocabs: dict[tuple, Vocabulary] = {}  # (tags, model, backend) -> names, shared by streams
        self._model_vocab: dict[tuple[str, str], Vocabulary] = {}  # (model, weights) -> the latest names
        self._encoded = {"json": 0, "compact": 0, "group": 0}
        self._ser = TagMessage.__pydantic_serializer__
        self._ser_t = StageTimings.__pydantic_serializer__
        self.sock = self._ctx.socket(zmq.XPUB)
        self._closed = False
        try:
            self.sock.setsockopt(zmq.SNDHWM, int(sndhwm))
            self.sock.setsockopt(zmq.LINGER, int(linger_ms))
            if count_drops:  # a full queue then raises zmq.Again: see the module docstring
                self.sock.setsockopt(zmq.XPUB_NODROP, 1)
            # Every subscriber's subscribe reaches us (not only a topic's first), so that a late
            # compact subscriber gets the tag names again; unsubscribes still come once, when the
            # topic's last subscriber leaves, which is what the encoding choice needs.
            self.sock.setsockopt(zmq.XPUB_VERBOSE, 1)
            if ep.transport == "tcp" and ":" in (ep.host or ""):
                self.sock.setsockopt(zmq.IPV6, 1)
            if curve_server_secret is not None:
                self._setup_curve(Path(curve_server_secret), curve_clients)
            elif not ep.is_local and not connect:
                log.warning("publishing unencrypted and unauthenticated on %s (no CURVE keys)", ep.url)
            if connect:
                self.sock.connect(ep.url)
            elif ep.transport == "ipc" and _ipc_in_use(ep.path):
                raise PublisherError(f"address already in use: {ep.url}")
            else:
                try:
                    self.sock.bind(ep.url)
                except zmq.ZMQError as e:
                    raise _bind_error(ep, e) from None
            self.endpoint: str = self.sock.getsockopt_string(zmq.LAST_ENDPOINT) or ep.url
        except BaseException:
            self.close(linger_ms=0)
            raise
        log.info("publishing on %s (topics tags.<stream_id> JSON, tagb.<stream_id> compact)", self.endpoint)

    def _setup_curve(self, secret_file: Path, clients: Path | None) -> None:
        public, secret = load_secret(secret_file)
        if clients is not None:
            from zmq.auth.thread import ThreadAuthenticator

            if not Path(clients).is_dir():
                raise PublisherError(f"CURVE client key folder not found: {clients}")
            if not any(Path(clients).glob("*.key")):
                raise PublisherError(
                    f"no client public keys (*.key) in {clients}: no subscriber could connect"
                )
            self._auth = ThreadAuthenticator(self._ctx, log=logging.getLogger(__name__ + ".auth"))
            self._auth.start()
            self._auth.configure_curve(domain="*", location=str(clients))
        self.sock.curve_secretkey = secret
        self.sock.curve_publickey = public
        self.sock.curve_server = True

    # -- sending --------------------------------------------------------------------------------
    def publish(self, msg: TagMessage) -> bool:
        """Send one message with NOBLOCK in each encoding someone subscribes to; ``False`` (and a
        counted drop per encoding) if some subscriber's queue was full (it misses this message;
        every other subscriber gets it).

        Fills ``msg.drops.publisher_dropped``, ``msg.publish_wall_time`` and
        ``msg.timings_ms.publish`` (entry until the first body is serialised) before sending: the
        publisher is the only writer of these three fields. They are filled also when nobody
        subscribes (then nothing is encoded).
        """
        t0 = time.perf_counter()
        # Take in subscription changes (they choose the encodings). Asking the socket costs a few µs
        # (libzmq processes its commands), so at most once per SUB_CHECK_S: a subscriber that has
        # just arrived may miss up to that much more than ZeroMQ's slow joiner misses anyway.
        if t0 >= self._next_sub_check:
            self._next_sub_check = t0 + SUB_CHECK_S
            if self.sock.getsockopt(_EVENTS) & _POLLIN:
                self._drain_subscriptions()
        # Field writes through __dict__ skip pydantic's __setattr__ (~0.5 µs each): there is nothing
        # to validate, and nothing uses exclude_unset.
        msg.drops.__dict__["publisher_dropped"] = self._dropped
        if msg.timings_ms is None:
            msg.timings_ms = StageTimings()
        md = msg.__dict__
        route = self._routes.get(msg.stream_id)
        if route is None:
            route = self._routes[msg.stream_id] = _Route(msg.stream_id)
        if route.gen != self._sub_gen:
            route.want_json = self._wanted(route.json_topic)
            route.want_compact = self._wanted(route.compact_topic, COMPACT_PREFIX)
            route.gen = self._sub_gen
        if msg.tags is not None:
            self._learn_vocab(route, msg)
        ok = True
        if route.want_json:
            head = self._ser.to_json(msg, exclude=_TAIL)
            md["publish_wall_time"] = time.time()
            msg.timings_ms.__dict__["publish"] = (time.perf_counter() - t0) * 1e3
            body = b"".join(
                (
                    head[:-1],
                    b',"timings_ms":',
                    self._ser_t.to_json(msg.timings_ms),
                    b',"publish_wall_time":',
                    repr(msg.publish_wall_time).encode(),
                    b"}",
                )
            )
            self._encoded["json"] += 1
            ok = self._send(route.json_topic, body)
        if route.want_compact:
            vocab = route.vocab or self._model_vocab.get((msg.model.name, msg.model.weights_sha256))
            names = vocab is not None and route.names_epoch != self._compact_epoch
            frame = encode_compact(msg, vocab, names=names)
            if not route.want_json:  # the compact frame was the first body: stamp its times now
                md["publish_wall_time"] = time.time()
                msg.timings_ms.__dict__["publish"] = (time.perf_counter() - t0) * 1e3
                _F64.pack_into(frame, OFF_PUBLISH_WALL_TIME, md["publish_wall_time"])
                _F32.pack_into(frame, OFF_TIMING_PUBLISH, msg.timings_ms.publish)
            if names:
                route.names_epoch = self._compact_epoch
            self._encoded["compact"] += 1
            ok = self._send(route.compact_topic, bytes(frame)) and ok
        if not (route.want_json or route.want_compact):
            md["publish_wall_time"] = time.time()
            msg.timings_ms.__dict__["publish"] = (time.perf_counter() - t0) * 1e3
        if msg.kind == "end":
            del self._routes[msg.stream_id]
        if ok:
            self._sent += 1
        return ok

    def routes(self, stream_ids: list[str]) -> list[_Route]:
        """The routes of streams whose messages come as rows (:meth:`publish_rows`)."""
        return [self._routes.setdefault(s, _Route(s)) for s in stream_ids]

    def group_route(self, group_id: str, stream_ids: list[str]) -> _GroupRoute:
        """The route of a stream group's frames (topic ``tagg.<group_id>\\0``, rows in
        ``stream_ids`` order): pass it to :meth:`publish_rows` and :meth:`publish_group_end`."""
        return _GroupRoute(group_id, stream_ids)

    def rehearse(self, msg: TagMessage) -> None:
        """Encode ``msg`` as :meth:`publish` would and send nothing (warms the encoder's caches)."""
        self._ser.to_json(msg, exclude=_TAIL)
        if msg.timings_ms is not None:
            self._ser_t.to_json(msg.timings_ms)

    def publish_rows(
        self, routes: list[_Route], vocab: Vocabulary, encode, seq: int, group: _GroupRoute | None = None
    ) -> int:
        """Send one window's messages of many streams (a stream group), compact-encoded as rows.

        ``encode(names)`` returns every row's compact frame (:class:`~rt_tagger.compact.RowFrames`
        or a list of bytearrays), ``names`` ``(R,)`` bool
        marking the rows that must carry the names section. If someone subscribes to ``group``'s
        topic, all frames go there first as one group frame (:func:`~rt_tagger.compact.group_frame`);
        then each frame goes to its stream's compact topic if someone subscribes there, and as JSON
        (decoded from the frame: slow, but only for streams someone reads as JSON) to its JSON
        topic. ``seq`` is the rows' sequence number (a group's streams share it).
        ``publish_wall_time`` and ``timings_ms.publish`` are stamped as each frame is sent. Returns
        the messages sent (a group frame counts as one).
        """
        t0 = time.perf_counter()
        if self.sock.getsockopt(_EVENTS) & _POLLIN:
            self._drain_subscriptions()
        gen, epoch = self._sub_gen, self._compact_epoch
        for r in routes:
            if r.gen != gen:
                r.want_json = self._wanted(r.json_topic)
                r.want_compact = self._wanted(r.compact_topic, COMPACT_PREFIX)
                r.gen = gen
        names = np.fromiter((r.want_compact and r.names_epoch != epoch for r in routes), bool, len(routes))
        to_group = group is not None and self._want_group(group)
        if to_group and group.names_epoch != epoch and len(names):
            names[0] = True  # a group frame's subscribers learn the names from its first row
            group.names_epoch = epoch
        frames = encode(names)
        sent = 0
        send, now, clock = self.sock.send, time.time, time.perf_counter
        if to_group:
            body = group_frame(group.ids_block, frames, now(), (clock() - t0) * 1e3)
            self._encoded["group"] += 1
            sent += self._send(group.topic, body)
        decoder = None
        compact = 0
        pack64, pack32 = _F64.pack_into, _F32.pack_into
        for i, r in enumerate(routes):
            if not (r.want_compact or r.want_json):
                continue
            frame = frames[i]
            pack64(frame, OFF_PUBLISH_WALL_TIME, now())
            pack32(frame, OFF_TIMING_PUBLISH, (clock() - t0) * 1e3)
            ok = True
            if r.want_compact:
                if r.names_epoch != epoch:
                    r.names_epoch, r.vocab = epoch, vocab
                compact += 1
                try:  # as _send, inline: this loop runs for every stream of a group at every window
                    send(r.compact_topic, _MORE)
                    send(frame, _NOBLOCK)
                except zmq.Again:
                    self._send_lossy((r.compact_topic, bytes(frame)))
                    self._count_drop()
                    ok = False
            if r.want_json:
                if decoder is None:
                    decoder = CompactDecoder()
                    decoder.vocabularies[vocab.vocab_id] = vocab
                msg = decoder.decode(r.compact_topic, frame)
                self._encoded["json"] += 1
                ok = self._send(r.json_topic, msg.to_bytes()) and ok
            sent += ok
        self._encoded["compact"] += compact
        self._sent += sent
        return sent

    def publish_group_end(self, group: _GroupRoute, msgs: list[TagMessage]) -> bool:
        """The ``end`` messages of a group's streams (row order) as one group frame, if someone
        subscribes to the group's topic (each stream's own topics get them from :meth:`publish`)."""
        if self.sock.getsockopt(_EVENTS) & _POLLIN:
            self._drain_subscriptions()
        if not self._want_group(group):
            return True
        body = group_frame(group.ids_block, [encode_compact(m, None) for m in msgs], time.time(), 0.0)
        self._encoded["group"] += 1
        ok = self._send(group.topic, body)
        self._sent += ok
        return ok

    def _want_group(self, group: _GroupRoute) -> bool:
        if group.gen != self._sub_gen:
            group.want = self._wanted(group.topic, GROUP_PREFIX)
            group.gen = self._sub_gen
        return group.want

    def _send(self, topic: bytes, body: bytes) -> bool:
        """Both frames, NODROP first. libzmq checks the queues at each part but counts a message
        in them only after its last part, so once the topic went, the body goes too (this is what
        ``send_multipart`` does, without its per-call overhead)."""
        try:
            self.sock.send(topic, _MORE)
        except zmq.Again:  # some subscriber's queue is full: the others still get it
            self._send_lossy((topic, body))
            self._count_drop()
            return False
        self.sock.send(body, _NOBLOCK, copy=len(body) < 65536)
        return True

    def _learn_vocab(self, route: _Route, msg: TagMessage) -> None:
        """Remember a stream's tag names (sent with its first message and with full scores)."""
        v = route.vocab
        if v is not None and v.model is msg.model and v.backend is msg.backend and v.tags == tuple(msg.tags):
            return
        key = (tuple(msg.tags), msg.model.name, msg.model.weights_sha256, *msg.backend.model_dump().values())
        v = self._vocabs.get(key)
        if v is None:
            if len(self._vocabs) > 1024:  # bounded: distinct models are few
                self._vocabs.clear()
            v = self._vocabs[key] = Vocabulary.build(msg.tags, msg.model, msg.backend)
        route.vocab = v
        route.names_epoch = -1  # new names: send them with the stream's next compact frame
        self._model_vocab[(msg.model.name, msg.model.weights_sha256)] = v

    def _wanted(self, topic: bytes, binary: bytes | None = None) -> bool:
        """True if some subscription matches ``topic`` (ZeroMQ prefix matching). A binary form
        (``binary``: its prefix, ``tagb.`` or ``tagg.``) needs a subscription that names it: one to
        everything (``""``) or to ``tag`` is an old JSON subscriber, which must not start getting
        binary frames."""
        if topic in self._exact:
            return True
        if binary is not None:
            return any(topic.startswith(p) for p in self._prefixes if p.startswith(binary))
        return any(topic.startswith(p) for p in self._prefixes)

    def publish_raw(self, topic: bytes, body: bytes) -> bool:
        """Send a message that is not a stream's (e.g. ``rt-tagger serve``'s stats), same drop rules."""
        if not self._send(topic, body):
            return False
        self._sent += 1
        return True

    def _send_lossy(self, frames: tuple[bytes, bytes]) -> None:
        """Send to every subscriber with room; libzmq drops it for the full ones."""
        self.sock.setsockopt(zmq.XPUB_NODROP, 0)
        try:
            self.sock.send_multipart(frames, flags=zmq.NOBLOCK)
        finally:
            self.sock.setsockopt(zmq.XPUB_NODROP, 1)

    def _count_drop(self) -> None:
        self._dropped += 1
        now = time.monotonic()
        # One warning per burst, not one per drop: a burst is drops less than BURST_GAP_S apart.
        if now - self._last_drop >= BURST_GAP_S:
            log.warning(
                "a subscriber is not keeping up (its send queue of %d messages is full): it misses "
                "messages, counted in drops.publisher_dropped (%d so far); other subscribers get everything",
                self.sock.getsockopt(zmq.SNDHWM),
                self._dropped,
            )
        self._last_drop = now

    def wait_for_subscriber(self, timeout_s: float) -> bool:
        """Wait until some subscriber has subscribed (XPUB notification); ``False`` on timeout.

        Messages sent before a subscriber's subscription arrives are lost to it (ZeroMQ's
        "slow joiner"); call this first when the first messages matter (tests, one-shot tagging).
        """
        deadline = time.monotonic() + timeout_s
        while not self._subscribed:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sock.poll(int(left * 1000) + 1, zmq.POLLIN):
                return self._subscribed
            self._drain_subscriptions()
        return True

    def poll_subscriptions(self, timeout_ms: int = 0) -> list[bytes]:
        """Wait up to ``timeout_ms`` for subscription changes and take them in; returns the topics
        subscribed to (one entry per subscriber's subscribe) since the last call.

        Read subscriptions through this (or :meth:`wait_for_subscriber`), never from :attr:`sock`:
        the publisher chooses encodings from them.
        """
        if self.sock.poll(timeout_ms, zmq.POLLIN):
            return self._drain_subscriptions()
        return []

    def _drain_subscriptions(self) -> list[bytes]:
        new = []
        while True:
            try:
                frame = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return new
            topic = frame[1:]
            if frame[:1] == b"\x01":
                self._subscribed = True
                new.append(topic)
                (self._exact if topic.endswith(TOPIC_END) else self._prefixes).add(topic)
                if topic.startswith((COMPACT_PREFIX, GROUP_PREFIX)):
                    self._compact_epoch += 1  # every stream and group sends its names again
                log.debug("subscription: %r", topic)
            elif frame[:1] == b"\x00":
                self._exact.discard(topic)
                self._prefixes.discard(topic)
                log.debug("unsubscription: %r", topic)
            else:
                continue
            self._sub_gen += 1

    @property
    def encoded(self) -> dict[str, int]:
        """Messages encoded per encoding (``json``, ``compact``): what subscriptions made us do."""
        return dict(self._encoded)

    @property
    def sent(self) -> int:
        """Messages published without a drop (also those no subscriber wanted)."""
        return self._sent

    @property
    def dropped(self) -> int:
        """Messages that at least one subscriber missed because its queue was full (``count_drops``)."""
        return self._dropped

    # -- lifetime -------------------------------------------------------------------------------
    def close(self, linger_ms: int | None = None) -> None:
        """Close the socket (waiting at most ``linger_ms`` to flush), stop auth, end the context."""
        if self._closed:
            return
        self._closed = True
        self.sock.close(linger=linger_ms)
        if self._auth is not None:
            self._auth.stop()
        if self._own_ctx:
            self._ctx.term()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # a forgotten close must not hang interpreter exit
        try:
            self.close(linger_ms=0)
        except Exception:  # noqa: BLE001
            pass
