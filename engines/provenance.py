"""Which code a result came from: the one ``git_commit`` for training manifests and bench documents."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path

__all__ = ["ENV_COMMIT", "REPO", "git_commit"]

# Copies of the tree without history (e.g. on a GPU machine) pass the commit they were made from.
ENV_COMMIT = "RT_TAGGER_COMMIT"
REPO = Path(__file__).resolve().parents[1]
_SHA = re.compile(r"[0-9a-f]{40}")


def git_commit(watched: Sequence[str], repo: Path = REPO) -> str:
    """The commit the code runs from: ``<sha>``, ``<sha>+dirty`` or ``"unknown"``.

    Args:
        watched: folders of ``repo`` whose uncommitted changes (tracked files) mark the tree dirty,
            e.g. ``("training", "engines", "configs")``.
        repo: the checkout (Default: the one this package sits in).

    ``RT_TAGGER_COMMIT`` wins when it holds a full sha; otherwise ``git rev-parse HEAD``; any git
    failure (no git, no checkout, timeout) gives ``"unknown"``, never an exception.
    """
    env = os.environ.get(ENV_COMMIT, "")
    if _SHA.fullmatch(env):
        return env

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    if sha is None or not _SHA.fullmatch(sha):
        return "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", *watched)
    return sha + ("+dirty" if dirty else "")
