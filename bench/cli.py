"""``rt-tagger bench MODE``: measure the tagger the way users run it.

Modes: ``model`` (inference latency/throughput per backend and batch), ``stream`` (end-to-end
latency per stage through the real streaming pipeline), ``capacity`` (concurrent real-time streams
one backend sustains), ``frontend`` (numba log-mel vs librosa and torchaudio), ``peers``
(``rt-tagger tag`` vs musicnn 0.1.0).

Every mode prints a readable table (or the JSON document with ``--json``), draws PNG plots and
saves ``<mode>-<machine>-<date>.json`` with the machine description into ``--out-dir``
(default: ``$XDG_DATA_HOME/rt-tagger/bench``, i.e. ``~/.local/share/rt-tagger/bench``; the project's
recorded results are written with ``--out-dir bench/results``).
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from pathlib import Path

from bench.common import RESULTS_DIR, save_document
from bench.machine import machine_slug, used_gpu
from bench.report import format_document, to_json

__all__ = ["main"]

MODES = {
    "model": "inference latency and throughput per backend and batch size",
    "stream": "end-to-end latency per stage through the real pipeline (stdin PCM at real-time pace)",
    "capacity": "concurrent real-time streams one backend sustains at a hop (model side)",
    "frontend": "numba streaming log-mel vs librosa and torchaudio: time per hop and dB difference",
    "peers": "rt-tagger tag vs musicnn 0.1.0 (MTT_musicnn) on the same files",
    "serve": "concurrent real-time streams one rt-tagger serve holds (ingest → batches → messages)",
    "soak": "hours of real-time streaming, one healthy and one stalled subscriber: losses, RSS, CPU, latency",
    "publish": "time per published message: build, JSON, compact encoding, ZeroMQ send, whole publish()",
}


def _tag(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.]+", text):
        raise argparse.ArgumentTypeError("use letters, digits, '.' and '_' only")
    return text


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rt-tagger bench", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="mode", required=True, metavar="MODE")
    for mode, help_text in MODES.items():
        sp = sub.add_parser(mode, help=help_text, description=help_text)
        sp.add_argument(
            "--bundle",
            help="model bundle directory (default: the shipped model, else a "
            "random-weight bundle of the default architecture, labelled as such)",
        )
        sp.add_argument("--json", action="store_true", help="print the results document as JSON")
        sp.add_argument(
            "--out-dir", type=Path, default=RESULTS_DIR, help=f"where results go (default {RESULTS_DIR})"
        )
        sp.add_argument("--no-save", action="store_true", help="do not write the results file")
        sp.add_argument("--no-plots", action="store_true", help="do not draw PNG plots")
        sp.add_argument("--tag", type=_tag, help="suffix for the results file name (e.g. bf16)")
        importlib.import_module(f"bench.{mode}").add_arguments(sp)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    mod = importlib.import_module(f"bench.{args.mode}")
    doc = mod.run(args)
    slug = machine_slug(doc["machine"], used_gpu(doc))
    if not args.no_save:
        path = save_document(doc, args.out_dir, slug, args.tag)
        if not args.no_plots and hasattr(mod, "plot"):
            try:
                doc["plots"] = [str(p) for p in mod.plot(doc, path.with_suffix(""))]
            except Exception as e:  # noqa: BLE001 - a plot failing must not lose the measurements
                doc["notes"].append(f"plotting failed: {type(e).__name__}: {e}")
            path = save_document(doc, args.out_dir, slug, args.tag)
        doc["saved"] = str(path)
    if args.json:
        print(to_json({k: v for k, v in doc.items()}))
    else:
        print(format_document(doc, mod.COLUMNS, MODES[args.mode]))
        if doc.get("saved"):
            print(f"saved: {doc['saved']}")
        for p in doc.get("plots", []):
            print(f"plot: {p}")
    return 0
