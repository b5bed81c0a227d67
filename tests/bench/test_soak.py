from bench.soak import _seq_report

from .conftest import run_bench


def _rows(seqs, kind="tags"):
    return [{"recv": 0.0, "msg": {"seq": s, "kind": kind}} for s in seqs]


def test_seq_report_counts_every_gap_against_the_expected_total():
    r = _seq_report(_rows([0, 1, 2, 5, 6, 9]), expected=11)
    assert r["lost"] == 5  # 3, 4, 7, 8 and 10
    assert r["gaps"] == [
        {"after_seq": 2, "next_seq": 5, "missing": 2},
        {"after_seq": 6, "next_seq": 9, "missing": 2},
    ]
    assert r["kinds"]["tags"] == 6


def test_soak_mode_runs_the_real_processes(tiny_bundle, tmp_path, capsys):
    # 12 s with a 3-s stall: the same four processes and analysis as the hour-long run.
    doc = run_bench(
        ["soak", "--bundle", str(tiny_bundle.path), "--minutes", "0.2", "--stall-s", "3", "--sample-s", "1",
         "--bucket-s", "5", "--backend", "torch-cpu"],
        tmp_path, capsys,
    )  # fmt: skip
    subs = doc["summary"]["subscribers"]
    assert subs["healthy"]["lost"] == 0 and subs["healthy"]["received"] >= 5
    assert doc["settings"]["stall"]["stopped_at_s"] is not None
    assert doc["settings"]["stall"]["resumed_at_s"] is not None
    assert doc["resources"] and doc["resources"][0]["rss_mib"] > 50
