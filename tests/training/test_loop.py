"""The shared loop and its parts: schedule, view sampling, augmentations, collapse indicators,
checkpoint + in-process resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from training.augment import AugmentSpec, augment_mel, augment_wave
from training.bank import AudioBank
from training.loop import Dist, LoopSpec, StepOut, lr_at, run_loop
from training.metrics import calibrate_thresholds, effective_rank, embedding_std, tag_metrics
from training.views import sample_starts, sample_views


def _bank(n=6, length=16000 * 4):
    g = np.random.default_rng(0)
    return AudioBank.from_arrays(
        [g.standard_normal(length + 1000 * i).astype(np.float32) for i in range(n)], 16000, 4000
    )


def test_lr_schedule_warmup_then_cosine():
    spec = LoopSpec(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, spec) == pytest.approx(0.1)
    assert lr_at(9, spec) == pytest.approx(1.0)
    assert lr_at(99, spec) < 0.15 and lr_at(99, spec) >= 0.1
    assert all(lr_at(s, spec) >= lr_at(s + 1, spec) for s in range(10, 99))


@pytest.mark.parametrize("n_views", [2, 3])
def test_views_are_at_least_the_gap_apart_and_inside_the_track(n_views):
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([50_000, 80_000, 200_000] * 50)
    window, gap = 8_000, 4_000
    starts = sample_starts(lengths, n_views, window, gap, g)
    assert starts.shape == (150, n_views)
    assert (starts >= 0).all() and (starts <= (lengths - window)[:, None]).all()
    s = torch.sort(starts, dim=1).values
    assert ((s[:, 1:] - s[:, :-1]) >= window + gap - 1).all()
    # views are not always in time order (view a is not always the earlier segment)
    assert (starts[:, 0] > starts[:, 1]).any() and (starts[:, 0] < starts[:, 1]).any()


def test_short_tracks_spread_views_as_far_as_possible():
    g = torch.Generator().manual_seed(0)
    starts = sample_starts(torch.tensor([10_000] * 20), 2, 8_000, 16_000, g)
    assert set(torch.sort(starts, 1).values.tolist()[0]) == {0, 2_000}


def test_sample_views_shapes_and_pitch_shift_reads_resampled_audio():
    bank = _bank()
    g = torch.Generator().manual_seed(0)
    views, tracks = sample_views(bank, 5, 2, 4000, 1000, g, max_semitones=2.0)
    assert views.shape == (2, 5, 4000) and tracks.shape == (5,)
    assert torch.isfinite(views).all()
    # a 440 Hz sine resampled by +12 semitones reads as 880 Hz
    t = np.arange(32000) / 16000
    sine = AudioBank.from_arrays([np.sin(2 * np.pi * 440 * t).astype(np.float32)], 16000, 4000)
    from training.views import gather_crops

    crop = gather_crops(sine, torch.tensor([0]), torch.tensor([0]), 4000, torch.tensor([2.0]))[0].numpy()
    peak = np.argmax(np.abs(np.fft.rfft(crop))) * 16000 / 4000
    assert abs(peak - 880) < 8


def test_augmentations_are_reproducible_and_keep_shapes():
    bank = _bank()
    spec = AugmentSpec(noise_p=1.0, mix_p=1.0, eq_p=1.0, mask_p=1.0)
    x = torch.randn(8, 4000)
    outs = []
    for _ in range(2):
        g = torch.Generator().manual_seed(3)
        w = augment_wave(x, bank, spec, g)
        outs.append(augment_mel(torch.randn(8, 24, 30, generator=torch.Generator().manual_seed(1)), spec, g))
    assert w.shape == x.shape and not torch.equal(w, x)
    assert torch.equal(outs[0], outs[1]) and outs[0].shape == (8, 24, 30)


def test_collapse_indicators():
    healthy = torch.randn(256, 32)
    collapsed = torch.randn(1, 32).repeat(256, 1) + 1e-6 * torch.randn(256, 32)
    assert effective_rank(healthy) > 20 and effective_rank(collapsed) < 3
    assert embedding_std(healthy) > 0.1 and embedding_std(collapsed) < 1e-3


def test_tag_metrics_and_thresholds():
    y = np.array([[1, 0], [0, 1], [1, 0], [0, 1]])
    s = np.array([[0.9, 0.2], [0.1, 0.8], [0.7, 0.4], [0.4, 0.6]])
    m = tag_metrics(y, s, ["a", "b"])
    assert m["roc_auc"] == 1.0 and m["pr_auc"] == 1.0 and m["skipped"] == []
    th = calibrate_thresholds(y, s)
    assert 0.4 < th[0] <= 0.7 and 0.4 < th[1] <= 0.6
    assert tag_metrics(np.ones((3, 1)), np.ones((3, 1)), ["c"])["skipped"] == ["c"]


def _tiny_problem():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    w = torch.randn(4, 1)

    def step_fn(fwd, gen):
        x = torch.randn(16, 4, generator=gen)
        return StepOut(torch.nn.functional.mse_loss(fwd(x), x @ w), embeddings=x, n_views=16)

    return net, step_fn


def test_run_loop_checkpoints_and_resumes_in_process(tmp_path):
    spec = LoopSpec(steps=12, batch_size=16, lr=1e-2, warmup_steps=2, ckpt_every=4, log_every=4)
    net, step_fn = _tiny_problem()
    hist = run_loop(net, step_fn, spec, tmp_path / "a", Dist(), progress=False)
    assert [h["step"] for h in hist] == [4, 8, 12] and hist[-1]["loss"] < hist[0]["loss"] * 2
    assert json.loads((tmp_path / "a" / "ckpt.json").read_text())["step"] == 12
    # a second identical run gives identical weights (test_resume.py kills and resumes a real run)
    net_b, step_fn_b = _tiny_problem()
    run_loop(
        net_b, step_fn_b, spec.model_copy(update={"ckpt_every": 4}), tmp_path / "b", Dist(), progress=False
    )
    state = torch.load(tmp_path / "b" / "ckpt.pt", weights_only=True)
    assert state["step"] == 12
    for p, q in zip(net.parameters(), net_b.parameters(), strict=True):
        assert torch.equal(p, q)  # deterministic on CPU
    # a finished run resumes to no work and leaves the weights alone
    before = [p.clone() for p in net_b.parameters()]
    run_loop(net_b, step_fn_b, spec, tmp_path / "b", Dist(), progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, net_b.parameters(), strict=True))


def test_nan_loss_stops_the_run(tmp_path):
    net, _ = _tiny_problem()

    def bad(fwd, gen):
        return StepOut(fwd(torch.full((2, 4), float("nan"))).mean())

    with pytest.raises(FloatingPointError, match="loss is nan"):
        run_loop(net, bad, LoopSpec(steps=2, batch_size=2), tmp_path, Dist(), progress=False)


def test_ddp_two_cpu_processes_train_and_checkpoint(tmp_path):
    """torchrun with two CPU processes (gloo): one checkpoint holding each rank's generator."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.training.corpus_fixture import make_corpus, write_recipe

    root = Path(__file__).resolve().parents[2]
    recipe = write_recipe(tmp_path / "r.toml", make_corpus(tmp_path / "c", n=8))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # rendezvous on a free port: a fixed one can be taken by another process
        "--nproc_per_node",
        "2",
        "-m",
        "training",
        "pretrain",
        "--recipe",
        str(recipe),
        "--pretext",
        "barlow_twins",
        "--out",
        str(tmp_path / "o"),
        "--no-progress",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(root))
    res = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=240)
    # the failing rank's own error comes first, torchrun's summary last: show both
    assert res.returncode == 0, res.stderr[:3000] + "\n...\n" + res.stderr[-1500:]
    state = torch.load(tmp_path / "o" / "ckpt.pt", weights_only=True)
    assert state["step"] == 6 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["gen"], state["rng"][1]["gen"])  # each rank its own stream
    assert (tmp_path / "o" / "backbone.safetensors").exists()
