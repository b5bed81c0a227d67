"""Many streams, one backend: windows due in several streams are scored in one batch and each
stream gets exactly what it would get alone (the server case; one stream is a batch of one)."""

from __future__ import annotations

import numpy as np
import pytest

from rt_tagger.pipeline import Pipeline
from rt_tagger.scheduler import run_due
from rt_tagger.settings import load_settings


class _CountingBackend:
    """The real backend, recording the batch size of every call."""

    def __init__(self, backend) -> None:
        self.backend, self.batches = backend, []
        self.batch_range = backend.batch_range

    def infer(self, mel, while_waiting=None):
        self.batches.append(mel.shape[0])
        return self.backend.infer(mel, while_waiting)


@pytest.fixture(scope="module")
def pipe(sensitive_bundle):
    with Pipeline(
        sensitive_bundle, load_settings(hop_seconds=0.5, backend="torch-cpu"), keep_windows=True
    ) as p:
        yield p


def _feed(pipe, audio: np.ndarray, block: int, sr: int):
    state = pipe.open_stream(None, sr, 1)
    for k in range(0, audio.shape[0], block):
        state.push(audio[k : k + block])
    return state


def test_streams_batched_together_equal_each_alone(pipe, demo_audio):
    x, sr = demo_audio
    a, b = x[: 5 * sr, None], x[sr : 6 * sr, None]
    # Alone: one stream, one window per call.
    alone = []
    for audio in (a, b):
        state = pipe.open_stream(None, sr, 1)
        for k in range(0, audio.shape[0], 800):
            state.push(audio[k : k + 800])
            run_due([state], pipe.backend)
        alone.append(state.totals.kept)
    # Together: both streams pushed whole (other block sizes), every due window in one call.
    counting = _CountingBackend(pipe.backend)
    s1, s2 = _feed(pipe, a, 4096, sr), _feed(pipe, b, 333, sr)
    done = run_due([s1, s2], counting)
    n1, n2 = len(alone[0]), len(alone[1])
    assert counting.batches == [n1 + n2] and n1 >= 8
    assert [m.seq for st, _, m in done if st is s1] == list(range(n1))
    assert [m.seq for st, _, m in done if st is s2] == list(range(n2))
    for state, ref in ((s1, alone[0]), (s2, alone[1])):
        got = state.totals.kept
        assert [w.end_s for w in got] == [w.end_s for w in ref]
        np.testing.assert_allclose([w.probabilities for w in got], [w.probabilities for w in ref], atol=1e-4)
        np.testing.assert_allclose([w.scores for w in got], [w.scores for w in ref], atol=1e-4)


def test_silent_windows_are_not_inferred(pipe, demo_audio):
    x, sr = demo_audio
    audio = np.concatenate([np.zeros(3 * sr, np.float32), x[: 3 * sr]])[:, None]
    counting = _CountingBackend(pipe.backend)
    state = _feed(pipe, audio, 1024, sr)
    kinds = [m.kind for _, _, m in run_due([state], counting)]
    assert kinds[0] == "heartbeat" and kinds[-1] == "tags"
    assert counting.batches == [kinds.count("tags")]
