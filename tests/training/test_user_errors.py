"""Mistakes a user makes with `rt-tagger train`: each one is one line on stderr and exit 2, before
any training starts. Run in-process through rt_tagger.cli (the same path as the command) so each
check costs milliseconds; test_cli.py runs the same path in subprocesses."""

from __future__ import annotations

import logging

import pytest
import torch

from rt_tagger.cli import main
from tests.training.corpus_fixture import make_corpus, write_recipe
from tests.training.user_music import class_folders, write_tracks


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("errors") / "corpus", n=12)


def _error(capsys, *argv: str) -> str:
    """Run ``rt-tagger train …``; assert exit 2 and exactly one error line; return it."""
    capsys.readouterr()
    assert main(["train", *argv]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("rt-tagger: error: "), err
    return err[0]


def test_every_missing_corpus_is_reported_at_once_with_its_flag(capsys, tmp_path):
    line = _error(
        capsys, "all", "--labelled", "no_music", "--test", "no_test", "--pretrain", "a", "b",
        "--out", str(tmp_path / "o"),
    )  # fmt: skip
    assert "4 data problem(s)" in line
    for where, path in (
        ("data.labelled (--labelled)", "no_music"),
        ("data.test (--test)", "no_test"),
        ("data.pretrain[0] (--pretrain)", "a"),
        ("data.pretrain[1] (--pretrain)", "b"),
    ):
        assert f"{where}: corpus not found: {path}" in line
    assert not (tmp_path / "o").exists()


def test_labelled_corpus_without_tags(capsys, tmp_path):
    write_tracks(tmp_path / "audio", ["bright", "muffled"], seconds=1.0)  # a plain folder of audio
    line = _error(capsys, "probe", "--labelled", str(tmp_path / "audio"), "--out", str(tmp_path / "o"))
    assert "data.labelled (--labelled): no tags found (unlabelled audio)" in line


def test_one_class_folder_has_nothing_to_learn(capsys, caplog, tmp_path):
    class_folders(tmp_path / "music", {"audio": 3}, seconds=1.0)
    with caplog.at_level(logging.WARNING):
        line = _error(capsys, "finetune", "--labelled", str(tmp_path / "music"), "--out", str(tmp_path / "o"))
    assert "data.labelled (--labelled): no usable tags left" in line
    assert "tag 'audio' is on every track (nothing to tell apart): left out" in caplog.text


def test_features_output_as_training_data(capsys, tmp_path):
    (tmp_path / "feats" / "feats").mkdir(parents=True)
    (tmp_path / "feats" / "manifest.json").write_text("{}")
    line = _error(capsys, "all", "--labelled", str(tmp_path / "feats"), "--out", str(tmp_path / "o"))
    assert "is `rt-tagger features` output" in line


def test_set_typo_gets_a_did_you_mean(capsys):
    line = _error(capsys, "recipe", "--small", "--set", "pretrain.loop.stepz=5")
    assert line.endswith(
        "--set pretrain.loop.stepz=5: unknown field pretrain.loop.stepz; did you mean pretrain.loop.steps?"
    )
    line = _error(capsys, "recipe", "--set", "pretrian.loop.steps=5")
    assert "did you mean pretrain?" in line
    line = _error(capsys, "recipe", "--small", "--set", "pretrain.loop.steps=0")
    assert line.endswith(
        "--set pretrain.loop.steps=0: pretrain.loop.steps: Input should be greater than or equal to 1"
    )


def test_recipe_file_typo_names_the_file(capsys, tmp_path, corpus):
    recipe = write_recipe(tmp_path / "r.toml", corpus, "\n[finetune]\nbackbone_lr_scal = 0.5\n")
    line = _error(capsys, "recipe", "--recipe", str(recipe))
    assert (
        f"recipe {recipe}: unknown field finetune.backbone_lr_scal; did you mean finetune.backbone_lr_scale?"
        in line
    )


def test_recipe_and_small_together(capsys, tmp_path, corpus):
    recipe = write_recipe(tmp_path / "r.toml", corpus)
    assert "give --recipe FILE or --small, not both" in _error(
        capsys, "recipe", "--recipe", str(recipe), "--small"
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: --device cuda is valid here")
def test_device_cuda_without_a_gpu(capsys, tmp_path, corpus):
    line = _error(
        capsys, "pretrain", "--labelled", str(corpus), "--device", "cuda", "--out", str(tmp_path / "o")
    )
    assert line.endswith("--device cuda: no CUDA GPU is available here; use --device cpu (or auto)")


def test_resume_into_a_run_of_another_pretext(capsys, tmp_path, corpus):
    recipe = write_recipe(tmp_path / "r.toml", corpus)
    out = str(tmp_path / "o")
    common = [
        "pretrain",
        "--recipe",
        str(recipe),
        "--out",
        out,
        "--no-progress",
        "--set",
        "pretrain.loop.steps=2",
    ]
    assert main(["train", *common, "--pretext", "byol"]) == 0
    line = _error(capsys, *common, "--pretext", "vicreg")
    assert f"{out} holds a pretrain[byol] checkpoint (step 2), not pretrain[vicreg]" in line
    assert "--no-resume" in line
    assert main(["train", *common, "--pretext", "vicreg", "--no-resume"]) == 0


def test_evaluate_needs_a_corpus(capsys, tmp_path):
    assert "give the labelled corpus with --test" in _error(capsys, "evaluate", "--bundle", str(tmp_path))


def test_recipe_is_chosen_by_data_size_and_printed(capsys, caplog, corpus):
    with caplog.at_level(logging.INFO):
        assert main(["train", "recipe", "--labelled", str(corpus)]) == 0
    out = capsys.readouterr().out
    assert "recipe: train_small.toml (12 tracks < 1000" in caplog.text
    assert "# resolved from" in out and "width = 8" in out and f'labelled = "{corpus}"' in out
    assert "pretrain = []" in out and 'real = ""' in out  # the default model's corpora are not used
    assert main(["train", "recipe"]) == 0
    assert 'name = "rt-tagger-default"' in capsys.readouterr().out


def test_warm_up_longer_than_the_run_is_warned(capsys, caplog):
    with caplog.at_level(logging.WARNING):
        assert (
            main(["train", "recipe", "--small", "--steps", "20", "--set", "pretrain.loop.warmup_fraction=0"])
            == 0
        )
    assert "pretrain.loop: warm-up (100 steps) >= steps (20)" in caplog.text
