"""Latency statistics: percentiles over many timed runs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["summarize", "PERCENTILES"]

PERCENTILES = (50, 95, 99)


def summarize(samples_ms: Sequence[float]) -> dict[str, float | int | None]:
    """p50/p95/p99/max/mean/min (ms) and the sample count of ``samples_ms``.

    Percentiles use linear interpolation (numpy's default); an empty sequence gives ``None`` values,
    never a made-up zero.
    """
    a = np.asarray(list(samples_ms), dtype=np.float64)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "max": None, "mean": None, "min": None}
    p50, p95, p99 = np.percentile(a, PERCENTILES)
    return {
        "n": int(a.size),
        "p50": float(p50),
        "p95": float(p95),
        "p99": float(p99),
        "max": float(a.max()),
        "mean": float(a.mean()),
        "min": float(a.min()),
    }
