"""``rt-tagger subscribe``: a live, readable terminal view of the tag messages (or raw JSON lines).

One line per message (:mod:`rt_tagger.message_line`). Sequence gaps are reported per stream
(``!! mic: seq gap``), so drops anywhere between publisher and this subscriber show. ``--json``
prints each body unchanged, one per line (gap reports then go to stderr, so stdout stays pure JSON
for ``jq`` and friends).

``--stream ID`` subscribes to exactly one stream (the terminated topic ``tags.<ID>\\0``, see
docs/messages.md); ``--topic PREFIX`` is a plain prefix filter. When every stream seen has sent its
``end`` message, the view prints it and exits 0.

``--compact`` subscribes to the compact binary encoding instead (topic ``tagb.``, see
:mod:`rt_tagger.compact`) and shows the same view; with ``--json`` it prints each frame decoded back
into the JSON message. ``--group ID`` reads a whole stream group (protocol 1.2) from its group
frames (topic ``tagg.<ID>\\0``, one message per window with every stream's compact frame).

Wiring: ``add_arguments(parser)`` + ``main_from_args(args)`` is the one ``subscribe`` parser (the
``rt-tagger`` CLI uses it), ``main(argv)`` or ``python -m rt_tagger.subscribe`` runs it stand-alone.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import zmq
from pydantic import ValidationError

from engines.errors import UserError, UserErrorParser, run_guarded
from rt_tagger.compact import (
    COMPACT_PREFIX,
    GROUP_PREFIX,
    CompactDecoder,
    compact_topic,
    group_topic,
    split_group_frame,
)
from rt_tagger.curve_keys import load_public, load_secret
from rt_tagger.message_line import ascii_only, format_end, format_message
from rt_tagger.messages import TagMessage
from rt_tagger.publisher import DEFAULT_ENDPOINT, JSON_PREFIX, parse_endpoint, stream_topic
from rt_tagger.settings import STREAM_ID_PATTERN, load_settings

__all__ = ["SeqTracker", "SubscribeTimeout", "add_arguments", "main", "main_from_args", "run_subscribe"]


class SubscribeTimeout(UserError):
    """No (or too few) messages arrived within the timeout."""


@dataclass
class SeqTracker:
    """Per-stream sequence bookkeeping: gaps (missing messages) and restarts."""

    last: dict[str, int] = field(default_factory=dict)
    gaps: int = 0
    missing: int = 0

    def check(self, stream: str, seq: int) -> str | None:
        """Record ``seq``; return a one-line report if it is not the expected next number."""
        prev = self.last.get(stream)
        self.last[stream] = seq
        if prev is None or seq == prev + 1:
            return None
        if seq > prev + 1:
            self.gaps += 1
            self.missing += seq - prev - 1
            return f"!! {stream}: seq gap {prev} -> {seq} ({seq - prev - 1} missing)"
        return f"!! {stream}: seq went back {prev} -> {seq} (publisher restarted?)"


def _connect(
    ctx: zmq.Context,
    endpoint: str,
    topic: bytes,
    curve_server_public: Path | None,
    curve_client_dir: Path | None,
) -> zmq.Socket:
    ep = parse_endpoint(endpoint)
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    if ep.transport == "tcp" and ":" in (ep.host or ""):
        sock.setsockopt(zmq.IPV6, 1)
    if curve_server_public is not None:
        sock.curve_serverkey = load_public(curve_server_public)
        if curve_client_dir is not None:
            public, secret = load_secret(curve_client_dir)
        else:  # an ephemeral identity: enough when the publisher does not check client keys
            public, secret = zmq.curve_keypair()
        sock.curve_publickey = public
        sock.curve_secretkey = secret
    elif curve_client_dir is not None:
        raise UserError("--curve-client-dir needs --curve-public (the publisher's server.key)")
    sock.setsockopt(zmq.SUBSCRIBE, topic)
    sock.connect(ep.url)
    return sock


def _decode(frames: list[bytes]) -> dict:
    """The message body as a JSON object; ValueError if the frames cannot be a message."""
    if len(frames) != 2:
        raise ValueError(f"{len(frames)} frames, expected 2")
    doc = json.loads(frames[1])
    if not isinstance(doc, dict):
        raise ValueError(f"the body is a JSON {type(doc).__name__}, not an object")
    return doc


def _messages(frames: list[bytes]) -> list[list[bytes]]:
    """The messages in one ZeroMQ message: a group frame (topic ``tagg.``) holds one per stream,
    each returned as its compact ``[topic, frame]``; anything else is one message."""
    if len(frames) == 2 and frames[0].startswith(GROUP_PREFIX):
        return [[compact_topic(sid), bytes(f)] for sid, f in split_group_frame(frames[1])]
    return [frames]


def run_subscribe(
    endpoint: str = DEFAULT_ENDPOINT,
    topic: str | bytes = "tags.",
    *,
    raw_json: bool = False,
    count: int | None = None,
    timeout_s: float | None = None,
    curve_server_public: Path | None = None,
    curve_client_dir: Path | None = None,
    top_n: int = 5,
    compact: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Subscribe and print messages until ``count`` arrived, every stream ended, or Ctrl-C.

    Args:
        endpoint: where the publisher is bound (connecting anywhere is allowed).
        topic: ZeroMQ subscription (a prefix): ``"tags."`` = every stream,
            ``stream_topic("mic")`` = exactly stream ``mic``, ``"tags.mic"`` = every stream whose
            id starts with ``mic``.
        raw_json: print each message body unchanged, one JSON object per line.
        count: stop after this many messages (heartbeats included).
        timeout_s: give up when no message arrives for this long (``SubscribeTimeout``).
        curve_server_public: the publisher's ``server.key``; turns on CURVE.
        curve_client_dir: this subscriber's ``client.key_secret`` (or its folder); default: an
            ephemeral key pair.
        top_n: tags shown per line.
        compact: subscribe to the compact encoding (``tags.`` in ``topic`` becomes ``tagb.``) and
            decode it; ``raw_json`` then prints the decoded message as JSON.
        out, err: text streams (default stdout / stderr).

    Returns:
        0 when done (``count`` reached, every stream seen sent ``kind="end"``, or interrupted).

    Raises:
        SubscribeTimeout: nothing arrived for ``timeout_s`` seconds.
        UserError: bad endpoint or key files.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    note = err if raw_json else out  # gap reports and summary: keep raw JSON output clean
    plain = ascii_only(out)
    topic = topic.encode() if isinstance(topic, str) else topic
    decoder = None
    if topic.startswith(GROUP_PREFIX):
        compact = True
    if compact:
        decoder = CompactDecoder()
        if topic.startswith(JSON_PREFIX):
            topic = COMPACT_PREFIX + topic[len(JSON_PREFIX) :]
    seqs = SeqTracker()
    ended: set[str] = set()
    received = malformed = 0
    ctx = zmq.Context()
    sock = _connect(ctx, endpoint, topic, curve_server_public, curve_client_dir)
    wait_ms = None if timeout_s is None else max(int(timeout_s * 1000), 1)
    done = False
    try:
        while not done and (count is None or received < count):
            if not sock.poll(wait_ms, zmq.POLLIN):
                raise SubscribeTimeout(
                    f"no message from {endpoint} on topic {topic.decode(errors='replace')!r} for "
                    f"{timeout_s:g} s (received {received}{'' if count is None else f' of {count}'})"
                )
            frames = sock.recv_multipart()
            recv_time = time.time()
            try:
                parts = _messages(frames)
            except (ValueError, UnicodeDecodeError) as e:
                received += 1
                malformed += 1
                print(f"!! malformed message on {frames[0][:64]!r}: {e}", file=note, flush=True)
                continue
            for frames in parts:
                received += 1
                try:
                    if decoder is not None and len(frames) == 2:  # binary -> the same message as JSON
                        frames = [frames[0], decoder.decode(frames[0], frames[1]).to_bytes()]
                    doc = _decode(frames)
                    if doc.get("kind") in (
                        "stats",
                        "cluster",
                    ):  # rt-tagger serve's own messages: as they come
                        out.write(frames[1].decode() + "\n")
                        out.flush()
                        continue
                    msg = None if doc.get("kind") == "end" else TagMessage.model_validate(doc)
                    stream, seq = (
                        (msg.stream_id, msg.seq) if msg else (str(doc["stream_id"]), int(doc["seq"]))
                    )
                except (ValidationError, ValueError, KeyError, TypeError, IndexError, struct.error) as e:
                    malformed += 1
                    first = str(e).splitlines()[0]
                    print(f"!! malformed message on {frames[0][:64]!r}: {first}", file=note, flush=True)
                    continue  # never on stdout: --json output must stay valid JSON lines
                gap = seqs.check(stream, seq)
                if gap:
                    print(gap, file=note, flush=True)
                if raw_json:
                    out.write(frames[1].decode() + "\n")
                    out.flush()
                elif msg is None:
                    print(format_end(doc), file=out, flush=True)
                else:
                    print(
                        format_message(msg, top_n=top_n, ascii_only=plain, recv_time=recv_time),
                        file=out,
                        flush=True,
                    )
                if msg is None:
                    ended.add(stream)
                    done = ended >= seqs.last.keys()  # every stream this view has seen is over
                if done or received == count:
                    break
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly like other Unix tools
        if out is sys.stdout:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        sock.close(linger=0)
        ctx.term()
        print(
            f"-- {received} messages, {seqs.gaps} gaps ({seqs.missing} missing), {malformed} malformed, "
            f"streams: {', '.join(sorted(seqs.last)) or '-'}"
            + (f", ended: {', '.join(sorted(ended))}" if ended else ""),
            file=note,
            flush=True,
        )
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the ``subscribe`` options to an (argparse sub-command) parser: the one ``subscribe`` parser."""
    p.add_argument("--config", type=Path, help="TOML settings file (for publish.endpoint)")
    p.add_argument(
        "--endpoint", "-e", help=f"publisher address (default: settings publish.endpoint, {DEFAULT_ENDPOINT})"
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--stream", metavar="ID", help="exactly this stream (its terminated topic)")
    which.add_argument(
        "--group",
        metavar="ID",
        help="every stream of this stream group, from its group frames (topic tagg.<ID>)",
    )
    which.add_argument(
        "--topic", default="tags.", help='topic prefix, e.g. "tags.mic" (default "tags." = all streams)'
    )
    p.add_argument("--json", action="store_true", help="print raw JSON lines (for piping)")
    p.add_argument(
        "--compact",
        action="store_true",
        help="receive the compact binary encoding (topic tagb.) and decode it; less work for the publisher",
    )
    p.add_argument("--count", "-n", type=int, default=None, help="stop after N messages")
    p.add_argument(
        "--timeout", type=float, default=None, help="fail if no message arrives for this many seconds"
    )
    p.add_argument("--top", type=int, default=5, help="tags shown per line (default 5)")
    p.add_argument("--curve-public", type=Path, default=None, help="publisher's public key file (server.key)")
    p.add_argument(
        "--curve-client-dir",
        type=Path,
        default=None,
        help="this subscriber's client.key_secret (or its folder)",
    )


def main_from_args(args: argparse.Namespace) -> int:
    """Run with parsed arguments from :func:`add_arguments`."""
    if args.count is not None and args.count < 1:
        raise UserError(f"--count must be >= 1, got {args.count}")
    if args.timeout is not None and args.timeout <= 0:
        raise UserError(f"--timeout must be > 0, got {args.timeout}")
    for what, value in (("stream", args.stream), ("group", args.group)):
        if value is not None and not re.fullmatch(STREAM_ID_PATTERN, value):
            raise UserError(f"invalid {what} id {value!r}: letters, digits, '_', '.', '-' (at most 64)")
    endpoint = args.endpoint or load_settings(args.config).publish.endpoint
    return run_subscribe(
        endpoint,
        stream_topic(args.stream)
        if args.stream is not None
        else group_topic(args.group)
        if args.group is not None
        else args.topic,
        raw_json=args.json,
        count=args.count,
        timeout_s=args.timeout,
        curve_server_public=args.curve_public,
        curve_client_dir=args.curve_client_dir,
        top_n=args.top,
        compact=args.compact,
    )


def main(argv: list[str] | None = None) -> int:
    p = UserErrorParser(prog="rt-tagger subscribe", description="Live view of rt-tagger messages.")
    add_arguments(p)
    return main_from_args(p.parse_args(argv))


if __name__ == "__main__":
    argv = sys.argv[1:]
    debug = "--debug" in argv
    sys.exit(run_guarded(main, [a for a in argv if a != "--debug"], debug))
