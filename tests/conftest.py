"""Shared fixtures: small randomly initialised bundles (plumbing tests, not tag quality)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TAGS = ["piano", "guitar", "strings", "drums", "no_drums", "fast", "slow", "ambient"]


def make_random_bundle(
    path: Path, tags: list[str] | None = None, seed: int = 0, width: int = 8, window_frames: int = 64
):
    import torch

    from engines.bundle import Manifest, save_bundle
    from engines.frontend import FrontEndSpec
    from engines.model import ModelSpec, ResNetTagger

    tags = tags or TAGS
    torch.manual_seed(seed)
    spec = ModelSpec(width=width, blocks=(1, 1, 1, 1), embed_dim=32, n_tags=len(tags))
    model = ResNetTagger(spec).eval()
    manifest = Manifest(
        name="random-test-bundle",
        frontend=FrontEndSpec(window_frames=window_frames),
        model=spec,
        tags=tags,
        thresholds=[0.5] * len(tags),
        provenance={"note": "randomly initialised test fixture"},
    )
    return save_bundle(path, model, manifest)


@pytest.fixture(scope="session")
def random_bundle(tmp_path_factory):
    return make_random_bundle(tmp_path_factory.mktemp("bundles") / "random")
