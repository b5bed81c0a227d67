"""Where a result came from: the code's commit (bundles and reports record it)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

__all__ = ["git_commit"]


def git_commit() -> str:
    """The commit the code ran from: ``RT_TAGGER_COMMIT`` when set (copies of the tree without
    history, e.g. on a GPU machine), else ``git rev-parse`` (+dirty when training/engines/configs
    have local changes), else "unknown"."""
    env = os.environ.get("RT_TAGGER_COMMIT", "")
    if re.fullmatch(r"[0-9a-f]{40}", env):
        return env
    try:
        root = Path(__file__).resolve().parents[1]
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        if not re.fullmatch(r"[0-9a-f]{40}", sha):
            return "unknown"
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "training", "engines", "configs"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
