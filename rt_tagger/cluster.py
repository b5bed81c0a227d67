"""``rt-tagger serve --ray ADDRESS``: shards of the server as Ray actors, behind one gateway.

Ray (an existing distributed engine) places and restarts the shards; this module adds what
streaming needs on top of it:

- **Shards**: one :class:`~rt_tagger.serve.Server` per Ray actor (:func:`shard_actor_class`),
  one per GPU, or per ``cores_per_shard`` CPUs without GPUs, each with its own ingest and PUB
  sockets on its node's address. ``max_restarts=-1``: Ray restarts a shard whose process or node
  died, wherever resources allow.
- **The gateway** (:class:`Gateway`, in the ``rt-tagger serve --ray`` process): clients and
  subscribers talk only to it, with the single-node protocol and endpoints. It assigns each new
  stream to a shard by consistent hashing of the stream id over the live shards, forwards ingest
  messages (a multi-stream message is split per shard) and the shards' answers, and relays
  every shard's messages on its own PUB socket.
- **Failure**: a shard that misses its health checks for ``shard_timeout_s`` is declared lost.
  For each of its streams the gateway publishes an ``end`` message with reason ``shard_lost``
  and reopens the stream on a live shard with the client's original ``open``; the stream's
  messages then start again at ``seq`` 0 (documented in docs/messages.md), its chunk numbers are
  renumbered so the new shard counts no false gap, and audio sent while no shard held the
  stream is counted in the gateway's stats (``gateway_dropped_chunks``). A restarted shard
  rejoins the ring for new streams; streams are not moved back.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field

import zmq

from rt_tagger.ingest import (
    AudioHeader,
    CloseHeader,
    OpenHeader,
    ProtocolError,
    Reply,
    encode_message,
    parse_client_message,
)
from rt_tagger.messages import BackendInfo, EndInfo, ModelInfo, TagMessage
from rt_tagger.publisher import Publisher
from rt_tagger.serve import STATS_TOPIC, bind_ingest
from rt_tagger.settings import RuntimeSettings

__all__ = ["Gateway", "HashRing", "shard_actor_class", "shard_lost_end"]

log = logging.getLogger(__name__)

_SEQ = re.compile(rb'"seq":(\d+)')  # messages start with schema_version, kind, stream_id, seq
_VNODES = 64  # points per shard on the ring: streams spread evenly, ~1/n move when a shard leaves


class HashRing:
    """Consistent hashing of stream ids over shard names."""

    def __init__(self, names: list[str] = ()) -> None:
        self._points: list[tuple[int, str]] = []
        for name in names:
            self.add(name)

    @staticmethod
    def _hash(text: str) -> int:
        return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")

    def add(self, name: str) -> None:
        if name not in self.names:
            self._points = sorted(self._points + [(self._hash(f"{name}#{i}"), name) for i in range(_VNODES)])

    def remove(self, name: str) -> None:
        self._points = [p for p in self._points if p[1] != name]

    @property
    def names(self) -> set[str]:
        return {n for _, n in self._points}

    def lookup(self, key: str) -> str | None:
        if not self._points:
            return None
        i = bisect.bisect(self._points, (self._hash(key), "\uffff")) % len(self._points)
        return self._points[i][1]


def shard_lost_end(stream_id: str, seq: int, info: dict | None, error: str) -> TagMessage:
    """The ``end`` message (reason ``shard_lost``) of a stream whose server died, published for it
    by whoever noticed (the Ray gateway, or the parent of ``serve --processes``); ``info``: the
    dead server's ``backend`` and ``model`` (as :class:`BackendInfo`/:class:`ModelInfo` dicts)."""
    info = info or {}
    return TagMessage(
        kind="end",
        stream_id=stream_id,
        seq=seq,
        backend=BackendInfo(**info.get("backend", {"name": "?", "device": "?", "precision": "?"})),
        model=ModelInfo(**info.get("model", {"name": "?", "weights_sha256": "?"})),
        end=EndInfo(reason="shard_lost", error=error, stream_s=0.0, windows=0, heartbeats=0),
    )


