"""`rt-tagger features`: log-mel features of a whole corpus, parallel and resumable.

    rt-tagger features SOURCE --format folder|mtat|jamendo|classes|unlabelled --out DIR
        [--seconds 10] [--crop start|center] [--dtype float16|float32] [--workers N]
        [--bundle PATH | --frontend TOML]

Each track becomes ``DIR/feats/<its relative path>.npy`` holding ``(n_mels, frames)`` in dB,
computed by :class:`engines.logmel_torch.LogMel` from the front-end spec (bundle, TOML or the
default). Files are written to a temporary name and renamed, existing ones are skipped, and
``DIR/manifest.json`` (spec, settings, vocabulary, one entry per track) is written last, so an
interrupted run simply resumes and ends with the same files as an uninterrupted one.

The output is for export (other tools, notebooks): ``rt-tagger train`` does not read it, it
decodes the audio itself (augmentations and random crops need the waveform), and refuses a
features folder given as a corpus with a message saying so.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tomllib
from pathlib import Path

import numpy as np

from engines.atomic import atomic_path, write_atomic
from engines.frontend import FrontEndSpec
from training.data import FORMATS, DataError, crop_or_pad, load_table, read_audio

__all__ = ["main", "load_spec", "extract"]

_STATE: dict = {}


def load_spec(bundle: str | None, toml_path: str | None) -> FrontEndSpec:
    """The front end: from a bundle's manifest, a TOML file (``[frontend]`` table or top level), or defaults."""
    if bundle and toml_path:
        raise DataError("give either --bundle or --frontend, not both")
    if bundle:
        from engines.bundle import Bundle

        return Bundle.load(bundle).frontend
    if toml_path:
        try:
            doc = tomllib.loads(Path(toml_path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise DataError(f"cannot read front-end TOML {toml_path}: {e}") from None
        try:
            return FrontEndSpec(**doc.get("frontend", doc))
        except (TypeError, ValueError) as e:
            raise DataError(f"{toml_path}: bad front-end spec: {str(e).splitlines()[0]}") from None
    return FrontEndSpec()


def _init(spec_json: str, n_samples: int, crop: str, dtype: str, out: str) -> None:
    import torch

    from engines.logmel_torch import LogMel

    torch.set_num_threads(1)  # parallelism comes from the worker processes
    spec = FrontEndSpec.model_validate_json(spec_json)
    _STATE.update(spec=spec, logmel=LogMel(spec), n=n_samples, crop=crop, dtype=dtype, out=Path(out))


def _feature_name(rel: str) -> str:
    return str(Path("feats") / (rel + ".npy"))


def _one(job: tuple[str, str]) -> str:
    """Compute one track's features unless its file exists; returns its relative feature path."""
    import torch

    src, rel = job
    name = _feature_name(rel)
    dst = _STATE["out"] / name
    if dst.exists():
        return name
    spec: FrontEndSpec = _STATE["spec"]
    audio = read_audio(src, spec.sample_rate)
    if _STATE["n"]:
        audio = crop_or_pad(audio, _STATE["n"], _STATE["crop"])
    elif len(audio) < spec.n_fft:
        audio = crop_or_pad(audio, spec.n_fft)
    with torch.no_grad():
        mel = _STATE["logmel"](torch.from_numpy(np.ascontiguousarray(audio))).numpy()
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst) as tmp, tmp.open("wb") as fh:  # a file object: np.save adds no ".npy"
        np.save(fh, mel.astype(_STATE["dtype"]))
    return name


def _check_settings(out: Path, settings: dict) -> None:
    """Refuse to resume into a folder made with other settings; clear a killed run's temp files."""
    path = out / "settings.json"
    if path.exists():
        if json.loads(path.read_text()) != json.loads(json.dumps(settings)):
            raise DataError(f"{out} holds features made with other settings; choose another --out")
    else:
        write_atomic(path, json.dumps(settings, indent=1))
    for stale in (out / "feats").rglob("*.tmp") if (out / "feats").exists() else ():
        stale.unlink(missing_ok=True)


def extract(
    source: str | Path,
    out: str | Path,
    fmt: str | None = None,
    seconds: float = 10.0,
    crop: str = "start",
    dtype: str = "float16",
    workers: int = 1,
    spec: FrontEndSpec | None = None,
    progress: bool = True,
) -> dict:
    """Extract features for every track of a corpus into ``out``; returns the manifest."""
    spec = spec or FrontEndSpec()
    if dtype not in ("float16", "float32"):
        raise DataError(f"unknown dtype {dtype!r} (float16 or float32)")
    table = load_table(source, fmt)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n_samples = int(round(seconds * spec.sample_rate)) if seconds > 0 else 0
    _check_settings(
        out,
        {
            "frontend": spec.model_dump(),
            "seconds": seconds,
            "crop": crop,
            "dtype": dtype,
            "source": str(Path(source).resolve()),
            "format": table.format,
        },
    )
    jobs = [(str(table.audio_path(i)), table.paths[i]) for i in range(len(table))]
    args = (spec.model_dump_json(), n_samples, crop, dtype, str(out))
    from tqdm import tqdm

    bar = dict(total=len(jobs), desc="features", disable=not progress, mininterval=1)
    if workers <= 1:
        _init(*args)
        names = [_one(j) for j in tqdm(jobs, **bar)]
    else:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers, initializer=_init, initargs=args) as pool:
            names = list(tqdm(pool.imap(_one, jobs, chunksize=4), **bar))
    manifest = {
        "source": str(Path(source).resolve()),
        "format": table.format,
        "frontend": spec.model_dump(),
        "seconds": seconds,
        "crop": crop,
        "dtype": dtype,
        "n_frames": spec.frames_for(n_samples) if n_samples else None,
        "tags": list(table.tags),
        "tracks": [
            {
                "path": table.paths[i],
                "features": names[i],
                "tags": [t for t, v in zip(table.tags, table.labels[i], strict=True) if v],
                **({"split": table.split[i]} if table.split is not None else {}),
            }
            for i in range(len(table))
        ],
    }
    # Written last: its presence means the run completed.
    write_atomic(out / "manifest.json", json.dumps(manifest, indent=1))
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="rt-tagger features",
        description=__doc__.splitlines()[0]
        + " For export to other tools: training reads audio, not these files.",
    )
    p.add_argument("source", help="corpus folder (or tags table)")
    p.add_argument("--format", choices=FORMATS, help="corpus layout (detected when omitted)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--seconds", type=float, default=10.0, help="crop/pad every track to this (0: keep length)"
    )
    p.add_argument("--crop", choices=("start", "center"), default="start")
    p.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    p.add_argument("--bundle", help="take the front end from this model bundle")
    p.add_argument("--frontend", help="take the front end from this TOML file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    spec = load_spec(a.bundle, a.frontend)
    m = extract(a.source, a.out, a.format, a.seconds, a.crop, a.dtype, a.workers, spec, not a.quiet)
    print(f"{len(m['tracks'])} tracks -> {Path(a.out) / 'manifest.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
