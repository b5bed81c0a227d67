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


class RowAggregator:
    """The aggregation rules for ``rows`` streams at once, as arrays (one row per stream).

    :class:`Aggregator` is this with one row; a group of streams served in lockstep
    (:class:`~rt_tagger.stream_group.StreamGroup`) updates all its rows with one call. Same
    arguments as :class:`Aggregator`, plus ``rows``.
    """

    def __init__(
        self,
        tags: list[str],
        thresholds: list[float] | np.ndarray,
        *,
        rows: int = 1,
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
        self.listed = np.ones(len(self.tags), dtype=bool)  # tags that may be listed (not the gate)
        if music_index is not None:
            self.listed[music_index] = False
        self.top_k = min(int(top_k), int(self.listed.sum()))
        self.min_dwell_s = float(min_dwell_s)
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

    def _smooth(self, rows: np.ndarray, p: np.ndarray) -> np.ndarray:
        first = self.windows[rows] == 0
        if self.mode == "ema":
            ema = self._ema[rows]
            ema = np.where(first[:, None], p, ema + self.alpha * (p - ema))
            self._ema[rows] = ema
            return ema
        h = self.horizon
        count = self._count[rows]
        slot = self.windows[rows] % h  # the ring slot of this window (the oldest one when full)
        s = self._sum[rows]
        full = count == h
        s -= np.where(full[:, None], self._hist[rows, slot], 0.0)
        self._hist[rows, slot] = p
        s += p
        count = np.minimum(count + 1, h)
        # Recompute exactly now and then so float drift of the running sum cannot build up.
        exact = np.flatnonzero(self.windows[rows] % 1024 == 0)
        for i in exact.tolist():  # oldest first, as the running sum adds them
            r, c = rows[i], int(count[i])
            order = (int(self.windows[r]) + 1 - c + np.arange(c)) % h
            s[i] = np.sum(self._hist[r, order], axis=0)
        self._sum[rows] = s
        self._count[rows] = count
        return s / count[:, None]

    def update(self, rows: np.ndarray, probabilities: np.ndarray, time_s: float | np.ndarray) -> RowUpdate:
        """Add one window's probabilities ``(len(rows), n_tags)`` to each of ``rows``, ending at
        stream time ``time_s`` (one for all, or one per row)."""
        rows = np.asarray(rows, np.int64)
        p = np.asarray(probabilities, dtype=np.float64)
        if p.size != len(rows) * len(self.tags):
            raise ValueError(f"{p.size} scores for {len(rows)} row(s) of {len(self.tags)} tags")
        p = p.reshape(len(rows), len(self.tags))
        scores = self._smooth(rows, p)
        self.windows[rows] += 1
        t = np.broadcast_to(np.asarray(time_s, np.float64), (len(rows),))[:, None]
        active = self.active[rows]
        last = self._last_switch[rows]
        may_switch = (t - last) >= self.min_dwell_s
        turn_on = ~active & (scores >= self.on_thresholds) & may_switch
        turn_off = active & (scores <= self.off_thresholds) & may_switch
        music = None
        m = self.music_index
        if m is not None:
            music = active[:, m] ^ (turn_on[:, m] | turn_off[:, m])
            gated = ~music[:, None]  # not music: nothing turns on, whatever is on turns off (dwell or not)
            turn_on &= ~(gated & self.listed)
            turn_off |= gated & active & self.listed
        changed = turn_on | turn_off
        if changed.any():  # rare: most windows switch nothing
            active ^= changed
            self.active[rows] = active
            self._last_switch[rows] = np.where(changed, t, last)
        top = np.argsort(np.where(self.listed, -scores, np.inf), axis=1, kind="stable")[:, : self.top_k]
        return RowUpdate(
            scores, turn_on & self.listed, turn_off & self.listed, active & self.listed, music, top
        )

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


class Aggregator:
    """Rolling horizon + top-k + hysteresis for one stream (a :class:`RowAggregator` of one row).

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

    _ROW = np.zeros(1, np.int64)

    def __init__(self, tags: list[str], thresholds: list[float] | np.ndarray, **options) -> None:
        self.rows = RowAggregator(tags, thresholds, rows=1, **options)
        self.tags = self.rows.tags
        self.top_k = self.rows.top_k
        self.music_index = self.rows.music_index
        self.on_thresholds, self.off_thresholds = self.rows.on_thresholds, self.rows.off_thresholds
        self._active_list: list[str] | None = []

    @property
    def windows(self) -> int:
        return int(self.rows.windows[0])

    @property
    def active(self) -> np.ndarray:
        return self.rows.active[0]

    def reset(self) -> None:
        self.rows.reset()
        self._active_list = []

    def update(self, probabilities: np.ndarray, time_s: float) -> AggregateResult:
        """Add one window's probabilities ``(n_tags,)``, ending at stream time ``time_s``."""
        u = self.rows.update(self._ROW, probabilities, time_s)
        tags = self.tags
        events: list[Event] = []
        if u.turned_on.any() or u.turned_off.any():
            events = [Event(tags[i], "on", time_s) for i in np.flatnonzero(u.turned_on[0])]
            events += [Event(tags[i], "off", time_s) for i in np.flatnonzero(u.turned_off[0])]
            self._active_list = None
        state = None if u.music is None else ("music" if u.music[0] else "not_music")
        scores = u.scores[0]
        top = [] if state == "not_music" else [(tags[i], float(scores[i])) for i in u.top[0].tolist()]
        return AggregateResult(
            scores=scores.astype(np.float32), top=top, events=events, active=self.active_tags(), state=state
        )

    def active_tags(self) -> list[str]:
        """The tags on now, in tag order (the music gate is not listed: it is the ``state``)."""
        if self._active_list is None:  # recomputed only after a switch
            self._active_list = [self.tags[i] for i in np.flatnonzero(self.rows.active[0] & self.rows.listed)]
        return list(self._active_list)

    def close_events(self, time_s: float) -> list[Event]:
        """``off`` events for every tag still on (end of stream), and clear the state."""
        on = self.rows.close(self._ROW)[0]
        self._active_list = []
        return [Event(self.tags[i], "off", time_s) for i in np.flatnonzero(on)]
