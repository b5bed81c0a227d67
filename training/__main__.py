"""``python -m training <stage> …``: the same commands as ``rt-tagger train`` (e.g. on a machine
where the package is on PYTHONPATH but not installed)."""

import sys

from engines.errors import run_guarded
from training.cli import main

if __name__ == "__main__":
    debug = "--debug" in sys.argv
    argv = [a for a in sys.argv[1:] if a != "--debug"]
    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(run_guarded(main, argv, debug))
