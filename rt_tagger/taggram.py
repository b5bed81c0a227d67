"""Taggram: a picture of tag scores over time (tags × windows), drawn with matplotlib's Agg backend.

Rendered in memory and written with :func:`engines.cache.write_atomic` (a temporary sibling and a
rename), so a failure never leaves a half-written image. The folder must exist.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from engines.cache import write_atomic

__all__ = ["draw_taggram"]


def draw_taggram(
    probabilities: np.ndarray,
    tags: list[str],
    out: str | Path,
    *,
    window_ends_s: list[float] | np.ndarray | None = None,
    title: str = "",
) -> Path:
    """Draw ``probabilities`` ``(n_windows, n_tags)`` as a heat map and save it atomically.

    Args:
        probabilities: Per-window tag scores in [0, 1].
        tags: Tag names (rows of the picture).
        out: Target image path (format from the suffix, e.g. ``.png``).
        window_ends_s: Stream time of each window's end (x axis); default: window index.
        title: Figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    p = np.asarray(probabilities, dtype=np.float32).reshape(-1, len(tags))
    fig_h = max(2.5, 0.28 * len(tags) + 1.2)
    fig, ax = plt.subplots(figsize=(10, fig_h))
    try:
        if window_ends_s is not None and len(window_ends_s) > 1:
            t = np.asarray(window_ends_s, dtype=np.float64)
            step = float(np.median(np.diff(t)))
            extent = (t[0] - step / 2, t[-1] + step / 2, len(tags) - 0.5, -0.5)
            xlabel = "time (s, window end)"
        else:
            extent = (-0.5, p.shape[0] - 0.5, len(tags) - 0.5, -0.5)
            xlabel = "window"
        im = ax.imshow(
            p.T, aspect="auto", interpolation="nearest", cmap="magma", vmin=0.0, vmax=1.0, extent=extent
        )
        ax.set_yticks(range(len(tags)))
        ax.set_yticklabels(tags, fontsize=8)
        ax.set_xlabel(xlabel)
        if title:
            ax.set_title(title, fontsize=10)
        fig.colorbar(im, ax=ax, label="score")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format=(out.suffix[1:] or "png"), dpi=110)
        write_atomic(out, buf.getvalue())
    finally:
        plt.close(fig)
    return out
