"""The rt-tagger CLI in real subprocesses: tag (JSON, taggram), stream from a pipe, demo, help."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from bench.common import free_port
from engines.registry import BACKENDS
from rt_tagger import __version__
from rt_tagger.curve_keys import generate_keys
from rt_tagger.pipeline import run_file
from rt_tagger.settings import load_settings
from tests.rt_tagger.conftest import ROOT, cli_env, run_cli
from tests.rt_tagger.zmq_helpers import json_lines, start_subscriber


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
    # "on": every tag whose file mean reaches its threshold, furthest past it first; no other tag
    thr = dict(zip(reference.tags, sensitive_bundle.manifest.thresholds, strict=True))
    want = sorted(
        (t for t, v in doc["scores"].items() if v >= thr[t]), key=lambda t: -doc["scores"][t] / thr[t]
    )
    assert want and [t["tag"] for t in doc["on"]] == want
    assert all(t["threshold"] == pytest.approx(thr[t["tag"]]) for t in doc["on"])
    assert f"{short_wav}: on: {', '.join(want)} | top: " in p.stdout_text
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
    port = free_port()
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
    listed = re.findall(r"^    (\w+)", p.stdout_text, flags=re.M)  # the COMMAND column of the help
    assert sorted(listed) == sorted(
        ["devices", "listen", "tag", "embed", "stream", "serve", "subscribe", "demo"]
        + ["train", "features", "compile", "bench"]
    ), p.stdout_text


def test_version():
    p = run_cli("--version")
    assert (p.returncode, p.stdout_text.strip()) == (0, f"rt-tagger {__version__}")


def test_unknown_command_lists_every_command():
    p = run_cli("tga")
    assert p.returncode == 2
    line = p.stderr_text.strip()
    assert "\n" not in line and "invalid choice: 'tga'" in line
    for name in (
        "devices",
        "listen",
        "tag",
        "stream",
        "subscribe",
        "demo",
        "bench",
        "compile",
        "features",
        "train",
    ):
        assert f"'{name}'" in line, line


@pytest.mark.parametrize("command", ["devices", "subscribe"])
def test_bundle_only_where_it_is_used(command):
    p = run_cli(command, "--bundle", "x")
    assert p.returncode == 2 and "unrecognized arguments: --bundle x" in p.stderr_text


def test_help_lists_backend_and_format_choices():
    p = run_cli("stream", "--help")
    assert p.returncode == 0
    assert "{" + ",".join(["auto", *BACKENDS]) + "}" in p.stdout_text  # every registered backend
    assert "torch-cpu" in BACKENDS and "onnxruntime-cpu" in BACKENDS
    assert "{s16le,f32le}" in p.stdout_text


def test_json_into_a_missing_folder_is_an_error(short_wav, sensitive_bundle, tmp_path):
    out = tmp_path / "no" / "such" / "tags.json"
    p = run_cli("tag", str(short_wav), "--bundle", str(sensitive_bundle.path), "--json", str(out))
    assert p.returncode == 2
    assert (
        p.stderr_text.strip()
        == f"rt-tagger: error: cannot write --json output {out}: folder {out.parent} does not exist"
    )
    assert list(tmp_path.iterdir()) == []  # no folder was made


def test_taggram_of_several_files_says_where_each_went(short_wav, sensitive_bundle, tmp_path):
    p = run_cli(
        "tag", str(short_wav), str(short_wav), "--bundle", str(sensitive_bundle.path),
        "--taggram", str(tmp_path / "t.png"),
    )  # fmt: skip
    assert p.returncode == 0, p.stderr_text
    said = re.findall(r": taggram (\S+)$", p.stdout_text, flags=re.M)
    assert said == [str(tmp_path / "t_0_short.png"), str(tmp_path / "t_1_short.png")]
    assert all(open(f, "rb").read(8) == b"\x89PNG\r\n\x1a\n" for f in said)


def test_allow_remote_without_curve_is_refused_unless_insecure_remote(sensitive_bundle):
    args = ("stream", "-", "--rate", "16000", "--bundle", str(sensitive_bundle.path), "-q", "--allow-remote")
    port = free_port()
    p = run_cli(*args, "--publish", f"tcp://0.0.0.0:{port}", input=b"")
    assert p.returncode == 2
    assert "without encryption" in p.stderr_text and "--insecure-remote" in p.stderr_text
    p = run_cli(
        *args,
        "--publish",
        f"tcp://0.0.0.0:{port}",
        "--insecure-remote",
        input=np.zeros(32000, "<i2").tobytes(),
    )
    assert p.returncode == 0, p.stderr_text


def test_curve_clients_allowed_key_receives_unknown_key_does_not(sensitive_bundle, tmp_path):
    """`rt-tagger stream` with --curve-secret and --curve-clients (ZAP allow-list); the subscribers
    are CLI processes: the listed client key receives, an unknown key gets nothing."""
    keys = generate_keys(tmp_path / "keys")
    generate_keys(tmp_path / "stranger")  # a key pair the publisher does not list
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    tagger = subprocess.Popen(
        [sys.executable, "-m", "rt_tagger.cli", "stream", "-", "--rate", "16000", "--bundle",
         str(sensitive_bundle.path), "--hop", "0.5", "-q", "--publish", endpoint,
         "--curve-secret", str(keys.server_secret), "--curve-clients", str(keys.authorized_clients)],
        stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(), cwd=ROOT,
    )  # fmt: skip
    curve = ("--curve-public", str(keys.server_public))
    allowed = start_subscriber(
        endpoint,
        "--json",
        "--count",
        "3",
        "--timeout",
        "60",
        *curve,
        "--curve-client-dir",
        str(tmp_path / "keys"),
    )
    unknown = start_subscriber(
        endpoint, "--json", "--timeout", "8", *curve, "--curve-client-dir", str(tmp_path / "stranger")
    )
    try:
        block = np.zeros(1600, "<i2").tobytes()  # 0.1 s; real time is not needed, a steady flow is
        deadline = time.monotonic() + 120
        while (allowed.poll() is None or unknown.poll() is None) and time.monotonic() < deadline:
            tagger.stdin.write(block)
            tagger.stdin.flush()
            time.sleep(0.02)
        a_out, a_err = allowed.communicate(timeout=30)
        u_out, u_err = unknown.communicate(timeout=30)
    finally:
        tagger.stdin.close()
        tagger.wait(60)
    assert allowed.returncode == 0, a_err
    assert len(json_lines(a_out)) == 3
    assert unknown.returncode == 2 and u_out == "" and "no message from" in u_err


def test_default_bundle_missing_is_clear(short_wav):
    from rt_tagger.bundled_model import default_bundle_path

    if (default_bundle_path() / "manifest.json").exists():
        pytest.skip("the default model is installed; nothing to report missing")
    p = run_cli("tag", str(short_wav))
    assert p.returncode != 0
    assert p.stderr_text.strip().splitlines() == [p.stderr_text.strip()]
    assert "default model is not in this install yet" in p.stderr_text and "--bundle" in p.stderr_text


def test_devices_lists_what_the_json_lists():
    p = run_cli("devices", "--json")
    if p.returncode != 0 and "PortAudio" in p.stderr_text:
        pytest.skip(f"no PortAudio here: {p.stderr_text.strip()}")
    assert p.returncode == 0, p.stderr_text
    inputs = json.loads(p.stdout_text)
    q = run_cli("devices")
    lines = q.stdout_text.splitlines()
    if inputs:
        assert q.returncode == 0 and len(lines) == len(inputs), q.stdout_text
        for d, line in zip(inputs, lines, strict=True):
            assert f"{d['index']:3d}  {d['name']}" in line
    else:
        assert (q.returncode, q.stdout_text.strip()) == (1, "no audio input devices found")


def test_the_lite_bundle_is_shipped_with_the_default_tags_and_tags_the_demo(tmp_path, monkeypatch):
    """`--bundle lite` names the shipped small model (rt_tagger/lite_model): the default model's
    units and groups at width 16; `rt-tagger tag --bundle lite` runs it (its ONNX graph is exported
    at first use), and a folder named lite in the working directory would win over it."""
    from rt_tagger.bundled_model import load_bundle, resolve_bundle

    lite, default = load_bundle("lite"), load_bundle(None)
    assert resolve_bundle("lite").name == "lite_model"
    assert lite.tags == default.tags and lite.manifest.groups == default.manifest.groups
    assert lite.manifest.model.width == 16 and default.manifest.model.width == 32
    assert all(0 < t < 1 for t in lite.manifest.thresholds)
    p = run_cli("tag", str(ROOT / "rt_tagger" / "demo" / "demo.ogg"), "--bundle", "lite", "--json",
                "--backend", "onnxruntime-cpu")  # fmt: skip
    assert p.returncode == 0, p.stderr_text
    doc = json.loads(p.stdout_text)
    assert doc["model"] == "rt-tagger-multitask-lite16" and doc["state"] == "music" and doc["windows"] == 35
    (tmp_path / "lite").mkdir()
    monkeypatch.chdir(tmp_path)
    assert resolve_bundle("lite") == type(tmp_path)("lite")
