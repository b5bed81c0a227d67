"""engines/triton_resnet.py: the fused Triton kernels compute what the torch model computes.

On a CUDA GPU the kernels run for real (fp16/bf16, tuned tiles, under a CUDA graph). Without one,
the same kernels run through Triton's interpreter (numpy on the CPU, fp32) in a child process,
because the interpreter is chosen when the kernels are defined (TRITON_INTERPRET=1 at import).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from engines.bundle import Bundle
from tests.conftest import make_random_bundle
from tests.engines.conftest import random_mel

DEFAULT_BUNDLE = "rt_tagger/default_model"

INTERPRETED = textwrap.dedent(
    """
    import json, sys
    import numpy as np, torch
    from engines.bundle import Bundle
    from engines.triton_resnet import CUDNN, FusedResNet, Tile
    bundle = Bundle.load(sys.argv[1])
    model = bundle.build_model().eval()
    rng = np.random.default_rng(0)
    spec = bundle.frontend
    x = torch.from_numpy(rng.normal(-40, 20, (1, spec.n_mels, spec.window_frames)).astype(np.float32))
    out = {}
    with torch.no_grad():
        ref_logits, ref_emb = model(x)
        fused = FusedResNet(model, "cpu", torch.float32)
        for name, tile in (("one_tap_per_step", None), ("taps_across_steps", Tile(64, 32, 512, 4, 2))):
            for blk in fused.blocks:
                blk.tiles = (tile, tile)
            logits, emb = fused(x)
            out[name] = {"logits": float((logits - ref_logits).abs().max()),
                         "embedding": float((emb - ref_emb).abs().max())}
        # cuDNN candidates (F.conv2d stands in on the CPU): weights and layouts, alone and mixed
        hybrid = FusedResNet(model, "cpu", torch.float32, cudnn_candidates=True)
        for name, tiles in (("cudnn_everywhere", (CUDNN, CUDNN)), ("cudnn_mixed", (CUDNN, None))):
            for blk in hybrid.blocks:
                blk.tiles = tiles
            logits, emb = hybrid(x)
            out[name] = {"logits": float((logits - ref_logits).abs().max()),
                         "embedding": float((emb - ref_emb).abs().max())}
    print(json.dumps(out))
    """
)


def test_kernels_match_torch_in_the_interpreter(tmp_path):
    """Both K-loop layouts of the convolution kernel, the stem, the shortcut-as-K and the cuDNN
    candidates' weight layouts (mixed with the Triton kernels), in fp32."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", INTERPRETED, DEFAULT_BUNDLE],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    diffs = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(diffs) == {"one_tap_per_step", "taps_across_steps", "cudnn_everywhere", "cudnn_mixed"}
    for layout, d in diffs.items():
        assert d["logits"] < 1e-4, (layout, d)
        assert d["embedding"] < 1e-4, (layout, d)


def test_narrow_models_are_refused_with_a_reason(tmp_path):
    from engines.triton_resnet import FusedResNet

    bundle = make_random_bundle(tmp_path / "w8", width=8)
    with pytest.raises(ValueError, match="multiple of 16"):
        FusedResNet(bundle.build_model(), "cpu", torch.float32)


def test_tile_fitting():
    from engines.triton_resnet import TILE_CANDIDATES, Tile, _fits, default_tile

    assert _fits(Tile(128, 32, 32, 4, 4), 32, 32)
    assert not _fits(Tile(128, 64, 32, 4, 4), 32, 32)  # BLOCK_N wider than C_OUT
    assert _fits(Tile(128, 32, 64, 4, 4), 32, 32)  # K steps spanning two taps
    assert not _fits(Tile(128, 32, 64, 4, 4), 96, 32)  # neither divides nor spans
    for c_in, c_out in ((16, 16), (32, 32), (32, 64), (64, 128), (128, 256), (256, 256)):
        assert _fits(default_tile(c_in, c_out), c_in, c_out)
    for c_in, c_out in ((32, 32), (32, 64), (64, 128), (128, 256), (256, 256)):  # the default model's
        assert sum(_fits(t, c_in, c_out) for t in TILE_CANDIDATES) >= 3


needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="no CUDA GPU here: the fused kernels run only through the interpreter test",
)


@needs_cuda
@pytest.mark.parametrize("cudnn_candidates", [False, True])
@pytest.mark.parametrize("precision, tol", [("bf16", 3e-2), ("fp16", 1e-2)])
def test_fused_kernels_on_the_gpu(precision, tol, cudnn_candidates, tmp_path):
    from engines.triton_resnet import FusedResNet

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    for bundle in (Bundle.load(DEFAULT_BUNDLE), make_random_bundle(tmp_path / "w16", width=16, seed=5)):
        model = bundle.build_model().eval()
        x = torch.from_numpy(random_mel(bundle, 37, seed=2))  # a batch that fills no tile exactly
        with torch.inference_mode():
            ref = torch.sigmoid(model(x)[0])
            fused = FusedResNet(model, "cuda", dtype, cudnn_candidates=cudnn_candidates)
            xd = x.cuda().to(dtype)
            untuned = torch.sigmoid(fused(xd)[0]).cpu()
            fused.tune(xd, iters=2)
            graph = torch.cuda.CUDAGraph()
            fused(xd)
            torch.cuda.synchronize()
            with torch.cuda.graph(graph):
                out = fused(xd)
            graph.replay()
            torch.cuda.synchronize()
        assert (untuned - ref).abs().max() < tol
        assert (torch.sigmoid(out[0]).cpu() - ref).abs().max() < tol
