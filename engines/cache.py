"""Keyed artifacts under ``<bundle>/compiled/``: an ONNX file or a TensorRT plan plus a JSON key.

Every compiled artifact sits next to a small key file, ``<artifact>.key.json``, recording what it
was built from (weights sha256, opset, TensorRT flavour and version, GPU or build target,
precision, batch range) and the artifact's own sha256 and size. :func:`load_or_build` returns the
artifact only when the stored key equals the expected one and the file still hashes to what the
key says; anything else (no key, other key, truncated or corrupt file) means rebuild, or a clear
:class:`CacheError` when the directory is read-only. Never a silent load.

Writes go to a temporary file in the same directory and are renamed into place, artifact first and
key last, so a crash leaves either no key (rebuild) or a complete pair.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engines.bundle import Bundle, sha256_file
from engines.errors import UserError

__all__ = [
    "CacheError",
    "Artifact",
    "compiled_dir",
    "load_or_build",
    "atomic_path",
    "write_atomic",
    "KEY_SUFFIX",
]

log = logging.getLogger(__name__)

KEY_SUFFIX = ".key.json"
# Optional override, for bundles on read-only media (e.g. the default bundle inside site-packages).
ENV_COMPILED_DIR = "RT_TAGGER_COMPILED_DIR"


class CacheError(UserError):
    """A compiled artifact that is stale, corrupt or cannot be (re)built here."""


def compiled_dir(bundle: Bundle) -> Path:
    """Where the bundle's artifacts live: ``<bundle>/compiled`` or ``$RT_TAGGER_COMPILED_DIR/<sha12>``."""
    override = os.environ.get(ENV_COMPILED_DIR)
    if override:
        return Path(override) / bundle.manifest.weights_sha256[:12]
    return bundle.compiled_dir


@dataclass(frozen=True)
class Artifact:
    """One keyed artifact: ``path`` and the ``key`` it must have been built with."""

    path: Path
    key: dict[str, Any]

    @property
    def key_path(self) -> Path:
        return self.path.with_name(self.path.name + KEY_SUFFIX)

    def stored(self) -> dict[str, Any] | None:
        """The key file's content (``key``, ``artifact``, ``info``), or None if missing or unreadable."""
        try:
            data = json.loads(self.key_path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and isinstance(data.get("key"), dict) else None

    def info(self) -> dict[str, Any]:
        """What the builder recorded about the artifact (e.g. a plan's I/O tensors); {} if none."""
        stored = self.stored() or {}
        return stored.get("info") or {}

    def problem(self) -> str | None:
        """Why the artifact on disk cannot be used as is, or None if it can."""
        if not self.path.is_file():
            return "not built yet"
        stored = self.stored()
        if stored is None:
            return f"no readable key file {self.key_path.name}"
        have, want = stored["key"], self.key
        if have != want:
            diff = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
            return "key mismatch on " + ", ".join(f"{k} ({have.get(k)!r} != {want.get(k)!r})" for k in diff)
        meta = stored.get("artifact") or {}
        size = self.path.stat().st_size
        if size != meta.get("bytes"):
            return f"file is {size} bytes but its key file says {meta.get('bytes')} (truncated or replaced)"
        if sha256_file(self.path) != meta.get("sha256"):
            return "file sha256 differs from its key file (corrupt or replaced)"
        return None


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; on success it replaces ``path`` in one rename.

    The one way this project writes a file that readers may open at any moment: a crash or an error
    leaves the old file (or none), never a half-written one. The temporary file is removed on error.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes 0600; written files are shared like any other
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write ``data`` (bytes, or text as UTF-8) to ``path`` through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)


def _writable(directory: Path) -> bool:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(directory, os.W_OK)


def load_or_build(
    artifact: Artifact,
    build: Callable[[Path], dict[str, Any] | None],
    *,
    rebuild: bool = False,
    what: str = "artifact",
) -> Path:
    """Return ``artifact.path`` if its key matches, else build it with ``build(tmp_path)``.

    Args:
        artifact: the path and the key it must match.
        build: writes the artifact to the temporary path it is given (same directory) and may
            return a JSON-able dict of facts about it, stored as ``info`` in the key file.
        rebuild: build even if a matching artifact exists.
        what: a word for messages ("ONNX model", "TensorRT plan").

    Raises:
        CacheError: the artifact is missing or stale and its directory is not writable.
    """
    problem = "rebuild requested" if rebuild else artifact.problem()
    if problem is None:
        log.debug("using cached %s %s", what, artifact.path)
        return artifact.path
    directory = artifact.path.parent
    if not _writable(directory):
        raise CacheError(
            f"{what} {artifact.path} cannot be used ({problem}) and {directory} is not writable; "
            f"build it where the bundle is writable or set {ENV_COMPILED_DIR}"
        )
    if problem != "not built yet":
        log.warning("rebuilding %s %s: %s", what, artifact.path.name, problem)
    with atomic_path(artifact.path) as tmp:
        info = build(tmp) or {}
        stored = {
            "key": artifact.key,
            "artifact": {"file": artifact.path.name, "sha256": sha256_file(tmp), "bytes": tmp.stat().st_size},
            "info": info,
        }
        artifact.key_path.unlink(missing_ok=True)  # no key while the artifact changes
    write_atomic(artifact.key_path, json.dumps(stored, indent=2, sort_keys=True) + "\n")
    log.info("built %s %s", what, artifact.path)
    return artifact.path
