"""``rt-tagger bench peers``: ``rt-tagger tag`` vs musicnn 0.1.0 (MTT_musicnn) on the same files.

Both tag whole files with hop = window (musicnn: 3-s patches without overlap, its default;
rt-tagger: the bundle's window, ≈3.09 s, as hop), decode included for both, side by side in one
run, several repetitions, medians and the ratio printed. Two views:

- ``command``: the user's wall clock for one CLI call, process start to exit (interpreter,
  imports, model load, decode, tagging): ``rt-tagger tag FILE`` vs ``python -m musicnn.tagger FILE``.
- ``warm``: inside an already started process (imports done): rt-tagger ``run_file`` with a fresh
  bundle load + pipeline per repetition vs musicnn's ``extractor()``, which likewise loads audio,
  builds its graph and restores its weights on every call.

musicnn runs from its own virtual environment (``scripts/setup_musicnn_env.sh``) as a subprocess;
it is never a dependency of rt-tagger. That environment must have numpy < 2: musicnn 0.1.0
computes ``log10(10000 * mel + 1)`` on a float16 array, which numpy >= 2 keeps in float16 and
overflows on loud music (every window then gets the same tags); the bench refuses such an
environment. With ``--example`` (default: musicnn's published example clip when it is in
``data/musicnn_example/`` or ``$RT_TAGGER_MUSICNN_EXAMPLE``) the warm view first checks that the
environment reproduces musicnn's published top-3 and stops if it does not.

The warm view also times rt-tagger's PyTorch port of MTT_musicnn (``training.teachers``, a
fresh model load per repetition, same patches) and records whether its top-3 equals musicnn's.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.common import BenchError, bundle_info, new_document, open_bench_bundle
from bench.machine import machine_info

__all__ = ["add_arguments", "run", "COLUMNS", "plot", "default_files", "MUSICNN_VENV"]

MUSICNN_VENV = Path(os.environ.get("RT_TAGGER_MUSICNN_VENV", "/work/musicnn-venv"))
ROOT = Path(__file__).resolve().parents[1]
WESNOTH_224S = Path(
    "/usr/share/games/wesnoth/1.16/data/core/music/journeys_end.ogg"
)  # 224.0 s, 44.1 kHz stereo
DEMO = Path(__file__).resolve().parents[1] / "rt_tagger" / "demo" / "demo.ogg"
MARK = "@@BENCH_JSON@@"

COLUMNS = [
    ("file", "file"),
    ("audio_s", "audio s"),
    ("view", "view"),
    ("reps", "reps"),
    ("rt_tagger_s", "rt-tagger s"),
    ("musicnn_s", "musicnn s"),
    ("musicnn_port_s", "port s"),
    ("speedup", "speed-up"),
    ("rt_tagger_x_realtime", "rt-tagger x RT"),
    ("musicnn_x_realtime", "musicnn x RT"),
]

# Runs inside musicnn's venv: import once, check the published example (argv[3], may be ""),
# then time extractor() per file and repetition.
_MUSICNN_WARM = r"""
import contextlib, json, sys, time
files, reps, example = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
with contextlib.redirect_stdout(sys.stderr):
    t0 = time.perf_counter()
    import numpy as np
    from musicnn.extractor import extractor
    import_s = time.perf_counter() - t0
    out = {"import_s": import_s, "numpy": np.__version__, "runs": [], "example": None}
    if example:
        taggram, tags = extractor(example, model="MTT_musicnn", input_length=3, extract_features=False)
        mean = taggram.mean(axis=0)
        out["example"] = [[tags[i], float(mean[i])] for i in mean.argsort()[::-1][:10]]
    for rep in range(reps):
        for f in files:
            t = time.perf_counter()
            taggram, tags = extractor(f, model="MTT_musicnn", input_length=3, input_overlap=False, extract_features=False)
            dt = time.perf_counter() - t
            mean = taggram.mean(axis=0)
            top = [[tags[i], round(float(mean[i]), 4)] for i in mean.argsort()[::-1][:3]]
            out["runs"].append({"file": f, "rep": rep, "seconds": dt, "windows": int(taggram.shape[0]), "top3": top})
