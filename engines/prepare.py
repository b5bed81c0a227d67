"""What a CPU tagging process needs from a bundle, built beforehand so that process never loads torch.

Importing torch (the registry's CUDA build) costs about 600 MB of resident memory; the streaming
path on a CPU needs none of it once two artifacts exist beside the bundle:

- the front-end constants, ``compiled/frontend.f32.safetensors``: torchaudio's float32 window and
  mel filterbank, the exact values training multiplies by (keyed by the front-end spec; the
  torchaudio version is recorded, not keyed: the values are the bundle's definition);
- the ONNX graph for ONNX Runtime (:mod:`engines.onnx_export`).

:func:`ensure_runtime_artifacts` checks their keys and, when one is missing or stale, builds it in
a child process (``python -m engines.prepare BUNDLE``), which is where torch gets imported (in
this process when torch is loaded already, e.g. for a torch backend).
``rt-tagger compile BUNDLE --onnx-only`` builds the same files ahead of time. The default model
ships both inside the package (sealed in its manifest), so it needs no build at all.

A build that fails is recorded (``compiled/prepare.failed.json``: what was wanted, the exporter
versions, the reason) and not retried at every start while nothing changed: each start says so in
one warning, and the caller falls back (e.g. ``auto`` to torch-cpu). Installing other torch / onnx
/ onnxscript versions, or ``rt-tagger compile BUNDLE --onnx-only``, tries again.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np

from engines.bundle import Bundle
from engines.cache import Artifact, CacheError, bundle_artifact, compiled_dir, load_or_build, write_atomic
from engines.errors import UserError
from engines.frontend import FrontEndSpec

__all__ = [
    "frontend_artifact",
    "build_frontend_constants",
    "load_frontend_constants",
    "ensure_runtime_artifacts",
]

log = logging.getLogger(__name__)

_WINDOW, _FBANK = "window", "mel_fbanks"
FAILED_FILE = "prepare.failed.json"
_EXPORTERS = ("torch", "torchaudio", "onnx", "onnxscript")


def frontend_artifact(bundle: Bundle) -> Artifact:
    key = {"kind": "frontend-constants", "frontend": bundle.frontend.model_dump(mode="json")}
    return bundle_artifact(bundle, "frontend.f32.safetensors", key)


def build_frontend_constants(bundle: Bundle, *, rebuild: bool = False) -> Path:
    """Write the bundle's front-end constants if missing or stale (imports torch)."""

    def build(tmp: Path) -> dict:
        import torch
        import torchaudio
        from safetensors.numpy import save_file

        from engines.logmel_torch import torchaudio_constants

        window, fbank = torchaudio_constants(bundle.frontend)
        save_file({_WINDOW: window, _FBANK: fbank}, str(tmp))
        return {"computed_with": {"torch": torch.__version__, "torchaudio": torchaudio.__version__}}

    return load_or_build(frontend_artifact(bundle), build, rebuild=rebuild, what="front-end constants")


def load_frontend_constants(path: Path, spec: FrontEndSpec) -> tuple[np.ndarray, np.ndarray]:
    """Window ``(n_fft,)`` and filterbank ``(n_freqs, n_mels)`` as float64 (exact widening)."""
    from safetensors.numpy import load_file

    arrays = load_file(str(path))
    window, fbank = arrays[_WINDOW], arrays[_FBANK]
    if window.shape != (spec.n_fft,) or fbank.shape != (spec.n_freqs, spec.n_mels):
        raise CacheError(
            f"front-end constants {path} have shapes {window.shape}, {fbank.shape}; rebuild them"
        )
    return window.astype(np.float64), fbank.astype(np.float64)


def _missing(bundle: Bundle, onnx_precision: str | None, opset: int) -> list[Artifact]:
    from engines.onnx_export import onnx_artifact

    wanted = [frontend_artifact(bundle)]
    if onnx_precision:
        wanted.append(onnx_artifact(bundle, onnx_precision, opset))
    return [a for a in wanted if a.problem() is not None]


def ensure_runtime_artifacts(
    bundle: Bundle, onnx_precision: str | None = None, opset: int | None = None
) -> None:
    """Make sure the front-end constants (and the ONNX graph of ``onnx_precision``) exist.

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
    cmd = [sys.executable, "-m", "engines.prepare", str(bundle.path)]
    if onnx_precision:
        cmd += ["--onnx", onnx_precision, "--opset", str(opset)]
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


def _build(bundle: Bundle, onnx_precision: str | None, opset: int | None) -> None:
    from engines.onnx_export import DEFAULT_OPSET, export_onnx

    build_frontend_constants(bundle)
    if onnx_precision:
        export_onnx(bundle, onnx_precision, opset or DEFAULT_OPSET)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engines.prepare", description=__doc__.split("\n\n")[0])
    p.add_argument("bundle")
    p.add_argument("--onnx", choices=("fp32", "fp16"), help="also export this ONNX variant")
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
