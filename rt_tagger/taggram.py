"""Taggram: a picture of tag scores over time (tags × windows), drawn with matplotlib's Agg backend.

Written to a temporary file beside the target and renamed into place, so a failure never leaves
a half-written image.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

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
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.stem}.", suffix=out.suffix or ".png")
        os.close(fd)
        try:
            fig.savefig(tmp, format=(out.suffix[1:] or "png"), dpi=110)
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(tmp, 0o666 & ~mask)  # mkstemp made it 0600
            os.replace(tmp, out)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    finally:
        plt.close(fig)
    return out
