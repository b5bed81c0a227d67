"""Fixtures for the streaming-path tests: bundles, audio files, a CLI runner.

``sensitive_bundle`` is a randomly initialised tagger whose normalisation statistics are fitted to
the demo clip (input BatchNorm to its dB mean/variance, embedding BatchNorm to the embeddings of
its windows) and whose head is scaled so logits vary by about ±1 across windows. Its scores then
depend on the audio content (they spread over [0, 1] along the clip) instead of sitting at ≈0.5
as a plain random network's do, so comparisons between paths (file vs microphone, block sizes)
actually test something. It is still not a trained model: tag names mean nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TAGS, make_random_bundle

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "rt_tagger" / "demo" / "demo.ogg"


def make_sensitive_bundle(path: Path, seed: int = 0, head_std: float = 1.0):
    import soundfile as sf
    import torch

    from engines.bundle import Manifest, save_bundle
    from engines.frontend import FrontEndSpec, logmel_numpy
    from engines.model import ModelSpec, ResNetTagger

    torch.manual_seed(seed)
    spec = ModelSpec(width=8, blocks=(1, 1, 1, 1), embed_dim=32, n_tags=len(TAGS))
    fe = FrontEndSpec(window_frames=64)
    model = ResNetTagger(spec).eval()
    x, _ = sf.read(str(DEMO), dtype="float32")
    mel = logmel_numpy(x, fe)
    w = torch.from_numpy(np.stack([mel[:, i : i + 64] for i in range(0, mel.shape[1] - 64, 6)]))
    with torch.no_grad():
        model.input_norm.running_mean.fill_(float(mel.mean()))
        model.input_norm.running_var.fill_(float(mel.var()))
        feats = []
        hook = model.embed[0].register_forward_hook(lambda m, i, o: feats.append(o))
        model(w)
        hook.remove()
        model.embed[1].running_mean.copy_(feats[0].mean(0))
        model.embed[1].running_var.copy_(feats[0].var(0) + 1e-6)
        logits, _ = model(w)
        model.head.weight.div_(logits.std(0)[:, None] / head_std)
        logits, _ = model(w)
        model.head.bias.sub_(logits.mean(0))
    manifest = Manifest(
        name="sensitive-test-bundle",
        frontend=fe,
        model=spec,
        tags=TAGS,
        thresholds=[0.5] * len(TAGS),
        provenance={"note": "random weights, normalisation fitted to the demo clip (test fixture)"},
    )
    return save_bundle(path, model, manifest)


@pytest.fixture(scope="session")
def sensitive_bundle(tmp_path_factory):
    return make_sensitive_bundle(tmp_path_factory.mktemp("bundles") / "sensitive")


@pytest.fixture(scope="session")
def plain_bundle(tmp_path_factory):
    return make_random_bundle(tmp_path_factory.mktemp("bundles") / "plain")


@pytest.fixture(scope="session")
def demo_audio() -> tuple[np.ndarray, int]:
    import soundfile as sf

    x, sr = sf.read(str(DEMO), dtype="float32")
    return x, sr


@pytest.fixture(scope="session")
def short_wav(tmp_path_factory, demo_audio) -> Path:
    """6 s of the demo clip as 16-bit WAV."""
    import soundfile as sf

    x, sr = demo_audio
    p = tmp_path_factory.mktemp("audio") / "short.wav"
    sf.write(str(p), x[: 6 * sr], sr, subtype="PCM_16")
    return p


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RT_TAGGER_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def run_cli(*args: str, input: bytes | None = None, env: dict | None = None, timeout: float = 120, cwd=None):
    """``rt-tagger ARGS`` in a real subprocess; returns CompletedProcess with text stdout/stderr."""
    cmd = [sys.executable, "-m", "rt_tagger.cli", *args]
    p = subprocess.run(
        cmd, input=input, capture_output=True, timeout=timeout, env=env or cli_env(), cwd=cwd or ROOT
    )
    p.stdout_text = p.stdout.decode(errors="replace")
    p.stderr_text = p.stderr.decode(errors="replace")
    return p
