"""Rolling horizon, top-k and hysteresis of rt_tagger.aggregator."""

from __future__ import annotations

import numpy as np
import pytest

from rt_tagger.aggregator import Aggregator

TAGS = ["a", "b", "c"]


def test_mean_over_last_n_windows():
    agg = Aggregator(TAGS, [0.5] * 3, mode="mean", horizon_windows=3, top_k=3)
    seq = [
        np.array([0.1, 0.2, 0.3]),
        np.array([0.4, 0.5, 0.6]),
        np.array([0.7, 0.8, 0.9]),
        np.array([1.0, 0.0, 0.0]),
    ]
    outs = [agg.update(p, i * 0.5) for i, p in enumerate(seq)]
    np.testing.assert_allclose(outs[1].scores, np.mean(seq[:2], axis=0), atol=1e-6)
    np.testing.assert_allclose(outs[3].scores, np.mean(seq[1:4], axis=0), atol=1e-6)  # oldest dropped


def test_ema():
    agg = Aggregator(TAGS, [0.5] * 3, mode="ema", ema_alpha=0.25)
    agg.update(np.array([0.0, 1.0, 0.5]), 0.0)  # seeds the EMA
    out = agg.update(np.array([1.0, 0.0, 0.5]), 0.5)
    np.testing.assert_allclose(out.scores, [0.25, 0.75, 0.5], atol=1e-6)


def test_top_k_sorted():
    agg = Aggregator(["w", "x", "y", "z"], [0.5] * 4, horizon_windows=1, top_k=2)
    out = agg.update(np.array([0.2, 0.9, 0.1, 0.6]), 0.0)
    assert [t for t, _ in out.top] == ["x", "z"]
    assert out.top[0][1] == pytest.approx(0.9)


def test_hovering_score_does_not_flicker():
    """A score that hovers at the threshold (0.5 ± 0.03 noise) switches on once and stays on."""
    rng = np.random.default_rng(0)
    agg = Aggregator(["t"], [0.5], horizon_windows=1, off_ratio=0.8)  # on at 0.5, off at 0.4
    events = []
    for i in range(400):
        p = 0.5 + rng.uniform(-0.03, 0.03)
        events += agg.update(np.array([p]), i * 0.5).events
    assert [e.state for e in events] == ["on"]
    # The same noise without hysteresis flickers: the test signal really hovers at the threshold.
    rng = np.random.default_rng(0)
    naive = Aggregator(["t"], [0.5], horizon_windows=1, off_ratio=1.0)
    flips = sum(
        len(naive.update(np.array([0.5 + rng.uniform(-0.03, 0.03)]), i * 0.5).events) for i in range(400)
    )
    assert flips > 50


def test_on_off_with_times_and_dwell():
    agg = Aggregator(["t"], [0.6], horizon_windows=1, off_ratio=0.5, min_dwell_s=2.0)
    scores = [0.1, 0.7, 0.2, 0.2, 0.2, 0.2, 0.9]
    events = []
    for i, s in enumerate(scores):
        events += agg.update(np.array([s]), float(i)).events
    # on at t=1; off is due at t=2 but the 2-s dwell holds it until t=3; on again at t=6.
    assert [(e.state, e.time_s) for e in events] == [("on", 1.0), ("off", 3.0), ("on", 6.0)]
    assert [e.state for e in agg.close_events(7.0)] == ["off"]


def test_thresholds_per_tag():
    agg = Aggregator(["lo", "hi"], [0.2, 0.9], horizon_windows=1, off_ratio=0.5)
    out = agg.update(np.array([0.3, 0.8]), 0.0)
    assert out.active == ["lo"]
    np.testing.assert_allclose(agg.off_thresholds, [0.1, 0.45])


def test_bad_arguments():
    with pytest.raises(ValueError):
        Aggregator(TAGS, [0.5, 0.5])
    with pytest.raises(ValueError):
        Aggregator(TAGS, [0.5] * 3, mode="median")


@pytest.mark.parametrize(
    "options",
    [
        dict(mode="mean", horizon_windows=4, off_ratio=0.8),
        dict(mode="mean", horizon_windows=1, off_ratio=0.5, min_dwell_s=1.0, music_index=3),
        dict(mode="ema", ema_alpha=0.3, top_k=2, music_index=0),
    ],
    ids=["mean", "dwell_music", "ema_music"],
)
def test_row_aggregator_follows_the_rules_of_one_aggregator_per_stream(options):
    """RowAggregator (a stream group's rows) against one Aggregator per stream, on random windows
    where some rows skip some windows (silent): same scores, events, active tags, top and state."""
    from rt_tagger.aggregator import RowAggregator

    tags = [f"t{i}" for i in range(6)]
    thresholds = [0.3, 0.5, 0.6, 0.4, 0.7, 0.5]
    rows = RowAggregator(tags, thresholds, rows=5, **options)
    singles = [Aggregator(tags, thresholds, **options) for _ in range(5)]
    rng = np.random.default_rng(1)
    for w in range(1100):  # past the exact recomputation of the running sum at 1024 windows
        live = np.flatnonzero(rng.random(5) > 0.2)
        p = rng.random((len(live), len(tags))) ** rng.uniform(0.3, 3.0)
        u = rows.update(None if len(live) == 5 else live, p, w * 0.5)
        for j, i in enumerate(live):
            r = singles[i].update(p[j], w * 0.5)
            np.testing.assert_allclose(u.scores[j], r.scores, rtol=1e-6)
            on = [e.tag for e in r.events if e.state == "on"]
            off = [e.tag for e in r.events if e.state == "off"]
            assert [tags[k] for k in np.flatnonzero(u.turned_on[j])] == on
            assert [tags[k] for k in np.flatnonzero(u.turned_off[j])] == off
            assert [tags[k] for k in np.flatnonzero(u.active[j])] == r.active
            if r.state is not None:
                assert ("music" if u.music[j] else "not_music") == r.state
            if r.state != "not_music":
                assert [tags[k] for k in u.top[j]] == [t for t, _ in r.top]


def test_top_k_ties_in_tag_order_and_never_the_gate():
    agg = Aggregator(["a", "b", "c", "d", "gate"], [0.9] * 5, top_k=3, music_index=4)
    out = agg.update(np.array([0.2, 0.5, 0.2, 0.5, 0.99], np.float32), 0.5)
    assert out.state == "music"
    assert [t for t, _ in out.top] == ["b", "d", "a"]
