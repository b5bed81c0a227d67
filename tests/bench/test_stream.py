from bench.stream import STAGES

from .conftest import run_bench


def test_stream_mode_measures_the_real_pipeline(tiny_bundle, tmp_path, capsys):
    doc = run_bench(
        # 12 s of audio: on a busy 2-core machine the tagger's start-up backlog can take most of 8 s
        # to drain, and steady-state rows only count messages after the writer is back on time.
        ["stream", "--bundle", str(tiny_bundle.path), "--seconds", "12", "--hop", "0.5", "--skip-s", "0.5",
         "--backend", "torch-cpu", "--trace"],
        tmp_path, capsys,
    )  # fmt: skip
    s = doc["summary"]
    assert s["tags_messages"] >= 3 and s["seq_gaps_at_subscriber"] == 0
    assert s["time_to_first_message_s"] > 0 and s["tagger_peak_rss_mib"] > 50
    assert set(s["drops"]) >= {"ring_overflow_samples", "publisher_dropped"}
    rows = {r["stage"]: r for r in doc["results"]}
    for stage in (*STAGES, "capture->publish", "publish->receive"):
        assert rows[stage]["n"] >= 1 and rows[stage]["p99_ms"] >= 0
    # The writer's clock: a window is published after its last block was written, and captured
    # within one 10-ms block of that write (a larger value would be a mismatched block).
    assert rows["write->capture"]["n"] == rows["capture->publish"]["n"]
    assert 0 <= rows["write->capture"]["p50_ms"] < 10
    assert rows["write->publish"]["p50_ms"] >= rows["capture->publish"]["p50_ms"] - 1e-6
    # --trace: the same steady windows timed step by step inside the tagger; its model step
    # holds the inference stage, and the steps before publishing fit in capture->receive.
    assert rows["trace model"]["n"] >= max(1, rows["capture->publish"]["n"] - 1)
    assert rows["trace model"]["p50_ms"] >= rows["inference"]["p50_ms"]
    for step in ("pickup", "push", "complete", "publish"):
        assert rows[f"trace {step}"]["p50_ms"] > 0
    inside = sum(rows[f"trace {step}"]["p50_ms"] for step in ("pickup", "push", "model", "complete"))
    assert inside < rows["capture->receive"]["p99_ms"]


def test_stream_mode_through_the_microphone(tiny_bundle, tmp_path, capsys):
    """--source mic: the audio played into the PulseAudio null sink, captured by `rt-tagger
    listen` through PortAudio; only windows made of the played audio are counted."""
    from tests.rt_tagger.test_microphone import _audio_device_or_skip

    _audio_device_or_skip()
    doc = run_bench(
        ["stream", "--source", "mic", "--bundle", str(tiny_bundle.path), "--seconds", "10", "--hop", "0.5",
         "--skip-s", "0.5", "--backend", "torch-cpu"],
        tmp_path, capsys,
    )  # fmt: skip
    s = doc["summary"]
    window_s = tiny_bundle.manifest.frontend.window_seconds
    # 10 s played, windows from window_s after the start: about (10 - window_s) / hop of them
    assert s["tags_messages"] >= (10 - window_s) / 0.5 - 4 and s["seq_gaps_at_subscriber"] == 0
    assert s["drops"]["ring_overflow_samples"] == 0
    rows = {r["stage"]: r for r in doc["results"]}
    assert rows["capture->publish"]["n"] >= 3 and 0 < rows["capture->publish"]["p50_ms"] < 1000
    assert "write->capture" not in rows and "microphone" in doc["settings"]["source"]
