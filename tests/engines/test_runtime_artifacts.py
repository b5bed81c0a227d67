"""engines.runtime_artifacts: the CPU runtime's artifacts are built by a child process, and a tagging process
on the ONNX Runtime path never imports torch (which costs ~600 MB of resident memory): the ONNX graph
is built beforehand and the front end is numpy and numba."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from engines.bundle import Bundle, sha256_file
from engines.cache import CacheError
from engines.onnx_export import onnx_artifact
from engines.registry import gpu_present
from engines.runtime_artifacts import ensure_runtime_artifacts
from tests.conftest import ROOT, make_random_bundle


@pytest.fixture
def fresh_bundle(tmp_path) -> Bundle:
    return make_random_bundle(tmp_path / "b", seed=5)


def test_builds_onnx_then_stale_key_rebuilt(fresh_bundle):
    art = onnx_artifact(fresh_bundle, "fp32")
    assert art.problem() == "not built yet"
    ensure_runtime_artifacts(fresh_bundle, "fp32")
    assert art.problem() is None
    stored = json.loads(art.key_path.read_text())
    stored["key"]["opset"] += 1  # as if built for another opset
    art.key_path.write_text(json.dumps(stored))
    assert art.problem().startswith("key mismatch")
    ensure_runtime_artifacts(fresh_bundle, "fp32")
    assert art.problem() is None


def test_unwritable_gives_one_line(fresh_bundle, tmp_path, monkeypatch):
    if os.geteuid() == 0:
        # root writes through file modes; point the cache at a path under a regular file instead
        blocker = tmp_path / "not-a-dir"
        blocker.write_text("")
        monkeypatch.setenv("RT_TAGGER_COMPILED_DIR", str(blocker))
    else:
        fresh_bundle.path.chmod(0o555)
    with pytest.raises(CacheError) as e:
        ensure_runtime_artifacts(fresh_bundle, "fp32")
    assert "\n" not in str(e.value) and "not writable" in str(e.value)


_TAG_WITHOUT_TORCH = """
import sys
from rt_tagger.cli import main
rc = main(["tag", sys.argv[1], "--bundle", sys.argv[2]])  # auto: onnxruntime-cpu without a GPU
loaded = sorted(m for m in ("torch", "torchaudio") if m in sys.modules)
print("TORCH_MODULES", ",".join(loaded) or "none")
sys.exit(rc)
"""


@pytest.mark.skipif(gpu_present(), reason="with a GPU present, auto selection looks at torch.cuda")
def test_onnxruntime_tagging_process_never_imports_torch(fresh_bundle, tmp_path):
    demo = ROOT / "rt_tagger" / "demo" / "demo.ogg"
    p = subprocess.run(
        [sys.executable, "-c", _TAG_WITHOUT_TORCH, str(demo), str(fresh_bundle.path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    assert "TORCH_MODULES none" in p.stdout, p.stdout
    # the first run built what it needed (in a child, which did import torch)
    assert onnx_artifact(fresh_bundle, "fp32").problem() is None


def _forge(art) -> None:
    """Replace an artifact and rewrite its key file to match, as an attacker with write access would."""
    data = bytearray(art.path.read_bytes())
    data[-64] ^= 0x01  # a weight of the graph: scores change, the file still parses
    art.path.write_bytes(bytes(data))
    stored = json.loads(art.key_path.read_text())
    stored["artifact"].update(sha256=sha256_file(art.path), bytes=art.path.stat().st_size)
    art.key_path.write_text(json.dumps(stored))


def test_keys_carry_bundle_identity(fresh_bundle):
    art = onnx_artifact(fresh_bundle, "fp32")
    assert art.key["weights_sha256"] == fresh_bundle.manifest.weights_sha256
    assert art.key["manifest_sha256"] == fresh_bundle.manifest_sha256


def test_forged_artifact_with_forged_key_is_rebuilt(fresh_bundle):
    ensure_runtime_artifacts(fresh_bundle, "fp32")
    art = onnx_artifact(fresh_bundle, "fp32")
    genuine = sha256_file(art.path)
    _forge(art)
    assert "not signed by this user's artifact key" in art.problem()
    ensure_runtime_artifacts(fresh_bundle, "fp32")  # rebuilt, with a warning naming the reason
    assert art.problem() is None and sha256_file(art.path) == genuine


def test_forged_artifact_refused_where_read_only(fresh_bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("RT_TAGGER_COMPILED_DIR", str(tmp_path / "cache"))
    ensure_runtime_artifacts(fresh_bundle, "fp32")
    art = onnx_artifact(fresh_bundle, "fp32")
    _forge(art)
    art.path.parent.chmod(0o555)
    if os.access(art.path.parent, os.W_OK):  # root writes through file modes
        monkeypatch.setattr("engines.cache._writable", lambda directory: False)
    try:
        with pytest.raises(CacheError) as e:
            ensure_runtime_artifacts(fresh_bundle, "fp32")
    finally:
        art.path.parent.chmod(0o755)
    assert "not signed" in str(e.value) and "not writable" in str(e.value) and "\n" not in str(e.value)


def test_manifest_change_invalidates_artifacts(fresh_bundle):
    from engines.bundle import seal_bundle

    ensure_runtime_artifacts(fresh_bundle, "fp32")
    m = json.loads((fresh_bundle.path / "manifest.json").read_text())
    m["thresholds"][0] = 0.3  # recalibrated: a new manifest, same weights
    (fresh_bundle.path / "manifest.json").write_text(json.dumps(m))
    resealed = seal_bundle(fresh_bundle.path)
    assert onnx_artifact(resealed, "fp32").problem().startswith("key mismatch on manifest_sha256")


def test_shipped_artifacts_trusted_by_manifest_and_checked(fresh_bundle, tmp_path, monkeypatch):
    from engines.seal import ship_runtime_artifacts

    shipped = ship_runtime_artifacts(fresh_bundle)
    assert set(shipped.manifest.artifacts) == {"tagger.fp32.opset18.onnx"}
    # another user (another signing key), reading the bundle through a cache folder: no rebuild
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "other-user"))
    monkeypatch.setenv("RT_TAGGER_COMPILED_DIR", str(tmp_path / "cache"))
    art = onnx_artifact(shipped, "fp32")
    assert art.path.parent == shipped.compiled_dir and art.problem() is None
    assert not art.key_path.exists()
    ensure_runtime_artifacts(shipped, "fp32")
    assert not (tmp_path / "cache").exists()  # nothing built
    data = bytearray(art.path.read_bytes())
    data[-8] ^= 0xFF
    art.path.write_bytes(bytes(data))
    assert "differs from the bundle's manifest" in art.problem()


_TWO_STARTS = """
import logging, sys
from engines.bundle import Bundle
from engines.errors import UserError
from engines.runtime_artifacts import ensure_runtime_artifacts
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
for start in (1, 2):
    try:
        ensure_runtime_artifacts(Bundle.load(sys.argv[1]), "fp32")
    except UserError as e:
        print(f"start {start}: {e}")
