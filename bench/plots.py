"""PNG plots of bench results (matplotlib, Agg): latency CDF + histogram, throughput vs batch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from engines.cache import atomic_path

__all__ = ["latency_plot", "throughput_plot"]


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return path


def latency_plot(
    series: Mapping[str, Sequence[float]], path: Path, title: str, bound_ms: float | None = None
) -> Path:
    """Empirical CDF (left) and histogram (right) of each named latency series (ms)."""
    plt = _figure()
    fig, (ax_cdf, ax_hist) = plt.subplots(1, 2, figsize=(11, 4))
    for name, values in series.items():
        v = np.sort(np.asarray(values, dtype=float))
        if v.size == 0:
            continue
        ax_cdf.plot(v, np.arange(1, v.size + 1) / v.size, label=f"{name} (n={v.size})")
        ax_hist.hist(v, bins=min(60, max(10, v.size // 10)), alpha=0.5, label=name)
    for ax in (ax_cdf, ax_hist):
        ax.set_xlabel("latency (ms)")
        if bound_ms is not None:
            ax.axvline(bound_ms, color="red", linestyle="--", linewidth=1, label=f"bound {bound_ms:g} ms")
        ax.grid(alpha=0.3)
    ax_cdf.axhline(0.99, color="grey", linestyle=":", linewidth=1)
    ax_cdf.set_ylabel("fraction ≤ x")
    ax_hist.set_ylabel("count")
    ax_cdf.legend(fontsize=7)
    fig.suptitle(title)
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def throughput_plot(rows: Sequence[dict], path: Path, title: str, key: str = "runner") -> Path:
    """Windows/s (left) and p99 latency (right) against batch size, one line per ``row[key]``."""
    plt = _figure()
    fig, (ax_t, ax_l) = plt.subplots(1, 2, figsize=(11, 4))
    for name in dict.fromkeys(r[key] for r in rows):
        rs = sorted(
            (r for r in rows if r[key] == name and r.get("p99_ms") is not None), key=lambda r: r["batch"]
        )
        if not rs:
            continue
        b = [r["batch"] for r in rs]
        ax_t.plot(b, [r["windows_per_s"] for r in rs], marker="o", label=name)
        ax_l.plot(b, [r["p99_ms"] for r in rs], marker="o", label=name)
    for ax, ylabel in ((ax_t, "windows/s"), (ax_l, "p99 latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)