print("@@BENCH_JSON@@" + json.dumps(out))
"""


def default_files() -> list[Path]:
    return [WESNOTH_224S] if WESNOTH_224S.is_file() else [DEMO]


def default_example() -> Path | None:
    """musicnn's published example clip, when the user put it where the bench looks."""
    from training.teachers.musicnn import PUBLISHED_EXAMPLE

    for p in (
        os.environ.get("RT_TAGGER_MUSICNN_EXAMPLE"),
        ROOT / "data" / "musicnn_example" / PUBLISHED_EXAMPLE["file"],
    ):
        if p and Path(p).is_file():
            return Path(p)
    return None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="*", type=Path, help=f"audio files (default: {WESNOTH_224S.name}, 224 s)")
    p.add_argument("--reps", type=int, default=3, help="repetitions per file and view (median; default 3)")
    p.add_argument("--views", default="command,warm", help="comma list: command, warm (default both)")
    p.add_argument(
        "--musicnn-venv",
        type=Path,
        default=MUSICNN_VENV,
        help=f"musicnn's environment (default {MUSICNN_VENV})",
    )
    p.add_argument(
        "--example",
        type=Path,
        default=None,
        help="musicnn's published example clip to check the environment with (default: "
        "data/musicnn_example/ or $RT_TAGGER_MUSICNN_EXAMPLE when there)",
    )


def _musicnn_env() -> dict:
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore")
    env.pop("PYTHONPATH", None)
    return env


def _timed(cmd: list[str], env: dict | None = None) -> tuple[float, str]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise BenchError(f"command failed ({p.returncode}): {' '.join(cmd[:4])} …: {tail[0]}")
    return dt, p.stdout


def _rt_tag_command(path: Path, bundle_path: Path, hop: float) -> list[str]:
    return [
        sys.executable,
        "-m",
        "rt_tagger.cli",
        "tag",
        str(path),
        "--bundle",
        str(bundle_path),
        "--hop",
        f"{hop:.6f}",
    ]


def _check_numpy(mpy: Path) -> str:
    """musicnn's numpy version; numpy >= 2 makes musicnn's front end overflow (see module doc)."""
    p = subprocess.run(
        [str(mpy), "-c", "import numpy; print(numpy.__version__)"], capture_output=True, text=True
    )
    version = p.stdout.strip()
    if p.returncode != 0 or not version:
        raise BenchError(
            f"musicnn environment {mpy.parent.parent} has no working numpy: run scripts/setup_musicnn_env.sh"
        )
    if int(version.split(".")[0]) >= 2:
        raise BenchError(
            f"musicnn environment {mpy.parent.parent} has numpy {version}: musicnn 0.1.0 overflows in float16 "
            "under numpy >= 2 (same tags on every loud window); rerun scripts/setup_musicnn_env.sh (numpy < 2)"
        )
    return version


def _check_example(top10: list, where: str) -> dict:
    """Compare musicnn's top tags on its example with the published ones; BenchError if they differ."""
    from training.teachers.musicnn import PUBLISHED_EXAMPLE

    got = {t: round(v, 4) for t, v in top10[:3]}
    ok = [t for t, _ in top10] == PUBLISHED_EXAMPLE["top10"] and got == PUBLISHED_EXAMPLE["top3_values"]
    if not ok:
        raise BenchError(
            f"{where} does not reproduce musicnn's published example: top-3 {got}, "
            f"expected {PUBLISHED_EXAMPLE['top3_values']}"
        )
    return {
        "file": PUBLISHED_EXAMPLE["file"],
        "top3": got,
        "top10": [t for t, _ in top10],
        "reproduced": True,
    }


