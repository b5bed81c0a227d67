"""The one base class for errors a user can cause (bad file, bad config, busy port, wrong bundle),
and the two pieces that turn them into one line on stderr for every command-line entry point:
:func:`run_guarded` and :class:`UserErrorParser`.

Every package's user-facing errors subclass :class:`UserError`. This module is the lowest layer, so
training, bench and rt_tagger entry points can all share the guard without importing each other.
"""

import argparse
import sys

__all__ = ["UserError", "UserErrorParser", "run_guarded"]


class UserError(Exception):
    """An error caused by the user's input; ``str(err)`` is the whole message."""

    exit_code = 2


def run_guarded(fn, argv: list[str], debug: bool) -> int:
    """Run ``fn(argv)``; user errors become one line on stderr and a non-zero exit.

    Tracebacks only with ``debug`` (``--debug``); anything unexpected is one "internal error" line.
    """
    try:
        return int(fn(argv) or 0)
    except UserError as e:
        if debug:
            raise
        print(f"rt-tagger: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("rt-tagger: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - last line of defence: one line unless --debug
        if debug:
            raise
        print(
            f"rt-tagger: internal error: {type(e).__name__}: {e} (run with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


class UserErrorParser(argparse.ArgumentParser):
    """argparse that raises a :class:`UserError` (one line, exit 2) instead of printing usage and exiting."""

    def error(self, message: str):  # noqa: D401 - argparse API
        raise UserError(f"{self.prog}: {message}")
