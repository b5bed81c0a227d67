"""The music / not-music gate and the silence state, end to end through ``rt-tagger tag`` and
``rt-tagger stream -`` with real bundle files.

The gated bundles are random taggers with an extra tag ``music`` in manifest group ``music``
whose head row has zero weights and a fixed bias, so its probability is sigmoid(bias) on every
window whatever the audio: +4 → 0.982 (music, above the 0.5 threshold), -4 → 0.018 (not music).
Everything else (backbone, other tags) is the same random network, so the two bundles differ only
in what the gate says, and what these tests see is the runtime's reaction to it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from engines.bundle import save_bundle
from rt_tagger.aggregator import Aggregator
from rt_tagger.message_line import format_message
from rt_tagger.messages import TagMessage
from tests.conftest import TAGS, make_random_bundle
from tests.rt_tagger.conftest import run_cli

MUSIC_TAGS = [*TAGS, "music"]


def make_gated_bundle(path, music_bias: float):
    """A random bundle whose ``music`` tag (group music) has probability sigmoid(music_bias)."""
    import torch

    base = make_random_bundle(path.with_name(path.name + "-base"), tags=MUSIC_TAGS)
    model = base.build_model()
    with torch.no_grad():
        model.head.weight[-1].zero_()
        model.head.bias[-1] = music_bias
    groups = ["instrument"] * len(TAGS) + ["music"]
    return save_bundle(path, model, base.manifest.model_copy(update={"groups": groups}))


def torch_cpu(bundle) -> list[str]:
    """CLI options for a test bundle: the torch backend needs no ONNX export (slow on CI)."""
    return ["--bundle", str(bundle.path), "--backend", "torch-cpu"]


@pytest.fixture(scope="module")
def music_on(tmp_path_factory):
    return make_gated_bundle(tmp_path_factory.mktemp("gated") / "music_on", 4.0)


@pytest.fixture(scope="module")
def music_off(tmp_path_factory):
    return make_gated_bundle(tmp_path_factory.mktemp("gated") / "music_off", -4.0)


# ---------------------------------------------------------------- the aggregator's gate (unit)
def test_gate_hides_tags_and_switches_them_off_when_not_music():
    agg = Aggregator(["piano", "drums", "music"], [0.5, 0.5, 0.5], horizon_windows=1, music_index=2)
    r = agg.update(np.array([0.9, 0.2, 0.9]), 1.0)
    assert r.state == "music" and r.active == ["piano"] and [e.tag for e in r.events] == ["piano"]
    assert [t for t, _ in r.top] == ["piano", "drums"]  # the gate itself is never listed
    r = agg.update(np.array([0.9, 0.9, 0.1]), 2.0)  # the head says no: piano goes off, drums stays off
    assert r.state == "not_music" and r.top == [] and r.active == []
    assert [(e.tag, e.state) for e in r.events] == [("piano", "off")]
    r = agg.update(np.array([0.9, 0.9, 0.45]), 3.0)  # between off (0.4) and on (0.5): still not music
    assert r.state == "not_music" and r.active == []
    r = agg.update(np.array([0.9, 0.9, 0.6]), 4.0)
    assert r.state == "music" and r.active == ["piano", "drums"]
    assert [e.tag for e in agg.close_events(5.0)] == ["piano", "drums"]


def test_no_music_head_means_unknown_state():
    r = Aggregator(["piano"], [0.5]).update(np.array([0.9]), 1.0)
    assert r.state is None and r.active == ["piano"]


# ---------------------------------------------------------------- rt-tagger tag
def test_tag_says_not_music(music_off, short_wav, tmp_path):
    """The gate below threshold: the file and every window read "not music", with no tags."""
    out = tmp_path / "t.json"
    p = run_cli("tag", str(short_wav), *torch_cpu(music_off), "--per-window", "--json", str(out))
    assert p.returncode == 0, p.stderr_text
    doc = json.loads(out.read_text())
    assert doc["state"] == "not_music" and doc["top"] == [] and doc["events"] == [] and doc["on"] == []
    assert doc["windows"] > 0 and {w["state"] for w in doc["per_window"]} == {"not_music"}
    assert all(w["top"] == [] for w in doc["per_window"])
    assert doc["scores"]["music"] == pytest.approx(1 / (1 + np.exp(4.0)), abs=1e-4)
    lines = p.stdout_text.splitlines()
    assert lines[0] == f"{short_wav}: not music"
    assert all(line.endswith("s  not music") for line in lines[1:]) and len(lines) == 1 + doc["windows"]


def test_tag_lists_tags_when_music(music_on, short_wav):
    p = run_cli("tag", str(short_wav), *torch_cpu(music_on), "--json")
    assert p.returncode == 0, p.stderr_text
    doc = json.loads(p.stdout_text)
    assert doc["state"] == "music" and doc["window_states"]["music"] == doc["windows"] > 0
    top = [t["tag"] for t in doc["top"]]
    assert len(top) == min(5, len(TAGS)) and "music" not in top
    assert "music" not in [t["tag"] for t in doc["on"]]  # the gate is the state, never a tag on


def test_tag_of_digital_silence_says_silence(tmp_path):
    """60 s of zeros with the shipped model: "silence", not 33 zero scores."""
    import soundfile as sf

    wav = tmp_path / "silence.wav"
    sf.write(str(wav), np.zeros(60 * 16000, np.float32), 16000, subtype="PCM_16")
    p = run_cli("tag", str(wav), "--json", str(tmp_path / "t.json"))
    assert p.returncode == 0, p.stderr_text
    assert p.stdout_text == f"{wav}: silence\n"
    doc = json.loads((tmp_path / "t.json").read_text())
    assert doc["state"] == "silence" and doc["top"] == [] and doc["scores"] == {} and doc["on"] == []
    assert doc["windows"] == 0 and doc["silent_windows"] == doc["window_states"]["silence"] > 100


# ---------------------------------------------------------------- rt-tagger stream -
def test_stream_states_not_music_then_silence(music_off, demo_audio):
    """4 s of music-like audio then 6 s of zeros: not_music tags messages, then silence heartbeats."""
    x, sr = demo_audio
    pcm = np.concatenate([x[: 4 * sr], np.zeros(6 * sr, np.float32)])
    pcm = (np.clip(pcm, -1, 1) * 32767).round().astype("<i2")
    args = ["stream", "-", "--rate", str(sr), *torch_cpu(music_off), "--no-publish", "--json"]
    p = run_cli(*args, input=pcm.tobytes())
    assert p.returncode == 0, p.stderr_text
    msgs = [json.loads(line) for line in p.stdout_text.splitlines() if line.startswith("{")]
    tags = [m for m in msgs if m["kind"] == "tags"]
    beats = [m for m in msgs if m["kind"] == "heartbeat"]
    assert tags and all(m["state"] == "not_music" and m["top"] == [] and m["active"] == [] for m in tags)
    assert beats and all(m["state"] == "silence" and m["heartbeat_reason"] == "silent" for m in beats)
    assert msgs[-1]["kind"] == "end" and msgs[-1]["state"] is None
    assert all(m.get("embedding") is None for m in msgs)  # off by default
    lines = [format_message(TagMessage.model_validate(m)) for m in msgs]  # the console view says so too
    assert sum("not music" in line for line in lines) == len(tags)
    assert sum("heartbeat (silent)" in line for line in lines) == len(beats)


# ---------------------------------------------------------------- the shipped model's own music head
def test_shipped_model_tells_a_tone_and_noise_from_music(tmp_path, short_wav):
    """The default model's music head on real files: a 440 Hz tone and pink-ish noise are "not_music"
    (no tags listed), the demo music is "music"."""
    import soundfile as sf

    from engines.bundle import Bundle
    from rt_tagger.bundled_model import default_bundle_path

    if Bundle.load(default_bundle_path()).manifest.music_index is None:
        pytest.skip("the shipped model has no music head (no tag in manifest group 'music')")
    t = np.arange(8 * 16000) / 16000
    rng = np.random.default_rng(0)
    noise = np.cumsum(rng.standard_normal(len(t))) * 0.002
    noise = (noise - np.convolve(noise, np.ones(400) / 400, mode="same")).astype(np.float32)
    files = {"tone": 0.3 * np.sin(2 * np.pi * 440 * t).astype(np.float32), "noise": np.clip(noise, -1, 1)}
    for name, x in files.items():
        sf.write(str(tmp_path / f"{name}.wav"), x, 16000, subtype="PCM_16")
    for name in files:
        out = tmp_path / f"{name}.json"
        p = run_cli("tag", str(tmp_path / f"{name}.wav"), "--json", str(out))
        assert p.returncode == 0, p.stderr_text
        doc = json.loads(out.read_text())
        assert doc["state"] == "not_music" and doc["top"] == [], (name, doc["state"], doc["top"][:3])
    out = tmp_path / "music.json"
    p = run_cli("tag", str(short_wav), "--json", str(out))
    assert p.returncode == 0, p.stderr_text
    assert json.loads(out.read_text())["state"] == "music"
