"""Pack corpora small enough to carry to the GPU machine (≈60 MiB per call), and load them there.

Usage::

    python -m training.corpora.pack --corpus data/synth_train --corpus data/real \\
        --out .carry/corpus --max-mib 55

Each corpus becomes ``<out>/<name>/`` with ``pack.json`` (format, rate, bitrate, vocabulary,
measured round-trip error), ``table.csv`` (path, tags, split, byte offset/length, metadata) and
``audio.bin`` (the tracks as independent 16 kHz mono Ogg Opus streams, back to back). The bitrate
is the highest (up to ``--max-kbps``) at which every corpus of this call fits in ``--max-mib``.
On the GPU side :func:`load_packed` decodes one pack with soundfile in a worker pool;
:func:`load_packs` loads every pack in a folder.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf

from engines.atomic import atomic_path, write_atomic
from training.data import TrackTable, load_table, read_audio
from training.data.table import DataError

__all__ = ["encode_opus", "decode", "centre", "load_packed", "load_packs", "roundtrip_error", "main"]

SAMPLE_RATE = 16000


def _level_for(kbps: float) -> float:
    """libsndfile's Opus compression level for a target bitrate (it maps 0..1 to ~256..6 kb/s)."""
    return float(np.clip(1.0 - (kbps * 1000.0 - 6000.0) / 250000.0, 0.0, 1.0))


def encode_opus(audio: np.ndarray, kbps: float, sample_rate: int = SAMPLE_RATE) -> bytes:
    """One mono Ogg Opus stream at about ``kbps`` kb/s."""
    buf = io.BytesIO()
    sf.write(buf, audio, sample_rate, format="OGG", subtype="OPUS", compression_level=_level_for(kbps))
    return buf.getvalue()


def decode(blob: bytes) -> np.ndarray:
    """Decode one Ogg stream to mono float32."""
    audio, _ = sf.read(io.BytesIO(blob), dtype="float32", always_2d=True)
    return audio.mean(axis=1)


def roundtrip_error(audio: np.ndarray, kbps: float) -> float:
    """Mean |Δ log-mel| in dB after an Opus round trip, over bins within 60 dB of the clip's peak."""
    from engines.frontend import FrontEndSpec, logmel_numpy

    spec = FrontEndSpec()
    back = decode(encode_opus(audio, kbps))
    n = min(len(audio), len(back))
    a, b = logmel_numpy(audio[:n], spec), logmel_numpy(back[:n], spec)
    mask = a > a.max() - 60.0
    return float(np.mean(np.abs(a - b)[mask]))


def centre(audio: np.ndarray, max_seconds: float) -> np.ndarray:
    """The middle ``max_seconds`` of a track (all of it when shorter or when 0)."""
    n = int(max_seconds * SAMPLE_RATE)
    if not n or len(audio) <= n:
        return audio
    off = (len(audio) - n) // 2
    return audio[off : off + n]


def _encode_job(job: tuple[str, float, float]) -> bytes:
    path, kbps, max_seconds = job
    return encode_opus(centre(read_audio(path, SAMPLE_RATE), max_seconds), kbps)


