"""bench/stream_ab.sh prepare: the base side of a latency A/B gets exactly BASE's files back."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "stream_ab.sh"


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip


def test_prepare_keeps_base_versions_and_lists_files_base_lacks(tmp_path):
    repo = tmp_path / "repo"
    (repo / "bench").mkdir(parents=True)
    shutil.copy(SCRIPT, repo / "bench" / "stream_ab.sh")
    (repo / "pipeline.py").write_text("v1\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "base")
    base = _git(repo, "rev-parse", "--short", "HEAD")
    (repo / "pipeline.py").write_text("v2\n")  # changed since BASE (uncommitted counts too)
    (repo / "new_module.py").write_text("x\n")
    _git(repo, "add", "new_module.py")
    _git(repo, "commit", "-qm", "new")
    run = subprocess.run(
        ["bash", "bench/stream_ab.sh", "prepare", base], cwd=repo, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    ab = repo / ".ab_base"
    assert (ab / "BASE").read_text().strip() == base
    assert (ab / "files" / "pipeline.py").read_text() == "v1\n"
    assert (ab / "absent").read_text().split() == ["new_module.py"]
    assert not (ab / "files" / "new_module.py").exists()


def test_run_without_prepare_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "bench").mkdir()
    shutil.copy(SCRIPT, tmp_path / "bench" / "stream_ab.sh")
    run = subprocess.run(["bash", "bench/stream_ab.sh", "run"], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr.strip().count("\n") == 0 and "prepare BASE" in run.stderr
