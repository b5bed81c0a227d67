"""What a CPU tagging process needs from a bundle, built beforehand so that process never loads torch.

Importing torch (the registry's CUDA build) costs about 600 MB of resident memory; the streaming
path on a CPU needs none of it once the ONNX graph for ONNX Runtime (:mod:`engines.onnx_export`)
exists beside the bundle (the front end needs no artifact: its window and filterbank are computed
by :mod:`engines.frontend`, in numpy).

:func:`ensure_runtime_artifacts` checks its key and, when it is missing or stale, builds it in
a child process (``python -m engines.runtime_artifacts BUNDLE --onnx fp32``), which is where torch gets
imported (in this process when torch is loaded already, e.g. for a torch backend).
``rt-tagger compile BUNDLE --onnx-only`` builds the same files ahead of time.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys

from engines.bundle import Bundle
from engines.cache import Artifact, CacheError

__all__ = ["ensure_runtime_artifacts"]

log = logging.getLogger(__name__)


def _missing(bundle: Bundle, onnx_precision: str, opset: int) -> list[Artifact]:
    from engines.onnx_export import onnx_artifact

    wanted = [onnx_artifact(bundle, onnx_precision, opset)]
    return [a for a in wanted if a.problem() is not None]


def ensure_runtime_artifacts(bundle: Bundle, onnx_precision: str, opset: int | None = None) -> None:
    """Make sure the ONNX graph of ``onnx_precision`` exists.

    When it is missing or stale, a child process builds it, so this process does not import torch
    (or this process does, if it has already).

    Raises:
        CacheError: they could not be built (the child's one-line reason is the message).
    """
    from engines.onnx_export import DEFAULT_OPSET

    opset = opset or DEFAULT_OPSET
    missing = _missing(bundle, onnx_precision, opset)
    if not missing:
        return
    names = ", ".join(a.path.name for a in missing)
    if "torch" in sys.modules:  # loaded already (a torch backend): a child would only cost time
        log.info("building %s", names)
        _build(bundle, onnx_precision, opset)
        return
    log.info("building %s in a child process", names)
    cmd = [
        sys.executable,
        "-m",
        "engines.runtime_artifacts",
        str(bundle.path),
        "--onnx",
        onnx_precision,
        "--opset",
        str(opset),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        reason = lines[-1].removeprefix("error: ") if lines else f"exit status {proc.returncode}"
        raise CacheError(f"{' '.join(cmd[2:4])} failed: {reason}")
    still = _missing(bundle, onnx_precision, opset)
    if still:  # the child said it succeeded; never load what does not match its key
        raise CacheError(f"{still[0].path} is still unusable after building it: {still[0].problem()}")


def _build(bundle: Bundle, onnx_precision: str, opset: int | None) -> None:
    from engines.onnx_export import DEFAULT_OPSET, export_onnx

    export_onnx(bundle, onnx_precision, opset or DEFAULT_OPSET)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m engines.runtime_artifacts", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("bundle")
    p.add_argument("--onnx", choices=("fp32", "fp16"), required=True, help="the ONNX variant to export")
    p.add_argument("--opset", type=int, default=None)
    args = p.parse_args(argv)
    from engines.errors import UserError

    try:
        _build(Bundle.load(args.bundle), args.onnx, args.opset)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
