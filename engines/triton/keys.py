"""What a tuning depends on, and where it is cached.

A tuning (one :class:`~engines.triton.tiles.TilePlan` per batch bucket) is keyed by the model
(weights sha256 and architecture), the GPU (name and compute capability), the Triton, torch and —
where cuDNN candidates compete — cuDNN versions, the precision, the candidate catalogue, the batch
range, and a digest of the kernels' and catalogues' source, so an edited kernel is re-tuned. The
file name carries the GPU, precision and batch range so several GPUs can share one bundle
directory; the key file (:mod:`engines.cache`) holds the whole key.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from engines.bundle import Bundle
from engines.cache import Artifact, compiled_dir

__all__ = ["FORMAT", "buckets", "bucket_of", "kernels_digest", "tuning_artifact"]

FORMAT = 1
_SOURCES = ("kernels_stem.py", "kernels_conv.py", "launch.py", "tiles.py")


def buckets(max_batch: int) -> list[int]:
    """The batch sizes tuned for a backend of ``max_batch``: powers of two, then ``max_batch``."""
    out = [1]
    while out[-1] * 2 < max_batch:
        out.append(out[-1] * 2)
    if out[-1] != max_batch:
        out.append(max_batch)
    return out


def bucket_of(batch: int, tuned: list[int]) -> int:
    """The smallest tuned batch size ≥ ``batch`` (its plan runs ``batch``)."""
    return next(b for b in tuned if b >= batch)


def kernels_digest() -> str:
    """sha256 (16 hex digits) of the kernels', launchers' and catalogues' source files."""
    h = hashlib.sha256()
    here = Path(__file__).parent
    for name in _SOURCES:
        h.update((here / name).read_bytes())
    return h.hexdigest()[:16]


def tuning_artifact(
    bundle: Bundle,
    *,
    gpu: str,
    capability: tuple[int, int],
    versions: dict[str, str],
    precision: str,
    catalogue: str,
    cudnn: bool,
    max_batch: int,
) -> Artifact:
    """Where the tuning for these conditions lives, and the key it must have been made with.

    ``versions``: ``{"triton": …, "torch": …}`` and, with ``cudnn``, ``"cudnn": …``.
    """
    m = bundle.manifest
    key = {
        "format": FORMAT,
        "weights_sha256": m.weights_sha256,
        "model": m.model.model_dump(mode="json"),
        "input": [m.frontend.n_mels, m.frontend.window_frames],
        "gpu": gpu,
        "compute_capability": f"{capability[0]}.{capability[1]}",
        **versions,
        "precision": precision,
        "catalogue": catalogue,
        "cudnn_candidates": cudnn,
        "batch_range": [1, max_batch],
        "kernels": kernels_digest(),
    }
    slug = f"sm{capability[0]}{capability[1]}-" + re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-")
    flavour = catalogue + ("-cudnn" if cudnn else "")
    name = f"triton-fused.{slug}.{precision}.{flavour}.b1-{max_batch}.tiles.json"
    return Artifact(compiled_dir(bundle) / name, key)
