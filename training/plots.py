"""PNG plots: training curves, a t-SNE map of track embeddings coloured by tag, confusion matrix."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["plot_curves", "plot_stage", "plot_embedding_map", "plot_compare", "plot_confusion"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: list[dict], path: Path, title: str) -> None:
    """Loss (and collapse indicators / validation scores where logged) against step."""
    plt = _plt()
    keys = [k for k in ("loss", "emb_std", "eff_rank", "valid_roc_auc") if any(k in h for h in history)]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    for ax, k in zip(axes[0], keys, strict=True):
        pts = [(h["step"], h[k]) for h in history if k in h]
        ax.plot(*zip(*pts, strict=True), marker="." if len(pts) < 30 else None)
        ax.set_title(k)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_stage(stage_dir: Path, out_dir: Path, name: str, title: str, seed: int = 0) -> None:
    """The plots of one stage folder: ``<name>_curves.png`` from its history and, when the stage
    saved test embeddings, ``embedding_map.png``."""
    import json

    history = stage_dir / "history.json"
    if history.exists():
        plot_curves(json.loads(history.read_text()), out_dir / f"{name}_curves.png", title)
    if (stage_dir / "test_embeddings.npz").exists():
        plot_embedding_map(stage_dir / "test_embeddings.npz", out_dir / "embedding_map.png", seed=seed)


def plot_confusion(classes: dict, path: Path) -> None:
    """Confusion matrix of :func:`training.metrics.class_metrics` (rows: true class)."""
    plt = _plt()
    cm, labels = np.asarray(classes["confusion"]), classes["labels"]
    size = 2.5 + 0.45 * len(labels)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", color="black" if v <= cm.max() / 2 else "white")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"accuracy {classes['accuracy']:.3f}, macro F1 {classes['macro_f1']:.3f} (n={classes['n']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_embedding_map(
    npz: Path,
    path: Path,
    seed: int = 0,
    prefer: tuple[str, ...] = (
        "rock",
        "techno",
        "classical",
        "ambient",
        "jazz",
        "folk",
        "latin",
        "pop",
        "metal",
        "chiptune",
    ),
) -> None:
    """t-SNE of test-track embeddings, coloured by the first style tag each track carries."""
    from sklearn.manifold import TSNE

    plt = _plt()
    d = np.load(npz, allow_pickle=False)
    emb, labels, tags = d["emb"], d["labels"], [str(t) for t in d["tags"]]
    styles = [t for t in prefer if t in tags] or tags[: min(8, len(tags))]
    cols = [tags.index(t) for t in styles]
    colour = np.full(len(emb), -1)
    for i, row in enumerate(labels[:, cols] > 0.5):
        if row.any():
            colour[i] = int(np.argmax(row))
    if len(emb) < 5:
        return
    xy = TSNE(
        n_components=2, perplexity=min(30.0, max(2.0, (len(emb) - 1) / 3)), random_state=seed, init="pca"
    ).fit_transform(emb)
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.scatter(xy[colour < 0, 0], xy[colour < 0, 1], s=6, c="lightgrey", label="(other)")
    cmap = plt.get_cmap("tab10")
    for j, name in enumerate(styles):
        m = colour == j
        ax.scatter(xy[m, 0], xy[m, 1], s=8, color=cmap(j % 10), label=name)
    ax.legend(markerscale=2, fontsize=8, loc="best")
    ax.set_title("t-SNE of held-out track embeddings (colour: style tag)")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_compare(rows: list[dict], path: Path) -> None:
    """Bar chart of probe test ROC-AUC per pretext and label fraction."""
    plt = _plt()
    fracs = sorted({f for r in rows for f in r["probe"]}, key=float)
    fig, ax = plt.subplots(figsize=(1.6 * len(rows) + 2, 3.5))
    w = 0.8 / max(1, len(fracs))
    for i, f in enumerate(fracs):
        vals = [r["probe"].get(f, {}).get("roc_auc", np.nan) for r in rows]
        ax.bar(np.arange(len(rows)) + i * w, vals, w, label=f"{float(f) * 100:g} % labels")
    ax.set_xticks(np.arange(len(rows)) + w * (len(fracs) - 1) / 2, [r["name"] for r in rows])
    lo = np.nanmin([r["probe"][f]["roc_auc"] for r in rows for f in r["probe"]])
    ax.set_ylim(max(0.0, lo - 0.05), 1.0)
    ax.set_ylabel("test macro ROC-AUC")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