def shard_actor_class():
    """The Ray actor class of a shard (built on demand: ``ray`` is an optional dependency)."""
    import ray

    @ray.remote
    class Shard:
        """One single-node server inside a Ray actor; its sockets bind this node's address."""

        def __init__(self, settings_json: str, name: str) -> None:
            from rt_tagger.bundled_model import load_bundle
            from rt_tagger.pipeline import Pipeline, StopRequest
            from rt_tagger.serve import Server

            host = ray.util.get_node_ip_address()
            st = RuntimeSettings.model_validate_json(settings_json)
            remote = host not in ("127.0.0.1", "localhost")
            st = st.model_copy(
                update={
                    "publish": st.publish.model_copy(
                        # Shard → gateway traffic stays inside the cluster's network: plain TCP there.
                        update={
                            "endpoint": f"tcp://{host}:*",
                            "allow_remote": remote or st.publish.allow_remote,
                            "insecure_remote": remote or st.publish.insecure_remote,
                        }
                    ),
                    "serve": st.serve.model_copy(
                        update={"ingest": f"tcp://{host}:*", "allow_remote_ingest": True}
                    ),
                }
            )
            self.name = name
            self.stop = StopRequest()
            self.ready = threading.Event()
            self.info: dict = {}
            self.error: str | None = None

            def serve() -> None:  # sockets are made and used in this one thread
                try:
                    ingest = bind_ingest(st.serve)
                    publisher = Publisher.from_settings(st.publish)
                    with Pipeline(
                        load_bundle(st.bundle), st, publisher=publisher, keep_windows=False
                    ) as pipe:
                        server = Server(pipe, publisher, st.serve, ingest_socket=ingest, name=name)
                        self.info = {
                            "name": name,
                            "ingest": server.ingest_endpoint,
                            "publish": publisher.endpoint,
                            "node_ip": host,
                            "backend": pipe.backend_info.model_dump(),
                            "model": pipe.model_info.model_dump(),
                        }
                        self.ready.set()
                        server.run(self.stop)
                    publisher.close()
                except BaseException as e:  # noqa: BLE001 - reported through endpoints()
                    self.error = f"{type(e).__name__}: {e}"
                    self.ready.set()

            self.thread = threading.Thread(target=serve, name=f"shard-{name}", daemon=True)
            self.thread.start()

        def endpoints(self) -> dict:
            self.ready.wait(600)
            if self.error:
                raise RuntimeError(f"shard {self.name} failed to start: {self.error}")
            return self.info

        def ping(self) -> bool:
            return self.thread.is_alive()

        def shutdown(self) -> None:
            self.stop.request("sigterm")
            self.thread.join(60)

    return Shard


@dataclass
class _Shard:
    name: str
    actor: object
    info: dict | None = None
    dealer: zmq.Socket | None = None
    sub: zmq.Socket | None = None
    ping_ref: object = None
    ping_sent: float = 0.0
    last_ok: float = field(default_factory=time.monotonic)
    starting_ref: object = None  # endpoints() of a (re)starting actor
    live: bool = False
    waiting_logged: bool = False


@dataclass
class _Route:
    client: bytes
    open_frames: list[bytes]
    shard: str
    seq_offset: int = 0  # chunk numbers are renumbered after a move, so the new shard sees 0, 1, …
    next_client_seq: int = 0
    last_seq: int = -1  # of the stream's last message relayed (the shard_lost marker follows it)
    reopening: bool = False  # the new shard's "opened" is the gateway's, not the client's


