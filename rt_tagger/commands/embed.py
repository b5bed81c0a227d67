"""``rt-tagger embed FILE… --out X.npy|X.safetensors``: per-window embeddings of audio files.

The files are streamed exactly as ``rt-tagger tag`` streams them (same front end, windows and hop;
the result does not depend on the block size), and every window is embedded, silent ones
included, so the window times are regular. The embedding is the model's penultimate layer
(``model.embed_dim`` floats), what the backend returns next to the tag probabilities.

Two output formats, chosen by the suffix of ``--out``, both written atomically after every file:

* ``.npy``: one structured array (``numpy.load`` reads it, no pickle), a row per window with fields
  ``file`` (str), ``start_s``, ``end_s`` (float64 seconds) and ``embedding`` (float32, embed_dim).
* ``.safetensors``: tensors ``embeddings`` (windows, embed_dim) float32, ``start_s`` and ``end_s``
  (windows,) float64, ``file_index`` (windows,) int64 into the metadata's ``files`` (a JSON list),
  and metadata ``model``, ``weights_sha256``, ``window_s``, ``hop_s``.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np

from engines.cache import write_atomic
from engines.errors import UserError
from rt_tagger.commands.settings_from_args import settings_from_args
from rt_tagger.commands.tag import check_writable

__all__ = ["FORMATS", "cmd_embed", "embed_files"]

FORMATS = (".npy", ".safetensors")


def embed_files(files: list[Path], bundle, settings) -> tuple[list[dict], float]:
    """For every file ``{"file", "start_s", "end_s", "embeddings"}`` (arrays, one row per window),
    and the hop in seconds."""
    from rt_tagger.pipeline import Pipeline
    from rt_tagger.sources import FileSource

    # silence_rms 0: no window is skipped as silent, every one is embedded.
    settings = settings.model_copy(update={"silence_rms": 0.0})
    out = []
    with Pipeline(bundle, settings, keep_windows=True) as pipe:
        for f in files:
            src = FileSource(
                f, block_size=settings.audio.block_size, ring_seconds=settings.audio.ring_seconds
            )
            res = pipe.run(src)
            out.append(
                {
                    "file": str(f),
                    "start_s": np.array([w.start_s for w in res.windows], dtype=np.float64),
                    "end_s": np.array([w.end_s for w in res.windows], dtype=np.float64),
                    "embeddings": np.stack([w.embedding for w in res.windows]).astype(np.float32),
                }
            )
    return out, pipe.hop_seconds


def npy_bytes(results: list[dict]) -> bytes:
    """The ``.npy`` file: one structured row per window."""
    dim = results[0]["embeddings"].shape[1]
    longest = max(len(r["file"]) for r in results)
    dtype = np.dtype(
        [("file", f"U{longest}"), ("start_s", "f8"), ("end_s", "f8"), ("embedding", "f4", (dim,))]
    )
    rows = np.zeros(sum(len(r["start_s"]) for r in results), dtype=dtype)
    i = 0
    for r in results:
        n = len(r["start_s"])
        part = rows[i : i + n]
        part["file"], part["start_s"], part["end_s"] = r["file"], r["start_s"], r["end_s"]
        part["embedding"] = r["embeddings"]
        i += n
    buf = io.BytesIO()
    np.save(buf, rows, allow_pickle=False)
    return buf.getvalue()


def safetensors_bytes(results: list[dict], bundle, hop_s: float) -> bytes:
    """The ``.safetensors`` file: the arrays as tensors, file names and model in the metadata."""
    from safetensors.numpy import save

    tensors = {
        "embeddings": np.concatenate([r["embeddings"] for r in results]),
        "start_s": np.concatenate([r["start_s"] for r in results]),
        "end_s": np.concatenate([r["end_s"] for r in results]),
        "file_index": np.concatenate(
            [np.full(len(r["start_s"]), i, np.int64) for i, r in enumerate(results)]
        ),
    }
    metadata = {
        "files": json.dumps([r["file"] for r in results]),
        "model": bundle.manifest.name,
        "weights_sha256": bundle.manifest.weights_sha256,
        "window_s": repr(bundle.frontend.window_seconds),
        "hop_s": repr(hop_s),
    }
    return save(tensors, metadata=metadata)


def cmd_embed(args) -> int:
    from rt_tagger.bundled_model import load_bundle
    from rt_tagger.sources import FileSource

    out: Path = args.out
    if out.suffix not in FORMATS:
        raise UserError(f"--out {out}: unknown format {out.suffix!r}; use one of {', '.join(FORMATS)}")
    check_writable(out, "--out")
    st = settings_from_args(args)
    bundle = load_bundle(st.bundle)
    for f in args.files:  # a bad file fails before any work
        FileSource(f, block_size=st.audio.block_size).stop()
    results, hop_s = embed_files(args.files, bundle, st)
    data = npy_bytes(results) if out.suffix == ".npy" else safetensors_bytes(results, bundle, hop_s)
    write_atomic(out, data)
    for r in results:
        n, dim = r["embeddings"].shape
        print(f"{r['file']}: {n} windows x {dim}", file=sys.stderr)
    print(f"embeddings: {out}", file=sys.stderr)
    return 0
