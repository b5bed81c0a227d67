"""Readable summary tables of a results document (the same data ``--json`` prints)."""

from __future__ import annotations

import json
from collections.abc import Sequence

__all__ = ["table", "format_document", "to_json"]


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v == 0:
            return "0"
        a = abs(v)
        if a >= 1000:
            return f"{v:,.0f}"
        if a >= 100:
            return f"{v:.1f}"
        if a >= 1:
            return f"{v:.2f}"
        return f"{v:.3g}"
    return str(v)


def table(rows: Sequence[dict], columns: Sequence[tuple[str, str]]) -> str:
    """Fixed-width text table; ``columns`` are (key, header) pairs; missing keys print ``-``."""
    head = [h for _, h in columns]
    body = [[_cell(r.get(k)) for k, _ in columns] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(b, widths, strict=True)) for b in body]
    return "\n".join(lines)


def format_document(doc: dict, columns: Sequence[tuple[str, str]], title: str) -> str:
    m = doc["machine"]
    gpu = m.get("gpu")
    where = f"{m['cpu']} ({m['cpu_affinity'] or m['cpu_cores']} cores, {m['ram_gib']} GiB)"
    if gpu:
        where += f"; GPU {gpu['name']} (cc {gpu['compute_capability']}, driver {gpu['driver']})"
    out = [f"== rt-tagger bench {doc['mode']}: {title}", f"machine: {where}"]
    if "bundle" in doc:
        out.append(f"model: {doc['bundle']['label']}")
    out += ["", table(doc["results"], columns)]
    if doc.get("summary"):
        out.append("")
        out += [f"{k}: {_cell(v)}" for k, v in doc["summary"].items()]
    out += [f"note: {n}" for n in doc.get("notes", [])]
    return "\n".join(out)


def to_json(doc: dict) -> str:
    from bench.common import _json_default

    return json.dumps(doc, indent=2, default=_json_default)
