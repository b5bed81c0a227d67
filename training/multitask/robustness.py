"""A bundle on held-out real music heard through other channels, against the teachers on the clean audio.

    python -m training.multitask.robustness --corpus /work/data/real_test --centre-seconds 45 \\
        --labels /work/data/labels_orig/labels_real_test.npz --out robustness.json

Why: ``rt-tagger listen`` hears music through a loudspeaker and a microphone, not from the file.
Each channel (a small speaker's band, a telephone line, a bit-crusher, a tilt, an MP3: the same
transforms as the synthetic composers', :func:`training.corpora.synth.apply_eq` / ``apply_codec``;
a room: the training's reverb, :func:`training.augment.degrade_channel`; a fixed seed per track)
is applied to every whole track before it is cut into windows; the student's windows are scored
against the teachers' labels of the *clean* audio, so a number that falls is the student losing
what it heard on the clean track. Per channel: the distilled units' mean Spearman and macro ROC-AUC (the evaluation's binarisation), the vocals ROC-AUC, the share of
windows flagged as not music, the units on in more than 60 % of the windows, whole-track tags
against the teachers' (:func:`training.multitask.evaluate.track_decisions`: a file's tags as
``rt-tagger tag`` decides them), and the student's
Spearman with its own outputs on the clean audio, per unit (instruments and drums have no teacher). With
``--teacher`` the teachers also label each degraded channel, and the same agreement numbers of the
teachers' degraded labels with their clean ones say how much of the loss is the channel's (what no
student could hear) rather than the student's.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

# name -> (kind, transform): kinds as training.corpora.synth names them
CHANNELS = {
    "clean": ("", ""),
    "band_limit": ("eq", "band_limit"),
    "tilt": ("eq", "tilt"),
    "telephone": ("codec", "telephone"),
    "bitcrush": ("codec", "bitcrush"),
    "mp3": ("codec", "mp3"),
    "room": ("room", ""),  # a living room: RT60 0.4-0.8 s, 30-50 % wet (training.augment.degrade_channel)
}


def degrade(wave: np.ndarray, channel: str, seed: int, sr: int) -> np.ndarray:
    """``wave`` through ``channel`` (:data:`CHANNELS`), RMS kept (a quieter channel is not the point)."""
    from training.corpora.synth import apply_codec, apply_eq

    kind, name = CHANNELS[channel]
    if not kind:
        return wave
    rng = np.random.default_rng(seed)
    x = wave.astype(np.float64)
    if kind == "room":
        import torch

        from training.augment import ChannelSpec, degrade_channel

        room = ChannelSpec(reverb_p=1.0, reverb_rt60_s=(0.4, 0.8), reverb_wet=(0.3, 0.5))
        gen = torch.Generator().manual_seed(seed)
        y = degrade_channel(torch.from_numpy(x)[None], room, sr, gen)[0].numpy()
    elif kind == "eq":
        y = apply_eq(x, name, rng, sr)
    else:
        y = apply_codec(x, name, rng, sr)
    rms_in, rms_out = np.sqrt(np.mean(x**2)), np.sqrt(np.mean(y**2))
    y = y * (rms_in / rms_out) if rms_out > 1e-9 else y
    return np.clip(y, -1.0, 1.0).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m training.multitask.robustness", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--bundle", type=Path, default=Path("rt_tagger/default_model"))
    ap.add_argument("--corpus", type=Path, required=True, help="a real-music corpus folder or pack")
    ap.add_argument(
        "--labels", type=Path, required=True, help="the teachers' labels of its clean audio (.npz)"
    )
    ap.add_argument("--centre-seconds", type=float, default=0.0, help="the crop the labels were made on")
    ap.add_argument("--channel", action="append", choices=list(CHANNELS), help="default: all")
    ap.add_argument("--teacher", action="store_true", help="also the teachers on each channel (minutes each)")
    ap.add_argument(
        "--recipe", type=Path, default=Path("configs/train_multitask.toml"), help="the labels' windows"
    )
    ap.add_argument("--out", type=Path, required=True, help="results JSON")
    a = ap.parse_args(argv)
    from engines.errors import UserError

    try:
        return _run(a, a.channel or list(CHANNELS))
    except (UserError, FileNotFoundError) as e:  # a missing bundle, corpus or labels file
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run(a: argparse.Namespace, channels: list[str]) -> int:
    import torch

    from engines.atomic import write_json
    from engines.logmel_torch import LogMel
    from training.multitask import data as mt_data
    from training.multitask.evaluate import _teacher_agreement, _vocals_auc, predict, track_decisions
    from training.multitask.vocab import bundle_units
    from training.provenance import git_commit, machine

    bundle, specs = bundle_units(a.bundle)
    names = [s.name for s in specs]
    if not a.labels.is_file():
        raise FileNotFoundError(f"labels not found: {a.labels}")
    labels = mt_data.load_labels(a.labels)
    clean = mt_data.load_corpus(a.corpus, centre_seconds=a.centre_seconds)
    model = bundle.build_model().eval()
    logmel = LogMel(bundle.manifest.frontend)
    sr = bundle.manifest.frontend.sample_rate
    thr = np.asarray(bundle.manifest.thresholds, np.float32)
    music = names.index("music")
    target, _ = mt_data.real_targets(specs, labels)
    results = {}
    if a.teacher:
        from training.multitask.pipeline import label_grid, load_multitask_recipe

        grid = label_grid(load_multitask_recipe(a.recipe))

    def heard(channel: str) -> tuple[mt_data.Corpus, np.ndarray]:
        waves = [degrade(w, channel, i, sr) for i, w in enumerate(clean.waves)]
        corpus = mt_data.Corpus(clean.name, clean.names, waves, clean.tags, clean.meta)
        source = mt_data.real_source(specs, corpus, labels, bundle.manifest.frontend.window_samples)
        return corpus, predict(model, logmel, source)

    corpus_clean, probs_clean = heard("clean")
    for channel in channels:
        corpus, probs = (corpus_clean, probs_clean) if channel == "clean" else heard(channel)
        per_tag, rhos, aucs = _teacher_agreement(specs, probs, target)
        # the student against itself on the clean audio, every unit (instruments and drums too)
        stable = {n: _spearman(probs[:, j], probs_clean[:, j]) for j, n in enumerate(names)}
        on = probs >= thr[None, :]
        rates = {n: float(on[:, j].mean()) for j, n in enumerate(names) if n != "music"}
        results[channel] = {
            "windows": len(probs), "mean_spearman": _mean(rhos), "macro_roc_auc": _mean(aucs),
            "vocals_roc_auc": _vocals_auc(specs, probs, target),
            "not_music_flagged": float((probs[:, music] < thr[music]).mean()),
            "on_over_60pct": sorted(n for n, r in rates.items() if r > 0.6),
            "on_rates": {n: round(r, 4) for n, r in rates.items()},
            "spearman_per_tag": {k: v["spearman"] for k, v in per_tag.items()},
            "self_spearman": _mean([v for v in stable.values() if v is not None]),
            "self_spearman_per_unit": stable,
            "track_decisions": track_decisions(specs, thr, probs, target, labels["track"]),
        }  # fmt: skip
        if a.teacher:  # the teachers' own loss on this channel, on the same windows
            relabelled = mt_data.label_windows(corpus, grid, "cpu")
            if not np.array_equal(relabelled["track"], labels["track"]):
                print(f"error: {a.labels} are not this corpus's windows at the recipe's hop", file=sys.stderr)
                return 2
            target_heard, _ = mt_data.real_targets(specs, relabelled)
            _, t_rhos, t_aucs = _teacher_agreement(specs, target_heard, target)
            results[channel]["teacher"] = {
                "mean_spearman": _mean(t_rhos), "macro_roc_auc": _mean(t_aucs),
                "vocals_roc_auc": _vocals_auc(specs, target_heard, target),
            }  # fmt: skip
            t = results[channel]["teacher"]
            print(
                f"  teachers on {channel}: Spearman {_f(t['mean_spearman'])}, ROC-AUC {_f(t['macro_roc_auc'])}"
            )
        r = results[channel]
        print(f"{channel}: Spearman {_f(r['mean_spearman'])}, ROC-AUC {_f(r['macro_roc_auc'])}, "
              f"with itself on the clean audio {_f(r['self_spearman'])}, "
              f"vocals {_f(r['vocals_roc_auc'])}, not music {100 * r['not_music_flagged']:.1f} %, "
              f"on > 60 %: {', '.join(r['on_over_60pct']) or 'none'}, "
              f"tracks' tags macro F1 {_f(r['track_decisions']['macro_f1'])}", flush=True)  # fmt: skip
    doc = {
        "mode": "channel_robustness", "created": time.strftime("%Y-%m-%d"), "bundle": bundle.manifest.name,
        "settings": {"corpus": str(a.corpus), "labels": str(a.labels), "centre_seconds": a.centre_seconds,
                     "torch_threads": torch.get_num_threads()},
        "results": results, "machine": machine(), "git_commit": git_commit(),
    }  # fmt: skip
    write_json(a.out, doc)
    print(f"wrote {a.out}")
    return 0


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic) if np.ptp(a) > 0 and np.ptp(b) > 0 else None


def _mean(values: list[float]) -> float | None:
    """The mean of the defined values (None when a channel left none: no positives in the windows)."""
    return float(np.mean(values)) if values else None


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


if __name__ == "__main__":
    sys.exit(main())
