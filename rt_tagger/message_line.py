"""One readable line per message: the console view of ``listen``, ``stream``, ``demo`` and
``subscribe`` (one formatter for all of them)::

    12:03:04.512 mic      #42    t=21.0s  piano ▇▇▇▆ .82  guitar ▃ .31 | on piano | +piano | lat 7.3ms | drops 0
    12:03:05.012 mic      #43    t=21.5s  ♥ heartbeat (silent) | drops 0
    12:03:05.512 mic      #44    t=22.0s  not music | -piano | lat 7.1ms | drops 0
    12:03:06.012 mic      #45    t=?      end of stream: eof after 22.0 s (44 windows, 1 heartbeats) | -guitar | drops 0

``lat`` is processing latency (publish wall time − capture wall time of the window's last sample).
"""

from __future__ import annotations

import json
import time
from typing import TextIO

from rt_tagger.messages import DropCounters, TagMessage

__all__ = ["ascii_only", "format_end", "format_message"]

_BLOCKS = " ▏▎▍▌▋▊▉█"  # eighths of a cell
# Fields every message has; an end message's own fields (reason, final counters) are the rest.
_ENVELOPE = {"schema_version", "kind", "stream_id", "seq", "publish_wall_time", "backend", "model"}
# What an end line shows, or leaves out as empty in an end message; anything else is printed as JSON.
_KNOWN = _ENVELOPE | {"reason", "end", "events", "drops", "window", "timings_ms", "capture_wall_time",
                      "top", "active", "state", "backlog_s", "scores", "tags", "heartbeat_reason", "embedding"}  # fmt: skip


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


def _head(stream_id: str, seq: int, publish_wall_time: float | None, end_s: float | None) -> str:
    wall = publish_wall_time or time.time()
    clock = time.strftime("%H:%M:%S", time.localtime(wall)) + f".{int((wall % 1) * 1000):03d}"
    t = f"t={end_s:.1f}s" if end_s is not None else "t=?"
    return f"{clock} {stream_id:<8} #{seq:<5} {t:<8}"


def format_message(
    msg: TagMessage, *, top_n: int = 5, ascii_only: bool = False, recv_time: float | None = None
) -> str:
    """One compact line for a message (see the module docstring)."""
    if msg.kind == "end":
        return format_end(msg.model_dump(mode="json"))
    head = _head(msg.stream_id, msg.seq, msg.publish_wall_time, msg.window.end_s if msg.window else None)
    parts: list[str] = []
    if msg.kind == "heartbeat":
        heart = "<3" if ascii_only else "♥"
        parts.append(f"{heart} heartbeat ({msg.heartbeat_reason or '?'})")
    elif msg.state == "not_music":  # the music head says no: no tags to show
        parts.append("not music")
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


def _count(n, plural: str) -> str:
    return f"{n} {plural[:-1]}" if n == 1 else f"{'?' if n is None else n} {plural}"


def format_end(doc: dict) -> str:
    """One line for a ``kind="end"`` message, given as its decoded JSON object: why and after how
    much the stream ended, its error, the tags switched off, the final drop counters.

    Read from the JSON object rather than the model so that a subscriber shows the end of a stream
    whatever the publisher reports: counters by the names they came with, unknown fields as JSON.
    """
    window = doc.get("window") or {}
    head = _head(
        str(doc.get("stream_id", "?")),
        int(doc.get("seq", -1)),
        doc.get("publish_wall_time"),
        window.get("end_s"),
    )
    end = doc.get("end") if isinstance(doc.get("end"), dict) else {}
    what = f"end of stream: {end.get('reason') or doc.get('reason') or '?'}"
    if isinstance(end.get("stream_s"), int | float):
        counts = ", ".join(_count(end.get(k), k) for k in ("windows", "heartbeats"))
        what += f" after {end['stream_s']:.1f} s ({counts})"
    parts = [what]
    if end.get("error"):
        parts.append(f"error: {end['error']}")
    events = [e for e in doc.get("events") or [] if isinstance(e, dict)]
    if events:
        parts.append(" ".join(("+" if e.get("state") == "on" else "-") + str(e.get("tag")) for e in events))
    rest = {k: v for k, v in doc.items() if k not in _KNOWN and v not in (None, [], {})}
    if rest:
        parts.append(json.dumps(rest, separators=(",", ":")))
    drops = doc.get("drops")
    if isinstance(drops, dict):
        parts.append("drops " + (" ".join(f"{k}={v}" for k, v in drops.items() if v) or "0"))
    return f"{head} {' | '.join(parts)}"


def ascii_only(out: TextIO) -> bool:
    """True when ``out`` cannot encode the bar and heart characters (then ASCII stand-ins are used)."""
    encoding = getattr(out, "encoding", None)
    if encoding is None:  # an in-memory text stream holds any character
        return False
    try:
        "█♥▏".encode(encoding)
        return False
    except (UnicodeEncodeError, LookupError):
        return True
