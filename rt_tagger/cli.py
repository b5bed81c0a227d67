"""`rt-tagger` console entry point.

Runtime commands (devices, listen, tag, stream, subscribe, demo) live in :mod:`rt_tagger.commands`.
Commands of the other stages (train, features, compile, bench) are found through the
``rt_tagger.commands`` entry-point group declared in pyproject.toml, so rt_tagger never imports
training (DESIGN.md: arrows point one way). Each such command is ``main(argv: list[str]) -> int``.

Errors a user can cause (:class:`engines.errors.UserError`) print one line and exit non-zero;
tracebacks only with ``--debug`` (:func:`engines.errors.run_guarded`).
"""

from __future__ import annotations

import logging
import sys
from importlib.metadata import entry_points

from engines.errors import run_guarded

__all__ = ["main", "run_guarded"]


def _plugin_commands() -> dict:
    return {ep.name: ep for ep in entry_points(group="rt_tagger.commands")}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if debug:
        argv.remove("--debug")
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    plugins = _plugin_commands()
    if argv and argv[0] in plugins:
        return run_guarded(plugins[argv[0]].load(), argv[1:], debug)
    from rt_tagger import commands

    return run_guarded(lambda a: commands.main(a, extra_commands=sorted(plugins)), argv, debug)


if __name__ == "__main__":
    sys.exit(main())