class Gateway:
    """Clients and subscribers in front, Ray shards behind (see the module docstring).

    Args:
        settings: Runtime settings; ``serve.ingest`` and ``publish.endpoint`` are the gateway's.
        shards: How many shard actors to run.
        actor_options: Ray options of each shard (``num_cpus``, ``num_gpus``, ``resources``, …).
        shard_timeout_s: A shard whose health checks fail this long is declared lost.
    """

    def __init__(
        self,
        settings: RuntimeSettings,
        shards: int,
        actor_options: dict,
        *,
        shard_timeout_s: float = 3.0,
        publisher: Publisher | None = None,
    ) -> None:
        import ray

        self.ray = ray
        self.settings = settings
        self.shard_timeout_s = shard_timeout_s
        self.ctx = zmq.Context.instance()
        self.front = bind_ingest(settings.serve, self.ctx)
        self.publisher = publisher
        self.poller = zmq.Poller()
        self.poller.register(self.front, zmq.POLLIN)
        self.ring = HashRing()
        self.routes: dict[str, _Route] = {}
        self.dropped_chunks = 0
        self.events: list[dict] = []  # shard lost / rejoined, with times (also logged)
        cls = shard_actor_class().options(max_restarts=-1, max_task_retries=0, **actor_options)
        settings_json = settings.model_dump_json()
        self.shards = {
            f"shard{i}": _Shard(f"shard{i}", cls.remote(settings_json, f"shard{i}")) for i in range(shards)
        }
        for sh in self.shards.values():
            sh.starting_ref = sh.actor.endpoints.remote()

    # ------------------------------------------------------------------ shards
    def wait_ready(self, timeout_s: float) -> None:
        """Block until every shard answered its endpoints (first start)."""
        deadline = time.monotonic() + timeout_s
        while any(not sh.live for sh in self.shards.values()):
            if time.monotonic() > deadline:
                missing = [n for n, sh in self.shards.items() if not sh.live]
                raise TimeoutError(f"shards not ready after {timeout_s:g} s: {', '.join(missing)}")
            self._check_shards(block_s=0.5)

    def _connect(self, sh: _Shard, info: dict) -> None:
        self._disconnect(sh)
        sh.info = info
        sh.dealer = self.ctx.socket(zmq.DEALER)
        sh.dealer.setsockopt(zmq.LINGER, 0)
        sh.dealer.connect(info["ingest"])
        sh.sub = self.ctx.socket(zmq.SUB)
        sh.sub.setsockopt(zmq.SUBSCRIBE, b"")
        sh.sub.setsockopt(zmq.RCVHWM, 100000)
        sh.sub.connect(info["publish"])
        self.poller.register(sh.dealer, zmq.POLLIN)
        self.poller.register(sh.sub, zmq.POLLIN)
        sh.live, sh.last_ok, sh.waiting_logged = True, time.monotonic(), False
        self.ring.add(sh.name)
        self._event("shard_ready", sh.name, ingest=info["ingest"], node_ip=info["node_ip"])

    def _disconnect(self, sh: _Shard) -> None:
        for s in (sh.dealer, sh.sub):
            if s is not None:
                self.poller.unregister(s)
                s.close(linger=0)
        sh.dealer = sh.sub = None

    def _check_shards(self, block_s: float = 0.0) -> None:
        ray = self.ray
        now = time.monotonic()
        for sh in self.shards.values():
            if sh.starting_ref is not None:
                done, _ = ray.wait([sh.starting_ref], timeout=block_s)
                if done:
                    ref, sh.starting_ref = sh.starting_ref, None
                    try:
                        self._connect(sh, ray.get(ref))
                    except Exception as e:  # noqa: BLE001 - the actor died while starting: ask again
                        if not sh.waiting_logged:  # once per restart, not once per retry
                            log.warning("shard %s is restarting: %s", sh.name, str(e).splitlines()[0][:200])
                            sh.waiting_logged = True
                        sh.starting_ref = sh.actor.endpoints.remote()
                continue
            if not sh.live:
                continue
            if sh.ping_ref is None:
                sh.ping_ref, sh.ping_sent = sh.actor.ping.remote(), now
            done, _ = ray.wait([sh.ping_ref], timeout=0)
            if done:
                try:
                    ok = ray.get(sh.ping_ref)
                except Exception:  # noqa: BLE001 - RayActorError and friends: the shard is down
                    ok = False
                sh.ping_ref = None
                if ok:
                    sh.last_ok = now
            if now - sh.last_ok > self.shard_timeout_s:
                self._shard_lost(sh)

    def _shard_lost(self, sh: _Shard) -> None:
        sh.live, sh.ping_ref = False, None
        self.ring.remove(sh.name)
        self._disconnect(sh)
        moved = [sid for sid, r in self.routes.items() if r.shard == sh.name]
        self._event("shard_lost", sh.name, streams=len(moved))
        for sid in moved:
            self._publish_end(sid, sh)
            self._reopen(sid)
        sh.starting_ref = sh.actor.endpoints.remote()  # Ray restarts the actor; connect when it answers

    def _publish_end(self, stream_id: str, sh: _Shard) -> None:
        seq = self.routes[stream_id].last_seq + 1
        self.publisher.publish(shard_lost_end(stream_id, seq, sh.info, f"{sh.name} stopped answering"))

    def _reopen(self, stream_id: str) -> None:
        route = self.routes[stream_id]
        target = self.ring.lookup(stream_id)
        if target is None:
            route.shard = ""  # no live shard: audio is dropped (counted) until one is back
            return
        route.shard, route.reopening, route.last_seq = target, True, -1
        route.seq_offset = route.next_client_seq
        self.shards[target].dealer.send_multipart(route.open_frames)

    # ------------------------------------------------------------------ the loop
    def run(self, stop: threading.Event) -> None:
        last_check = 0.0
        while not stop.is_set():
            for sock, _ in self.poller.poll(50):
                if sock is self.front:
                    self._from_client()
                else:
                    sh = next(s for s in self.shards.values() if sock in (s.dealer, s.sub))
                    if sock is sh.dealer:
                        self._from_shard(sh)
                    else:
                        self._relay(sh)
            if time.monotonic() - last_check > 0.2:
                last_check = time.monotonic()
                self._check_shards()
                self._retry_unplaced()
        for sh in self.shards.values():
            try:
                self.ray.get(sh.actor.shutdown.remote(), timeout=30)
            except Exception:  # noqa: BLE001 - shutting down anyway
                pass
            self._relay(sh)
            self._disconnect(sh)
        self.front.close(linger=0)

    def _retry_unplaced(self) -> None:
        for sid, r in self.routes.items():
            if not r.shard and self.ring.names:
                self._reopen(sid)

    def _from_client(self) -> None:
        for _ in range(256):
            try:
                identity, *frames = self.front.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                header, payloads = parse_client_message(frames)
            except ProtocolError as e:
                self._reply(identity, Reply(type="error", reason=str(e)))
                continue
            if isinstance(header, OpenHeader):
                if header.stream_id in self.routes:
                    self._reply(identity, Reply(type="refused", stream_id=header.stream_id,
                                                reason=f"stream id {header.stream_id!r} is already open"))  # fmt: skip
                    continue
                target = self.ring.lookup(header.stream_id)
                if target is None:
                    self._reply(
                        identity, Reply(type="refused", stream_id=header.stream_id, reason="no live shard")
                    )
                    continue
                self.routes[header.stream_id] = _Route(identity, frames, target)
                self.shards[target].dealer.send_multipart(frames)
            elif isinstance(header, AudioHeader):
                self._forward_audio(identity, header, payloads)
            elif isinstance(header, CloseHeader):
                r = self.routes.get(header.stream_id)
                if r is None or r.client != identity:
                    self._reply(identity, Reply(type="error", stream_id=header.stream_id, reason="not open"))
                elif r.shard:
                    self.shards[r.shard].dealer.send_multipart(frames)
                else:
                    self.routes.pop(header.stream_id)
                    self._reply(identity, Reply(type="closed", stream_id=header.stream_id, reason="closed"))

    def _forward_audio(self, identity: bytes, header: AudioHeader, payloads: list[bytes]) -> None:
        per_shard: dict[str, tuple[list, list]] = {}
        for chunk, payload in zip(header.chunks, payloads, strict=True):
            r = self.routes.get(chunk["stream_id"])
            if r is None or r.client != identity:
                self._reply(identity, Reply(type="error", stream_id=chunk["stream_id"], reason="not open"))
                continue
            r.next_client_seq = chunk["seq"] + 1
            if not r.shard:
                self.dropped_chunks += 1
                continue
            chunks, data = per_shard.setdefault(r.shard, ([], []))
            chunks.append({**chunk, "seq": max(0, chunk["seq"] - r.seq_offset)})
            data.append(payload)
        for name, (chunks, data) in per_shard.items():
            self.shards[name].dealer.send_multipart(encode_message(AudioHeader(chunks=chunks), data))

    def _from_shard(self, sh: _Shard) -> None:
        while True:
            try:
                frames = sh.dealer.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            reply = Reply.model_validate_json(frames[0])
            r = self.routes.get(reply.stream_id or "")
            if r is None:
                continue
            if reply.type == "opened" and r.reopening:  # the client's stream simply continues
                r.reopening = False
                self._event("stream_moved", r.shard, stream_id=reply.stream_id)
                continue
            if reply.type != "opened":  # closed (by the client, idle, shutdown), refused, error
                self.routes.pop(reply.stream_id, None)
            self.front.send_multipart([r.client, *frames])

    def _relay(self, sh: _Shard) -> None:
        if sh.sub is None:
            return
        while True:
            try:
                topic, body = sh.sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if topic.startswith(b"tags."):
                r = self.routes.get(topic[5:].rstrip(b"\0").decode(errors="replace"))
                m = _SEQ.search(body, 0, 256)
                if r is not None and m is not None:
                    r.last_seq = int(m.group(1))
            self.publisher.publish_raw(topic, body)

    def _reply(self, identity: bytes, reply: Reply) -> None:
        try:
            self.front.send_multipart([identity, *encode_message(reply)], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    def _event(self, kind: str, shard: str, **extra) -> None:
        ev = {"event": kind, "shard": shard, "wall_time": time.time(), **extra}
        self.events.append(ev)
        log.warning("%s", json.dumps(ev))
        self.publisher.publish_raw(STATS_TOPIC, json.dumps({"kind": "cluster", **ev}).encode())
