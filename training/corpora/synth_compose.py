"""Procedural multi-track composition for the synthetic labelled corpus.

A clip is drawn from a *style template* (tempo range, instrument pool, drum pattern, harmony,
note density). Every tag is known by construction: instruments from the General MIDI programs
chosen, drums from the drum track, slow/fast from the tempo, loud/quiet from the level class,
and the style itself. Mid tempos and mid levels get neither tag of their pair, so the pairs have
a gap between them and the labels are not ambiguous at the boundary.

Everything is a pure function of ``(seed, index)`` so renders are reproducible and resumable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pretty_midi

__all__ = [
    "INSTRUMENTS",
    "STYLES",
    "TAGS",
    "SLOW_BPM",
    "FAST_BPM",
    "LEVELS",
    "Clip",
    "COMPOSERS",
    "Composer",
    "compose",
    "vary",
]

SLOW_BPM = 90.0  # tempo < SLOW_BPM -> "slow"
FAST_BPM = 130.0  # tempo > FAST_BPM -> "fast"; between: neither


@dataclass(frozen=True)
class Inst:
    """One instrument tag: its GM programs, playable register and the roles it can take."""

    programs: tuple[int, ...]
    register: tuple[int, int]
    roles: tuple[str, ...]


INSTRUMENTS: dict[str, Inst] = {
    "piano": Inst((0, 1), (48, 84), ("chords", "arp", "melody")),
    "electric_piano": Inst((4, 5), (48, 79), ("chords", "arp", "melody")),
    "guitar": Inst((24, 25, 27), (40, 76), ("strum", "arp", "melody")),
    "distorted_guitar": Inst((29, 30), (40, 72), ("power", "melody")),
    "strings": Inst((48, 49), (48, 84), ("pad", "melody")),
    "violin": Inst((40,), (55, 91), ("melody",)),
    "cello": Inst((42,), (36, 64), ("melody", "pad")),
    "brass": Inst((61,), (48, 77), ("stabs", "pad")),
    "trumpet": Inst((56,), (55, 81), ("melody",)),
    "flute": Inst((73,), (60, 93), ("melody",)),
    "organ": Inst((16, 19), (48, 84), ("pad", "chords")),
    "synth_lead": Inst((80, 81), (60, 88), ("melody", "arp")),
    "synth_pad": Inst((88, 89, 90), (48, 79), ("pad",)),
    "bass": Inst((32, 33, 34, 38), (28, 50), ("bass",)),
    "harp": Inst((46,), (43, 88), ("arp",)),
    "harpsichord": Inst((6,), (41, 84), ("arp", "chords")),
    "sitar": Inst((104,), (50, 79), ("melody",)),
    "choir": Inst((52, 53), (52, 76), ("pad",)),
    "marimba": Inst((12,), (48, 84), ("arp", "melody")),
    "saxophone": Inst((65, 66), (49, 78), ("melody",)),
}

# Bass programs that fit a style (acoustic for jazz, synth for techno, electric elsewhere).
_BASS_BY_STYLE = {"jazz": (32,), "techno": (38, 39), "latin": (32, 33), "folk": (32, 33)}


@dataclass(frozen=True)
class Style:
    """A style template: what a clip of this style may contain."""

    bpm: tuple[float, float]
    pool: dict[str, float]  # instrument -> relative weight
    drum_prob: float
    kits: tuple[int, ...]  # GM drum kit programs (bank 128)
    drums: str  # drum pattern family
    modes: tuple[str, ...]
    progressions: tuple[tuple[int, ...], ...]  # scale degrees, 0-based
    density: float  # melody notes per beat, roughly
    sevenths: bool = False
    swing: float = 0.0
    bass_prob: float = 0.5
    waltz_prob: float = 0.0


STYLES: dict[str, Style] = {
    "rock": Style(
        (84, 168),
        {"distorted_guitar": 4, "guitar": 2, "organ": 1, "piano": 1, "synth_lead": 1, "electric_piano": 1},
        1.0,
        (0, 8, 16),
        "rock",
        ("major", "minor"),
        ((0, 4, 5, 3), (0, 5, 2, 6), (0, 3, 4, 3), (0, 3, 6, 2), (0, 6, 3, 0)),
        1.2,
        bass_prob=0.85,
    ),
    "techno": Style(
        (118, 150),
        {"synth_lead": 3, "synth_pad": 3, "electric_piano": 1, "strings": 0.5, "marimba": 0.5},
        1.0,
        (24, 25),
        "techno",
        ("minor",),
        ((0, 0, 5, 6), (0, 3, 0, 4), (0, 6, 5, 6), (0, 0, 0, 0)),
        2.0,
        bass_prob=0.9,
    ),
    "classical": Style(
        (56, 150),
        {
            "strings": 3,
            "violin": 2,
            "cello": 2,
            "piano": 2,
            "harpsichord": 1.5,
            "flute": 1.5,
            "harp": 1.5,
            "brass": 1,
            "trumpet": 0.7,
            "choir": 1,
            "organ": 0.7,
        },
        0.0,
        (48,),
        "none",
        ("major", "minor"),
        ((0, 3, 4, 0), (0, 5, 1, 4), (0, 3, 4, 4), (0, 4, 5, 2, 3, 0, 3, 4)),
        1.5,
        bass_prob=0.0,
        waltz_prob=0.25,
    ),
    "ambient": Style(
        (50, 100),
        {
            "synth_pad": 4,
            "choir": 2,
            "strings": 2,
            "piano": 2,
            "harp": 1,
            "flute": 1,
            "electric_piano": 1.5,
            "marimba": 1,
        },
        0.15,
        (24, 0),
        "ambient",
        ("major", "minor"),
        ((0, 5), (0, 3), (0, 4, 5, 3), (0, 0, 3, 3)),
        0.5,
        bass_prob=0.2,
    ),
    "jazz": Style(
        (70, 190),
        {
            "piano": 3,
            "electric_piano": 1.5,
            "saxophone": 3,
            "trumpet": 2,
            "guitar": 1,
            "organ": 1,
            "brass": 0.7,
            "flute": 0.7,
        },
        0.85,
        (32, 40),
        "jazz",
        ("major", "minor"),
        ((1, 4, 0, 0), (0, 5, 1, 4), (1, 4, 0, 5), (2, 5, 1, 4)),
        1.6,
        sevenths=True,
        swing=0.6,
        bass_prob=0.9,
    ),
    "folk": Style(
        (70, 140),
        {"guitar": 4, "violin": 2, "flute": 2, "harp": 1, "sitar": 1.5, "cello": 1, "marimba": 0.7},
        0.4,
        (0, 40),
        "folk",
        ("major", "minor"),
        ((0, 3, 0, 4), (0, 4, 3, 0), (0, 6, 5, 6), (0, 3, 4, 0)),
        1.3,
        bass_prob=0.4,
    ),
    "latin": Style(
        (90, 160),
        {
            "guitar": 2,
            "trumpet": 2,
            "brass": 1.5,
            "piano": 2,
            "marimba": 1.5,
            "flute": 1,
            "saxophone": 1,
        },
        1.0,
        (0, 8),
        "latin",
        ("major", "minor"),
        ((0, 4, 4, 0), (0, 3, 4, 0), (1, 4, 0, 0), (0, 5, 3, 4)),
        1.8,
        bass_prob=0.85,
    ),
}

# level class -> (velocity range, mix RMS dBFS range); "mid" gets no tag (gap between the pair).
LEVELS: dict[str, tuple[tuple[int, int], tuple[float, float]]] = {
    "loud": ((92, 120), (-15.0, -10.0)),
    "mid": ((68, 95), (-23.0, -19.0)),
    "quiet": ((38, 68), (-36.0, -29.0)),
}

TAGS: tuple[str, ...] = (
    *INSTRUMENTS.keys(),
    "drums",
    "no_drums",
    "slow",
    "fast",
    "loud",
    "quiet",
    *STYLES.keys(),
)

_SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}

# GM percussion keys.
KICK, SIDE, SNARE, CLAP, CHH, PHH, OHH, RIDE, CRASH, TAMB, COWBELL = (
    36,
    37,
    38,
    39,
    42,
    44,
    46,
    51,
    49,
    54,
    56,
)
BONGO_HI, BONGO_LO, CONGA_MUTE, CONGA_HI, CONGA_LO, MARACAS, CLAVES = 60, 61, 62, 63, 64, 70, 75

# Drum patterns: key -> list of (16th step in a 4/4 bar, velocity scale).
_DRUMS: dict[str, tuple[dict[int, list[tuple[int, float]]], ...]] = {
    "rock": (
        {KICK: [(0, 1), (8, 0.9)], SNARE: [(4, 1), (12, 1)], CHH: [(s, 0.7) for s in range(0, 16, 2)]},
        {
            KICK: [(0, 1), (6, 0.8), (8, 0.9), (10, 0.7)],
            SNARE: [(4, 1), (12, 1)],
            CHH: [(s, 0.6 + 0.2 * (s % 4 == 0)) for s in range(0, 16, 2)],
        },
        {KICK: [(0, 1), (8, 1)], SNARE: [(4, 1), (12, 1)], RIDE: [(s, 0.7) for s in range(0, 16, 2)]},
    ),
    "techno": (
        {
            KICK: [(s, 1) for s in (0, 4, 8, 12)],
            OHH: [(s, 0.7) for s in (2, 6, 10, 14)],
            CLAP: [(4, 0.8), (12, 0.8)],
        },
        {KICK: [(s, 1) for s in (0, 4, 8, 12)], CHH: [(s, 0.5 + 0.3 * (s % 2 == 0)) for s in range(16)]},
        {
            KICK: [(s, 1) for s in (0, 4, 8, 12)],
            OHH: [(s, 0.7) for s in (2, 6, 10, 14)],
            CHH: [(s, 0.4) for s in (1, 3, 5, 7, 9, 11, 13, 15)],
            CLAP: [(12, 0.9)],
        },
    ),
    "jazz": (
        {
            RIDE: [(0, 0.8), (4, 0.8), (6, 0.6), (8, 0.8), (12, 0.8), (14, 0.6)],
            PHH: [(4, 0.6), (12, 0.6)],
            KICK: [(0, 0.4)],
        },
        {
            RIDE: [(0, 0.8), (4, 0.8), (6, 0.6), (8, 0.8), (12, 0.8), (14, 0.6)],
            PHH: [(4, 0.6), (12, 0.6)],
            SIDE: [(14, 0.5)],
        },
    ),
    "folk": (
        {KICK: [(0, 0.8), (8, 0.7)], TAMB: [(4, 0.7), (12, 0.7)], SIDE: [(4, 0.6), (12, 0.6)]},
        {KICK: [(0, 0.8), (8, 0.8)], SNARE: [(4, 0.6), (12, 0.6)], CHH: [(s, 0.5) for s in range(0, 16, 2)]},
    ),
    "latin": (
        {
            CLAVES: [(0, 0.8), (6, 0.8), (12, 0.8)],
            CONGA_HI: [(6, 0.8), (7, 0.6), (14, 0.8), (15, 0.6)],
            CONGA_LO: [(4, 0.8), (12, 0.8)],
            MARACAS: [(s, 0.5) for s in range(0, 16, 2)],
            KICK: [(0, 0.8), (10, 0.7)],
        },
        {
            BONGO_HI: [(s, 0.6 + 0.2 * (s % 4 == 0)) for s in range(0, 16, 2)],
            BONGO_LO: [(3, 0.7), (11, 0.7)],
            COWBELL: [(0, 0.7), (4, 0.6), (8, 0.7), (12, 0.6)],
            CONGA_LO: [(6, 0.8), (14, 0.8)],
            KICK: [(0, 0.8), (6, 0.7), (8, 0.8)],
        },
    ),
    "ambient": (
        {KICK: [(0, 0.6)], CHH: [(6, 0.4), (14, 0.4)], RIDE: [(8, 0.4)]},
        {KICK: [(0, 0.6), (10, 0.5)], SIDE: [(8, 0.5)]},
    ),
}


@dataclass
class Clip:
    """A composed clip: its MIDI, tags and the render settings that go with it."""

    index: int
    style: str
    bpm: float
    level: str
    midi: pretty_midi.PrettyMIDI
    instruments: list[str]  # instrument tag per melodic track, same order as midi.instruments
    stem_gain_db: list[float]  # per track (melodic tracks, then drums if any), relative to mean
    target_rms_db: float
    reverb: tuple[float, float, float, float]  # roomsize, damping, width, level
    has_drums: bool
    meta: dict[str, str] = field(default_factory=dict)
    post: dict = field(default_factory=dict)  # render-side processing chosen by vary(): eq, codec

    @property
    def tags(self) -> list[str]:
        """Tags known by construction (before the render confirms each stem is audible)."""
        tags = sorted(set(self.instruments))
        tags.append("drums" if self.has_drums else "no_drums")
        if self.bpm < SLOW_BPM:
            tags.append("slow")
        elif self.bpm > FAST_BPM:
            tags.append("fast")
        if self.level != "mid":
            tags.append(self.level)
        tags.append(self.style)
        return tags


def _weighted_choice(rng: np.random.Generator, weights: dict[str, float], k: int) -> list[str]:
    names = list(weights)
    p = np.array([weights[n] for n in names], dtype=np.float64)
    return list(rng.choice(names, size=min(k, len(names)), replace=False, p=p / p.sum()))


class _Grid:
    """Maps 16th-note steps to seconds, with swing on off-beat eighths and humanising jitter."""

    def __init__(self, bpm: float, swing: float, jitter_s: float, rng: np.random.Generator) -> None:
        self.step = 60.0 / bpm / 4.0
        self.swing = swing
        self.jitter = jitter_s
        self.rng = rng

    def t(self, step: float, jitter: bool = True) -> float:
        base = step * self.step
        if self.swing and abs(step % 4 - 2) < 1e-9:  # off-beat eighth: delay toward a triplet feel
            base += self.swing * self.step * (2.0 / 3.0)
        if jitter and self.jitter:
            base += float(self.rng.normal(0.0, self.jitter))
        return max(0.0, base)


def _pick(rng: np.random.Generator, options: tuple[list[int], ...]) -> list[int]:
    return list(options[int(rng.integers(len(options)))])


def _chord(scale_notes: tuple[int, ...], degree: int, sevenths: bool) -> list[int]:
    """Pitch classes (as offsets from the key root, possibly > 12) of a diatonic chord."""
    idx = [degree, degree + 2, degree + 4] + ([degree + 6] if sevenths else [])
    return [scale_notes[i % 7] + 12 * (i // 7) for i in idx]


def _fit(pitch: int, lo: int, hi: int) -> int:
    while pitch < lo:
        pitch += 12
    while pitch > hi:
        pitch -= 12
    return pitch


def _voicing(root: int, chord: list[int], lo: int, hi: int) -> list[int]:
    """Close-position voicing around the middle of the register."""
    centre = (lo + hi) // 2 - 6
    base = _fit(root + chord[0], centre, centre + 11)
    notes = [base + (c - chord[0]) for c in chord]
    return [_fit(n, lo, hi) for n in notes]


def _add(
    inst: pretty_midi.Instrument, pitch: int, start: float, end: float, vel: float, end_s: float
) -> None:
    if start >= end_s or end <= start:
        return
    v = int(np.clip(round(vel), 1, 127))
    inst.notes.append(
        pretty_midi.Note(
            velocity=v, pitch=int(np.clip(pitch, 0, 127)), start=start, end=min(end, end_s + 0.5)
        )
    )


# Every melodic instrument at one weight: the pool of a clip that ignores its style's (``any_pool``).
ANY_POOL: dict[str, float] = {name: 1.0 for name in INSTRUMENTS if name != "bass"}


def compose(
    seed: int, index: int, seconds: float = 10.0, style: str | None = None, any_pool: float = 0.0
) -> Clip:
    """Compose clip ``index`` of the corpus with ``seed``; deterministic.

    Args:
        seed: corpus seed.
        index: clip number within the corpus.
        seconds: clip duration.
        style: force a style (default: drawn uniformly).
        any_pool: probability that the clip's melodic instruments come from every instrument
            (:data:`ANY_POOL`) instead of its style's pool, keeping the style's tempo, harmony and
            drums. Why: with style pools, distorted guitar plays only in rock and organ comes with
            it, so an instrument unit can learn the style instead of the sound. The draw uses its
            own generator, so a clip that keeps its style's pool is note for note what it was.
    """
    any_instruments = bool(np.random.default_rng([seed, index, 1]).random() < any_pool)
    rng = np.random.default_rng([seed, index])
    style = style or str(rng.choice(list(STYLES)))
    st = STYLES[style]
    bpm = float(rng.uniform(*st.bpm))
    level = str(rng.choice(list(LEVELS), p=[0.35, 0.3, 0.35]))
    (vlo, vhi), (rlo, rhi) = LEVELS[level]
    vel_base = float(rng.uniform(vlo, vhi))
    mode = str(rng.choice(st.modes))
    scale = _SCALES[mode]
    key = int(rng.integers(0, 12))
    prog = st.progressions[int(rng.integers(len(st.progressions)))]
    beats = 3 if rng.random() < st.waltz_prob else 4
    steps_per_bar = 4 * beats
    bars_per_chord = 1 if bpm < 120 or rng.random() < 0.5 else 2
    jitter = 0.002 if style == "techno" else 0.008
    grid = _Grid(bpm, st.swing if beats == 4 else 0.0, jitter, rng)
    n_bars = int(np.ceil(seconds / (steps_per_bar * grid.step))) + 1

    # Instruments: 2-4 melodic tracks, bass drawn separately so grooves usually have one.
    n_inst = int(rng.integers(2, 5))
    names: list[str] = []
    if rng.random() < st.bass_prob:
        names.append("bass")
    names += _weighted_choice(rng, ANY_POOL if any_instruments else st.pool, n_inst - len(names))
    has_drums = bool(rng.random() < st.drum_prob) and beats == 4

    pm = pretty_midi.PrettyMIDI(initial_tempo=bpm)
    roles: list[str] = []
    melody_taken = False
    for name in names:
        inst = INSTRUMENTS[name]
        options = [r for r in inst.roles if not (r == "melody" and melody_taken and len(inst.roles) > 1)]
        role = str(rng.choice(options))
        melody_taken |= role == "melody"
        roles.append(role)
    if not melody_taken:  # give the clip a tune when any instrument can carry one
        for i, name in enumerate(names):
            if "melody" in INSTRUMENTS[name].roles:
                roles[i] = "melody"
                break

    for name, role in zip(names, roles, strict=True):
        inst = INSTRUMENTS[name]
        programs = _BASS_BY_STYLE.get(style, inst.programs) if name == "bass" else inst.programs
        track = pretty_midi.Instrument(program=int(rng.choice(programs)), name=name)
        _play_role(
            track,
            role,
            inst.register,
            st,
            rng,
            grid,
            key,
            scale,
            prog,
            bars_per_chord,
            n_bars,
            steps_per_bar,
            vel_base,
            seconds,
        )
        pm.instruments.append(track)
    if has_drums:
        kit = int(rng.choice(st.kits))
        drum = pretty_midi.Instrument(program=kit, is_drum=True, name="drums")
        _play_drums(drum, st.drums, rng, grid, n_bars, vel_base, seconds)
        pm.instruments.append(drum)

    n_tracks = len(pm.instruments)
    stem_db = [float(rng.uniform(-5.0, 1.0)) for _ in range(n_tracks)]
    room = {"ambient": (0.8, 0.3), "classical": (0.6, 0.4)}.get(style, (0.3, 0.5))
    reverb = (room[0] * float(rng.uniform(0.7, 1.0)), room[1], 0.8, float(rng.uniform(0.3, 0.8)))
    clip = Clip(
        index=index,
        style=style,
        bpm=bpm,
        level=level,
        midi=pm,
        instruments=names,
        stem_gain_db=stem_db,
        target_rms_db=float(rng.uniform(rlo, rhi)),
        reverb=reverb,
        has_drums=has_drums,
    )
    clip.meta = {"mode": mode, "key": str(key), "meter": f"{beats}/4", "roles": "|".join(roles)}
    clip.meta["pool"] = "any" if any_instruments else "style"
    return clip


def _play_role(
    track: pretty_midi.Instrument,
    role: str,
    register: tuple[int, int],
    st: Style,
    rng: np.random.Generator,
    grid: _Grid,
    key: int,
    scale: tuple[int, ...],
    prog: tuple[int, ...],
    bars_per_chord: int,
    n_bars: int,
    spb: int,
    vel: float,
    end_s: float,
) -> None:
    lo, hi = register
    root_base = 12 * (lo // 12) + key
    vel = vel + float(rng.uniform(-6, 6))

    def chord_at(bar: int) -> tuple[int, list[int]]:
        degree = prog[(bar // bars_per_chord) % len(prog)]
        return degree, _chord(scale, degree, st.sevenths)

    def jv() -> float:
        return vel + float(rng.normal(0, 5))

    if role == "melody":
        _melody(track, register, st, rng, grid, key, scale, prog, bars_per_chord, n_bars, spb, vel, end_s)
        return
    strum_pattern = _pick(
        rng, ([0, 4, 8, 12], [0, 3, 6, 8, 10, 12, 14], [0, 2, 4, 6, 8, 10, 12, 14], [0, 6, 8, 14])
    )
    comp_pattern = _pick(rng, ([2, 6, 10, 14], [0, 6, 10], [0, 3, 8, 11], [0, 4, 8, 12], [3, 6, 10, 14]))
    arp_step = 2 if 15.0 / grid.step > 110 else int(rng.choice([1, 2]))  # 16ths only at slower tempi
    bass_pattern = {
        "rock": [0, 2, 4, 6, 8, 10, 12, 14],
        "techno": [2, 6, 10, 14],
        "jazz": [0, 4, 8, 12],
        "latin": [0, 6, 12],
        "folk": [0, 8],
        "classical": [0, 8],
        "ambient": [0],
    }[st.drums if st.drums != "none" else "classical"]
    for bar in range(n_bars):
        degree, chord = chord_at(bar)
        t0 = bar * spb
        if role == "pad":
            notes = _voicing(root_base, chord, lo, hi)
            for p in notes:
                _add(track, p, grid.t(t0, False), grid.t(t0 + spb, False) - 0.02, jv() - 8, end_s)
        elif role in ("chords", "strum", "stabs"):
            pattern = {"chords": comp_pattern, "strum": strum_pattern, "stabs": comp_pattern}[role]
            notes = _voicing(root_base, chord, lo, hi)
            for i, s in enumerate(s for s in pattern if s < spb):
                nxt = ([x for x in pattern if x < spb] + [spb])[i + 1]
                dur = (nxt - s) * (0.4 if role == "stabs" else 0.9)
                t = grid.t(t0 + s)
                for k, p in enumerate(notes):  # strums roll the chord a little
                    d = 0.012 * k if role == "strum" else 0.0
                    _add(track, p, t + d, t + dur * grid.step, jv() - 4 * (s % 4 != 0), end_s)
        elif role == "power":
            root = _fit(root_base + chord[0], lo, lo + 11)
            for s in range(0, spb, 2):
                t = grid.t(t0 + s)
                for p in (root, root + 7, root + 12):
                    _add(track, p, t, t + 1.8 * grid.step, jv(), end_s)
        elif role == "arp":
            notes = _voicing(root_base, chord, lo, hi)
            notes = notes + [n + 12 for n in notes if n + 12 <= hi]
            order = notes + notes[-2:0:-1] if rng.random() < 0.7 else notes
            for j, s in enumerate(range(0, spb, arp_step)):
                t = grid.t(t0 + s)
                _add(track, order[j % len(order)], t, t + arp_step * grid.step * 1.5, jv() - 3, end_s)
        elif role == "bass":
            root = _fit(key + chord[0] + 12 * (lo // 12), lo, lo + 11)
            tones = [
                root,
                _fit(key + chord[1 % len(chord)] + 12 * (lo // 12), lo, hi),
                _fit(key + chord[2 % len(chord)] + 12 * (lo // 12), lo, hi),
            ]
            for j, s in enumerate(s for s in bass_pattern if s < spb):
                t = grid.t(t0 + s)
                p = root if (st.drums != "jazz" or j == 0) else int(rng.choice(tones))
                if st.drums == "rock" and j % 4 == 3 and rng.random() < 0.3:
                    p = root + 7
                dur = (
                    2 if st.drums in ("rock", "techno") else 4 if st.drums in ("jazz", "latin") else 8
                ) * 0.9
                _add(track, p, t, t + dur * grid.step, jv() + 4, end_s)


def _melody(
    track: pretty_midi.Instrument,
    register: tuple[int, int],
    st: Style,
    rng: np.random.Generator,
    grid: _Grid,
    key: int,
    scale: tuple[int, ...],
    prog: tuple[int, ...],
    bars_per_chord: int,
    n_bars: int,
    spb: int,
    vel: float,
    end_s: float,
) -> None:
    lo, hi = register
    # Scale pitches across the register, as a list we can walk on.
    pitches = [p for p in range(lo, hi + 1) if (p - key) % 12 in scale]
    centre = len(pitches) // 2
    idx = centre + int(rng.integers(-3, 4))
    mean_len = max(1.0, 4.0 / st.density)  # in 16ths
    lengths = np.array([1, 2, 3, 4, 6, 8])
    w = np.exp(-np.abs(lengths - mean_len) / 1.5)
    step = 0
    total = n_bars * spb
    while step < total:
        length = int(rng.choice(lengths, p=w / w.sum()))
        if rng.random() < 0.12:  # rest
            step += length
            continue
        move = int(
            rng.choice(
                [-2, -1, -1, 0, 1, 1, 2, 3, -3, 4, -4],
                p=[0.12, 0.2, 0.0, 0.08, 0.2, 0.0, 0.12, 0.08, 0.08, 0.06, 0.06],
            )
        )
        idx = int(np.clip(idx + move, 0, len(pitches) - 1))
        if abs(idx - centre) > len(pitches) // 3:  # drift back toward the middle
            idx += -1 if idx > centre else 1
        t = grid.t(step)
        accent = 6 if step % 4 == 0 else 0
        _add(
            track,
            pitches[idx],
            t,
            grid.t(step + length, False) - 0.01,
            vel + accent + rng.normal(0, 5),
            end_s,
        )
        step += length


def _play_drums(
    track: pretty_midi.Instrument,
    family: str,
    rng: np.random.Generator,
    grid: _Grid,
    n_bars: int,
    vel: float,
    end_s: float,
) -> None:
    patterns = _DRUMS[family]
    pattern = patterns[int(rng.integers(len(patterns)))]
    fill_every = int(rng.choice([4, 8]))
    for bar in range(n_bars):
        t0 = bar * 16
        if bar == 0 and family in ("rock", "jazz", "latin") and rng.random() < 0.5:
            _add(track, CRASH, grid.t(t0), grid.t(t0) + 0.5, vel, end_s)
        if family in ("rock", "folk") and bar % fill_every == fill_every - 1:
            hits = {KICK: [(0, 1)], SNARE: [(s, 0.7 + 0.02 * s) for s in (8, 10, 12, 13, 14, 15)]}
        else:
            hits = pattern
        for key, steps in hits.items():
            for s, scale in steps:
                if scale <= 0:
                    continue
                t = grid.t(t0 + s)
                _add(track, key, t, t + 0.1, max(30.0, vel * scale + rng.normal(0, 4)), end_s)


@dataclass(frozen=True)
class Composer:
    """A composer configuration: variety added on top of the style templates.

    Voicings re-voice chords (3+ notes starting together), octave shifts move a whole melodic part,
    articulation scales note lengths (staccato < 1 < legato), ``mix`` sets the stem balance and
    ``reverb`` FluidSynth's room size and wet level; EQ and codec act on the rendered mix
    (see :func:`training.corpora.synth.post_process`). None of it changes a tag: instruments,
    drums, tempo, level class and style stay what :attr:`Clip.tags` says.
    """

    voicings: tuple[str, ...] = ("close",)
    octave_shifts: tuple[int, ...] = (0,)
    articulation: tuple[float, float] = (1.0, 1.0)
    velocity_sd: float = 0.0
    eqs: tuple[str, ...] = ()  # drawn from when a clip gets EQ
    eq_prob: float = 0.0
    codecs: tuple[str, ...] = ()  # drawn from when a clip goes through a codec
    codec_prob: float = 0.0
    mix: str = "style"  # stem balance: "style" (compose's), "wide" (-8..+2 dB) or "lead" (one on top)
    reverb: tuple[tuple[float, float], tuple[float, float]] | None = None  # (room, level) ranges


# "default" is the original composer (its clips are unchanged). "varied" is for training;
# "heldout" is for testing only: its voicings, articulation range, EQ shapes and codecs are never
# drawn in training, so a test on it measures whether instrument tags carry over.
COMPOSERS: dict[str, Composer] = {
    "default": Composer(),
    "varied": Composer(
        voicings=("close", "open", "drop2"),
        octave_shifts=(-1, 0, 0, 1),
        articulation=(0.55, 1.25),
        velocity_sd=6.0,
        eqs=("peak", "low_shelf", "high_shelf"),
        eq_prob=0.6,
        codecs=("opus", "mp3"),
        codec_prob=0.35,
        mix="wide",
        reverb=((0.1, 0.9), (0.1, 0.9)),
    ),
    "heldout": Composer(
        voicings=("spread", "drop3"),
        octave_shifts=(-1, 0, 1),
        articulation=(0.3, 0.5),
        velocity_sd=10.0,
        eqs=("band_limit", "tilt"),
        eq_prob=0.7,
        codecs=("telephone", "bitcrush"),
        codec_prob=0.5,
        mix="lead",
        reverb=((0.9, 1.0), (0.85, 1.0)),  # a very wet hall, wetter than any training clip
    ),
}


def _revoice(notes: list[int], voicing: str) -> list[int]:
    """Re-voice one chord (pitches low to high)."""
    ps = sorted(notes)
    if voicing == "open" and len(ps) >= 3:  # middle voice up an octave
        ps[1] += 12
    elif voicing == "drop2" and len(ps) >= 3:  # second voice from the top down an octave
        ps[-2] -= 12
    elif voicing == "drop3" and len(ps) >= 4:
        ps[-3] -= 12
    elif voicing == "spread":  # root down an octave, upper voices up: a wide chord
        ps = [ps[0] - 12, *ps[1:-1], ps[-1] + 12]
    return sorted(ps)


# What :func:`vary` can leave out of a configuration, one factor at a time (an ablation).
FACTORS = ("voicing", "octave", "articulation", "velocity", "mix", "reverb", "eq", "codec")


def vary(clip: Clip, composer: str | Composer, seed: int, skip: frozenset[str] = frozenset()) -> Clip:
    """Apply a composer configuration to a composed clip, in place; deterministic per (seed, index).

    Draws from its own random stream, so the notes :func:`compose` chose stay the same; the
    choices go to ``clip.meta`` (voicing, octave shifts, articulation, eq, codec). A factor in
    ``skip`` (:data:`FACTORS`) is drawn as usual and then not applied, so a clip rendered with a
    factor skipped differs from the full configuration's clip in that factor alone.
    """
    cfg = COMPOSERS[composer] if isinstance(composer, str) else composer
    unknown = sorted(set(skip) - set(FACTORS))
    if unknown:
        raise ValueError(f"unknown composer factor(s) {', '.join(unknown)} (expected: {', '.join(FACTORS)})")
    rng = np.random.default_rng([seed, clip.index, 101])
    shifts, arts = [], []
    voicing = str(rng.choice(cfg.voicings))
    for track in clip.midi.instruments:
        if track.is_drum:
            continue
        lo, hi = INSTRUMENTS[track.name].register
        shift = 12 * int(rng.choice(cfg.octave_shifts))
        if any(not (lo - 12 <= n.pitch + shift <= hi + 12) for n in track.notes):
            shift = 0  # the part would leave the instrument's playable range: keep it
        art = float(rng.uniform(*cfg.articulation))
        shifts.append(shift // 12)
        arts.append(round(art, 2))
        by_start: dict[float, list[pretty_midi.Note]] = {}
        for n in track.notes:
            if "octave" not in skip:
                n.pitch = int(np.clip(n.pitch + shift, 0, 127))
            if "articulation" not in skip:
                n.end = n.start + max(0.03, (n.end - n.start) * art)
            if cfg.velocity_sd:
                velocity = int(np.clip(round(n.velocity + rng.normal(0, cfg.velocity_sd)), 1, 127))
                n.velocity = n.velocity if "velocity" in skip else velocity
            by_start.setdefault(round(n.start, 2), []).append(n)
        for chord in by_start.values():
            if len(chord) >= 3 and voicing != "close" and "voicing" not in skip:
                chord.sort(key=lambda n: n.pitch)
                for n, p in zip(chord, _revoice([n.pitch for n in chord], voicing), strict=True):
                    n.pitch = int(np.clip(p, 0, 127))
    n = len(clip.stem_gain_db)
    gains = list(clip.stem_gain_db)
    if cfg.mix == "wide":
        gains = [float(g) for g in rng.uniform(-8.0, 2.0, size=n)]
    elif cfg.mix == "lead":  # one stem 4-10 dB above the others (a soloist in front of a band)
        lead = rng.uniform(-4.0, 0.0, size=n)
        lead[int(rng.integers(n))] = rng.uniform(4.0, 6.0)
        gains = [float(g) for g in lead]
    if "mix" not in skip:
        clip.stem_gain_db = gains
    if cfg.reverb:
        (r_lo, r_hi), (l_lo, l_hi) = cfg.reverb
        reverb = (
            float(rng.uniform(r_lo, r_hi)),
            clip.reverb[1],
            clip.reverb[2],
            float(rng.uniform(l_lo, l_hi)),
        )
        clip.reverb = clip.reverb if "reverb" in skip else reverb
    eq = str(rng.choice(cfg.eqs)) if cfg.eqs and rng.random() < cfg.eq_prob else ""
    codec = str(rng.choice(cfg.codecs)) if cfg.codecs and rng.random() < cfg.codec_prob else ""
    eq, codec = ("" if "eq" in skip else eq), ("" if "codec" in skip else codec)
    clip.post = {"eq": eq, "codec": codec, "seed": int(rng.integers(2**31))}
    clip.meta.update(
        {
            "composer": cfg_name(cfg),
            "skipped": "|".join(sorted(skip)),
            "voicing": voicing,
            "mix": cfg.mix,
            "reverb": "|".join(f"{v:.2f}" for v in clip.reverb),
            "octave_shifts": "|".join(map(str, shifts)),
            "articulation": "|".join(map(str, arts)),
            "eq": eq,
            "codec": codec,
        }
    )
    return clip


def cfg_name(cfg: Composer) -> str:
    """The name of a composer configuration in :data:`COMPOSERS` ("custom" when not there)."""
    return next((k for k, v in COMPOSERS.items() if v == cfg), "custom")
