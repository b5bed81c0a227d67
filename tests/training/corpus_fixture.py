"""A tiny labelled corpus in the folder + tags.csv layout, built from tones and noise.

Tags are known by construction: ``tone`` / ``noise`` (the source) and ``low`` / ``high`` (the
pitch or noise band), so even a few training steps can learn something.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

SR = 16000
TINY_RECIPE = """
name = "tiny"
seed = 0
device = "cpu"
[frontend]
window_frames = 32
[model]
width = 4
blocks = [1, 1]
embed_dim = 16
[data]
pretrain = ["{corpus}"]
labelled = "{corpus}"
test = "{corpus}"
[pretrain]
min_gap_s = 0.2
[pretrain.options]
[pretrain.loop]
steps = 6
batch_size = 8
warmup_steps = 2
ckpt_every = 3
log_every = 2
[probe]
label_fractions = [0.5, 1.0]
crops_per_track = 2
[probe.loop]
steps = 20
batch_size = 16
warmup_steps = 2
eval_every = 10
log_every = 10
[finetune.loop]
steps = 6
batch_size = 8
warmup_steps = 2
eval_every = 3
log_every = 3
ckpt_every = 3
"""


def make_corpus(root: Path, n: int = 24, seconds: float = 1.5, seed: int = 0) -> Path:
    """Write ``n`` clips and ``tags.csv`` (path, tags, split) under ``root``; returns ``root``."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * SR)) / SR
    rows = []
    for i in range(n):
        kind = "tone" if i % 2 == 0 else "noise"
        band = "low" if (i // 2) % 2 == 0 else "high"
        if kind == "tone":
            f0 = rng.uniform(110, 220) if band == "low" else rng.uniform(1500, 3000)
            x = 0.3 * np.sin(2 * np.pi * f0 * t)
        else:
            x = rng.standard_normal(len(t))
            spec = np.fft.rfft(x)
            freqs = np.fft.rfftfreq(len(t), 1 / SR)
            spec[(freqs > 500) if band == "low" else (freqs < 2000)] = 0
            x = 0.3 * np.fft.irfft(spec, len(t)) / (np.std(np.fft.irfft(spec, len(t))) + 1e-9) * 0.3
        path = f"audio/clip_{i:03d}.wav"
        sf.write(root / path, x.astype(np.float32), SR)
        split = "valid" if (i // 4) % 3 == 2 else "train"
        rows.append({"path": path, "tags": f"{kind};{band}", "split": split})
    with open(root / "tags.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "tags", "split"])
        w.writeheader()
        w.writerows(rows)
    return root


def write_recipe(path: Path, corpus: Path, extra: str = "") -> Path:
    path.write_text(TINY_RECIPE.format(corpus=corpus) + extra)
    return path
