"""Rolling tag scores: a horizon over window scores, top-k, and on/off events with hysteresis.

Each window's probabilities go in; out come the smoothed scores (mean over the last N windows, or
an exponential moving average), the top-k tags and the tags that switched on or off.

Hysteresis keeps tags from flickering: a tag turns *on* when its smoothed score reaches
``on = t`` (the bundle's calibrated per-tag threshold) and turns *off* only when it falls to
``off = t * off_ratio``. A score that wanders inside ``(off, on)`` changes nothing. An optional
minimum dwell (stream seconds) also holds a state for a while after each switch.

A model with a music / not-music head (the tag in manifest group ``music``, ``music_index``) gates
the others: that tag's own hysteresis decides the window's ``state`` ("music" / "not_music"). While
it says not music no tag turns on, the tags still on turn off, and ``top`` is empty, so noise,
tones or speech never read as confident music tags. The gate tag itself is never in ``top``,
``active`` or ``events``: ``state`` says it. Without such a tag ``state`` is None (unknown).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numba import njit

__all__ = ["AggregateResult", "Aggregator", "Event", "RowAggregator", "RowUpdate"]


@dataclass(frozen=True)
class Event:
    tag: str
    state: Literal["on", "off"]
    time_s: float  # stream time of the window end that caused the switch


@dataclass
class AggregateResult:
    scores: np.ndarray  # (n_tags,) smoothed scores
    top: list[tuple[str, float]]  # best first
    events: list[Event] = field(default_factory=list)
    active: list[str] = field(default_factory=list)  # tags on after this update, in tag order
    state: Literal["music", "not_music"] | None = None  # None: the model has no music head


_EXACT_EVERY = 1024  # windows between exact recomputations of a running sum (float drift)


@njit(cache=True)
def _update(p, time_s, ema_mode, alpha, hist, count, s, active, last_switch, on_th, off_th, listed,
            min_dwell_s, music_index, scores, turn_on, turn_off, top):  # fmt: skip
    """One window of :class:`Aggregator` in one call (its update takes one window at a time, so
    each numpy call would cost microseconds whatever its size, and a live stream's window waits
    for them). ``count`` holds ``[windows, windows in the ring]``; ``hist`` is the ring of the last
    windows (mean mode) and ``s`` its running sum, or ``s`` the EMA. Writes
    ``scores``, ``turn_on``/``turn_off`` (listed tags only) and the ``top`` tag indices; returns
    the music state (1 music, 0 not music, -1 no music head) and how many listed tags switched."""
    n = p.shape[0]
    windows = count[0]
    if ema_mode:
        for i in range(n):
            s[i] = p[i] if windows == 0 else s[i] + alpha * (p[i] - s[i])
            scores[i] = s[i]
    else:
        h = hist.shape[0]
        slot = windows % h  # the oldest window's slot once the ring is full
        full = count[1] == h
        for i in range(n):
            if full:
                s[i] -= hist[slot, i]
            s[i] += p[i]
            hist[slot, i] = p[i]
        count[1] = min(count[1] + 1, h)
        if windows % _EXACT_EVERY == 0:  # exactly, oldest first as the running sum adds them
            c = count[1]
            for i in range(n):
                acc = 0.0
                for j in range(c):
                    acc += hist[(windows + 1 - c + j) % h, i]
                s[i] = acc
        for i in range(n):
            scores[i] = s[i] / count[1]
    count[0] = windows + 1
    for i in range(n):
        may_switch = (time_s - last_switch[i]) >= min_dwell_s
        turn_on[i] = (not active[i]) and scores[i] >= on_th[i] and may_switch
        turn_off[i] = active[i] and scores[i] <= off_th[i] and may_switch
    music = -1
    if music_index >= 0:
        m = music_index
        music = 1 if active[m] != (turn_on[m] or turn_off[m]) else 0
        if music == 0:  # not music: nothing turns on, whatever is on turns off (dwell or not)
            for i in range(n):
                if listed[i]:
                    turn_on[i] = False
                    turn_off[i] = turn_off[i] or active[i]
    switched = 0
    for i in range(n):
        if turn_on[i] or turn_off[i]:
            active[i] = not active[i]
            last_switch[i] = time_s
            switched += listed[i]
        turn_on[i] = turn_on[i] and listed[i]
        turn_off[i] = turn_off[i] and listed[i]
    for j in range(top.shape[0]):  # the top k listed tags by score, ties in tag order (a stable sort)
        best = -1
        for i in range(n):
            if not listed[i]:
                continue
            taken = False
            for q in range(j):
                if top[q] == i:
                    taken = True
            if taken:
                continue
            if (
                best < 0
                or scores[i] > scores[best]
                or (scores[best] != scores[best] and scores[i] == scores[i])
            ):
                best = i
        top[j] = best
    return music, switched


class Aggregator:
    """Rolling horizon + top-k + hysteresis for one stream.

    Args:
        tags: Tag names in score order.
        thresholds: Per-tag ``on`` thresholds (the bundle's calibrated thresholds).
        mode: ``"mean"`` over the last ``horizon_windows`` windows, or ``"ema"``.
        horizon_windows: N for ``mode="mean"``.
        ema_alpha: Weight of the newest window for ``mode="ema"`` (the first window seeds the EMA).
        top_k: Tags listed per update.
        off_ratio: ``off = on * off_ratio``; 1.0 disables hysteresis.
        min_dwell_s: A tag keeps its state at least this many stream seconds after a switch.
        music_index: Index of the music / not-music tag that gates the others (None: no gate).
    """

    def __init__(
        self,
        tags: list[str],
        thresholds: list[float] | np.ndarray,
        *,
        mode: Literal["mean", "ema"] = "mean",
        horizon_windows: int = 4,
        ema_alpha: float = 0.3,
        top_k: int = 5,
        off_ratio: float = 0.8,
        min_dwell_s: float = 0.0,
        music_index: int | None = None,
    ) -> None:
        if mode not in ("mean", "ema"):
            raise ValueError(f"mode must be 'mean' or 'ema', got {mode!r}")
        if not 0.0 < off_ratio <= 1.0:
            raise ValueError(f"off_ratio must be in (0, 1], got {off_ratio}")
        self.tags = list(tags)
        self.on_thresholds = np.asarray(thresholds, dtype=np.float64)
        if self.on_thresholds.shape != (len(self.tags),):
            raise ValueError(f"{self.on_thresholds.shape[0]} thresholds for {len(self.tags)} tags")
        self.off_thresholds = self.on_thresholds * off_ratio
        self.mode = mode
        self.horizon = int(horizon_windows)
        self.alpha = float(ema_alpha)
        if music_index is not None and not 0 <= music_index < len(self.tags):
            raise ValueError(f"music_index {music_index} is not a tag index (0..{len(self.tags) - 1})")
        self.music_index = music_index
        self._listed = np.ones(len(self.tags), dtype=bool)  # tags that may be listed (not the gate)
        if music_index is not None:
            self._listed[music_index] = False
        self.top_k = min(int(top_k), int(self._listed.sum()))
        self.min_dwell_s = float(min_dwell_s)
        self.reset()

    def reset(self) -> None:
        n = len(self.tags)
        self._hist = np.zeros((max(1, self.horizon), n), dtype=np.float64)  # ring of the last windows
        self._count = np.zeros(2, np.int64)  # [windows, windows in the ring]
        self._sum = np.zeros(n, dtype=np.float64)  # the ring's running sum, or the EMA
        self.active = np.zeros(n, dtype=bool)
        self._last_switch = np.full(n, -np.inf)
        self._active_list: list[str] | None = None
        self._scores = np.zeros(n, np.float64)
        self._turn_on = np.zeros(n, bool)
        self._turn_off = np.zeros(n, bool)
        self._top_idx = np.zeros(self.top_k, np.int64)

    @property
    def windows(self) -> int:
        return int(self._count[0])

    def update(self, probabilities: np.ndarray, time_s: float) -> AggregateResult:
        """Add one window's probabilities ``(n_tags,)``, ending at stream time ``time_s``."""
        p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
        if p.shape[0] != len(self.tags):
            raise ValueError(f"{p.shape[0]} scores for {len(self.tags)} tags")
        scores, turn_on, turn_off = self._scores, self._turn_on, self._turn_off
        music, switched = _update(
            p, float(time_s), self.mode == "ema", self.alpha, self._hist, self._count, self._sum,
            self.active, self._last_switch, self.on_thresholds, self.off_thresholds, self._listed,
            self.min_dwell_s, -1 if self.music_index is None else self.music_index,
            scores, turn_on, turn_off, self._top_idx,
        )  # fmt: skip
        state = None if music < 0 else "music" if music else "not_music"
        events: list[Event] = []
        if switched:  # rare: most windows switch nothing, and skip this work
            events = [Event(self.tags[i], "on", time_s) for i in np.flatnonzero(turn_on)]
            events += [Event(self.tags[i], "off", time_s) for i in np.flatnonzero(turn_off)]
            self._active_list = None
        tags = self.tags
        top = [] if state == "not_music" else [(tags[i], float(scores[i])) for i in self._top_idx.tolist()]
        return AggregateResult(
            scores=scores.astype(np.float32), top=top, events=events, active=self.active_tags(), state=state
        )

    def active_tags(self) -> list[str]:
        """The tags on now, in tag order (the music gate is not listed: it is the ``state``)."""
        if self._active_list is None:  # recomputed only after a switch
            self._active_list = [self.tags[i] for i in np.nonzero(self.active & self._listed)[0]]
        return list(self._active_list)

    def close_events(self, time_s: float) -> list[Event]:
        """``off`` events for every tag still on (end of stream), and clear the state."""
        events = [Event(self.tags[i], "off", time_s) for i in np.flatnonzero(self.active & self._listed)]
        self.active[:] = False
        self._active_list = None
        return events


class RowAggregator:
    """:class:`Aggregator`'s rules for ``rows`` streams at once, as arrays (one row per stream).

    A group of streams served in lockstep (:class:`~rt_tagger.stream_group.StreamGroup`) updates
    all its rows with one call. Same arguments as :class:`Aggregator`, plus ``rows``. Why two
    classes: the single-stream path, whose latency matters most, runs a window through one numba
    kernel (5 µs on the 2-core CPU, against 57 µs for these numpy calls on a row of one); these
    numpy calls cost the same for a whole group's rows. tests/rt_tagger/test_aggregator.py keeps
    the two equal.
    """

    def __init__(
        self, tags: list[str], thresholds: list[float] | np.ndarray, *, rows: int = 1, **options
    ) -> None:
        rules = Aggregator(tags, thresholds, **options)  # validates, and derives what both use
        self.tags, self.on_thresholds, self.off_thresholds = (
            rules.tags,
            rules.on_thresholds,
            rules.off_thresholds,
        )
        self.mode, self.horizon, self.alpha = rules.mode, rules.horizon, rules.alpha
        self.music_index, self.listed, self.top_k = rules.music_index, rules._listed, rules.top_k
        self.min_dwell_s = rules.min_dwell_s
        self.rows = int(rows)
        self.reset()

    def reset(self) -> None:
        k, n = self.rows, len(self.tags)
        self._hist = np.zeros((k, max(1, self.horizon), n), dtype=np.float64)  # ring of the last windows
        self._count = np.zeros(k, np.int64)  # windows in the ring
        self._sum = np.zeros((k, n), dtype=np.float64)
        self._ema = np.zeros((k, n), dtype=np.float64)
        self.active = np.zeros((k, n), dtype=bool)
        self._last_switch = np.full((k, n), -np.inf)
        self.windows = np.zeros(k, np.int64)
        self._all = np.arange(k)

    def _smooth(self, rows: np.ndarray | slice, idx: np.ndarray, p: np.ndarray) -> np.ndarray:
        windows = self.windows[rows]
        if self.mode == "ema":
            ema = self._ema[rows]
            ema = np.where((windows == 0)[:, None], p, ema + self.alpha * (p - ema))
            self._ema[rows] = ema
            return ema
        h = self.horizon
        count = self._count[rows]
        slot = windows % h  # the ring slot of this window (the oldest one when full)
        s = self._sum[rows]
        if h == 1:
            s = p.copy()
        else:
            s -= np.where((count == h)[:, None], self._hist[idx, slot], 0.0)
            s += p
        self._hist[idx, slot] = p
        count = np.minimum(count + 1, h)
        # Recompute exactly now and then so float drift of the running sum cannot build up.
        exact = windows % _EXACT_EVERY == 0
        if exact.any():
            for i in np.flatnonzero(exact).tolist():  # oldest first, as the running sum adds them
                c = int(count[i])
                order = (int(windows[i]) + 1 - c + np.arange(c)) % h
                s[i] = np.sum(self._hist[idx[i], order], axis=0)
        self._sum[rows] = s
        self._count[rows] = count
        return s / count[:, None]

    def update(
        self, rows: np.ndarray | None, probabilities: np.ndarray, time_s: float | np.ndarray
    ) -> RowUpdate:
        """Add one window's probabilities ``(len(rows), n_tags)`` to each of ``rows`` (None: every
        row, the common case, without gathering), ending at stream time ``time_s`` (one for all,
        or one per row)."""
        idx = self._all if rows is None else np.asarray(rows, np.int64)
        sel = slice(None) if rows is None else idx
        n_tags = len(self.tags)
        p = np.asarray(probabilities, dtype=np.float64)
        if p.size != len(idx) * n_tags:
            raise ValueError(f"{p.size} scores for {len(idx)} row(s) of {n_tags} tags")
        p = p.reshape(len(idx), n_tags)
        scores = self._smooth(sel, idx, p)
        self.windows[sel] += 1
        t = np.asarray(time_s, np.float64)
        if t.ndim:
            t = t[:, None]
        active = self.active[sel]
        turn_on = ~active & (scores >= self.on_thresholds)
        turn_off = active & (scores <= self.off_thresholds)
        if self.min_dwell_s > 0:
            may_switch = (t - self._last_switch[sel]) >= self.min_dwell_s
            turn_on &= may_switch
            turn_off &= may_switch
        music = None
        m = self.music_index
        if m is not None:
            music = active[:, m] ^ (turn_on[:, m] | turn_off[:, m])
            if not music.all():  # not music: nothing turns on, whatever is on turns off (dwell or not)
                gated = ~music[:, None] & self.listed
                turn_on &= ~gated
                turn_off |= gated & active
        changed = turn_on | turn_off
        if changed.any():  # rare: most windows switch nothing
            self._last_switch[sel] = np.where(changed, t, self._last_switch[sel])
            active = active ^ changed
            self.active[sel] = active
        top = np.argsort(np.where(self.listed, -scores, np.inf), axis=1, kind="stable")[:, : self.top_k]
        listed = self.listed
        return RowUpdate(scores, turn_on & listed, turn_off & listed, active & listed, music, top)

    def close(self, rows: np.ndarray) -> np.ndarray:
        """The listed tags still on in ``rows`` ``(len(rows), n_tags)``, then cleared (end of stream)."""
        on = self.active[rows] & self.listed
        self.active[rows] = False
        return on


@dataclass
class RowUpdate:
    """What :meth:`RowAggregator.update` returns, one row per updated stream."""

    scores: np.ndarray  # (rows, n_tags) float64 smoothed scores
    turned_on: np.ndarray  # (rows, n_tags) bool, listed tags only
    turned_off: np.ndarray
    active: np.ndarray  # (rows, n_tags) bool: listed tags on after the update
    music: np.ndarray | None  # (rows,) bool, None: no music head
    top: np.ndarray  # (rows, top_k) tag indices by score, best first (ties in tag order)
