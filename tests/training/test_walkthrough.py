"""The README walkthrough as a user would run it: their own music (a folder with a CSV under a
non-standard name, and a folder-per-class test set), `rt-tagger train all` with the small CPU
recipe, then `rt-tagger tag` and `rt-tagger train evaluate` with the bundle it wrote.

The collection carries each problem that used to pass silently, and the test checks that the run
says so: the layout and tags found, the table name it guessed, a constant tag column, a tag with
too few tracks, and a trained tag the test set cannot score.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engines.bundle import Bundle
from tests.training.user_music import class_folders, csv_collection

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # one small training run on the CPU (CI runs it)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run(
        [sys.executable, "-m", "rt_tagger.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return res


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    home = tmp_path_factory.mktemp("walkthrough")
    csv_collection(home / "music", per_class=8, seconds=4.0)
    class_folders(home / "holdout", {"bright": 2, "muffled": 2}, seconds=4.0, seed=100)
    res = _cli(
        "train", "all", "--small", "--labelled", "music", "--test", "holdout",
        "--out", "runs/mine", "--export", "mine", "--no-progress", cwd=home,
    )  # fmt: skip
    return home, res


def test_training_says_what_it_found_and_what_it_left_out(run):
    _, res = run
    err = res.stderr
    print(err[-6000:])
    # layout and tag list
    assert "data.labelled = music: folder + tags table, 24 tracks" in err
    assert "5 tags: bright 8, muffled 8, noisy 8, vocals 0, ambient 1" in err
    assert "data.test = holdout: folder per class, 4 tracks; 2 tags: bright 2, muffled 2" in err
    # each formerly silent problem, as a warning
    assert (
        "WARNING training.data_check: data.labelled: tags table my_tags.csv used (not a standard name" in err
    )
    assert "tag 'vocals' is on no track (an empty column): left out" in err
    assert "tag 'ambient' has 1 track(s), fewer than data.min_tracks_per_tag = 3: left out" in err
    assert "finetune test: 1 tag(s) left out of the metrics" in err and "not labelled there): noisy" in err
    # the small recipe's warm-up fits its step count; stages announce themselves
    assert "warm-up" not in err
    assert "──── pretrain: contrastive, 30 steps on" in err
    assert "──── probe: random-init backbone (the baseline" in err
    assert "no --pretrain corpus: pretraining on the labelled train and valid audio" in err


def test_the_bundle_is_named_after_the_run_and_tags_audio(run):
    home, res = run
    brief = json.loads(res.stdout.strip().splitlines()[-2])
    assert set(brief) == {"probe (pretrained)", "probe (random-init baseline)", "finetune"}
    bundle = Bundle.load(home / "mine")
    assert bundle.manifest.name == "mine" and bundle.tags == ["bright", "muffled", "noisy"]
    assert bundle.manifest.metrics["test"]["skipped"] == ["noisy"]
    clip = sorted((home / "holdout" / "muffled").iterdir())[0]
    tagged = _cli("tag", "--bundle", "mine", str(clip), "--json", cwd=home)
    doc = json.loads(tagged.stdout)
    assert doc["model"] == "mine" and set(doc["scores"]) == {"bright", "muffled", "noisy"}
    assert doc["windows"] > 0 and doc["top"][0]["tag"] in doc["scores"]


def test_evaluate_reports_classes_with_a_confusion_matrix(run):
    home, _ = run
    res = _cli(
        "train",
        "evaluate",
        "--bundle",
        "mine",
        "--test",
        "holdout",
        "--json",
        "eval.json",
        "--no-progress",
        cwd=home,
    )
    brief = json.loads(res.stdout.strip().splitlines()[-1])
    assert brief["n"] == 4 and set(brief["f1"]) == {"bright", "muffled", "noisy"}
    assert 0 <= brief["accuracy"] <= 1 and brief["skipped"] == ["noisy"]
    full = json.loads((home / "eval.json").read_text())
    cm = full["classes"]["confusion"]
    assert sum(map(sum, cm)) == 4 and [sum(row) for row in cm] == [2, 2, 0]
    assert (home / "eval_confusion.png").stat().st_size > 1000
    assert "left out of the metrics" in res.stderr
