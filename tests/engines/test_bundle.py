import json

import numpy as np
import pytest

from engines.bundle import Bundle, BundleError
from engines.registry import open_backend
from tests.conftest import make_random_bundle


def test_roundtrip_and_inference(random_bundle):
    b = Bundle.load(random_bundle.path)
    with open_backend(b, "torch-cpu") as backend:
        mel = np.random.default_rng(0).normal(-40, 20, (3, *backend.input_shape)).astype(np.float32)
        out = backend.infer(mel)
    assert out.probabilities.shape == (3, len(b.tags))
    assert np.all((out.probabilities >= 0) & (out.probabilities <= 1))
    assert backend.last_inference_time > 0


def test_tampered_weights_refused(tmp_path):
    b = make_random_bundle(tmp_path / "b")
    with open(b.weights_path, "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(BundleError, match="sha256 mismatch"):
        Bundle.load(b.path)


def test_pickle_weights_refused(tmp_path):
    b = make_random_bundle(tmp_path / "b")
    m = json.loads((b.path / "manifest.json").read_text())
    m["weights_file"] = "weights.pt"
    (b.path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="safetensors"):
        Bundle.load(b.path)


def test_missing_bundle(tmp_path):
    with pytest.raises(BundleError, match="not found"):
        Bundle.load(tmp_path / "nope")


def test_refuses_overwrite(tmp_path, random_bundle):
    with pytest.raises(BundleError, match="overwrite"):
        make_random_bundle(random_bundle.path)
