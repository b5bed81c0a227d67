import numpy as np

from bench.stats import summarize


def test_percentiles_match_numpy():
    x = np.random.default_rng(0).exponential(2.0, 1000)
    s = summarize(x)
    assert s["n"] == 1000
    assert s["p50"] == np.percentile(x, 50) and s["p99"] == np.percentile(x, 99)
    assert s["max"] == x.max() and s["p50"] <= s["p95"] <= s["p99"] <= s["max"]


def test_empty_and_nonfinite_give_none_not_zero():
    assert summarize([])["p99"] is None
    assert summarize([float("nan"), 1.0])["n"] == 1
