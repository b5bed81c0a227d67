"""Probe and fine-tune end to end on a tiny fixture corpus → a bundle the runtime loads and runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engines.bundle import Bundle
from engines.model import ModelSpec, ResNetTagger
from engines.registry import open_backend
from tests.training.corpus_fixture import make_corpus, write_recipe
from training.cli import main
from training.probe import label_subset, pooled_features


def test_pooled_features_match_the_backbone():
    torch.manual_seed(0)
    model = ResNetTagger(ModelSpec(width=4, blocks=(1, 1), embed_dim=8, n_tags=3)).eval()
    mel = torch.randn(3, 24, 40) * 10 - 30
    with torch.no_grad():
        assert torch.allclose(model.embed(pooled_features(model, mel)), model.backbone(mel), atol=1e-6)


def test_label_subset_is_seeded_and_sized():
    idx = np.arange(100, 200)
    a, b = label_subset(idx, 0.1, 0), label_subset(idx, 0.1, 0)
    assert len(a) == 10 and np.array_equal(a, b) and set(a) <= set(idx)
    assert len(label_subset(idx, 0.01, 0)) == 2
    assert np.array_equal(label_subset(idx, 1.0, 0), idx)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    corpus = make_corpus(root / "corpus")
    recipe = write_recipe(root / "r.toml", corpus)
    assert (
        main(
            [
                "pretrain",
                "--recipe",
                str(recipe),
                "--pretext",
                "vicreg",
                "--out",
                str(root / "pre"),
                "--no-progress",
            ]
        )
        == 0
    )
    return root, recipe


def _check_bundle(path, tags):
    bundle = Bundle.load(path)
    assert sorted(bundle.tags) == sorted(tags)
    m = bundle.manifest
    assert len(m.thresholds) == len(tags) and all(0 < t < 1 for t in m.thresholds)
    assert 0 <= m.metrics["test"]["roc_auc"] <= 1
    prov = m.provenance
    assert prov["git_commit"] and prov["recipe"]["seed"] == 0 and prov["data_sources"]["labelled"]
    with open_backend(bundle, "torch-cpu") as be:
        out = be.infer(np.random.default_rng(0).normal(-40, 10, (2, *be.input_shape)).astype(np.float32))
    assert out.probabilities.shape == (2, len(tags)) and np.isfinite(out.probabilities).all()


def test_probe_end_to_end_writes_a_runnable_bundle(workspace, capsys):
    root, recipe = workspace
    rc = main(
        [
            "probe",
            "--recipe",
            str(recipe),
            "--backbone",
            str(root / "pre"),
            "--out",
            str(root / "probe"),
            "--export",
            str(root / "b1"),
            "--no-progress",
        ]
    )
    assert rc == 0
    result = json.loads((root / "probe" / "result.json").read_text())
    assert set(result["probe"]["fractions"]) == {"0.5", "1"}
    _check_bundle(root / "b1", ["high", "low", "noise", "tone"])


def test_finetune_end_to_end_then_evaluate(workspace, capsys):
    root, recipe = workspace
    rc = main(
        [
            "finetune",
            "--recipe",
            str(recipe),
            "--backbone",
            str(root / "pre"),
            "--out",
            str(root / "ft"),
            "--export",
            str(root / "b2"),
            "--no-progress",
        ]
    )
    assert rc == 0
    _check_bundle(root / "b2", ["high", "low", "noise", "tone"])
    assert (root / "ft" / "finetune_curves.png").stat().st_size > 0
    assert (root / "ft" / "embedding_map.png").stat().st_size > 0
    capsys.readouterr()
    assert (
        main(
            [
                "evaluate",
                "--recipe",
                str(recipe),
                "--bundle",
                str(root / "b2"),
                "--data",
                str(root / "corpus"),
                "--json",
                str(root / "m.json"),
            ]
        )
        == 0
    )
    brief = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert brief["n"] == 24 and 0 <= brief["roc_auc"] <= 1
    assert json.loads((root / "m.json").read_text())["per_tag"].keys() == {"high", "low", "noise", "tone"}


def test_export_bundle_command(workspace):
    root, _ = workspace
    assert main(["export-bundle", "--result", str(root / "probe"), "--out", str(root / "b3")]) == 0
    assert Bundle.load(root / "b3").manifest.weights_sha256
