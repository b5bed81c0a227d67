"""``python -m bench MODE ...``: the same as ``rt-tagger bench MODE ...`` without an installed package."""

import sys

from bench.cli import main
from engines.errors import run_guarded

if __name__ == "__main__":
    argv = sys.argv[1:]
    debug = "--debug" in argv
    if debug:
        argv.remove("--debug")
    sys.exit(run_guarded(main, argv, debug))
