"""engines/triton/: the fused Triton kernels compute what the torch model computes.

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
    from engines.triton import CUDNN, FusedResNet, Tile, TilePlan
    bundle = Bundle.load(sys.argv[1])
    model = bundle.build_model().eval()
    rng = np.random.default_rng(0)
    spec = bundle.frontend
    x = torch.from_numpy(rng.normal(-40, 20, (1, spec.n_mels, spec.window_frames)).astype(np.float32))
    out = {}
    with torch.no_grad():
        ref_logits, ref_emb = model(x)
        fused = FusedResNet(model, "cpu", torch.float32)
        layouts = (
            ("one_tap_per_step", None, (128, 4, "taps")),
            ("taps_across_steps", Tile(64, 32, 512, 4, 2), (64, 4, "rows")),
            ("packed_rows", Tile(64, 64, 32, 4, 2, pack=2), (32, 2, "rows")),
        )
        for name, tile, stem in layouts:  # each stem kernel runs too
            logits, emb = fused(x, TilePlan(stem, [(tile, tile)] * len(fused.blocks)))
            out[name] = {"logits": float((logits - ref_logits).abs().max()),
                         "embedding": float((emb - ref_emb).abs().max())}
        # cuDNN candidates (F.conv2d stands in on the CPU): weights and layouts, alone and mixed
        hybrid = FusedResNet(model, "cpu", torch.float32, cudnn_candidates=True)
        for name, tiles in (("cudnn_everywhere", (CUDNN, CUDNN)), ("cudnn_mixed", (CUDNN, None))):
            logits, emb = hybrid(x, TilePlan(convs=[tiles] * len(hybrid.blocks)))
            out[name] = {"logits": float((logits - ref_logits).abs().max()),
                         "embedding": float((emb - ref_emb).abs().max())}
    print(json.dumps(out))
    """
)


