"""Model bundles: the directory every downstream stage consumes.

Layout::

    <bundle>/
      manifest.json          format version, front end, model spec, tags, thresholds, metrics,
                             provenance, sha256 of the weights
      weights.safetensors    the only weights format accepted (loading must not run code)
      compiled/              ONNX / TensorRT artifacts, each keyed by what it depends on

Loading verifies the weights' sha256 against the manifest and refuses anything else.
Saving writes into a temporary sibling directory and renames it into place, so a crash never
leaves a half-written bundle.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from engines.errors import UserError
from engines.frontend import FrontEndSpec
from engines.model_spec import ModelSpec

__all__ = ["BundleError", "Manifest", "Bundle", "save_bundle", "sha256_file", "FORMAT_VERSION", "TAG_GROUPS"]

FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.safetensors"
MANIFEST_FILE = "manifest.json"


# What a tag describes. "music" is the music / not-music head: at most one tag, which gates the others
# (docs/messages.md, `state`). A manifest without `groups` has every tag in "other".
TagGroup = Literal[
    "instrument", "drums", "vocals", "genre", "style", "mood", "tempo", "dynamics", "music", "other"
]  # fmt: skip
TAG_GROUPS: tuple[str, ...] = TagGroup.__args__


class BundleError(UserError):
    """A bundle that cannot be used; the message is one line meant for the user."""


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format_version: int = FORMAT_VERSION
    name: str = "rt-tagger"
    frontend: FrontEndSpec
    model: ModelSpec
    hop_seconds: float = Field(0.5, gt=0, description="default streaming hop")
    tags: list[str]
    thresholds: list[float] = Field(description="per-tag decision thresholds on probabilities")
    groups: list[TagGroup] = Field(
        default_factory=list, description="per-tag group, in `tags` order; empty: every tag is 'other'"
    )
    metrics: dict[str, Any] = Field(default_factory=dict)
    provenance: dict[str, Any] = Field(default_factory=dict)
    weights_file: str = WEIGHTS_FILE
    weights_sha256: str = ""

    @model_validator(mode="after")
    def _check(self) -> Manifest:
        if len(self.tags) != self.model.n_tags:
            raise ValueError(f"{len(self.tags)} tags but model.n_tags = {self.model.n_tags}")
        if len(self.thresholds) != len(self.tags):
            raise ValueError(f"{len(self.thresholds)} thresholds for {len(self.tags)} tags")
        if len(set(self.tags)) != len(self.tags):
            raise ValueError("tag names must be unique")
        if self.groups and len(self.groups) != len(self.tags):
            raise ValueError(f"{len(self.groups)} groups for {len(self.tags)} tags")
        if self.groups.count("music") > 1:
            raise ValueError("at most one tag may be in group 'music' (the music / not-music head)")
        return self

    @property
    def tag_groups(self) -> list[str]:
        """Every tag's group, in ``tags`` order ("other" when the manifest names none)."""
        return list(self.groups) if self.groups else ["other"] * len(self.tags)

    @property
    def music_index(self) -> int | None:
        """Index of the music / not-music tag (group "music"), or None if the model has none."""
        return self.groups.index("music") if "music" in self.groups else None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Bundle:
    """A verified bundle on disk. Construct with :meth:`load`."""

    def __init__(self, path: Path, manifest: Manifest) -> None:
        self.path = path
        self.manifest = manifest

    @classmethod
    def load(cls, path: str | os.PathLike) -> Bundle:
        path = Path(path)
        if not path.exists():
            raise BundleError(f"bundle not found: {path}")
        if not path.is_dir():
            raise BundleError(f"bundle must be a directory with {MANIFEST_FILE} and {WEIGHTS_FILE}: {path}")
        mpath = path / MANIFEST_FILE
        if not mpath.is_file():
            raise BundleError(f"not a model bundle (no {MANIFEST_FILE}): {path}")
        try:
            raw = json.loads(mpath.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BundleError(f"unreadable manifest {mpath}: {e}") from None
        if not isinstance(raw, dict):
            raise BundleError(f"manifest {mpath} is not a JSON object")
        if raw.get("format_version") != FORMAT_VERSION:
            raise BundleError(
                f"bundle format version {raw.get('format_version')!r} is not supported (expected {FORMAT_VERSION}): {path}"
            )
        try:
            manifest = Manifest.model_validate(raw)
        except ValidationError as e:
            first = e.errors()[0]
            loc = ".".join(str(p) for p in first["loc"])
            raise BundleError(f"invalid manifest {mpath}: {loc}: {first['msg']}") from None
        if not manifest.weights_file.endswith(".safetensors") or Path(manifest.weights_file).name != manifest.weights_file:
            raise BundleError(f"bundle weights must be a .safetensors file inside the bundle, got {manifest.weights_file!r}")
        wpath = path / manifest.weights_file
        if not wpath.is_file():
            raise BundleError(f"bundle weights missing: {wpath}")
        digest = sha256_file(wpath)
        if digest != manifest.weights_sha256:
            raise BundleError(
                f"bundle weights sha256 mismatch ({digest[:12]}… != manifest {manifest.weights_sha256[:12]}…): {wpath} was modified or corrupted"
            )
        return cls(path, manifest)

    @property
    def weights_path(self) -> Path:
        return self.path / self.manifest.weights_file

    @property
    def compiled_dir(self) -> Path:
        return self.path / "compiled"

    @property
    def tags(self) -> list[str]:
        return self.manifest.tags

    @property
    def frontend(self) -> FrontEndSpec:
        return self.manifest.frontend

    def state_dict(self) -> dict:
        """Torch tensors from the safetensors file."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(self.weights_path))
        except (SafetensorError, OSError, ValueError) as e:
            raise BundleError(f"cannot read weights {self.weights_path}: {e}") from None

    def build_model(self):
        """The network in eval mode with the bundle's weights (torch, CPU)."""
        from engines.model import ResNetTagger

        model = ResNetTagger(self.manifest.model)
        try:
            model.load_state_dict(self.state_dict(), strict=True)
        except RuntimeError as e:
            raise BundleError(f"weights do not fit the bundle's model spec: {str(e).splitlines()[0]}") from None
        return model.eval()


def save_bundle(path: str | os.PathLike, model, manifest: Manifest, overwrite: bool = False) -> Bundle:
    """Write ``model``'s weights and ``manifest`` atomically as a bundle directory at ``path``."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists() and not overwrite:
        raise BundleError(f"refusing to overwrite existing bundle: {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE))
        manifest = manifest.model_copy(update={"weights_file": WEIGHTS_FILE, "weights_sha256": sha256_file(tmp / WEIGHTS_FILE)})
        Manifest.model_validate(manifest.model_dump())  # re-run validators on the final manifest
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Bundle.load(path)
