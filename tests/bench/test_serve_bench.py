"""``rt-tagger bench serve`` with stream groups: a small real level (server, generator and
subscriber processes) that must hold, each group on its own chunk clock."""

import pytest

from .conftest import run_bench


@pytest.mark.parametrize("aligned", [False, True], ids=["own_clocks", "aligned"])
def test_group_level_holds_and_every_window_arrives(tmp_path, capsys, aligned):
    doc = run_bench(
        ["serve", "--bundle", "lite", "--streams", "40", "--group-size", "10", "--seconds", "8",
         "--skip-s", "4", "--chunk-ms", "100", "--read-groups", "--backend", "onnxruntime-cpu",
         "--no-plots", *(["--aligned-groups"] if aligned else [])],
        tmp_path, capsys,
    )  # fmt: skip
    r = doc["results"][0]
    assert r["streams"] == 40 and r["lost"] == 0 and r["dropped"] == 0 and r["streams_short"] == 0
    assert r["messages"] >= 40 * 9  # ≥ 9 windows a stream over 8 s of audio, plus the ends
    assert doc["settings"]["aligned_groups"] is aligned
    assert ("one shared chunk clock" in doc["settings"]["load"]) is aligned
