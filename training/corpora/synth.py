"""Render the synthetic labelled corpus: procedural MIDI -> FluidSynth -> 16 kHz mono FLAC.

Usage::

    python -m training.corpora.synth --out data/synth_train \\
        --soundfont /usr/share/sounds/sf2/FluidR3_GM.sf2 --n 2400 --seconds 10 --seed 0 --workers 2

Each track of a clip is rendered as its own stem (FluidSynth straight at 16 kHz; pitch checked),
scaled to a common RMS plus a small random offset so every tagged instrument is audible, then
mixed and scaled to the clip's level class. Output per clip: ``audio/<id>.flac``,
``midi/<id>.mid`` and ``meta/<id>.json``; ``tags.csv`` (path, tags, split, style, bpm, level,
soundfont, ...) is rewritten atomically as clips finish. Rendering is resumable: clips whose audio
exists are skipped, and every file is written to a temporary name and renamed.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from training.corpora.synth_compose import TAGS, Clip, compose

__all__ = ["Renderer", "render_clip", "main", "SAMPLE_RATE"]

SAMPLE_RATE = 16000
_FLUSH_S = 2.0  # silence rendered after each stem so reverb tails do not leak into the next
_SILENT_DB = -90.0  # a stem whose active level is below this (dBFS) is treated as missing


class Renderer:
    """A FluidSynth instance with one soundfont loaded, reused for many clips."""

    def __init__(self, soundfont: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> None:
        import fluidsynth  # optional dependency (extra "synth")

        self.sr = sample_rate
        self.fs = fluidsynth
        self.synth = fluidsynth.Synth(gain=0.5, samplerate=float(sample_rate))
        self.synth.setting("synth.reverb.active", 1)
        self.synth.setting("synth.chorus.active", 1)
        self.sfid = self.synth.sfload(str(soundfont))
        if self.sfid < 0:
            raise RuntimeError(f"FluidSynth could not load soundfont {soundfont}")
        self._write = fluidsynth._fl.fluid_synth_write_float
        self._write.argtypes = [ctypes.c_void_p, ctypes.c_int] + [
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_int,
        ] * 2
        self._write.restype = ctypes.c_int

    def _samples(self, n: int) -> np.ndarray:
        """Next ``n`` mono float32 samples (mean of left and right)."""
        left = np.zeros(n, np.float32)
        right = np.zeros(n, np.float32)
        if n > 0:
            self._write(self.synth.synth, n, left.ctypes.data, 0, 1, right.ctypes.data, 0, 1)
        return 0.5 * (left + right)

    def render_stem(self, notes: list, program: int, is_drum: bool, n_samples: int) -> np.ndarray:
        """Render one track's notes (pretty_midi Notes) alone; returns ``n_samples`` mono samples."""
        chan = 9 if is_drum else 0
        if self.synth.program_select(chan, self.sfid, 128 if is_drum else 0, program) != 0:
            self.synth.program_select(chan, self.sfid, 128 if is_drum else 0, 0)  # kit missing: standard
        events = []
        for nt in notes:
            on = int(round(nt.start * self.sr))
            off = int(round(nt.end * self.sr))
            events.append((on, 1, nt.pitch, nt.velocity))
            events.append((max(off, on + 1), 0, nt.pitch, 0))
        events.sort(key=lambda e: (e[0], e[1]))  # note-offs before note-ons at the same sample
        out = np.zeros(n_samples, np.float32)
        pos = 0
        for at, kind, key, vel in events:
            at = min(at, n_samples)
            if at > pos:
                out[pos:at] = self._samples(at - pos)
                pos = at
            if pos >= n_samples:
                break
            if kind:
                self.synth.noteon(chan, key, vel)
            else:
                self.synth.noteoff(chan, key)
        if pos < n_samples:
            out[pos:] = self._samples(n_samples - pos)
        self.synth.all_sounds_off(chan)
        self.synth.system_reset()
        self._samples(int(_FLUSH_S * self.sr))
        return out

    def close(self) -> None:
        self.synth.delete()


def _rms_db(x: np.ndarray) -> float:
    return 10.0 * float(np.log10(np.mean(np.square(x, dtype=np.float64)) + 1e-20))


def _active_db(x: np.ndarray, frame: int = 1024) -> float:
    """Mean power (dB) over the frames where the stem actually plays (within 30 dB of its peak frame).

    Sparse stems (a few drum hits, a short melody) are levelled by how loud they are when they
    sound, not diluted by their rests, so they are neither buried nor blown up by the mix.
    """
    n = len(x) // frame
    if n == 0:
        return _rms_db(x)
    p = np.mean(np.square(x[: n * frame].reshape(n, frame), dtype=np.float64), axis=1)
    active = p[p > p.max() * 1e-3]
    return 10.0 * float(np.log10(active.mean() + 1e-20))


