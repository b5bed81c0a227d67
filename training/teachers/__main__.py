"""``python -m training.teachers label …`` (see :mod:`training.teachers.cli`)."""

import logging
import sys

from rt_tagger.cli import run_guarded
from training.teachers.cli import main

if __name__ == "__main__":
    debug = "--debug" in sys.argv
    argv = [a for a in sys.argv[1:] if a != "--debug"]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(run_guarded(main, argv, debug))
