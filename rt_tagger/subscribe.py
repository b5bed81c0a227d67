"""``rt-tagger subscribe``: a live, readable terminal view of the tag messages (or raw JSON lines).

One line per message::

    12:03:04.512 mic     #42   t=21.0s  piano ▇▇▇▆ .82  guitar ▃ .31 | on piano | +piano | lat 7.3ms | drops 0
    12:03:05.012 mic     #43   t=21.5s  ♥ heartbeat (silent) | drops 0

``lat`` is processing latency (publish wall time − capture wall time of the window's last sample).
Sequence gaps are reported per stream (``!! mic: seq gap``), so drops anywhere between publisher
and this subscriber show. ``--json`` prints each body unchanged, one per line (gap reports then go
to stderr, so stdout stays pure JSON for ``jq`` and friends).

Wiring: ``add_arguments(parser)`` + ``main_from_args(args)`` for an argparse sub-command, or
``main(argv)``; ``python -m rt_tagger.subscribe`` runs it stand-alone.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import zmq
from pydantic import ValidationError

from engines.errors import UserError
from rt_tagger.curve import load_public, load_secret
from rt_tagger.messages import DropCounters, TagMessage
from rt_tagger.publisher import DEFAULT_ENDPOINT, parse_endpoint

__all__ = ["SubscribeTimeout", "add_arguments", "format_message", "main", "main_from_args", "run_subscribe"]

_BLOCKS = " ▏▎▍▌▋▊▉█"  # eighths of a cell


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


def _bar(score: float, cells: int, ascii_only: bool) -> str:
    score = min(max(score, 0.0), 1.0)
    if ascii_only:
        n = round(score * cells)
        return "#" * n + "." * (cells - n)
    eighths = round(score * cells * 8)
    full, rest = divmod(eighths, 8)
    s = "█" * full + (_BLOCKS[rest] if rest and full < cells else "")
    return s.ljust(cells)


def _drops_text(d: DropCounters) -> str:
    parts = [
        ("ovf", d.ring_overflow_samples),
        ("udf", d.ring_underflow_events),
        ("pa", d.input_status_flags),
        ("rs", d.resampler_dropped_samples),
        ("pub", d.publisher_dropped),
    ]
    shown = [f"{k}={v}" for k, v in parts if v]
    return "drops " + (" ".join(shown) if shown else "0")


def format_message(
    msg: TagMessage, *, top_n: int = 5, ascii_only: bool = False, recv_time: float | None = None
) -> str:
    """One compact line for ``msg`` (see the module docstring)."""
    clock = time.strftime("%H:%M:%S", time.localtime(msg.publish_wall_time or time.time()))
    clock += f".{int((msg.publish_wall_time % 1) * 1000):03d}"
    t = f"t={msg.window.end_s:.1f}s" if msg.window else "t=?"
    head = f"{clock} {msg.stream_id:<8} #{msg.seq:<5} {t:<8}"
    parts: list[str] = []
    if msg.kind == "heartbeat":
        heart = "<3" if ascii_only else "♥"
        parts.append(f"{heart} heartbeat ({msg.heartbeat_reason or '?'})")
    else:
        tops = "  ".join(
            f"{s.tag} {_bar(s.score, 4, ascii_only)} {f'{s.score:.2f}'.lstrip('0')}" for s in msg.top[:top_n]
        )
        parts.append(tops or "(no tags)")
    if msg.active:
        parts.append("on " + ",".join(msg.active))
    if msg.events:
        parts.append(" ".join(("+" if e.state == "on" else "-") + e.tag for e in msg.events))
    if msg.capture_wall_time and msg.publish_wall_time:
        parts.append(f"lat {(msg.publish_wall_time - msg.capture_wall_time) * 1e3:.1f}ms")
    if recv_time is not None and msg.publish_wall_time:
        parts.append(f"age {(recv_time - msg.publish_wall_time) * 1e3:.1f}ms")
    parts.append(_drops_text(msg.drops))
    return head + " " + " | ".join(parts)


def _ascii_only(out: TextIO) -> bool:
    encoding = getattr(out, "encoding", None)
    if encoding is None:  # an in-memory text stream holds any character
        return False
    try:
        "█♥▏".encode(encoding)
        return False
    except (UnicodeEncodeError, LookupError):
        return True


def _connect(
    ctx: zmq.Context,
    endpoint: str,
    topic: str,
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
    sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
    sock.connect(ep.url)
    return sock


def run_subscribe(
    endpoint: str = DEFAULT_ENDPOINT,
    topic: str = "tags.",
    *,
    raw_json: bool = False,
    count: int | None = None,
    timeout_s: float | None = None,
    curve_server_public: Path | None = None,
    curve_client_dir: Path | None = None,
    top_n: int = 5,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Subscribe and print messages until ``count`` arrived (or forever / Ctrl-C).

    Args:
        endpoint: where the publisher is bound (connecting anywhere is allowed).
        topic: prefix filter; ``"tags."`` = every stream, ``"tags.mic"`` = one stream.
        raw_json: print each message body unchanged, one JSON object per line.
        count: stop after this many messages (heartbeats included).
        timeout_s: give up when no message arrives for this long (``SubscribeTimeout``).
        curve_server_public: the publisher's ``server.key``; turns on CURVE.
        curve_client_dir: this subscriber's ``client.key_secret`` (or its folder); default: an
            ephemeral key pair.
        top_n: tags shown per line.
        out, err: text streams (default stdout / stderr).

    Returns:
        0 when done (``count`` reached or interrupted).

    Raises:
        SubscribeTimeout: nothing arrived for ``timeout_s`` seconds.
        UserError: bad endpoint or key files.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    note = err if raw_json else out  # gap reports and summary: keep raw JSON output clean
    ascii_only = _ascii_only(out)
    seqs = SeqTracker()
    received = malformed = 0
    ctx = zmq.Context()
    sock = _connect(ctx, endpoint, topic, curve_server_public, curve_client_dir)
    wait_ms = None if timeout_s is None else max(int(timeout_s * 1000), 1)
    try:
        while count is None or received < count:
            if not sock.poll(wait_ms, zmq.POLLIN):
                raise SubscribeTimeout(
                    f"no message from {endpoint} on topic {topic!r} for {timeout_s:g} s "
                    f"(received {received}{'' if count is None else f' of {count}'})"
                )
            frames = sock.recv_multipart()
            recv_time = time.time()
            received += 1
            body = frames[-1]
            try:
                if len(frames) != 2:
                    raise ValueError(f"{len(frames)} frames, expected 2")
                msg = TagMessage.from_bytes(body)
            except (ValidationError, ValueError) as e:
                malformed += 1
                first = str(e).splitlines()[0]
                print(f"!! malformed message on {frames[0][:64]!r}: {first}", file=note, flush=True)
                continue  # never on stdout: --json output must stay valid JSON lines
            gap = seqs.check(msg.stream_id, msg.seq)
            if gap:
                print(gap, file=note, flush=True)
            if raw_json:
                out.write(body.decode() + "\n")
                out.flush()
            else:
                print(
                    format_message(msg, top_n=top_n, ascii_only=ascii_only, recv_time=recv_time),
                    file=out,
                    flush=True,
                )
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
            f"streams: {', '.join(sorted(seqs.last)) or '-'}",
            file=note,
            flush=True,
        )
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the ``subscribe`` options to an (argparse sub-command) parser."""
    p.add_argument(
        "--endpoint", "-e", default=DEFAULT_ENDPOINT, help=f"publisher address (default {DEFAULT_ENDPOINT})"
    )
    p.add_argument(
        "--topic", default="tags.", help='topic prefix, e.g. "tags.mic" (default "tags." = all streams)'
    )
    p.add_argument("--json", action="store_true", help="print raw JSON lines (for piping)")
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
    return run_subscribe(
        args.endpoint,
        args.topic,
        raw_json=args.json,
        count=args.count,
        timeout_s=args.timeout,
        curve_server_public=args.curve_public,
        curve_client_dir=args.curve_client_dir,
        top_n=args.top,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rt-tagger subscribe", description="Live view of rt-tagger messages.")
    add_arguments(p)
    return main_from_args(p.parse_args(argv))


if __name__ == "__main__":
    from rt_tagger.cli import run_guarded

    argv = sys.argv[1:]
    debug = "--debug" in argv
    sys.exit(run_guarded(main, [a for a in argv if a != "--debug"], debug))
