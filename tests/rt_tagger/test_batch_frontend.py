"""The batch front end (a server's GPU front end, here on torch's CPU device) gives the windows of
the per-stream numba framer within 1e-3 dB (on CUDA in the GPU suite), for many streams pushed in uneven chunks, several
windows per round, a ring that must grow, and more streams than the slots it started with."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from engines.frontend import FrontEndSpec  # noqa: E402
from rt_tagger.aggregator import Aggregator  # noqa: E402
from rt_tagger.batch_frontend import BatchFrontEnd  # noqa: E402
from rt_tagger.framer import StreamingFrontEnd  # noqa: E402
from rt_tagger.messages import BackendInfo, ModelInfo  # noqa: E402
from rt_tagger.stream_state import MessageOptions, StreamState  # noqa: E402

SPEC = FrontEndSpec()
HOP = 31  # frames between windows (~0.5 s)


def _state(rate: int, batch: BatchFrontEnd | None) -> StreamState:
    slot = batch.open() if batch is not None else None
    fe = StreamingFrontEnd(SPEC, rate, 1, frame_sink=batch.sink(slot) if batch is not None else None)
    options = MessageOptions(
        stream_id="s",
        backend=BackendInfo(name="test", device="cpu", precision="fp32"),
        model=ModelInfo(name="test", weights_sha256="0" * 12),
        silence_rms=0.0,
    )
    return StreamState(fe, Aggregator(["a"], [0.5]), HOP, options, batch_slot=slot)


def _music(seconds: float, rate: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 2000) * t) * (1 + np.sin(2 * np.pi * 0.7 * t))
    return (tone + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def _windows_of_round(states, batch):
    """What the scheduler does: due windows, one flush, one gather."""
    due = [(i, w) for i, s in enumerate(states) for w in s.due_windows()]
    if not due:
        return []
    batch.flush()
    mel = batch.windows(np.array([w.slot for _, w in due]), np.array([w.frame_end for _, w in due]))
    return [(i, w.frame_end, mel[j].cpu().numpy()) for j, (i, w) in enumerate(due)]


def _devices():
    import torch

    cuda = pytest.mark.skipif(
        not torch.cuda.is_available(), reason="no CUDA GPU here (runs on the GPU suite)"
    )
    return ["cpu", pytest.param("cuda", marks=cuda)]


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("rate", [16000, 44100])
def test_batch_windows_equal_the_numba_framer(rate, device):
    rng = np.random.default_rng(1)
    n = 5
    audio = [_music(9.0, rate, seed) for seed in range(n)]
    batch = BatchFrontEnd(SPEC, device, slots=2)  # slots grow to 5
    batched = [_state(rate, batch) for _ in range(n)]
    reference = [_state(rate, None) for _ in range(n)]
    got, want = [], []
    pos = [0] * n
    while any(p < len(a) for p, a in zip(pos, audio, strict=True)):
        for i in range(n):
            if pos[i] >= len(audio[i]):
                continue
            # uneven chunks; stream 0 sometimes sends seconds at once (several windows per round)
            k = int(rng.integers(rate // 50, rate // 4)) if i or rng.random() < 0.7 else int(3.5 * rate)
            block = audio[i][pos[i] : pos[i] + k, None]
            pos[i] += k
            batched[i].push(block)
            reference[i].push(block)
            want += [(i, w.frame_end, w.mel) for w in reference[i].due_windows()]
        if rng.random() < 0.5:  # rounds at uneven moments
            got += _windows_of_round(batched, batch)
    got += _windows_of_round(batched, batch)
    assert len(got) == len(want) > n * 10
    assert batch.ring_frames > 2 * SPEC.window_frames  # stream 0's big chunks made it grow
    got.sort(key=lambda x: (x[0], x[1]))
    want.sort(key=lambda x: (x[0], x[1]))
    worst = 0.0
    for (gi, ge, gm), (wi, we, wm) in zip(got, want, strict=True):
        assert (gi, ge) == (wi, we)
        worst = max(worst, float(np.abs(gm - wm).max()))
    assert worst <= 1e-3, worst
