"""Automatic choice and forced backends."""

from __future__ import annotations

import logging

import pytest

from engines.base import BackendError
from engines.registry import CPU_DEFAULT, open_backend


def test_unknown_backend(exported_bundle):
    with pytest.raises(BackendError, match="unknown backend 'tpu'; choose from: auto, torch-cpu"):
        open_backend(exported_bundle, "tpu")


@pytest.mark.parametrize("name", ["torch-cuda", "tensorrt"])  # triton-fused: test_triton_backend.py
def test_forcing_a_gpu_backend_without_gpu_says_why(exported_bundle, name):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present; this checks the no-GPU message")
    with pytest.raises(BackendError, match=f"^backend {name} unavailable: no CUDA GPU found$"):
        open_backend(exported_bundle, name)


def test_auto_on_cpu_picks_the_measured_default_and_logs_it(exported_bundle, caplog):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present; auto would pick a GPU backend")
    with caplog.at_level(logging.INFO, logger="engines.registry"):
        backend = open_backend(exported_bundle, "auto", max_batch=8, precision="fp32")
    with backend:
        assert backend.name == CPU_DEFAULT and backend.max_batch == 8
        assert backend.selection.startswith(f"auto: {CPU_DEFAULT}")
        assert "triton-fused, tensorrt, torch-cuda: no CUDA GPU found" in backend.selection
    assert f"backend auto-selected: {CPU_DEFAULT}" in caplog.text


def test_auto_falls_back_to_torch_cpu_when_onnx_cannot_be_written(bundle_copy, tmp_path, monkeypatch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present; auto would pick a GPU backend")
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    monkeypatch.setenv("RT_TAGGER_COMPILED_DIR", str(blocker))  # nowhere to export ONNX to
    with open_backend(bundle_copy, "auto") as backend:
        assert backend.name == "torch-cpu"
        assert "onnxruntime-cpu:" in backend.selection and "not writable" in backend.selection


def test_forced_backend_is_marked_forced(exported_bundle):
    with open_backend(exported_bundle, "torch-cpu") as backend:
        assert backend.selection == "forced"
