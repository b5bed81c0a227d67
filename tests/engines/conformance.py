"""``check_backend``: the one conformance check every backend must pass (after Polygraphy's check_runner)."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest

from engines.base import Backend, BackendError
from engines.registry import open_backend

# max |Δ| vs torch-cpu fp32, per precision: fp32 is the 1e-4; half precisions carry ~3
# significant digits through ~20 layers.
PROB_TOL = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 6e-2}
EMB_TOL = {"fp32": 1e-3, "fp16": 1e-1, "bf16": 4e-1}


def reference(bundle, mel: np.ndarray):
    with open_backend(bundle, "torch-cpu") as ref:
        return ref.infer(mel)


def check_backend(backend: Backend, batches: tuple[int, ...] = (1, 3, 16)) -> None:
    """Shapes, dtypes, ranges, batch range, timing and parity with torch-cpu for an active backend."""
    from tests.engines.conftest import random_mel

    bundle = backend.bundle
    m = bundle.manifest.model
    d = backend.describe()
    assert set(d) >= {"name", "device", "precision", "batch_min", "batch_max"}
    assert d["name"] == backend.name and d["precision"] in PROB_TOL
    lo, hi = backend.batch_range
    assert (d["batch_min"], d["batch_max"]) == (lo, hi) and 1 == lo <= hi
    for b in (*batches, hi):
        if b > hi:
            continue
        mel = random_mel(bundle, b, seed=b)
        out = backend.infer(mel)
        assert out.probabilities.shape == (b, m.n_tags) and out.probabilities.dtype == np.float32
        assert out.embeddings.shape == (b, m.embed_dim) and out.embeddings.dtype == np.float32
        assert np.all(np.isfinite(out.probabilities)) and np.all(np.isfinite(out.embeddings))
        assert np.all((out.probabilities >= 0) & (out.probabilities <= 1))
        assert backend.last_inference_time is not None and backend.last_inference_time > 0
        ref = reference(bundle, mel)
        dp = float(np.abs(out.probabilities - ref.probabilities).max())
        de = float(np.abs(out.embeddings - ref.embeddings).max())
        assert dp <= PROB_TOL[d["precision"]], f"{backend.name} batch {b}: max |Δprob| {dp:.2e}"
        assert de <= EMB_TOL[d["precision"]], f"{backend.name} batch {b}: max |Δemb| {de:.2e}"
        again = backend.infer(mel)  # repeatable (graphs/buffers reused, not stale)
        np.testing.assert_array_equal(again.probabilities, out.probabilities)
        backend.prewarm()  # a run on silence between windows changes no result
        np.testing.assert_array_equal(backend.infer(mel).probabilities, out.probabilities)
        # host work while the device computes: run once by the GPU backends, skipped by the others;
        # the result is the same
        calls: list[float] = []
        overlapped = backend.infer(mel, while_waiting=partial(calls.append, 1.0))
        assert len(calls) == (1 if backend.overlaps_host_work and d["device"].startswith("cuda") else 0)
        np.testing.assert_array_equal(overlapped.probabilities, out.probabilities)
        np.testing.assert_array_equal(overlapped.embeddings, out.embeddings)
    with pytest.raises(BackendError, match="outside the supported range"):
        backend.infer(random_mel(bundle, hi + 1))
    with pytest.raises(BackendError, match="input shape"):
        backend.infer(np.zeros((1, 3, 5), np.float32))


def open_or_skip(bundle, name: str, **kwargs) -> Backend:
    """Open a backend, or skip the test with the backend's own one-line reason."""
    from engines.errors import UserError

    try:
        return open_backend(bundle, name, **kwargs)
    except UserError as e:
        pytest.skip(f"{name} {kwargs or ''} not available here: {e}")
