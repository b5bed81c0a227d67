"""ONNX export: dynamic batch, opset and I/O recorded, parity with torch, keyed cache, bad files."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from engines.cache import CacheError
from engines.onnx_export import DEFAULT_OPSET, OnnxError, check_onnx_file, export_onnx, onnx_artifact
from engines.onnxrt import OnnxRuntimeCPUBackend
from tests.engines.conformance import reference
from tests.engines.conftest import random_mel


def test_graph_has_dynamic_batch_and_opset(exported_bundle):
    path = export_onnx(exported_bundle, "fp32")
    model = onnx.load(str(path))
    assert {o.domain: o.version for o in model.opset_import}[""] == DEFAULT_OPSET
    (inp,) = model.graph.input
    dims = inp.type.tensor_type.shape.dim
    assert inp.name == "mel" and dims[0].dim_param and not dims[0].dim_value
    spec = exported_bundle.frontend
    assert [d.dim_value for d in dims[1:]] == [spec.n_mels, spec.window_frames]
    assert [o.name for o in model.graph.output] == ["probabilities", "embeddings"]
    for t in (*model.graph.input, *model.graph.output):
        assert t.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert "Sigmoid" in {n.op_type for n in model.graph.node}


@pytest.mark.parametrize("batch", [1, 3, 16])
def test_fp32_parity_with_torch(exported_bundle, batch):
    mel = random_mel(exported_bundle, batch, seed=10 + batch)
    with OnnxRuntimeCPUBackend(exported_bundle, max_batch=16) as ort_backend:
        out = ort_backend.infer(mel)
    ref = reference(exported_bundle, mel)
    assert np.abs(out.probabilities - ref.probabilities).max() <= 1e-4
    assert np.abs(out.embeddings - ref.embeddings).max() <= 1e-3


def test_fp16_graph_computes_in_half_with_float_io(exported_bundle):
    path = export_onnx(exported_bundle, "fp16")
    model = onnx.load(str(path))
    dtypes = {i.data_type for i in model.graph.initializer if len(i.dims) > 1}  # conv/linear weights
    assert dtypes == {onnx.TensorProto.FLOAT16}
    mel = random_mel(exported_bundle, 3)
    with OnnxRuntimeCPUBackend(exported_bundle, precision="fp16") as b:
        out = b.infer(mel)
    assert np.abs(out.probabilities - reference(exported_bundle, mel).probabilities).max() <= 2e-2


def test_key_file_records_what_the_file_depends_on(exported_bundle):
    art = onnx_artifact(exported_bundle, "fp32")
    stored = json.loads(art.key_path.read_text())
    assert stored["key"]["weights_sha256"] == exported_bundle.manifest.weights_sha256
    assert stored["key"]["opset"] == DEFAULT_OPSET and stored["key"]["precision"] == "fp32"
    assert stored["artifact"]["bytes"] == art.path.stat().st_size
    assert art.problem() is None


def test_cached_file_is_reused(bundle_copy):
    art = onnx_artifact(bundle_copy, "fp32")
    before = art.path.stat().st_mtime_ns
    assert export_onnx(bundle_copy, "fp32") == art.path
    assert art.path.stat().st_mtime_ns == before


def test_key_mismatch_rebuilds(bundle_copy, caplog):
    art = onnx_artifact(bundle_copy, "fp32")
    stored = json.loads(art.key_path.read_text())
    stored["key"]["weights_sha256"] = "0" * 64  # as if the weights had been retrained
    art.key_path.write_text(json.dumps(stored))
    assert art.problem().startswith("key mismatch on weights_sha256")
    export_onnx(bundle_copy, "fp32")
    assert "rebuilding ONNX model" in caplog.text and art.problem() is None


def test_truncated_file_rebuilds(bundle_copy):
    art = onnx_artifact(bundle_copy, "fp32")
    data = art.path.read_bytes()
    art.path.write_bytes(data[: len(data) // 2])
    assert "truncated" in art.problem()
    export_onnx(bundle_copy, "fp32")
    assert art.problem() is None and art.path.read_bytes() == data  # export is deterministic


def test_stale_file_in_unwritable_dir_is_a_clear_error(bundle_copy, tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the compiled directory should be")
    monkeypatch.setenv("RT_TAGGER_COMPILED_DIR", str(blocker))
    with pytest.raises(CacheError, match="not writable"):
        export_onnx(bundle_copy, "fp32")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_onnx_file_is_a_clear_error(exported_bundle, tmp_path, damage):
    data = export_onnx(exported_bundle, "fp32").read_bytes()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes({"truncate": data[: len(data) // 3], "garbage": b"\x08\xff" * 999, "empty": b""}[damage])
    with pytest.raises(OnnxError, match="ONNX") as err:
        check_onnx_file(bad)
    assert "\n" not in str(err.value)
    with pytest.raises(OnnxError):
        OnnxRuntimeCPUBackend(exported_bundle, onnx_path=bad).activate()
