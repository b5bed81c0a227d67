"""Keyed artifacts under ``<bundle>/compiled/``: an ONNX file, a TensorRT plan… plus a JSON key.

Every compiled artifact is made by :func:`bundle_artifact`, whose key always carries the bundle's
identity (weights sha256 and manifest digest) beside what the builder adds (opset, TensorRT
flavour and version, GPU or build target, precision, batch range). It is trusted in one of two
ways, and :func:`load_or_build` returns it only then:

- built here: its key file ``<artifact>.key.json`` holds the key, the artifact's own sha256 and
  size, and an HMAC-SHA256 of both under this user's artifact key (``$XDG_CONFIG_HOME/rt-tagger/
  artifact-signing.key``, created 0600 on first build). A key file written elsewhere, or edited
  after a file was swapped, does not verify, so a forged artifact is never loaded as genuine;
- shipped with the bundle: its key, sha256 and size are listed in the manifest's ``artifacts``,
  which the manifest digest covers (e.g. the default model's ONNX graph inside the package).

Anything else (no key, other key, truncated, replaced or unsigned file) means rebuild, or a clear
:class:`CacheError` when the directory is read-only. Never a silent load.

Writes go to a temporary file in the same directory and are renamed into place, artifact first and
key last, so a crash leaves either no key (rebuild) or a complete pair.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engines.atomic import atomic_path, write_atomic  # re-exported: the one way to write a file
from engines.bundle import Bundle, SealedArtifact, sha256_file, write_manifest
from engines.errors import UserError

__all__ = [
    "CacheError",
    "Artifact",
    "bundle_artifact",
    "compiled_dir",
    "load_or_build",
    "atomic_path",
    "write_atomic",
    "signing_key_path",
    "seal_artifacts",
    "KEY_SUFFIX",
]

log = logging.getLogger(__name__)

KEY_SUFFIX = ".key.json"
# Optional override, for bundles on read-only media (e.g. the default bundle inside site-packages).
ENV_COMPILED_DIR = "RT_TAGGER_COMPILED_DIR"
_KEY_BYTES = 32  # HMAC-SHA256 secret


class CacheError(UserError):
    """A compiled artifact that is stale, corrupt or cannot be (re)built here."""


def compiled_dir(bundle: Bundle) -> Path:
    """Where the bundle's artifacts live: ``<bundle>/compiled`` or ``$RT_TAGGER_COMPILED_DIR/<digest12>``."""
    override = os.environ.get(ENV_COMPILED_DIR)
    if override:
        return Path(override) / bundle.manifest_sha256[:12]
    return bundle.compiled_dir


def signing_key_path() -> Path:
    """This user's artifact key: key files are signed with it so that only builds made here verify."""
    config = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(config) / "rt-tagger" / "artifact-signing.key"


def _signing_key(create: bool) -> bytes | None:
    """This user's secret (created when ``create``); None if there is none yet."""
    path = signing_key_path()
    try:
        secret = path.read_bytes()
    except FileNotFoundError:
        if not create:
            return None
        secret = _create_signing_key(path)
    if len(secret) < _KEY_BYTES:
        raise CacheError(f"artifact signing key {path} is damaged; delete it (artifacts are then rebuilt)")
    return secret


def _create_signing_key(path: Path) -> bytes:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".artifact-signing.", dir=path.parent)  # 0600
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(_KEY_BYTES))
        try:
            os.link(tmp, path)  # atomic and exclusive: a complete key or none
        except FileExistsError:
            pass  # another process made it first: use theirs
        finally:
            os.unlink(tmp)
        return path.read_bytes()
    except OSError as e:
        raise CacheError(
            f"cannot create the artifact signing key {path}: {e.strerror}; set XDG_CONFIG_HOME to a writable folder"
        ) from None


def _signature(secret: bytes, key: dict[str, Any], meta: dict[str, Any]) -> str:
    text = json.dumps({"key": key, "artifact": meta}, sort_keys=True, separators=(",", ":"))
    return hmac.new(secret, text.encode(), hashlib.sha256).hexdigest()


_IDENTITY = ("weights_sha256", "manifest_sha256")  # what bundle_artifact adds to every key