def render_clip(renderer: Renderer, clip: Clip, seconds: float) -> tuple[np.ndarray, list[str], dict]:
    """Render ``clip`` to a mono float32 mix.

    Returns:
        (audio, tags, info): tags drop any instrument whose stem came out silent (honest labels).
    """
    n = int(round(seconds * renderer.sr))
    room, damp, width, level = clip.reverb
    renderer.synth.set_reverb(room, damp, width, level)
    mix = np.zeros(n, np.float64)
    silent: list[str] = []
    stem_db: list[float] = []
    for inst, gain_db in zip(clip.midi.instruments, clip.stem_gain_db, strict=True):
        stem = renderer.render_stem(inst.notes, inst.program, inst.is_drum, n)
        level_db = _active_db(stem)
        stem_db.append(round(level_db, 1))
        if level_db < _SILENT_DB:
            silent.append(inst.name)
            continue
        mix += stem.astype(np.float64) * 10.0 ** ((gain_db - level_db) / 20.0)
    if not np.any(mix):
        raise RuntimeError(f"clip {clip.index}: every stem is silent")
    mix *= 10.0 ** ((clip.target_rms_db - _rms_db(mix)) / 20.0)
    peak = float(np.max(np.abs(mix)))
    if peak > 0.95:  # soft-limit peaks instead of scaling the whole clip down (keeps the level class)
        mix = 0.95 * np.tanh(mix / 0.95)
    tags = [t for t in clip.tags if t not in silent or t == "drums"]
    if "drums" in silent:
        tags = [t for t in tags if t != "drums"] + ["no_drums"]
    info = {
        "stem_rms_db": stem_db,
        "silent": silent,
        "rms_db": round(_rms_db(mix), 2),
        "peak": round(peak, 3),
    }
    return mix.astype(np.float32), tags, info


def clip_id(index: int) -> str:
    return f"synth_{index:06d}"


def _split(index: int, test: bool) -> str:
    if test:
        return "test"
    return "valid" if index % 10 == 9 else "train"


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# Worker state: one Renderer per process (loading a soundfont takes 0.2-3 s).
_R: Renderer | None = None
_ARGS: dict = {}


def _init_worker(args: dict) -> None:
    global _R, _ARGS
    if args.get("nice"):
        os.nice(args["nice"])
    _ARGS = args
    _R = Renderer(args["soundfont"])


def _work(index: int) -> dict:
    assert _R is not None
    out = Path(_ARGS["out"])
    cid = clip_id(index)
    audio_path = out / "audio" / f"{cid}.flac"
    meta_path = out / "meta" / f"{cid}.json"
    if audio_path.exists() and meta_path.exists():
        return json.loads(meta_path.read_text())
    t0 = time.perf_counter()
    clip = compose(_ARGS["seed"], index, _ARGS["seconds"])
    audio, tags, info = render_clip(_R, clip, _ARGS["seconds"])
    row = {
        "path": f"audio/{cid}.flac",
        "tags": ";".join(tags),
        "split": _split(index, _ARGS["test"]),
        "style": clip.style,
        "bpm": f"{clip.bpm:.1f}",
        "level": clip.level,
        "rms_db": str(info["rms_db"]),
        "instruments": ";".join(f"{i.name}:{i.program}" for i in clip.midi.instruments),
        "soundfont": Path(_ARGS["soundfont"]).name,
        "seed": str(_ARGS["seed"]),
        "index": str(index),
        **clip.meta,
        "silent_stems": ";".join(info["silent"]),
        "render_s": f"{time.perf_counter() - t0:.3f}",
    }
    mid_tmp = out / "midi" / f"{cid}.mid.tmp"
    clip.midi.write(str(mid_tmp))
    os.replace(mid_tmp, out / "midi" / f"{cid}.mid")
    _atomic_write_bytes(meta_path, json.dumps(row).encode())
    tmp = audio_path.with_name(audio_path.name + ".tmp")
    sf.write(tmp, audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    os.replace(tmp, audio_path)  # audio last: its existence marks the clip done
    return row


_FIRST = ["path", "tags", "split", "style", "bpm", "level"]


def write_table(out: Path, rows: list[dict]) -> None:
    """Write ``tags.csv`` atomically, rows sorted by clip index."""
    rows = sorted(rows, key=lambda r: int(r["index"]))
    cols = _FIRST + sorted({k for r in rows for k in r} - set(_FIRST))
    tmp = out / "tags.csv.tmp"
    with tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, out / "tags.csv")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.corpora.synth", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--soundfont", required=True)
    p.add_argument("--n", type=int, default=2400, help="number of clips")
    p.add_argument("--start", type=int, default=0, help="first clip index")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--nice", type=int, default=0, help="niceness increment for worker processes")
    p.add_argument("--test", action="store_true", help="mark every clip split=test (held-out set)")
    a = p.parse_args(argv)
    if not Path(a.soundfont).is_file():
        print(f"error: soundfont not found: {a.soundfont}", file=sys.stderr)
        return 2
    for sub in ("audio", "midi", "meta"):
        (a.out / sub).mkdir(parents=True, exist_ok=True)
    (a.out / "vocabulary.txt").write_text("\n".join(TAGS) + "\n")
    args = {
        "out": str(a.out),
        "soundfont": a.soundfont,
        "seed": a.seed,
        "seconds": a.seconds,
        "test": a.test,
        "nice": a.nice,
    }
    indices = list(range(a.start, a.start + a.n))
    rows: list[dict] = []
    t0 = time.perf_counter()
    from tqdm import tqdm

    ctx = mp.get_context("spawn")  # fresh FluidSynth per worker, no forked C state
    with ctx.Pool(a.workers, initializer=_init_worker, initargs=(args,)) as pool:
        for i, row in enumerate(
            tqdm(pool.imap(_work, indices, chunksize=4), total=len(indices), mininterval=5)
        ):
            rows.append(row)
            if (i + 1) % 100 == 0:
                write_table(a.out, rows)
    # Final table: every finished clip in the folder (earlier runs with other --start included).
    rows = [json.loads(m.read_text()) for m in sorted((a.out / "meta").glob("*.json"))]
    rows = [r for r in rows if (a.out / r["path"]).exists()]
    write_table(a.out, rows)
    dt = time.perf_counter() - t0
    print(f"{len(rows)} clips ({len(rows) * a.seconds / 3600:.2f} h) in {dt:.0f} s -> {a.out / 'tags.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
