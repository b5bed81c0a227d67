"""Fixtures for bench tests: a tiny bundle so every mode runs in seconds (plumbing, not speed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import make_random_bundle


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    return make_random_bundle(tmp_path_factory.mktemp("bench-bundles") / "tiny")


def run_bench(argv: list[str], out_dir: Path, capsys) -> dict:
    """Run ``rt-tagger bench`` in-process with ``--json``; check the saved file equals the printed one."""
    from bench.cli import main

    assert main([*argv, "--json", "--out-dir", str(out_dir)]) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = Path(printed["saved"])
    assert saved.parent == out_dir and saved.name.startswith(f"{printed['mode']}-")
    on_disk = json.loads(saved.read_text())
    assert on_disk["mode"] == printed["mode"] and on_disk["results"] == printed["results"]
    for key in ("cpu", "cpu_cores", "ram_gib", "versions", "git"):
        assert key in on_disk["machine"]
    assert not list(out_dir.glob(".*")), "no temporary files left behind"
    for png in on_disk.get("plots", []):
        assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return on_disk
