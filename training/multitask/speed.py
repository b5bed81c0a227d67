"""Student vs teacher speed on the same file and CPU (issue 11: "at least 10x faster").

    python -m training.multitask.speed FILE --bundle BUNDLE [--hop 1.0] [--threads 1]

Both label every window of one grid (the bundle's window, ``--hop`` apart): the student computes
its log-mel and runs its network; the teacher (musicnn MTT, PyTorch port) computes musicnn's
log-mel and runs its network. Decoding is outside both timings. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main(argv: list[str] | None = None) -> int:
    from engines.bundle import Bundle
    from engines.logmel_torch import LogMel
    from training.data.audio import read_audio
    from training.teachers.base import WindowGrid
    from training.teachers.musicnn import MusicnnTeacher

    ap = argparse.ArgumentParser(
        prog="python -m training.multitask.speed", description=__doc__.splitlines()[0]
    )
    ap.add_argument("file")
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--hop", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    bundle = Bundle.load(a.bundle)
    spec = bundle.frontend
    audio = read_audio(a.file, spec.sample_rate)
    grid = WindowGrid(spec.window_samples, round(a.hop * spec.sample_rate), spec.sample_rate)
    starts = torch.as_tensor(grid.starts(len(audio)))
    model, logmel = bundle.build_model(), LogMel(spec)
    x = torch.from_numpy(audio)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(starts), 64):
            crops = torch.stack([x[s : s + spec.window_samples] for s in starts[i : i + 64].tolist()])
            model(logmel(crops))
    student = time.perf_counter() - t0
    teacher = MusicnnTeacher("MTT_musicnn")
    t0 = time.perf_counter()
    teacher.predict(audio, grid)
    teacher_s = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "file": a.file,
                "audio_s": round(len(audio) / spec.sample_rate, 2),
                "windows": len(starts),
                "threads": a.threads,
                "student_s": round(student, 3),
                "teacher_musicnn_mtt_s": round(teacher_s, 3),
                "speedup": round(teacher_s / student, 1),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
