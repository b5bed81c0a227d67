"""Real, unlabelled music from Debian's game-soundtrack packages, for self-supervised pretraining.

Usage::

    python -m training.corpora.debian_music --out data/real --workers 2

Finds the music files of the installed packages listed in :data:`SOURCES`, decodes them with
soundfile (Ogg Vorbis / Opus), mixes to mono, resamples to 16 kHz (soxr, else scipy) and writes
``audio/<package>__<name>.flac`` plus ``tracks.csv`` (path, source_package, license, duration_s,
source_file). Packages that are not installed are skipped and reported. Licenses are summarised
per package (and per album where they differ) from ``/usr/share/doc/<pkg>/copyright``; the full
record is DATA_LICENSES.md.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import functools
import multiprocessing as mp
import os
import sys
from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf

__all__ = ["SOURCES", "Source", "find_tracks", "load_mono_16k", "main"]

SAMPLE_RATE = 16000
MIN_SECONDS = 15.0  # drop jingles shorter than this: too short for two views seconds apart


@dataclass(frozen=True)
class Source:
    """Where one package keeps its music, and under which license."""

    roots: tuple[str, ...]
    license: str
    # path fragment -> license, where an album inside the package is licensed differently
    overrides: tuple[tuple[str, str], ...] = ()


SOURCES: dict[str, Source] = {
    "wesnoth-1.16-music": Source(("/usr/share/games/wesnoth/1.16/data/core/music",), "GPL-2+"),
    "warzone2100-music": Source(
        ("/usr/share/games/warzone2100/music",),
        "GPL-2+",
        (
            ("albums/aftermath_soundtrack/track3_enhanced", "GPL-2+"),
            ("albums/aftermath_soundtrack", "CC-BY-SA-3.0+ or GPL-2+"),
            ("albums/legacy_soundtrack", "CC-BY-SA-3.0+ or GPL-2+"),
        ),
    ),
    "hedgewars-data": Source(("/usr/share/games/hedgewars/Data/Music",), "GPL-2"),
    "megaglest-data": Source(("/usr/share/games/megaglest",), "CC-BY-SA-3.0"),
    "supertuxkart-data": Source(("/usr/share/games/supertuxkart/data/music",), "GPL-3+"),
}

# Sped-up copies of other tracks (SuperTuxKart's last-lap versions): near-duplicates, skipped.
_DUPLICATE_SUFFIXES = ("_fast", "_f")

_EXTS = {".ogg", ".opus", ".flac", ".wav"}


@functools.cache
def _dep5_stanzas(pkg: str) -> tuple[tuple[tuple[str, ...], str], ...]:
    """(file patterns, license) stanzas of a machine-readable (DEP-5) Debian copyright file."""
    path = Path("/usr/share/doc") / pkg / "copyright"
    if not path.is_file():
        return ()
    stanzas = []
    for block in path.read_text(errors="replace").split("\n\n"):
        files: list[str] = []
        lic = ""
        field = ""
        for line in block.splitlines():
            if line.startswith("Files:"):
                field, files = "files", line[6:].split()
            elif line.startswith("License:"):
                field, lic = "", line[8:].strip()
            elif line[:1] in (" ", "\t") and field == "files":
                files += line.split()
            elif ":" in line[:20]:
                field = ""
        if files and lic:
            stanzas.append((tuple(files), lic))
    return tuple(stanzas)


def _license(pkg: str, src: Source, path: Path) -> str:
    """Per-file license: album overrides, else the last matching DEP-5 stanza, else the package's."""
    for fragment, lic in src.overrides:
        if fragment in str(path):
            return lic
    found = src.license
    for patterns, lic in _dep5_stanzas(pkg):
        if any(p == "*" or fnmatch.fnmatch(str(path), "*/" + p) for p in patterns):
            found = lic
    return found


