"""Fixtures for the engines tests: one tiny bundle exported once, copied where a test mutates it."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from engines.bundle import Bundle
from tests.conftest import make_random_bundle


@pytest.fixture(scope="session")
def exported_bundle(tmp_path_factory) -> Bundle:
    """A tiny random bundle with its fp32 and fp16 ONNX files already in compiled/ (read-only use)."""
    from engines.onnx_export import export_onnx

    bundle = make_random_bundle(tmp_path_factory.mktemp("engines") / "tiny", seed=3)
    export_onnx(bundle, "fp32")
    export_onnx(bundle, "fp16")
    return bundle


@pytest.fixture(scope="session")
def wide_bundle(tmp_path_factory) -> Bundle:
    """A tiny bundle of width 16, the narrowest the fused Triton kernels take (tl.dot's tile side)."""
    return make_random_bundle(tmp_path_factory.mktemp("wide") / "w16", width=16, seed=4)


@pytest.fixture
def bundle_copy(exported_bundle, tmp_path) -> Bundle:
    """A private copy of :func:`exported_bundle` that a test may change."""
    dst = tmp_path / "bundle"
    shutil.copytree(exported_bundle.path, dst)
    return Bundle.load(dst)


def random_mel(bundle: Bundle, batch: int, seed: int = 0) -> np.ndarray:
    """Log-mel-like windows in dB for ``bundle``: ``(batch, n_mels, window_frames)`` float32."""
    spec = bundle.frontend
    rng = np.random.default_rng(seed)
    return rng.normal(-40.0, 20.0, (batch, spec.n_mels, spec.window_frames)).astype(np.float32)