def _port_warm(path: Path) -> tuple[float, list]:
    """rt-tagger's PyTorch MTT_musicnn: load, decode, tag on musicnn's own patches (as extractor())."""
    from training.data.audio import read_audio
    from training.teachers.musicnn import MusicnnTeacher

    t0 = time.perf_counter()
    out = MusicnnTeacher("MTT_musicnn").predict(read_audio(path, 16000))
    dt = time.perf_counter() - t0
    mean = out.probs.mean(axis=0)
    return dt, [[out.tags[i], round(float(mean[i]), 4)] for i in mean.argsort()[::-1][:3]]


def _rt_warm(path: Path, bundle_path: Path, hop: float) -> tuple[float, int, list[str], dict]:
    from engines.bundle import Bundle
    from rt_tagger.pipeline import run_file

    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        res = run_file(path, Bundle.load(bundle_path), hop=hop, block_size=65536)
    dt = time.perf_counter() - t0
    return dt, len(res.windows), [t for t, _ in res.clip_top(3)], res.backend


def _audio_seconds(path: Path) -> float:
    import soundfile as sf

    try:
        return float(sf.info(str(path)).duration)
    except (OSError, RuntimeError) as e:
        raise BenchError(f"cannot read audio {path}: {e}") from None


def run(args: argparse.Namespace) -> dict:
    files = [Path(f).resolve() for f in (args.files or default_files())]
    durations = {f: _audio_seconds(f) for f in files}
    mpy = args.musicnn_venv / "bin" / "python"
    if not mpy.is_file():
        raise BenchError(
            f"musicnn environment not found at {args.musicnn_venv}: run scripts/setup_musicnn_env.sh {args.musicnn_venv}"
        )
    numpy_version = _check_numpy(mpy)
    example = args.example if args.example is not None else default_example()
    if example is not None and not example.is_file():
        raise BenchError(f"--example {example}: no such file")
    bundle, label = open_bench_bundle(args.bundle)
    hop = bundle.frontend.window_seconds  # hop = window
    views = [v.strip() for v in args.views.split(",") if v.strip()]
    doc = new_document(
        "peers",
        machine_info(),
        {
            "files": [str(f) for f in files],
            "reps": args.reps,
            "views": views,
            "rt_tagger_hop_s": hop,
            "musicnn": "0.1.0 MTT_musicnn, input_length 3 s, no overlap",
            "musicnn_venv": str(args.musicnn_venv),
            "musicnn_numpy": numpy_version,
        },
    )
    doc["bundle"] = bundle_info(bundle, label)
    raw: dict = {"command": {}, "warm": {}}
    tops: dict = {}

    if "command" in views:
        for f in files:
            rt, mn = [], []
            for _ in range(args.reps):  # interleaved: load changes hit both alike
                dt, _ = _timed(_rt_tag_command(f, bundle.path, hop))
                rt.append(dt)
                dt, out = _timed(
                    [
                        str(mpy),
                        "-m",
                        "musicnn.tagger",
                        str(f),
                        "--model",
                        "MTT_musicnn",
                        "--topN",
                        "3",
                        "--length",
                        "3",
                        "--overlap",
                        "0",
                        "--print",
                    ],
                    _musicnn_env(),
                )
                mn.append(dt)
            raw["command"][str(f)] = {"rt_tagger": rt, "musicnn": mn}

    if "warm" in views:
        p = subprocess.run(
            [
                str(mpy),
                "-c",
                _MUSICNN_WARM,
                json.dumps([str(f) for f in files]),
                str(args.reps),
                str(example or ""),
            ],
            capture_output=True,
            text=True,
            env=_musicnn_env(),
        )
        line = next((ln for ln in p.stdout.splitlines() if ln.startswith(MARK)), None)
        if p.returncode != 0 or line is None:
            tail = p.stderr.strip().splitlines()[-1:] or ["(no output)"]
            raise BenchError(f"musicnn run failed ({p.returncode}): {tail[0]}")
        mres = json.loads(line[len(MARK) :])
        doc["settings"]["musicnn_import_s"] = mres["import_s"]
        if mres["example"] is not None:
            doc["settings"]["musicnn_example_check"] = _check_example(
                mres["example"], "musicnn's environment"
            )
        else:
            doc["notes"].append(
                "musicnn's published example not found (data/musicnn_example/ or --example): "
                "the environment was checked for numpy < 2 only"
            )
        for f in files:
            rt, port = [], []
            for _ in range(args.reps):
                dt, n_windows, top, backend = _rt_warm(f, bundle.path, hop)
                doc["settings"]["rt_tagger_backend"] = backend
                rt.append(dt)
                dt, port_top = _port_warm(f)
                port.append(dt)
            runs = [r for r in mres["runs"] if r["file"] == str(f)]
            raw["warm"][str(f)] = {
                "rt_tagger": rt,
                "musicnn": [r["seconds"] for r in runs],
                "musicnn_port": port,
            }
            tops[str(f)] = {
                "rt_tagger": top,
                "rt_tagger_windows": n_windows,
                "musicnn": runs[0]["top3"],
                "musicnn_windows": runs[0]["windows"],
                "musicnn_port": port_top,
                "port_top3_equal": [t for t, _ in port_top] == [t for t, _ in runs[0]["top3"]],
            }

    for view in views:
        for f in files:
            t = raw[view][str(f)]
            rt_s, mn_s = statistics.median(t["rt_tagger"]), statistics.median(t["musicnn"])
            port_s = statistics.median(t["musicnn_port"]) if "musicnn_port" in t else None
            doc["results"].append({
                "file": f.name, "audio_s": durations[f], "view": view, "reps": args.reps,
                "rt_tagger_s": rt_s, "musicnn_s": mn_s, "musicnn_port_s": port_s, "speedup": mn_s / rt_s,
                "rt_tagger_x_realtime": durations[f] / rt_s, "musicnn_x_realtime": durations[f] / mn_s,
                "rt_tagger_all_s": t["rt_tagger"], "musicnn_all_s": t["musicnn"], "musicnn_port_all_s": t.get("musicnn_port"),
                **({"top3": tops[str(f)]} if view == "warm" else {}),
            })  # fmt: skip
    for r in doc["results"]:
        doc["summary"][f"{r['view']} speed-up ({r['file']})"] = r["speedup"]
    doc["notes"].append(
        "speed-up = musicnn median time / rt-tagger median time (> 1: rt-tagger faster); target >= 2"
    )
    doc["notes"].append("port s: rt-tagger's PyTorch MTT_musicnn (training.teachers), warm view only")
    if "random" in label:
        doc["notes"].append(
            "rt-tagger top tags are meaningless with random weights; timing is what is compared"
        )
    return doc


def plot(doc: dict, stem) -> list:
    from bench.plots import _figure, _save

    plt = _figure()
    rows = doc["results"]
    fig, ax = plt.subplots(figsize=(7, 4))
    labels = [f"{r['file']}\n{r['view']}" for r in rows]
    x = range(len(rows))
    ax.bar([i - 0.27 for i in x], [r["rt_tagger_s"] for r in rows], width=0.27, label="rt-tagger tag")
    ax.bar(list(x), [r["musicnn_s"] for r in rows], width=0.27, label="musicnn 0.1.0 (TensorFlow)")
    ax.bar(
        [i + 0.27 for i in x],
        [r["musicnn_port_s"] or 0.0 for r in rows],
        width=0.27,
        label="MTT_musicnn PyTorch port (warm only)",
    )
    ax.set_xticks(list(x), labels, fontsize=8)
    ax.set_ylabel("seconds per file (median)")
    ax.legend()
    ax.set_title("peers: time to tag a file (decode included)")
    try:
        return [_save(fig, stem.with_name(stem.name + "-peers.png"))]
    finally:
        plt.close(fig)