def bundle_artifact(bundle: Bundle, filename: str, key: dict[str, Any]) -> Artifact:
    """The artifact ``filename`` of ``bundle`` built with ``key`` (which gains the bundle's identity).

    A copy shipped with the bundle (listed in the manifest's ``artifacts`` with this key) is used
    from ``<bundle>/compiled/`` when present, also when ``$RT_TAGGER_COMPILED_DIR`` is set.
    """
    sealed = bundle.manifest.artifacts.get(filename)
    if sealed is not None and sealed.key != key:
        sealed = None  # shipped for another key (e.g. other opset): build ours
    full = {
        **key,
        "weights_sha256": bundle.manifest.weights_sha256,
        "manifest_sha256": bundle.manifest_sha256,
    }
    shipped = bundle.compiled_dir / filename
    directory = bundle.compiled_dir if sealed is not None and shipped.is_file() else compiled_dir(bundle)
    return Artifact(directory / filename, full, sealed)


@dataclass(frozen=True)
class Artifact:
    """One keyed artifact: ``path``, the ``key`` it must have been built with, its sealed entry if shipped."""

    path: Path
    key: dict[str, Any]
    sealed: SealedArtifact | None = None

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
        if self.sealed is not None:
            why = _content_problem(self.path, self.sealed.bytes, self.sealed.sha256, "the bundle's manifest")
            if why is None:
                return None
            if not self.key_path.is_file():
                return why
        stored = self.stored()
        if stored is None:
            return f"no readable key file {self.key_path.name}"
        have, want = stored["key"], self.key
        if have != want:
            diff = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
            return "key mismatch on " + ", ".join(f"{k} ({have.get(k)!r} != {want.get(k)!r})" for k in diff)
        meta = stored.get("artifact") or {}
        why = _content_problem(self.path, meta.get("bytes"), meta.get("sha256"), "its key file")
        if why is not None:
            return why
        secret = _signing_key(create=False)
        signed = stored.get("signature")
        if (
            secret is None
            or not isinstance(signed, str)
            or not hmac.compare_digest(signed, _signature(secret, have, meta))
        ):
            return f"key file not signed by this user's artifact key {signing_key_path()} (built elsewhere, or edited)"
        return None


def _content_problem(path: Path, size: Any, sha256: Any, where: str) -> str | None:
    actual = path.stat().st_size
    if actual != size:
        return f"file is {actual} bytes but {where} says {size} (truncated or replaced)"
    if sha256_file(path) != sha256:
        return f"file sha256 differs from {where} (corrupt or replaced)"
    return None


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
    secret = _signing_key(create=True)
    with atomic_path(artifact.path) as tmp:
        info = build(tmp) or {}
        meta = {"file": artifact.path.name, "sha256": sha256_file(tmp), "bytes": tmp.stat().st_size}
        stored = {
            "key": artifact.key,
            "artifact": meta,
            "info": info,
            "signature": _signature(secret, artifact.key, meta),
        }
        artifact.key_path.unlink(missing_ok=True)  # no key while the artifact changes
    write_atomic(artifact.key_path, json.dumps(stored, indent=2, sort_keys=True) + "\n")
    log.info("built %s %s", what, artifact.path)
    return artifact.path


def seal_artifacts(bundle: Bundle, artifacts: list[Artifact]) -> Bundle:
    """List verified ``artifacts`` (in ``<bundle>/compiled/``) in the manifest so they ship with it.

    Their key files are removed: the manifest digest vouches for them from now on, on any machine.
    Returns the re-loaded bundle (its manifest digest has changed).
    """
    entries = dict(bundle.manifest.artifacts)
    for artifact in artifacts:
        problem = artifact.problem()
        if problem is not None:
            raise CacheError(f"cannot ship {artifact.path}: {problem}")
        if artifact.path.parent != bundle.compiled_dir:
            raise CacheError(
                f"cannot ship {artifact.path}: not in {bundle.compiled_dir} (unset {ENV_COMPILED_DIR})"
            )
        key = {k: v for k, v in artifact.key.items() if k not in _IDENTITY}
        size, digest = artifact.path.stat().st_size, sha256_file(artifact.path)
        entries[artifact.path.name] = SealedArtifact(key=key, sha256=digest, bytes=size)
    for artifact in artifacts:
        artifact.key_path.unlink(missing_ok=True)
    write_manifest(bundle.path, bundle.manifest.model_copy(update={"artifacts": entries}))
    return Bundle.load(bundle.path)
