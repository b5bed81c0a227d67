"""The streaming path end to end, through real sources, the numba front end and the torch backend."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
import soundfile as sf

from engines.frontend import logmel_numpy
from rt_tagger.pipeline import Pipeline, run_file
from rt_tagger.settings import load_settings
from rt_tagger.sources import AudioInputError, FileSource, StdinSource


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for k in list(os.environ):
        if k.startswith("RT_TAGGER_"):
            monkeypatch.delenv(k)


@pytest.fixture(scope="module")
def pipe(sensitive_bundle):
    with Pipeline(sensitive_bundle, load_settings(hop_seconds=0.5, backend="torch-cpu")) as p:
        yield p


def test_file_end_to_end(pipe, short_wav, sensitive_bundle):
    messages = []
    pipe.on_message = messages.append
    try:
        res = run_file(short_wav, sensitive_bundle, pipeline=pipe)
    finally:
        pipe.on_message = None
    spec = sensitive_bundle.frontend
    frames = spec.frames_for(6 * spec.sample_rate)
    expected = 1 + (frames - spec.window_frames) // pipe.hop_frames
    end = messages.pop()  # the stream's last message says why it ended, with the final counters
    assert end.kind == "end" and end.end.reason == "eof" and end.end.windows == expected
    assert end.end.stream_s == pytest.approx(6.0) and end.seq == expected
    assert len(res.windows) == expected == res.messages - 1 == len(messages)
    assert [m.seq for m in messages] == list(range(expected))
    ends = [m.window.end_sample for m in messages]
    assert ends[0] == spec.window_samples
    assert set(np.diff(ends)) == {pipe.hop_frames * spec.hop_length}
    m = messages[-1]
    assert m.kind == "tags" and m.backend.name == "torch-cpu" and len(m.top) == 5
    assert m.timings_ms.inference > 0 and m.timings_ms.framing_mel >= 0
    assert messages[0].tags == sensitive_bundle.tags and messages[1].tags is None
    assert m.drops.ring_overflow_samples == 0 and m.drops.resampler_dropped_samples == 0
    assert m.drops.ring_underflow_events == 0  # a file read as fast as possible has no due time
    # The last window equals the model run on the reference (numpy) log-mel of the same samples.
    x, _ = sf.read(str(short_wav), dtype="float32")
    mel = logmel_numpy(x[m.window.start_sample : m.window.end_sample], spec)
    p_ref = pipe.backend.infer(mel[None]).probabilities[0]
    np.testing.assert_allclose(res.windows[-1].probabilities, p_ref, atol=1e-3)
    # Scores really vary along the clip with this bundle (the comparisons below mean something).
    assert np.std([w.probabilities for w in res.windows], axis=0).mean() > 0.05


@pytest.mark.parametrize("path_kind", ["16k-mono", "44k-stereo"])
def test_chunk_invariance(pipe, sensitive_bundle, demo_audio, tmp_path, path_kind):
    x, sr = demo_audio
    x = x[: 5 * sr]
    path = tmp_path / "in.wav"
    if path_kind == "16k-mono":
        sf.write(str(path), x, sr, subtype="FLOAT")
    else:
        import torch
        import torchaudio

        y = torchaudio.functional.resample(torch.from_numpy(x), sr, 44100).numpy()
        sf.write(str(path), np.stack([y, 0.5 * y], axis=1), 44100, subtype="FLOAT")
    results = [run_file(path, sensitive_bundle, block_size=b, pipeline=pipe) for b in (256, 1001, 65536)]
    ref = results[0]
    assert len(ref.windows) >= 8
    for r in results[1:]:
        assert [w.end_s for w in r.windows] == [w.end_s for w in ref.windows]
        np.testing.assert_allclose(
            [w.probabilities for w in r.windows], [w.probabilities for w in ref.windows], atol=1e-4
        )
        np.testing.assert_allclose(r.windows[-1].scores, ref.windows[-1].scores, atol=1e-4)
        np.testing.assert_allclose(r.clip_scores, ref.clip_scores, atol=1e-4)


def test_silence_gives_heartbeats(pipe, sensitive_bundle, tmp_path):
    path = tmp_path / "silence.wav"
    sf.write(str(path), np.zeros(3 * 16000, np.float32), 16000)
    msgs = []
    pipe.on_message = msgs.append
    try:
        res = run_file(path, sensitive_bundle, pipeline=pipe)
    finally:
        pipe.on_message = None
    assert msgs.pop().kind == "end"
    assert res.heartbeats == res.messages - 1 > 0 and not res.windows
    assert all(m.kind == "heartbeat" and m.heartbeat_reason == "silent" for m in msgs)
    assert [m.seq for m in msgs] == list(range(len(msgs)))


def test_stalled_stdin_gives_heartbeat(sensitive_bundle, demo_audio):
    x, sr = demo_audio
    pcm = (x[: 2 * sr] * 32767).astype("<i2").tobytes()
    r, w = os.pipe()
    msgs = []

    def writer():
        with os.fdopen(w, "wb") as f:
            f.write(pcm)
            f.flush()
            time.sleep(2.5)  # > 2 hops of nothing: the pipeline must say "stalled"
            f.write(pcm)

    with Pipeline(sensitive_bundle, load_settings(hop_seconds=0.5), on_message=msgs.append) as p:
        t = threading.Thread(target=writer)
        t.start()
        with os.fdopen(r, "rb") as rf:
            res = p.run(StdinSource(rf, sr, 1, "s16le", block_size=512))
        t.join()
    reasons = [m.heartbeat_reason for m in msgs if m.kind == "heartbeat"]
    assert "stalled" in reasons
    assert res.duration_s == pytest.approx(4.0)
    assert [m.seq for m in msgs] == list(range(len(msgs)))
    # The pause is an underflow: the consumer waited for audio a live source owed it. It is
    # counted (once per gap; a loaded machine may starve the reader once more) and visible in the
    # stalled heartbeats and in every message after the gap.
    stalled = [m for m in msgs if m.heartbeat_reason == "stalled"]
    assert 1 <= res.counters["ring_underflow_events"] <= 2
    assert all(m.drops.ring_underflow_events >= 1 for m in stalled)
    assert msgs[-1].drops.ring_underflow_events == res.counters["ring_underflow_events"]


def test_slow_tagger_blocking_stdin_is_visible(sensitive_bundle, demo_audio):
    """A tagger slower than its stdin writer holds the writer back: messages show the audio
    waiting (``backlog_s``: ring + blocked reader + pipe) and the time the reader was blocked."""
    x, sr = demo_audio
    pcm = (x[: 8 * sr] * 32767).astype("<i2").tobytes()
    r, w = os.pipe()
    msgs = []

    def writer():
        with os.fdopen(w, "wb") as f:
            f.write(pcm)  # blocks while the pipe is full: the upstream writer is held back

    def slow_consumer(m):
        msgs.append(m)
        if m.kind == "tags":
            time.sleep(0.25)  # a tagger that needs more time per hop than this writer gives it

    with Pipeline(sensitive_bundle, load_settings(hop_seconds=0.5), on_message=slow_consumer) as p:
        t = threading.Thread(target=writer)
        t.start()
        with os.fdopen(r, "rb") as rf:
            res = p.run(StdinSource(rf, sr, 1, "s16le", block_size=512, ring_seconds=1.0))
        t.join()
    assert res.duration_s == pytest.approx(8.0) and res.counters["ring_overflow_samples"] == 0
    backlog = [m.backlog_s for m in msgs if m.kind == "tags"]
    # The ring alone holds 1 s; more than that waits in the blocked reader and the pipe.
    assert max(backlog) > 1.5, backlog
    assert msgs[-1].kind == "end" and msgs[-1].backlog_s == 0.0
    assert (
        msgs[-1].drops.input_blocked_s > 0
        and res.counters["input_blocked_s"] == msgs[-1].drops.input_blocked_s
    )


def test_window_is_tagged_once_its_last_sample_arrives(sensitive_bundle, demo_audio):
    """No waiting for more input than the window needs: with exactly one window of audio written
    and the pipe held open, the first message comes before anything else is written."""
    x, sr = demo_audio
    spec = sensitive_bundle.frontend
    assert sr == spec.sample_rate
    pcm = (x[: spec.window_samples] * 32767).astype("<i2").tobytes()
    r, w = os.pipe()
    first = threading.Event()
    seen_while_open = []

    def writer():
        with os.fdopen(w, "wb") as f:
            f.write(pcm)
            f.flush()
            seen_while_open.append(first.wait(timeout=20.0))  # generous: a behaviour check, not timing

    def on_message(m):
        if m.kind == "tags":
            first.set()

    with Pipeline(sensitive_bundle, load_settings(hop_seconds=0.5), on_message=on_message) as p:
        t = threading.Thread(target=writer)
        t.start()
        with os.fdopen(r, "rb") as rf:
            res = p.run(StdinSource(rf, sr, 1, "s16le", block_size=4096))
        t.join()
    assert seen_while_open == [True]
    assert res.messages >= 1 and res.windows[0].end_s == pytest.approx(spec.window_samples / sr)


def test_window_needs_no_input_beyond_its_last_sample(sensitive_bundle):
    """At 44.1 kHz, where frame steps do not align with input samples, the first window is tagged
    as soon as the resampler has produced its last sample, not one frame step of input later.
    The writer sends 64-sample blocks and waits until each is consumed, so the input count at the
    first message is exact (a sample count, not a timing)."""
    from rt_tagger.resample import StreamingResampler

    spec, rate, block = sensitive_bundle.frontend, 44100, 64
    rng = np.random.default_rng(7)
    x = (0.3 * rng.standard_normal(3 * spec.window_samples)).astype(np.float32)
    resampler, produced, needed = StreamingResampler(rate, spec.sample_rate), 0, None
    for k in range(0, x.size, block):
        produced += resampler.process(x[k : k + block]).size
        if produced >= spec.window_samples:
            needed = k + block  # input samples after which the first window is complete
            break
    pcm = (x * 32767).astype("<i2")
    r, w = os.pipe()
    state: dict = {"written": 0, "at_first": None}
    source = StdinSource(os.fdopen(r, "rb"), rate, 1, "s16le", block_size=block)

    def writer():
        with os.fdopen(w, "wb") as f:
            for k in range(0, pcm.size, block):
                if state["at_first"] is not None:
                    break
                f.write(pcm[k : k + block].tobytes())
                f.flush()
                state["written"] = k + block
                deadline = time.monotonic() + 10.0
                while source.ring.read_pos < state["written"] and state["at_first"] is None:
                    if time.monotonic() > deadline:
                        return  # the consumer waits for more than the window needs
                    time.sleep(0.0005)

    def on_message(m):  # runs on the consumer thread: read_pos = input consumed so far
        if m.kind == "tags" and state["at_first"] is None:
            state["at_first"] = source.ring.read_pos

    with Pipeline(sensitive_bundle, load_settings(hop_seconds=0.5), on_message=on_message) as p:
        t = threading.Thread(target=writer)
        t.start()
        p.run(source)
        t.join()
    assert state["at_first"] == needed


def test_nonfinite_reject_or_zero(sensitive_bundle, demo_audio, tmp_path):
    x, sr = demo_audio
    y = x[: 3 * sr].copy()
    y[sr : sr + 100] = np.nan
    y[2 * sr] = np.inf
    path = tmp_path / "nan.wav"
    sf.write(str(path), y, sr, subtype="FLOAT")
    with pytest.raises(AudioInputError, match="NaN/Inf"):
        run_file(path, sensitive_bundle, settings=load_settings(hop_seconds=0.5))
    res = run_file(path, sensitive_bundle, settings=load_settings(hop_seconds=0.5, nonfinite="zero"))
    assert res.counters["resampler_dropped_samples"] == 101  # replaced by the resampler, counted once
    assert np.isfinite([w.probabilities for w in res.windows]).all()


def test_short_file_gets_one_padded_window(pipe, sensitive_bundle, demo_audio, tmp_path):
    x, sr = demo_audio
    path = tmp_path / "short.wav"
    sf.write(str(path), x[: sr // 2], sr)
    res = run_file(path, sensitive_bundle, pipeline=pipe)
    assert len(res.windows) == 1


def test_hop_out_of_range(sensitive_bundle):
    from rt_tagger.settings import SettingsError

    with pytest.raises(SettingsError, match="hop_seconds=5.0"):
        Pipeline(sensitive_bundle, load_settings(hop_seconds=5.0))


def test_realtime_replay_same_scores(pipe, sensitive_bundle, short_wav):
    fast = run_file(short_wav, sensitive_bundle, pipeline=pipe)
    src = FileSource(short_wav, block_size=800, realtime=True)
    live = pipe.run(src)
    np.testing.assert_allclose(
        [w.probabilities for w in live.windows], [w.probabilities for w in fast.windows], atol=1e-4
    )
    assert live.latencies_ms and len(live.stage_ms["capture_to_ring"]) == len(live.windows)


def test_rehearsal_sends_nothing_and_leaves_real_streams_alone(pipe, sensitive_bundle, demo_audio):
    """The prewarm's host-side rehearsal runs a scratch window through framing, aggregation and
    encoding: nothing is published, and a real stream's messages are what they are without it."""
    from rt_tagger.pipeline import _Rehearsal
    from rt_tagger.publisher import Publisher
    from rt_tagger.scheduler import run_due

    x, sr = demo_audio
    block = x[: 6 * sr, None].astype(np.float32)

    def tags(rehearse) -> list:
        stream = pipe.open_stream(None, sr, 1)
        out = []
        for i in range(0, len(block), 1600):
            if stream.push(block[i : i + 1600]):
                rehearse()
                for _, _, msg in run_due([stream], pipe.backend):
                    out.append((msg.seq, [(t.tag, round(t.score, 6)) for t in msg.top], msg.active))
        return out

    with Publisher("tcp://127.0.0.1:*") as pub:
        rehearsal = _Rehearsal(pipe.open_stream(None, sr, 1, stream_id="rehearsal"), pub, 160)
        windows = rehearsal.stream.aggregator.windows
        with_rehearsal = tags(lambda: [rehearsal() for _ in range(3)])
        assert pub.sent == 0 and sum(pub.encoded.values()) == 0  # encoded, never sent
    assert rehearsal.stream.aggregator.windows > windows  # it did run the aggregation
    assert with_rehearsal and with_rehearsal == tags(lambda: None)
