"""Where a result came from: the code's commit (bundles and reports record it)."""

from __future__ import annotations

from engines import provenance

__all__ = ["git_commit"]


def git_commit() -> str:
    """The commit training ran from (``engines.provenance.git_commit``, watching what training depends on)."""
    return provenance.git_commit(("training", "engines", "configs"))
