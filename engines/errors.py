"""The one base class for errors a user can cause (bad file, bad config, busy port, wrong bundle).

The CLI prints such an error as one line and exits non-zero; tracebacks only with ``--debug``.
Every package's user-facing errors subclass :class:`UserError`.
"""

__all__ = ["UserError"]


class UserError(Exception):
    """An error caused by the user's input; ``str(err)`` is the whole message."""

    exit_code = 2
