"""engines/triton/backend.py: the fused kernels behind the backend protocol, tuned and cached per GPU.

The conformance check runs on the CPU through Triton's interpreter (fp32, in a child process,
because the interpreter is chosen when the kernels are defined) and, on a CUDA GPU, for real in
bf16 and fp16 (tests/engines/test_backends.py). The tuning cache and ``auto``'s choice need a GPU
to tune on; their GPU-free parts (keys, buckets, refusals) run everywhere.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from engines.base import BackendError
from engines.registry import open_backend
from tests.conftest import make_random_bundle
from tests.engines.conformance import check_backend
from tests.engines.conftest import random_mel

INTERPRETED = textwrap.dedent(
    """
    import sys
    from engines.bundle import Bundle
    from engines.registry import open_backend
    from tests.engines.conformance import check_backend
    bundle = Bundle.load(sys.argv[1])
    backend = open_backend(bundle, "triton-fused", precision="fp32", max_batch=3)
    assert backend.device.startswith("cpu") and backend.describe()["tuning"] is None
    with backend:
        check_backend(backend, batches=(1,))  # and max_batch: 3
    print("conformant")
    """
)


def test_conformance_in_the_interpreter(wide_bundle):
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", INTERPRETED, str(wide_bundle.path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "conformant"


def test_buckets_cover_every_batch():
    from engines.triton.keys import bucket_of, buckets

    assert buckets(1) == [1] and buckets(64) == [1, 2, 4, 8, 16, 32, 64] and buckets(48)[-2:] == [32, 48]
    for max_batch in (1, 5, 48, 64):
        tuned = buckets(max_batch)
        for b in range(1, max_batch + 1):
            bucket = bucket_of(b, tuned)
            assert b <= bucket <= max_batch and (bucket == 1 or bucket // 2 < b or bucket == max_batch)


def test_tuning_key_names_everything_it_depends_on(wide_bundle):
    from engines.triton.keys import tuning_artifact

    base = dict(
        gpu="NVIDIA H200", capability=(9, 0), versions={"triton": "3.6.0", "torch": "2.11.0"},
        precision="bf16", catalogue="full", cudnn=False, max_batch=64,
    )  # fmt: skip
    a = tuning_artifact(wide_bundle, **base)
    assert a.key["weights_sha256"] == wide_bundle.manifest.weights_sha256 and len(a.key["kernels"]) == 16
    assert a.path.parent == wide_bundle.compiled_dir and "sm90-nvidia-h200" in a.path.name
    for change in (
        {"gpu": "NVIDIA H100 80GB HBM3"},
        {"versions": {"triton": "3.5.1", "torch": "2.11.0"}},
        {"precision": "fp16"},
        {"catalogue": "quick"},
        {"cudnn": True},
        {"max_batch": 16},
    ):
        other = tuning_artifact(wide_bundle, **{**base, **change})
        assert other.key != a.key, change


def test_a_tuning_with_another_key_is_never_used(wide_bundle, tmp_path, monkeypatch):
    """What auto relies on: a cached tuning from another Triton version reads as a key mismatch."""
    from engines.cache import load_or_build
    from engines.triton.keys import tuning_artifact

    monkeypatch.setenv("RT_TAGGER_COMPILED_DIR", str(tmp_path))
    args = dict(
        gpu="NVIDIA H200", capability=(9, 0), precision="bf16", catalogue="quick", cudnn=False, max_batch=4
    )
    old = tuning_artifact(wide_bundle, versions={"triton": "3.5.1", "torch": "2.11.0"}, **args)
    load_or_build(old, lambda tmp: tmp.write_text(json.dumps({"plans": {}})) and None)
    assert old.problem() is None
    new = tuning_artifact(wide_bundle, versions={"triton": "3.6.0", "torch": "2.11.0"}, **args)
    assert new.path == old.path  # same file name: the key decides
    assert "key mismatch on triton ('3.5.1' != '3.6.0')" in new.problem()


def test_narrow_bundles_are_refused_with_a_reason(tmp_path):
    bundle = make_random_bundle(tmp_path / "w8", width=8)
    with pytest.raises(BackendError, match="width 8 is not a multiple of 16"):
        open_backend(bundle, "triton-fused")


def test_bad_options_are_user_errors(wide_bundle):
    with pytest.raises(BackendError, match="precision must be one of bf16, fp16"):
        open_backend(wide_bundle, "triton-fused", precision="int8")
    with pytest.raises(BackendError, match="catalogue must be one of full, quick"):
        open_backend(wide_bundle, "triton-fused", catalogue="huge")


no_cuda = pytest.mark.skipif(
    torch.cuda.is_available(), reason="a CUDA GPU is present; this checks the no-GPU path"
)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here: tuning needs one")


@no_cuda
def test_without_a_gpu_forcing_says_why_and_tune_exits_1(wide_bundle):
    with pytest.raises(BackendError, match="^backend triton-fused unavailable: no CUDA GPU found$"):
        open_backend(wide_bundle, "triton-fused")
    proc = subprocess.run(
        [sys.executable, "-m", "engines.triton", "tune", str(wide_bundle.path)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "TRITON_INTERPRET": "0"},
    )  # fmt: skip
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == ["error: backend triton-fused unavailable: no CUDA GPU found"]


def test_tune_says_when_auto_will_not_use_the_tuning():
    from engines.triton.__main__ import _parser, auto_note

    def note(*opts):
        return auto_note(_parser().parse_args(["tune", "bundle", *opts]))

    assert note() is None and note("--catalogue", "quick") is None  # auto takes either catalogue
    for opts in (["--max-batch", "1"], ["--precision", "fp16"], ["--no-cudnn"]):
        assert note(*opts).startswith(
            "note: stream/listen with --backend auto look for the tuning of --max-batch 64"
        )


@needs_cuda
def test_auto_picks_it_only_where_tuned(wide_bundle, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("RT_TAGGER_COMPILED_DIR", str(tmp_path))
    opts = {"max_batch": 8, "catalogue": "quick", "cudnn": False}
    with open_backend(wide_bundle, "auto", **opts) as backend:
        assert backend.name != "triton-fused"
        assert "triton-fused: backend triton-fused not tuned for this GPU" in backend.selection
    with caplog.at_level(logging.WARNING, logger="engines.triton.backend"):
        tuned = open_backend(wide_bundle, "triton-fused", **opts)  # forced: tunes and caches
    with tuned:
        assert "tuning triton-fused" in caplog.text and tuned.tuning_path.is_file()
        assert sorted(tuned.plans) == [1, 2, 4, 8] and tuned.tuning_info["tune_seconds"] > 0
        expected = tuned.infer(random_mel(wide_bundle, 5)).probabilities
    with open_backend(wide_bundle, "auto", **opts) as backend:
        assert backend.name == "triton-fused" and backend.selection == "auto: triton-fused (first choice)"
        assert backend.plans == tuned.plans  # loaded, not tuned again
        np.testing.assert_allclose(
            backend.infer(random_mel(wide_bundle, 5)).probabilities, expected, atol=1e-6
        )
    # the same tuning file under another Triton version's key: auto refuses it, forcing re-tunes
    key_file = tuned.tuning_path.with_name(tuned.tuning_path.name + ".key.json")
    stored = json.loads(key_file.read_text())
    stored["key"]["triton"] = "0.0.0"
    key_file.write_text(json.dumps(stored))
    with open_backend(wide_bundle, "auto", **opts) as backend:
        assert backend.name != "triton-fused" and "key mismatch on triton ('0.0.0'" in backend.selection
    with open_backend(wide_bundle, "triton-fused", **opts) as backend:
        assert json.loads(key_file.read_text())["key"]["triton"] != "0.0.0"


@needs_cuda
def test_auto_falls_back_to_the_quick_catalogues_tuning(wide_bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("RT_TAGGER_COMPILED_DIR", str(tmp_path))
    with open_backend(wide_bundle, "triton-fused", max_batch=8, catalogue="quick", cudnn=False) as tuned:
        expected = tuned.infer(random_mel(wide_bundle, 3)).probabilities
    with open_backend(wide_bundle, "auto", max_batch=8, cudnn=False) as backend:  # catalogue: full
        assert backend.name == "triton-fused" and backend.catalogue == "quick"
        assert backend.plans == tuned.plans
        np.testing.assert_allclose(
            backend.infer(random_mel(wide_bundle, 3)).probabilities, expected, atol=1e-6
        )


@needs_cuda
def test_conformance_on_the_gpu_in_fp16_without_graphs(wide_bundle, tmp_path, monkeypatch):
    """bf16 under CUDA graphs is in test_backends.py; here fp16 and plain launches."""
    monkeypatch.setenv("RT_TAGGER_COMPILED_DIR", str(tmp_path))
    backend = open_backend(
        wide_bundle, "triton-fused", precision="fp16", max_batch=16, catalogue="quick", cuda_graphs=False
    )
    with backend:
        check_backend(backend)
        assert 0 < backend.last_device_time <= backend.last_inference_time
