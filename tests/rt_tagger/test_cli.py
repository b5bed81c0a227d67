"""The rt-tagger CLI in real subprocesses: tag (JSON, taggram), stream from a pipe, demo, help."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from rt_tagger.pipeline import run_file
from rt_tagger.settings import load_settings
from tests.rt_tagger.conftest import run_cli


@pytest.fixture(scope="module")
def reference(sensitive_bundle, short_wav):
    return run_file(short_wav, sensitive_bundle, settings=load_settings(hop_seconds=0.5), block_size=1024)


@pytest.mark.parametrize("block", ["300", "4096"])
def test_tag_json_equals_pipeline(sensitive_bundle, short_wav, reference, tmp_path, block):
    out = tmp_path / "tags.json"
    p = run_cli(
        "tag", str(short_wav), "--bundle", str(sensitive_bundle.path), "--hop", "0.5",
        "--block-size", block, "--per-window", "--json", str(out), "--taggram", str(tmp_path / "t.png"),
    )  # fmt: skip
    assert p.returncode == 0, p.stderr_text
    doc = json.loads(out.read_text())
    assert doc["windows"] == len(reference.windows)
    got = np.array([w["probabilities"] for w in doc["per_window"]])
    np.testing.assert_allclose(got, [w.probabilities for w in reference.windows], atol=1e-4)
    np.testing.assert_allclose([doc["scores"][t] for t in reference.tags], reference.clip_scores, atol=1e-4)
    assert [t["tag"] for t in doc["top"]][:3] == [t for t, _ in reference.clip_top(3)]
    png = (tmp_path / "t.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(short_wav) in p.stdout_text  # the human-readable summary too


def test_tag_json_stdout_two_files(sensitive_bundle, short_wav):
    p = run_cli("tag", str(short_wav), str(short_wav), "--bundle", str(sensitive_bundle.path), "--json")
    assert p.returncode == 0, p.stderr_text
    docs = json.loads(p.stdout_text)
    assert len(docs) == 2 and docs[0]["scores"] == docs[1]["scores"]


def test_stream_stdin_subprocess_equals_pipeline(sensitive_bundle, short_wav, demo_audio, reference):
    x, sr = demo_audio
    pcm = (np.clip(x[: 6 * sr], -1, 1) * 32767).round().astype("<i2")
    # The reference for s16 input: the same quantised samples through run_file.
    import soundfile as sf

    q = short_wav.with_name("quantised.wav")
    sf.write(str(q), pcm, sr, subtype="PCM_16")
    ref = run_file(
        q, sensitive_bundle, settings=load_settings(hop_seconds=0.5, publish={"full_scores": True})
    )
    p = run_cli(
        "stream", "-", "--rate", str(sr), "--format", "s16le", "--bundle", str(sensitive_bundle.path),
        "--no-publish", "--json", "--full-scores", "--hop", "0.5", input=pcm.tobytes(),
    )  # fmt: skip
    assert p.returncode == 0, p.stderr_text
    msgs = [json.loads(line) for line in p.stdout_text.splitlines() if line.startswith("{")]
    tags = [m for m in msgs if m["kind"] == "tags"]
    assert len(tags) == len(ref.windows)
    np.testing.assert_allclose([m["scores"] for m in tags], [w.scores for w in ref.windows], atol=1e-4)
    assert [m["seq"] for m in msgs] == list(range(len(msgs)))


def test_demo_fast_shows_subscriber_view(sensitive_bundle):
    port = _free_port()
    p = run_cli(
        "demo", "--fast", "--bundle", str(sensitive_bundle.path), "--endpoint", f"tcp://127.0.0.1:{port}"
    )
    assert p.returncode == 0, p.stderr_text
    out = p.stdout_text
    assert "messages published" in out
    # The subscriber process printed what it received: its lines mention the stream's tags.
    assert any(t in out.split("subscriber process", 1)[1] for t in sensitive_bundle.tags), out


def test_help_lists_all_commands():
    p = run_cli("--help")
    assert p.returncode == 0
    for name in (
        "devices",
        "listen",
        "tag",
        "stream",
        "subscribe",
        "demo",
        "train",
        "features",
        "compile",
        "bench",
    ):
        assert name in p.stdout_text


def test_default_bundle_missing_is_clear(short_wav):
    from rt_tagger.default_model import default_bundle_path

    if (default_bundle_path() / "manifest.json").exists():
        pytest.skip("the default model is installed; nothing to report missing")
    p = run_cli("tag", str(short_wav))
    assert p.returncode != 0
    assert p.stderr_text.strip().splitlines() == [p.stderr_text.strip()]
    assert "default model is not in this install yet" in p.stderr_text and "--bundle" in p.stderr_text


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_devices_runs():
    p = run_cli("devices")
    if p.returncode != 0 and "PortAudio" in p.stderr_text:
        pytest.skip(f"no PortAudio here: {p.stderr_text.strip()}")
    assert p.returncode in (0, 1), p.stderr_text
    _ = subprocess  # real subprocesses throughout (run_cli)
