"""bench/runners.py: runner specs name a backend and its timer; the graph timer needs the backend's graphs."""

from __future__ import annotations

import pytest

from bench.common import BenchError
from bench.runners import _graph_spec, _options, make_runner, measure


def test_graph_specs_map_to_backends():
    assert _graph_spec("cuda-graph-fp16") == ("torch-cuda", {"precision": "fp16"})
    assert _graph_spec("cuda-graph") == ("torch-cuda", {"precision": "bf16"})
    assert _graph_spec("compiled-graph-bf16") == ("torch-cuda", {"precision": "bf16", "compile": "default"})
    assert _graph_spec("compiled-graph-bf16-autotune") == (
        "torch-cuda",
        {"precision": "bf16", "compile": "max-autotune-no-cudagraphs"},
    )
    assert _graph_spec("triton-fused-fp16") == ("triton-fused", {"precision": "fp16", "cudnn": False})
    assert _graph_spec("triton-fused-bf16-cudnn") == ("triton-fused", {"precision": "bf16", "cudnn": True})
    for plain in ("triton-fused", "torch-cuda", "torch-cpu", "onnxruntime-cpu"):
        assert _graph_spec(plain) is None


def test_options_are_typed():
    assert _options(["precision=bf16", "cudnn=false", "tune=True", "max-batch=8"]) == {
        "precision": "bf16",
        "cudnn": False,
        "tune": True,
        "max_batch": 8,
    }
    with pytest.raises(BenchError, match="not key=value"):
        _options(["precision"])


def test_a_backend_with_options_through_infer(tiny_bundle):
    runner = make_runner(tiny_bundle, "torch-cpu:threads=1", max_batch=4)
    try:
        assert runner.backend.threads == 1 and runner.timer == "wall" and runner.name == "torch-cpu"
        samples = measure(runner, 2, warmup=1, iters=3, min_iters=3, max_seconds=1.0)
        assert len(samples) == 3 and all(ms > 0 for ms in samples) and runner.device_ms == []
    finally:
        runner.close()
    assert not runner.backend.is_active


def test_the_graph_timer_refuses_a_backend_without_graphs(tiny_bundle):
    from bench.runners import Runner
    from engines.registry import open_backend

    backend = open_backend(tiny_bundle, "torch-cpu")
    with pytest.raises(BenchError, match="backend torch-cpu has no CUDA graphs to time"):
        Runner(backend, "graph")
    assert not backend.is_active
