"""What a CPU tagging process needs from a bundle, built beforehand so that process never loads torch.

Importing torch (the registry's CUDA build) costs about 600 MB of resident memory; the streaming
path on a CPU needs none of it once the ONNX graph for ONNX Runtime (:mod:`engines.onnx_export`)
exists beside the bundle (the front end needs no artifact: its window and filterbank are computed
by :mod:`engines.frontend`, in numpy).

:func:`ensure_runtime_artifacts` checks its key and, when it is missing or stale, builds it in
a child process (``python -m engines.runtime_artifacts BUNDLE --onnx fp32``), which is where torch gets
imported (in this process when torch is loaded already, e.g. for a torch backend).
``rt-tagger compile BUNDLE --onnx-only`` builds the same files ahead of time.

The default model ships its ONNX graph inside the package (sealed in its manifest), so it needs no
build at all. A build that fails is recorded (``compiled/prepare.failed.json``: what was wanted,
the exporter versions, the reason) and not retried at every start while nothing changed: each
start says so in one warning, and the caller falls back (e.g. ``auto`` to torch-cpu). Installing
other torch / onnx / onnxscript versions, or ``rt-tagger compile BUNDLE --onnx-only``, tries again.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from importlib import metadata

from engines.bundle import Bundle
from engines.cache import Artifact, CacheError, compiled_dir, write_atomic
from engines.errors import UserError

__all__ = ["ensure_runtime_artifacts"]

log = logging.getLogger(__name__)

FAILED_FILE = "prepare.failed.json"
_EXPORTERS = ("torch", "torchaudio", "onnx", "onnxscript")


def _missing(bundle: Bundle, onnx_precision: str, opset: int) -> list[Artifact]:
    from engines.onnx_export import onnx_artifact

    wanted = [onnx_artifact(bundle, onnx_precision, opset)]
    return [a for a in wanted if a.problem() is not None]


def ensure_runtime_artifacts(bundle: Bundle, onnx_precision: str, opset: int | None = None) -> None:
    """Make sure the ONNX graph of ``onnx_precision`` exists.

    Missing or stale ones are built by a child process, so this process does not import torch
    (or here, if it has already).

    Raises:
        CacheError: they could not be built (the child's one-line reason is the message).
    """
    from engines.onnx_export import DEFAULT_OPSET

    opset = opset or DEFAULT_OPSET
    missing = _missing(bundle, onnx_precision, opset)
    if not missing:
        return
    names = ", ".join(a.path.name for a in missing)
    attempt = _attempt(missing)
    failed = _failed_before(bundle, attempt)
    if failed is not None:
        log.warning(
            "not retrying the build of %s: it failed before with the same torch/onnx/onnxscript "
            "versions (%s); `rt-tagger compile %s --onnx-only` tries again",
            names,
            failed,
            bundle.path,
        )
        raise CacheError(f"building {names} failed before: {failed}")
    if "torch" in sys.modules:  # loaded already (a torch backend): a child would only cost time
        log.info("building %s", names)
        try:
            _build(bundle, onnx_precision, opset)
        except UserError as e:
            _record_failure(bundle, attempt, str(e))
            raise
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
        _record_failure(bundle, attempt, reason)
        log.warning(
            "building %s failed: %s (recorded in %s; not retried until that changes)",
            names,
            reason,
            FAILED_FILE,
        )
        raise CacheError(f"{' '.join(cmd[2:4])} failed: {reason}")
    still = _missing(bundle, onnx_precision, opset)
    if still:  # the child said it succeeded; never load what does not match its key
        raise CacheError(f"{still[0].path} is still unusable after building it: {still[0].problem()}")
    (compiled_dir(bundle) / FAILED_FILE).unlink(missing_ok=True)


def _attempt(missing: list[Artifact]) -> dict:
    """What a build attempt depends on: the wanted keys and the exporter packages' versions."""
    versions = {}
    for name in _EXPORTERS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"wanted": {a.path.name: a.key for a in missing}, "versions": versions}


def _failed_before(bundle: Bundle, attempt: dict) -> str | None:
    """The recorded reason if a missing artifact failed to build before with these versions, else None."""
    try:
        record = json.loads((compiled_dir(bundle) / FAILED_FILE).read_text())
    except (OSError, ValueError):
        return None
    before = record.get("attempt") if isinstance(record, dict) else None
    if not isinstance(before, dict) or before.get("versions") != attempt["versions"]:
        return None
    wanted_before = before.get("wanted") or {}
    # a part of that attempt may have been built since; what is still missing failed then
    if not any(wanted_before.get(name) == key for name, key in attempt["wanted"].items()):
        return None
    return str(record.get("reason"))


def _record_failure(bundle: Bundle, attempt: dict, reason: str) -> None:
    directory = compiled_dir(bundle)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        write_atomic(
            directory / FAILED_FILE, json.dumps({"attempt": attempt, "reason": reason}, indent=2).encode()
        )
    except OSError:
        pass  # read-only: the next start will try (and say) again


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
    try:
        _build(Bundle.load(args.bundle), args.onnx, args.opset)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