def _pack_one(
    table: TrackTable,
    name: str,
    out: Path,
    kbps: float,
    workers: int,
    sample_clips: int,
    max_seconds: float = 0.0,
) -> dict:
    dest = out / name
    dest.mkdir(parents=True, exist_ok=True)
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm

    jobs = [(str(table.audio_path(i)), kbps, max_seconds) for i in range(len(table))]
    rows, offset = [], 0
    # Replaced in order on success: table.csv, audio.bin, then pack.json, which marks the pack complete.
    with atomic_path(dest / "audio.bin") as tmp_bin:
        with tmp_bin.open("wb") as fh, ProcessPoolExecutor(workers) as ex:
            for i, blob in enumerate(
                tqdm(ex.map(_encode_job, jobs, chunksize=8), total=len(jobs), desc=name, mininterval=5)
            ):
                fh.write(blob)
                row = {"path": table.paths[i], "offset": offset, "nbytes": len(blob)}
                if table.labelled:
                    row["tags"] = ";".join(t for t, v in zip(table.tags, table.labels[i], strict=True) if v)
                if table.split is not None:
                    row["split"] = table.split[i]
                row.update({k: v[i] for k, v in table.meta.items() if k not in row})
                rows.append(row)
                offset += len(blob)
        # Quality on a sample: round-trip log-mel error, and the decode time of the packed streams.
        rng = np.random.default_rng(0)
        pick = rng.choice(len(table), size=min(sample_clips, len(table)), replace=False)
        errs, dec_s, dec_audio_s = [], 0.0, 0.0
        data = tmp_bin.read_bytes()
        for i in pick:
            audio = read_audio(table.audio_path(int(i)), SAMPLE_RATE)[: 30 * SAMPLE_RATE]
            errs.append(roundtrip_error(audio, kbps))
            t0 = time.perf_counter()
            y = decode(data[rows[i]["offset"] : rows[i]["offset"] + rows[i]["nbytes"]])
            dec_s += time.perf_counter() - t0
            dec_audio_s += len(y) / SAMPLE_RATE
        seconds = float(
            sum(sf.info(io.BytesIO(data[r["offset"] : r["offset"] + r["nbytes"]])).duration for r in rows)
        )
        cols = list(dict.fromkeys(k for r in rows for k in r))
        with atomic_path(dest / "table.csv") as tmp_table, tmp_table.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=cols)
            w.writeheader()
            w.writerows(rows)
        info = {
            "name": name,
            "format": "ogg-opus",
            "sample_rate": SAMPLE_RATE,
            "target_kbps": kbps,
            "actual_kbps": round(offset * 8 / 1000 / max(seconds, 1e-9), 2),
            "n_tracks": len(rows),
            "seconds": round(seconds, 1),
            "bytes": offset,
            "tags": list(table.tags),
            "source_format": table.format,
            "source": str(table.root),
            "max_seconds_per_track": max_seconds or None,
            "roundtrip_logmel_mean_abs_db": round(float(np.mean(errs)), 3) if errs else None,
            "decode_x_realtime_1core": round(dec_audio_s / max(dec_s, 1e-9), 1),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
    write_atomic(dest / "pack.json", json.dumps(info, indent=1))  # written last: marks the pack complete
    return info


def _decode_range(args: tuple[str, list[tuple[int, int]]]) -> list[np.ndarray]:
    path, spans = args
    out = []
    with open(path, "rb") as fh:
        for off, n in spans:
            fh.seek(off)
            out.append(decode(fh.read(n)))
    return out


def load_packed(path: str | os.PathLike, workers: int = 16) -> tuple[TrackTable, list[np.ndarray]]:
    """Decode one pack (a folder with ``pack.json``) into memory.

    Returns:
        (table, waves): a TrackTable (paths as in the source corpus, labels, split, metadata) and
        one mono float32 array at 16 kHz per track, in table order.
    """
    path = Path(path)
    try:
        info = json.loads((path / "pack.json").read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a complete pack ({e})") from None
    with (path / "table.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    tags = list(info.get("tags") or [])
    index = {t: j for j, t in enumerate(tags)}
    labels = np.zeros((len(rows), len(tags)), np.uint8)
    for i, r in enumerate(rows):
        for t in (r.get("tags") or "").split(";"):
            if t:
                labels[i, index[t]] = 1
    split = [r["split"] for r in rows] if rows and "split" in rows[0] else None
    skip = {"path", "tags", "split", "offset", "nbytes"}
    meta = {k: [r[k] for r in rows] for k in (rows[0] if rows else {}) if k not in skip}
    table = TrackTable(
        path, [r["path"] for r in rows], tags, labels, split, meta, info.get("source_format", "pack")
    )
    spans = [(int(r["offset"]), int(r["nbytes"])) for r in rows]
    # libsndfile runs outside the GIL (cffi), so threads decode in parallel without pickling audio.
    chunk = max(1, len(spans) // (workers * 4) + 1)
    parts = [(str(path / "audio.bin"), spans[i : i + chunk]) for i in range(0, len(spans), chunk)]
    with ThreadPoolExecutor(max(1, workers)) as ex:
        waves = [w for part in ex.map(_decode_range, parts) for w in part]
    return table, waves


def load_packs(
    folder: str | os.PathLike, workers: int = 16
) -> dict[str, tuple[TrackTable, list[np.ndarray]]]:
    """Every pack below ``folder`` (each sub-folder with a ``pack.json``), by name."""
    folder = Path(folder)
    dirs = (
        [folder] if (folder / "pack.json").is_file() else sorted(p.parent for p in folder.glob("*/pack.json"))
    )
    if not dirs:
        raise DataError(f"{folder}: no packs (no pack.json)")
    return {d.name: load_packed(d, workers) for d in dirs}


def _fit_kbps(tables: list[TrackTable], seconds: float, budget: float, lo: float, hi: float) -> float | None:
    """Highest whole kb/s whose measured size (Opus + Ogg overhead, on 10-s samples) fits ``budget``."""
    rng = np.random.default_rng(0)
    sample = []
    for t in tables:
        for i in rng.choice(len(t), size=min(6, len(t)), replace=False):
            audio = read_audio(t.audio_path(int(i)), SAMPLE_RATE)
            sample.append((audio[: 10 * SAMPLE_RATE], len(t)))
    n_streams = sum(len(t) for t in tables)
    for kbps in range(int(hi), int(lo) - 1, -1):
        per_s = sum(len(encode_opus(x, kbps)) for x, _ in sample) / sum(
            len(x) / SAMPLE_RATE for x, _ in sample
        )
        # streams of real tracks are longer than the samples: count the per-stream header once each
        header = len(encode_opus(np.zeros(SAMPLE_RATE // 10, np.float32), kbps))
        if per_s * seconds + header * n_streams <= 0.98 * budget:
            return float(kbps)
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.corpora.pack", description=__doc__.splitlines()[0])
    p.add_argument(
        "--corpus", action="append", required=True, help="corpus folder (any training.data layout)"
    )
    p.add_argument("--name", action="append", help="pack name per --corpus (default: folder name)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--max-mib", type=float, default=55.0, help="size budget for all packs of this call")
    p.add_argument("--max-kbps", type=float, default=32.0)
    p.add_argument("--min-kbps", type=float, default=8.0)
    p.add_argument("--kbps", type=float, help="fixed bitrate (skip the budget search)")
    p.add_argument(
        "--limit", type=int, action="append", help="at most this many tracks per --corpus (0: all)"
    )
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--sample", type=int, default=8, help="tracks per pack for the quality measurement")
    p.add_argument(
        "--max-seconds", type=float, default=0.0, help="keep the middle N s of longer tracks (0: all)"
    )
    a = p.parse_args(argv)
    names = a.name or [Path(c).name for c in a.corpus]
    limits = a.limit or [0] * len(a.corpus)
    if len(names) != len(a.corpus) or len(limits) != len(a.corpus):
        print("error: give --name and --limit once per --corpus (or not at all)", file=sys.stderr)
        return 2
    tables = []
    for c, lim in zip(a.corpus, limits, strict=True):
        t = load_table(c)
        t.check_files()
        tables.append(t.subset(range(lim)) if lim and lim < len(t) else t)
    seconds = sum(
        min(sf.info(str(t.audio_path(i))).duration, a.max_seconds or np.inf)
        for t in tables
        for i in range(len(t))
    )
    n_streams = sum(len(t) for t in tables)
    kbps = a.kbps or _fit_kbps(tables, seconds, a.max_mib * 2**20, a.min_kbps, a.max_kbps)
    if kbps is None:
        print(
            f"error: {seconds / 3600:.2f} h do not fit in {a.max_mib} MiB above {a.min_kbps} kb/s; split the packs",
            file=sys.stderr,
        )
        return 2
    print(f"{n_streams} tracks, {seconds / 3600:.2f} h -> {kbps:.0f} kb/s target")
    total = 0
    for t, name in zip(tables, names, strict=True):
        info = _pack_one(t, name, a.out, kbps, a.workers, a.sample, a.max_seconds)
        total += info["bytes"]
        print(
            json.dumps(
                {
                    k: info[k]
                    for k in (
                        "name",
                        "n_tracks",
                        "seconds",
                        "bytes",
                        "actual_kbps",
                        "roundtrip_logmel_mean_abs_db",
                        "decode_x_realtime_1core",
                    )
                }
            )
        )
    print(f"total {total / 2**20:.1f} MiB in {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