def test_kernels_match_torch_in_the_interpreter(tmp_path):
    """Both K-loop layouts of the convolution kernel, both stem kernels, the shortcut-as-K and the cuDNN
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
    assert set(diffs) == {
        "one_tap_per_step",
        "taps_across_steps",
        "packed_rows",
        "cudnn_everywhere",
        "cudnn_mixed",
    }
    for layout, d in diffs.items():
        assert d["logits"] < 1e-4, (layout, d)
        assert d["embedding"] < 1e-4, (layout, d)


def test_narrow_models_are_refused_with_a_reason(tmp_path):
    from engines.triton import FusedResNet

    bundle = make_random_bundle(tmp_path / "w8", width=8)
    with pytest.raises(ValueError, match="multiple of 16"):
        FusedResNet(bundle.build_model(), "cpu", torch.float32)


def test_tile_fitting():
    from engines.triton.tiles import QUICK_TILE_CANDIDATES, TILE_CANDIDATES, Tile, default_tile
    from engines.triton.tiles import fits as _fits

    assert _fits(Tile(128, 32, 32, 4, 4), 32, 32, 48)
    assert not _fits(Tile(128, 64, 32, 4, 4), 32, 32, 48)  # BLOCK_N wider than C_OUT
    assert _fits(Tile(128, 32, 64, 4, 4), 32, 32, 48)  # K steps spanning two taps
    assert not _fits(Tile(128, 32, 64, 4, 4), 96, 32, 48)  # neither divides nor spans
    assert _fits(Tile(128, 64, 32, 4, 4, pack=2), 32, 32, 48)  # two pixels' 32 channels per row
    assert not _fits(Tile(128, 64, 32, 4, 4, pack=2), 32, 32, 3)  # a row would straddle image rows
    assert not _fits(Tile(128, 32, 64, 4, 4, pack=2), 32, 32, 48)  # packed rows take one tap per step
    for c_in, c_out in ((16, 16), (32, 32), (32, 64), (64, 128), (128, 256), (256, 256)):
        assert _fits(default_tile(c_in, c_out), c_in, c_out, 3)
    for c_in, c_out, width in ((32, 32, 48), (32, 64, 24), (64, 128, 12), (128, 256, 6), (256, 256, 6)):
        assert sum(_fits(t, c_in, c_out, width) for t in TILE_CANDIDATES) >= 3
        assert any(_fits(t, c_in, c_out, width) for t in QUICK_TILE_CANDIDATES)
    assert set(QUICK_TILE_CANDIDATES) <= set(TILE_CANDIDATES)


def test_plans_survive_json():
    """A tuning is cached as JSON: every kind of choice comes back as it was."""
    from engines.triton.tiles import CUDNN, STEM_CANDIDATES, Tile, TilePlan

    plan = TilePlan(
        STEM_CANDIDATES[-1], [(Tile(128, 64, 32, 4, 3, pack=2), CUDNN), (None, Tile(64, 32, 32, 4, 2))]
    )
    again = TilePlan.from_json(json.loads(json.dumps(plan.to_json())))
    assert again == plan and again.uses_cudnn() and not TilePlan().uses_cudnn()
    assert again.conv(1, 0) is None and TilePlan().conv(3, 1) is None


def test_packed_weights_compute_the_same_convolution():
    """pack_weight/pack_shortcut: a row of ``pack`` outputs as one product equals the convolution."""
    from engines.triton.packing import pack_shortcut, pack_weight

    torch.manual_seed(0)
    for stride, pack in ((1, 2), (1, 4), (2, 2)):
        x = torch.randn(2, 5, 8, 3, dtype=torch.float64)  # NHWC
        w = torch.randn(3, 3, 3, 4, dtype=torch.float64)  # (kh, kw, C_in, C_out)
        ref = torch.nn.functional.conv2d(x.permute(0, 3, 1, 2), w.permute(3, 2, 0, 1), None, stride, 1)
        ref = ref.permute(0, 2, 3, 1)  # (B, OH, OW, C_out)
        packed = pack_weight(w.reshape(27, 4), 3, stride, pack)
        steps = stride * (pack - 1) + 3
        xp = torch.nn.functional.pad(x, (0, 0, 1, 1 + steps, 1, 1))  # zero border, room on the right
        oh, ow = ref.shape[1], ref.shape[2]
        for j in range(ow // pack):
            for i in range(oh):
                rows = xp[:, i * stride : i * stride + 3, j * pack * stride : j * pack * stride + steps]
                got = rows.reshape(2, -1) @ packed  # (B, pack · C_out)
                torch.testing.assert_close(got.reshape(2, pack, 4), ref[:, i, j * pack : (j + 1) * pack])
        ws = torch.randn(3, 4, dtype=torch.float64)
        xs = torch.randn(2, pack, 3, dtype=torch.float64)  # the pack pixels a row's shortcut reads
        torch.testing.assert_close((xs.reshape(2, -1) @ pack_shortcut(ws, pack)).reshape(2, pack, 4), xs @ ws)


def test_rows_stem_weight_computes_the_same_convolution():
    """stem_rows_weight: a 3 × 5 input patch times each half gives the two conv outputs of a pooling row."""
    from engines.triton.packing import stem_rows_weight

    torch.manual_seed(0)
    x = torch.randn(2, 9, 13, dtype=torch.float64)
    w = torch.zeros(16, 4, dtype=torch.float64)
    w[:9] = torch.randn(9, 4, dtype=torch.float64)  # taps row-major, then the zero padding
    conv = torch.nn.functional.conv2d(x[:, None], w[:9].T.reshape(4, 1, 3, 3), None, 2, 1)  # (B, C, OH, OW)
    rows = stem_rows_weight(w)
    xp = torch.nn.functional.pad(x, (1, 4, 1, 4))  # zero border, room for the last patch
    for p in range(conv.shape[2] // 2):
        for q in range(conv.shape[3] // 2):
            for di in range(2):
                patch = xp[:, 4 * p + 2 * di : 4 * p + 2 * di + 3, 4 * q : 4 * q + 5].reshape(2, 15)
                patch = torch.nn.functional.pad(patch, (0, 1))  # K = 16
                for dj in range(2):
                    got = patch @ rows[16 * dj : 16 * (dj + 1)]
                    torch.testing.assert_close(got, conv[:, :, 2 * p + di, 2 * q + dj])


needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="no CUDA GPU here: the fused kernels run only through the interpreter test",
)


@needs_cuda
@pytest.mark.parametrize("cudnn_candidates", [False, True])
@pytest.mark.parametrize("precision, tol", [("bf16", 3e-2), ("fp16", 1e-2)])
def test_fused_kernels_on_the_gpu(precision, tol, cudnn_candidates, tmp_path):
    """Untuned (default tiles, input in the network's dtype) and tuned over the quick catalogue
    (float32 input, as the backend passes it) under a CUDA graph. The full catalogue is timed by
    ``rt-tagger bench model --runners triton-fused-bf16``, which checks every tuned batch too."""
    from engines.triton import FusedResNet
    from engines.triton.tune import tune_plan

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    for bundle in (Bundle.load(DEFAULT_BUNDLE), make_random_bundle(tmp_path / "w16", width=16, seed=5)):
        model = bundle.build_model().eval()
        x = torch.from_numpy(random_mel(bundle, 37, seed=2))  # a batch that fills no tile exactly
        with torch.inference_mode():
            ref = torch.sigmoid(model(x)[0])
            fused = FusedResNet(model, "cuda", dtype, cudnn_candidates=cudnn_candidates)
            untuned = torch.sigmoid(fused(x.cuda().to(dtype))[0]).cpu()
            xd = x.cuda()
            plan, _ = tune_plan(fused, xd, "quick", iters=2)
            assert len(plan.convs) == len(fused.blocks)
            graph = torch.cuda.CUDAGraph()
            fused(xd)
            torch.cuda.synchronize()
            with torch.cuda.graph(graph):
                out = fused(xd)
            graph.replay()
            torch.cuda.synchronize()
        assert (untuned - ref).abs().max() < tol
        assert (torch.sigmoid(out[0]).cpu() - ref).abs().max() < tol


CONV_ARGS = [
    "x_ptr",
    "w_ptr",
    "bias_ptr",
    "res_ptr",
    "x2_ptr",
    "w2_ptr",
    "y_ptr",
    "M",
    "H",
    "W",
    "OH",
    "OW",
    "H2",
    "W2",
]


def _hopper_ptx(kernel, signature: dict, constexprs: dict, num_warps: int, num_stages: int) -> str:
    """Compile a kernel for compute capability 9.0 on this machine (Triton's own ptxas; no GPU)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = {**signature, **{k: "constexpr" for k in constexprs}}
    pointers = [i for i, t in enumerate(signature.values()) if t.startswith("*")]
    src = ASTSource(
        fn=kernel,
        signature=sig,
        constexprs=constexprs,
        attrs={(i,): [["tt.divisibility", 16]] for i in pointers},
    )
    try:
        compiled = triton.compile(
            src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps, "num_stages": num_stages}
        )
    except RuntimeError as e:  # e.g. no ptxas in this Triton install
        pytest.skip(f"cannot compile for sm_90 here: {str(e).splitlines()[0]}")
    return compiled.asm["ptx"]


def test_kernels_compile_for_hopper_here():
    """The GPU build of the kernels, made on this CPU machine: tensor-core (wgmma) code for the
    convolutions (packed rows too) and both stem kernels."""
    from engines.triton.kernels_conv import conv_kernel as _conv_kernel
    from engines.triton.kernels_stem import stem_rows_kernel as _stem_rows_kernel
    from engines.triton.kernels_stem import stem_taps_kernel as _stem_kernel
    from engines.triton.tiles import Tile

    def conv_ptx(tile: Tile, c_in: int = 32, c_out: int = 32) -> str:
        types = ["*bf16", "*bf16", "*fp32", "*bf16", "*bf16", "*bf16", "*bf16"] + ["i32"] * 7
        const = dict(
            C_IN=c_in, C_OUT=c_out, KSIZE=3, STRIDE=1, HAS_RES=True, HAS_SC=False, C_IN2=16, STRIDE2=1, RELU=True,
            BLOCK_M=tile.block_m, BLOCK_N=tile.block_n, BLOCK_K=tile.block_k, BLOCK_K2=16, PACK=tile.pack,
        )  # fmt: skip
        return _hopper_ptx(
            _conv_kernel, dict(zip(CONV_ARGS, types, strict=True)), const, tile.num_warps, tile.num_stages
        )

    plain = conv_ptx(Tile(128, 32, 32, 4, 4))
    assert "wgmma" in plain and "cp.async.cg.shared.global" in plain
    assert "wgmma" in conv_ptx(Tile(128, 64, 32, 4, 3, pack=2))
    assert "wgmma" in conv_ptx(Tile(128, 256, 64, 8, 3), c_in=256, c_out=256)

    stem_sig = {"x_ptr": "*bf16", "w_ptr": "*fp32", "bias_ptr": "*fp32", "y_ptr": "*bf16",
                "norm_scale": "fp32", "norm_shift": "fp32", "P": "i32"}  # fmt: skip
    for precision in ("tf32", "tf32x3", "bf16"):
        const = dict(H=96, W=192, PH=24, PW=48, C=32, BLOCK_P=64, PRECISION=precision)
        for kernel in (_stem_kernel, _stem_rows_kernel):
            stem = _hopper_ptx(kernel, stem_sig, const, 4, 1)
            assert "wgmma" in stem or "mma.sync" in stem, (kernel.__name__, precision)
