from bench.runners import flops_per_window

from .conftest import run_bench


def test_flops_counted(tiny_bundle):
    assert flops_per_window(tiny_bundle) > 1e6


def test_model_mode_writes_results(tiny_bundle, tmp_path, capsys):
    doc = run_bench(
        ["model", "--bundle", str(tiny_bundle.path), "--runners", "torch-cpu", "--batches", "1,2",
         "--warmup", "1", "--iters", "5", "--min-iters", "3", "--max-seconds", "0.2"],
        tmp_path, capsys,
    )  # fmt: skip
    rows = doc["results"]
    assert [r["batch"] for r in rows] == [1, 2]
    for r in rows:
        assert r["runner"] == "torch-cpu" and r["n"] >= 3 and len(r["samples_ms"]) == r["n"]
        assert (
            r["p50_ms"] <= r["p99_ms"] <= r["max_ms"] and r["windows_per_s"] > 0 and r["achieved_gflops"] > 0
        )
    assert doc["bundle"]["flops_per_window"] > 0 and len(doc["plots"]) == 2


def test_auto_runners_on_cpu_open_every_cpu_backend(tiny_bundle, tmp_path, capsys):
    doc = run_bench(
        ["model", "--bundle", str(tiny_bundle.path), "--batches", "1", "--warmup", "1", "--iters", "2",
         "--min-iters", "1", "--max-seconds", "0.1", "--no-plots"],
        tmp_path, capsys,
    )  # fmt: skip
    names = {r["runner"] for r in doc["results"]}
    assert "torch-cpu" in names and all(r["device"].startswith("cpu") for r in doc["results"])
