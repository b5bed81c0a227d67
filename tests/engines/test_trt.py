"""TensorRT: real builds with whichever TensorRT module is installed (TensorRT-RTX in CI, on CPU),
the plan's key and I/O, stale/corrupt plans, and the runtime where a supported GPU exists."""

from __future__ import annotations

import json

import pytest

from engines.base import BackendError
from engines.cache import CacheError
from engines.errors import UserError
from engines.registry import gpu_present
from tests.engines.conformance import check_backend, open_or_skip


@pytest.fixture(scope="module")
def api():
    from engines.trt.api import load_trt

    try:
        return load_trt()
    except BackendError as e:
        pytest.skip(f"no TensorRT module here: {e}")


def _build_target(api) -> str:
    """This GPU if the flavour runs on it, else (RTX) a no-GPU build for its supported ccs."""
    from engines.trt.keys import cuda_gpu

    gpu = cuda_gpu()
    if gpu is not None and api.runs_on(gpu[1]) is None:
        return "current"
    if not api.is_rtx:
        pytest.skip(f"full TensorRT needs a supported GPU to build (found: {gpu})")
    return "sm80,sm89,sm120"


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_build_records_key_and_io(bundle_copy, api, precision):
    from engines.trt.builder import compile_bundle

    art = compile_bundle(bundle_copy, precision, 8, api=api, target=_build_target(api))
    assert art.path.is_file() and art.path.parent == bundle_copy.path / "compiled" and art.problem() is None
    stored = json.loads(art.key_path.read_text())
    key, info = stored["key"], stored["info"]
    assert key["weights_sha256"] == bundle_copy.manifest.weights_sha256
    assert (key["flavour"], key["tensorrt_version"]) == (api.flavour, api.version)
    assert (key["precision"], key["batch_min"], key["batch_max"]) == (precision, 1, 8)
    assert "gpu" in key or key["build_target"] == ["8.0", "8.9", "12.0"]
    spec, m = bundle_copy.frontend, bundle_copy.manifest.model
    io = {t["name"]: (t["mode"], t["shape"], t["dtype"]) for t in info["io"]}
    assert io == {
        "mel": ("input", [-1, spec.n_mels, spec.window_frames], "FLOAT"),
        "probabilities": ("output", [-1, m.n_tags], "FLOAT"),
        "embeddings": ("output", [-1, m.embed_dim], "FLOAT"),
    }
    assert info["profile"]["min"][0] == 1 and info["profile"]["max"][0] == 8
    assert (
        info["source_onnx"]
        == f"tagger.{'fp32' if precision == 'fp32' or not api.is_rtx else 'fp16'}.opset18.onnx"
    )


def test_plan_header_is_valid_and_garbage_is_refused(bundle_copy, api, tmp_path):
    from engines.trt.builder import compile_bundle
    from engines.trt.runtime import PlanError, check_plan_header

    art = compile_bundle(bundle_copy, "fp16", 4, api=api, target=_build_target(api))
    check_plan_header(api, art.path.read_bytes(), art.path)  # a real plan passes, GPU or not
    for bad in (b"", b"\x00" * 16, b"not a TensorRT plan" * 50):
        with pytest.raises(PlanError, match="TensorRT plan"):
            check_plan_header(api, bad, tmp_path / "bad.plan")


def test_deserialise_corrupt_plan_is_a_clear_error(bundle_copy, api, tmp_path):
    from engines.trt.runtime import PlanError, deserialize_plan

    bad = tmp_path / "corrupt.plan"
    bad.write_bytes(b"not a TensorRT plan" * 50)
    with pytest.raises(PlanError, match="corrupt"):
        deserialize_plan(api, bad)
    with pytest.raises(PlanError, match="cannot read"):
        deserialize_plan(api, tmp_path / "missing.plan")


def test_cached_plan_reused_and_key_mismatch_rebuilds(bundle_copy, api, caplog):
    from engines.trt.builder import compile_bundle

    target = _build_target(api)
    art = compile_bundle(bundle_copy, "fp16", 4, api=api, target=target)
    mtime = art.path.stat().st_mtime_ns
    assert compile_bundle(bundle_copy, "fp16", 4, api=api, target=target).path.stat().st_mtime_ns == mtime
    stored = json.loads(art.key_path.read_text())
    stored["key"]["tensorrt_version"] = "0.0.0"  # as if built by another TensorRT
    art.key_path.write_text(json.dumps(stored))
    compile_bundle(bundle_copy, "fp16", 4, api=api, target=target)
    assert "key mismatch on tensorrt_version" in caplog.text and art.problem() is None


def test_truncated_plan_rebuilds_or_errors_when_read_only(bundle_copy, api, tmp_path, monkeypatch):
    from engines.trt.builder import compile_bundle

    target = _build_target(api)
    art = compile_bundle(bundle_copy, "fp16", 4, api=api, target=target)
    data = art.path.read_bytes()
    art.path.write_bytes(data[: len(data) // 2])
    assert "truncated" in art.problem()
    assert compile_bundle(bundle_copy, "fp16", 4, api=api, target=target).problem() is None
    # The same damage where nothing can be written: a clear error, never a silent load.
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    monkeypatch.setenv("RT_TAGGER_COMPILED_DIR", str(blocker))
    with pytest.raises(CacheError, match="TensorRT plan .* cannot be used \\(not built yet\\)"):
        compile_bundle(bundle_copy, "fp16", 4, api=api, target=target)


def test_bad_targets_are_user_errors(bundle_copy, api):
    from engines.trt.builder import compile_bundle

    if not api.is_rtx:
        pytest.skip("explicit cc targets are a TensorRT-RTX feature")
    with pytest.raises(UserError, match="does not run on compute capability 9.0"):
        compile_bundle(bundle_copy, "fp16", 4, api=api, target="sm90")
    with pytest.raises(UserError, match="bad compute capability"):
        compile_bundle(bundle_copy, "fp16", 4, api=api, target="volta")
    with pytest.raises(UserError, match="precision"):
        compile_bundle(bundle_copy, "int8", 4, api=api, target="sm89")


def test_compile_cli(bundle_copy, api, capsys):
    from engines.cli import compile_main

    target = _build_target(api)
    assert (
        compile_main([str(bundle_copy.path), "--precision", "fp16", "--max-batch", "4", "--target", target])
        == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("plan: ") and "mel" in out and "probabilities" in out and "batch 1..4" in out
    assert compile_main([str(bundle_copy.path), "--max-batch", "4", "--target", target, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["key"]["batch_max"] == 4


def test_compile_cli_errors_are_one_line(tmp_path):
    from engines.cli import compile_main
    from rt_tagger.cli import run_guarded

    assert run_guarded(compile_main, [str(tmp_path / "nope")], debug=False) == UserError.exit_code


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_runtime_conformance(exported_bundle, api, precision):
    if not gpu_present():
        pytest.skip("TensorRT runtime needs a CUDA GPU; none here (the build was tested above)")
    backend = open_or_skip(exported_bundle, "tensorrt", precision=precision, max_batch=16)
    try:
        check_backend(backend)
        assert backend.last_device_time is not None and backend.last_device_time > 0
    finally:
        backend.deactivate()