"""


def test_failed_export_not_retried_silently(fresh_bundle, tmp_path):
    from engines.onnx_export import export_onnx
    from engines.runtime_artifacts import FAILED_FILE

    shadow = tmp_path / "no-onnxscript"  # as in an install without onnxscript, child processes included
    (shadow / "onnxscript").mkdir(parents=True)
    (shadow / "onnxscript" / "__init__.py").write_text(
        "raise ImportError('onnxscript is not installed here')\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shadow), str(ROOT)])}
    p = subprocess.run(
        [sys.executable, "-c", _TWO_STARTS, str(fresh_bundle.path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    first, second = p.stdout.strip().splitlines()
    assert first.startswith("start 1: ") and "onnxscript" in first, p.stdout
    assert second.startswith("start 2: ") and "failed before" in second, p.stdout
    assert "not retrying" in p.stderr and "rt-tagger compile" in p.stderr, p.stderr  # …and it says so
    assert (fresh_bundle.path / "compiled" / FAILED_FILE).is_file()
    export_onnx(fresh_bundle, "fp32")  # what `rt-tagger compile --onnx-only` does
    ensure_runtime_artifacts(fresh_bundle, "fp32")


def test_default_model_ships_its_runtime_artifacts(tmp_path, monkeypatch):
    from rt_tagger.bundled_model import load_bundle

    monkeypatch.setenv(
        "XDG_CONFIG_HOME", str(tmp_path / "fresh-user")
    )  # no signing key: trust is the manifest's
    bundle = load_bundle(None)
    art = onnx_artifact(bundle, "fp32")
    assert art.sealed is not None and art.problem() is None, art.problem()
    ensure_runtime_artifacts(bundle, "fp32")  # nothing to build
    assert not (tmp_path / "fresh-user").exists()
