"""``python -m engines.triton tune BUNDLE``: tune the fused kernels for this GPU ahead of time.

Once tuned, ``--backend auto`` picks ``triton-fused`` on this GPU (with the same options). Prints
where the tuning is cached and how long it took; errors are one line on stderr, exit status 1
(2 for usage errors).

Examples::

    python -m engines.triton tune path/to/bundle                   # bf16, batch 1..64, full catalogue
    python -m engines.triton tune path/to/bundle --catalogue quick --max-batch 4096
"""

from __future__ import annotations

import argparse
import json
import sys

from engines.bundle import Bundle
from engines.errors import UserError

__all__ = ["auto_note", "main"]


def _parser() -> argparse.ArgumentParser:
    from engines.triton.backend import PRECISIONS
    from engines.triton.tune import CATALOGUES

    p = argparse.ArgumentParser(prog="python -m engines.triton", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("tune", help="tune the fused kernels for this GPU and cache the result in the bundle")
    t.add_argument("bundle", help="model bundle directory")
    t.add_argument("--precision", choices=PRECISIONS, default="bf16", help="(default: bf16)")
    t.add_argument("--max-batch", type=int, default=64, help="tune batch sizes 1, 2, 4 … N (default: 64)")
    t.add_argument(
        "--catalogue", choices=tuple(CATALOGUES), default="full", help="candidates (default: full)"
    )
    t.add_argument("--no-cudnn", action="store_true", help="Triton kernels only (no cuDNN fused ops)")
    t.add_argument("--retune", action="store_true", help="tune even if a matching tuning is cached")
    return p


def auto_note(args: argparse.Namespace) -> str | None:
    """A line for a tuning that ``stream``/``listen`` with ``--backend auto`` will not use: they open
    the backend with its defaults (max_batch, precision, cuDNN), and a tuning's key must match."""
    import inspect

    from engines.triton.backend import TritonFusedBackend

    defaults = {k: p.default for k, p in inspect.signature(TritonFusedBackend.__init__).parameters.items()}
    wanted = (defaults["max_batch"], defaults["precision"], defaults["cudnn"])
    if (args.max_batch, args.precision, not args.no_cudnn) == wanted:
        return None
    return (
        f"note: stream/listen with --backend auto look for the tuning of --max-batch {wanted[0]}, "
        f"--precision {wanted[1]}{'' if wanted[2] else ', --no-cudnn'}: they will not use this one "
        "(a server or backend opened with these options will)"
    )


def main(argv: list[str] | None = None) -> int:
    from engines.triton.backend import TritonFusedBackend

    args = _parser().parse_args(argv)
    try:
        bundle = Bundle.load(args.bundle)
        backend = TritonFusedBackend(
            bundle,
            max_batch=args.max_batch,
            precision=args.precision,
            cudnn=not args.no_cudnn,
            catalogue=args.catalogue,
            retune=args.retune,
            cuda_graphs=False,
        )
        backend.activate()  # tunes, or finds the cached tuning
        backend.deactivate()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"tuning: {backend.tuning_path}")
    print(f"  {json.dumps(backend.tuning_info)}")
    note = auto_note(args)
    if note:
        print(note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
