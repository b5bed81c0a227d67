from bench.capacity import search

from .conftest import run_bench


def test_search_finds_the_largest_passing_n():
    for limit in (0, 1, 5, 37, 64, 1000):
        assert search(lambda n, lim=limit: n <= lim, max_streams=1 << 20, tolerance=0.0) == limit


def test_search_stops_at_the_cap():
    assert search(lambda n: True, max_streams=100, tolerance=0.0) == 64


def test_capacity_mode_writes_results(tiny_bundle, tmp_path, capsys):
    doc = run_bench(
        ["capacity", "--bundle", str(tiny_bundle.path), "--runner", "torch-cpu", "--hops", "3", "--min-hops", "2",
         "--max-seconds", "0.2", "--max-batch", "8", "--max-streams", "32"],
        tmp_path, capsys,
    )  # fmt: skip
    s = doc["summary"]
    assert s["runner"] == "torch-cpu" and 0 <= s["max_streams"] <= 32
    passing = [r["streams"] for r in doc["results"] if r["ok"]]
    assert s["max_streams"] == (max(passing) if passing else 0)
    assert all(r["p99_ms"] > 0 for r in doc["results"])
