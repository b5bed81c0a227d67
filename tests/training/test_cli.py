"""Bad inputs through `rt-tagger train`: one clear line on stderr and a non-zero exit."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.training.corpus_fixture import make_corpus, write_recipe

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rt_tagger.cli", "train", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=240,
    )


def _one_error_line(res: subprocess.CompletedProcess, needle: str) -> None:
    """Exit 2 and one error line (last); anything before it is the run's own log (no traceback)."""
    assert res.returncode == 2, (res.returncode, res.stderr)
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("rt-tagger: error:")]
    assert len(errors) == 1 and errors[0] == lines[-1], res.stderr
    assert all(ln.startswith(("INFO ", "WARNING ")) for ln in lines[:-1]), res.stderr
    assert needle in errors[0], errors[0]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("cli") / "corpus", n=12)


def test_unknown_pretext(tmp_path, corpus):
    recipe = write_recipe(tmp_path / "r.toml", corpus)
    _one_error_line(
        _run("pretrain", "--recipe", str(recipe), "--pretext", "simsiam", "--out", str(tmp_path / "o")),
        "unknown pretext 'simsiam'",
    )


def test_recipe_not_toml(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[pretrain\nsteps = 3\n")
    _one_error_line(_run("pretrain", "--recipe", str(bad), "--out", str(tmp_path / "o")), "not valid TOML")


def test_recipe_unknown_field_and_bad_value(tmp_path, corpus):
    recipe = write_recipe(tmp_path / "r.toml", corpus, "\n[jetatag]\nbogus = 1\n")
    _one_error_line(_run("pretrain", "--recipe", str(recipe), "--out", str(tmp_path / "o")), "jetatag.bogus")
    recipe = write_recipe(tmp_path / "r2.toml", corpus)
    _one_error_line(
        _run(
            "pretrain",
            "--recipe",
            str(recipe),
            "--set",
            "pretrain.loop.steps=0",
            "--out",
            str(tmp_path / "o"),
        ),
        "pretrain.loop.steps",
    )


def test_missing_recipe_and_usage_errors(tmp_path):
    _one_error_line(
        _run("pretrain", "--recipe", str(tmp_path / "nope.toml"), "--out", str(tmp_path / "o")),
        "recipe not found",
    )
    _one_error_line(_run("bogus-stage"), "invalid choice")


def test_missing_audio_referenced_by_the_table(tmp_path, corpus):
    broken = tmp_path / "corpus"
    shutil.copytree(corpus, broken)
    (broken / "audio" / "clip_003.wav").unlink()
    recipe = write_recipe(tmp_path / "r.toml", broken)
    _one_error_line(_run("pretrain", "--recipe", str(recipe), "--out", str(tmp_path / "o")), "missing")


def test_unreadable_audio(tmp_path, corpus):
    broken = tmp_path / "corpus"
    shutil.copytree(corpus, broken)
    (broken / "audio" / "clip_002.wav").write_bytes(b"not audio at all")
    recipe = write_recipe(tmp_path / "r.toml", broken)
    _one_error_line(_run("pretrain", "--recipe", str(recipe), "--out", str(tmp_path / "o")), "clip_002.wav")


def test_empty_tag_columns(tmp_path, corpus):
    empty = tmp_path / "corpus"
    shutil.copytree(corpus, empty)
    rows = list(csv.DictReader(open(empty / "tags.csv")))
    with open(empty / "tags.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows([{**r, "tags": ""} for r in rows])
    recipe = write_recipe(tmp_path / "r.toml", empty)
    _one_error_line(_run("probe", "--recipe", str(recipe), "--out", str(tmp_path / "o")), "empty tags")


def test_bundle_from_a_non_result(tmp_path):
    _one_error_line(
        _run("export-bundle", "--result", str(tmp_path), "--out", str(tmp_path / "b")),
        "not a training result",
    )
