"""Where a result came from: the code's commit and the machine (bundles and results record them)."""

from __future__ import annotations

import os
import platform

from engines import provenance

__all__ = ["git_commit", "machine"]


def git_commit() -> str:
    """The commit training ran from (``engines.provenance.git_commit``, watching what training depends on)."""
    return provenance.git_commit(("training", "engines", "configs"))


def machine() -> dict:
    """The machine a result was measured on: scores do not depend on it, but their times do, and a
    result says where it came from."""
    return {"host": platform.node() or "unknown", "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "python": platform.python_version()}  # fmt: skip