def find_tracks(sources: dict[str, Source] = SOURCES) -> tuple[list[tuple[str, Path, str]], list[str]]:
    """List ``(package, file, license)`` for every music file found; also the packages missing."""
    found: list[tuple[str, Path, str]] = []
    missing: list[str] = []
    for pkg, src in sources.items():
        files = []
        for root in src.roots:
            r = Path(root)
            if r.is_dir():
                files += [p for p in sorted(r.rglob("*")) if p.suffix.lower() in _EXTS and p.is_file()]
        if pkg == "megaglest-data":  # only its music folders, not its sound effects
            files = [p for p in files if "/music/" in str(p)]
        files = [p for p in files if not p.stem.endswith(_DUPLICATE_SUFFIXES)]
        if not files:
            missing.append(pkg)
        found += [(pkg, p, _license(pkg, src, p)) for p in files]
    return found, missing


def load_mono_16k(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode an audio file to mono float32 at ``sample_rate``."""
    audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    mono = audio.mean(axis=1)
    if sr == sample_rate:
        return mono.astype(np.float32)
    try:
        import soxr

        return soxr.resample(mono, sr, sample_rate, quality="HQ").astype(np.float32)
    except ImportError:
        from scipy.signal import resample_poly

        g = gcd(sr, sample_rate)
        return resample_poly(mono, sample_rate // g, sr // g).astype(np.float32)


def _name(pkg: str, path: Path, root: str) -> str:
    rel = path.relative_to(root).with_suffix("")
    return f"{pkg}__{'_'.join(rel.parts)}".replace(" ", "_")


def _convert(job: tuple[str, str, str, str, str]) -> dict | None:
    pkg, src, lic, out, name = job
    dst = Path(out) / "audio" / f"{name}.flac"
    if dst.exists():
        info = sf.info(str(dst))
        return _row(name, pkg, lic, info.frames / info.samplerate, src)
    try:
        audio = load_mono_16k(src)
    except (RuntimeError, sf.LibsndfileError) as e:
        print(f"skip {src}: {e}", file=sys.stderr)
        return None
    seconds = len(audio) / SAMPLE_RATE
    if seconds < MIN_SECONDS:
        return None
    peak = float(np.max(np.abs(audio)))
    if peak > 1.0:  # resampling overshoot: scale, never clip
        audio = audio / peak
    tmp = dst.with_name(dst.name + ".tmp")
    sf.write(tmp, audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    os.replace(tmp, dst)
    return _row(name, pkg, lic, seconds, src)


def _row(name: str, pkg: str, lic: str, seconds: float, src: str) -> dict:
    return {
        "path": f"audio/{name}.flac",
        "source_package": pkg,
        "license": lic,
        "duration_s": f"{seconds:.2f}",
        "source_file": src,
    }


def _nice_init(n: int) -> None:
    if n:
        os.nice(n)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m training.corpora.debian_music", description=__doc__.splitlines()[0]
    )
    p.add_argument("--out", type=Path, default=Path("data/real"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--nice", type=int, default=10)
    a = p.parse_args(argv)
    tracks, missing = find_tracks()
    for pkg in missing:
        print(f"not installed (skipped): {pkg}", file=sys.stderr)
    (a.out / "audio").mkdir(parents=True, exist_ok=True)
    jobs = []
    for pkg, path, lic in tracks:
        root = next(r for r in SOURCES[pkg].roots if str(path).startswith(r))
        jobs.append((pkg, str(path), lic, str(a.out), _name(pkg, path, root)))
    from tqdm import tqdm

    with mp.get_context("spawn").Pool(a.workers, initializer=_nice_init, initargs=(a.nice,)) as pool:
        rows = [r for r in tqdm(pool.imap(_convert, jobs), total=len(jobs), mininterval=5) if r]
    rows.sort(key=lambda r: r["path"])
    tmp = a.out / "tracks.csv.tmp"
    with tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, a.out / "tracks.csv")
    hours = sum(float(r["duration_s"]) for r in rows) / 3600
    by_pkg: dict[str, int] = {}
    for r in rows:
        by_pkg[r["source_package"]] = by_pkg.get(r["source_package"], 0) + 1
    print(f"{len(rows)} tracks, {hours:.2f} h -> {a.out / 'tracks.csv'}  {by_pkg}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
