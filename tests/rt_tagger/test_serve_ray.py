"""``rt-tagger serve --ray`` on a real local Ray cluster: a head and two worker nodes (separate
``ray start`` processes), six real-time streams, one worker node killed while they run.

The cluster runs in a network namespace the test creates (``unshare -n``, then ``lo`` up: see
ray_cluster_scenario.py), so every Ray socket stays on 127.0.0.1. Needs root (CI runs as root)
and Ray (the ``ray`` extra). The recovery times are printed; bench/results keeps a recorded run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.slow


def _why_not() -> str | None:
    try:
        import ray  # noqa: F401
    except ImportError:
        return "Ray is not installed (pip install 'rt-tagger[ray]')"
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs root with unshare and ip to give Ray a private loopback-only network namespace"
    return None


@pytest.mark.skipif(_why_not() is not None, reason=_why_not() or "")
def test_streams_resume_on_a_live_shard_after_a_worker_node_dies():
    p = subprocess.run(
        ["unshare", "-n", sys.executable, str(ROOT / "tests" / "rt_tagger" / "ray_cluster_scenario.py")],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    print(json.dumps({k: r[k] for k in ("cluster_ready_s", "moved", "max_recovery_s", "recovery")}, indent=1))
    # Consistent hashing put streams on both shards; the killed node's streams all moved.
    assert 0 < len(r["moved"]) < r["streams"], r
    for sid, rec in r["recovery"].items():
        assert rec["seq_before_contiguous"], (sid, rec)
        assert rec["seq_after_restarts_at_0"], (sid, rec)  # the documented restart after shard_lost
        assert rec["first_tags_after_kill_s"] is not None and rec["first_tags_after_kill_s"] < 60, (sid, rec)
        assert rec["end_reason"] == "closed", (sid, rec)
    assert r["unmoved_seq_problems"] == 0, r
    assert [e["event"] for e in r["cluster_events"]].count("shard_lost") == 1, r["cluster_events"]
