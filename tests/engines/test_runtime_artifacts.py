"""engines.runtime_artifacts: the CPU runtime's artifacts are built by a child process, and a tagging process
on the ONNX Runtime path never imports torch (which costs ~600 MB of resident memory): the ONNX graph
is built beforehand and the front end is numpy and numba."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from engines.bundle import Bundle
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
