"""Protocol conformance for every backend, in every configuration available on this machine."""

from __future__ import annotations

import numpy as np
import pytest

from engines.base import BackendError
from engines.registry import BACKENDS, open_backend
from tests.engines.conformance import check_backend, open_or_skip
from tests.engines.conftest import random_mel

CONFIGS = [
    ("torch-cpu", {}),
    ("onnxruntime-cpu", {}),
    ("torch-cuda", {"precision": "fp32"}),
    ("torch-cuda", {"precision": "fp32", "cuda_graphs": False, "channels_last": False}),
    ("torch-cuda", {"precision": "fp16"}),
    ("torch-cuda", {"precision": "bf16"}),
    ("tensorrt", {"precision": "fp32"}),
    ("tensorrt", {"precision": "fp16"}),
    ("triton-fused", {"precision": "bf16", "catalogue": "quick"}),
]
# Backends that need a wider model than exported_bundle's (width 8).
WIDE = {"triton-fused"}


def test_every_backend_is_listed():
    assert {name for name, _ in CONFIGS} == set(BACKENDS)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    CONFIGS,
    ids=[f"{n}-{'-'.join(map(str, k.values())) or 'default'}" for n, k in CONFIGS],
)
def test_conformance(exported_bundle, request, name, kwargs):
    bundle = request.getfixturevalue("wide_bundle") if name in WIDE else exported_bundle
    backend = open_or_skip(bundle, name, max_batch=16, **kwargs)
    try:
        check_backend(backend)
    finally:
        backend.deactivate()
    assert not backend.is_active


def test_gpu_backends_report_device_time(exported_bundle):
    backend = open_or_skip(exported_bundle, "torch-cuda", max_batch=4)
    with backend:
        backend.infer(random_mel(exported_bundle, 2))
        assert (
            backend.last_device_time is not None
            and 0 < backend.last_device_time <= backend.last_inference_time
        )
        assert backend.device.startswith("cuda")


def test_inactive_backend_refuses(exported_bundle):
    backend = open_backend(exported_bundle, "onnxruntime-cpu")
    backend.deactivate()
    with pytest.raises(BackendError, match="not active"):
        backend.infer(np.zeros((1, *backend.input_shape), np.float32))


def test_bad_precision_is_a_user_error(exported_bundle):
    with pytest.raises(BackendError, match="precision must be one of"):
        open_backend(exported_bundle, "onnxruntime-cpu", precision="int8")
    with pytest.raises(BackendError, match="precision must be one of"):
        open_backend(exported_bundle, "torch-cuda", precision="fp8")
