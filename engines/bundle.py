"""Model bundles: the directory every downstream stage consumes.

Layout::

    <bundle>/
      manifest.json          format version, front end, model spec, tags, thresholds, metrics,
                             provenance, sha256 of the weights
      weights.safetensors    the only weights format accepted (loading must not run code)
      compiled/              ONNX / TensorRT artifacts, each keyed by what it depends on

Loading checks the whole manifest against its own digest (``manifest_sha256``: the sha256 of the
canonical JSON of every other field, so a renamed tag or an edited threshold is refused, not
silently used), validates its ranges (thresholds finite in (0, 1), a sane front end), verifies the
weights' sha256 against the manifest and refuses anything else. The digest is an integrity check,
not a signature: it catches edits and corruption, not someone who recomputes it on purpose.

``artifacts`` lists compiled files that travel with the bundle (e.g. the default model's ONNX
graph inside the package): their sha256 and key are covered by the manifest digest, which is how
:mod:`engines.cache` trusts them without rebuilding.

Saving writes into a temporary sibling directory and renames it into place, so a crash never
leaves a half-written bundle.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from engines.errors import UserError
from engines.frontend import FrontEndSpec
from engines.model_spec import ModelSpec

__all__ = [
    "BundleError",
    "Manifest",
    "SealedArtifact",
    "Bundle",
    "save_bundle",
    "seal_manifest",
    "seal_bundle",
    "manifest_digest",
    "sha256_file",
    "FORMAT_VERSION",
    "TAG_GROUPS",
]

FORMAT_VERSION = 2  # 2: the manifest carries manifest_sha256 over all its other fields
DIGEST_FIELD = "manifest_sha256"
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


Probability = Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)]
# Front-end bounds beyond FrontEndSpec's own checks: what any audio model here could use.
_SAMPLE_RATES = (1000, 384_000)
_MAX_N_FFT = 1 << 16
_MAX_WINDOW_FRAMES = 1 << 16


class SealedArtifact(BaseModel):
    """A compiled file shipped with the bundle: its key (without the bundle identity) and sha256."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: dict[str, Any]
    sha256: str = Field(pattern="^[0-9a-f]{64}$")
    bytes: int = Field(gt=0)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    format_version: int = FORMAT_VERSION
    name: str = "rt-tagger"
    frontend: FrontEndSpec
    model: ModelSpec
    hop_seconds: float = Field(0.5, gt=0, description="default streaming hop")
    tags: list[Annotated[str, Field(min_length=1)]]
    thresholds: list[Probability] = Field(
        description="per-tag decision thresholds on probabilities, in (0, 1)"
    )
    groups: list[TagGroup] = Field(
        default_factory=list, description="per-tag group, in `tags` order; empty: every tag is 'other'"
    )
    metrics: dict[str, Any] = Field(default_factory=dict)
    provenance: dict[str, Any] = Field(default_factory=dict)
    artifacts: dict[str, SealedArtifact] = Field(
        default_factory=dict, description="compiled files shipped in <bundle>/compiled/, by file name"
    )
    weights_file: str = WEIGHTS_FILE
    weights_sha256: str = ""
    manifest_sha256: str = Field("", description="sha256 of the canonical JSON of every other field")

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
        _check_frontend(self.frontend)
        for name in self.artifacts:
            if Path(name).name != name or name.startswith("."):
                raise ValueError(f"artifact {name!r} must be a plain file name inside compiled/")
        return self

    @property
    def tag_groups(self) -> list[str]:
        """Every tag's group, in ``tags`` order ("other" when the manifest names none)."""
        return list(self.groups) if self.groups else ["other"] * len(self.tags)

    @property
    def music_index(self) -> int | None:
        """Index of the music / not-music tag (group "music"), or None if the model has none."""
        return self.groups.index("music") if "music" in self.groups else None


def _check_frontend(fe: FrontEndSpec) -> None:
    """Reject front ends no audio model here can use (NaN, infinities, absurd sizes)."""
    for field, value in fe.model_dump().items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"frontend.{field} must be finite, got {value}")
    lo, hi = _SAMPLE_RATES
    if not lo <= fe.sample_rate <= hi:
        raise ValueError(f"frontend.sample_rate {fe.sample_rate} is outside {lo}..{hi} Hz")
    if fe.n_fft > _MAX_N_FFT or fe.window_frames > _MAX_WINDOW_FRAMES:
        raise ValueError(f"frontend.n_fft / window_frames too large ({fe.n_fft}, {fe.window_frames})")
    if fe.n_mels > fe.n_freqs:
        raise ValueError(f"frontend.n_mels {fe.n_mels} exceeds the {fe.n_freqs} FFT bins")
    if fe.power <= 0:
        raise ValueError(f"frontend.power must be positive, got {fe.power}")
    if fe.amin >= fe.ref:
        raise ValueError(f"frontend.amin ({fe.amin}) must be below ref ({fe.ref})")


def _read_json(mpath: Path) -> dict:
    try:
        raw = json.loads(mpath.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"unreadable manifest {mpath}: {e}") from None
    if not isinstance(raw, dict):
        raise BundleError(f"manifest {mpath} is not a JSON object")
    return raw


def _validated(raw: dict, where: Path) -> Manifest:
    """The manifest in ``raw``, or a one-line :class:`BundleError` naming the field and the value."""
    try:
        return Manifest.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        got = repr(first.get("input"))
        detail = f" (got {got})" if first["loc"] and len(got) <= 60 else ""
        raise BundleError(f"invalid manifest {where}: {loc or 'manifest'}: {first['msg']}{detail}") from None


def manifest_digest(fields: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of a manifest's fields, ignoring ``manifest_sha256`` itself."""
    body = {k: v for k, v in fields.items() if k != DIGEST_FIELD}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def seal_manifest(manifest: Manifest) -> Manifest:
    """``manifest`` with its ``manifest_sha256`` set over all its other fields."""
    manifest = Manifest.model_validate(manifest.model_dump())  # re-run validators on the final fields
    return manifest.model_copy(update={DIGEST_FIELD: manifest_digest(manifest.model_dump(mode="json"))})


def write_manifest(directory: Path, manifest: Manifest) -> None:
    """Seal ``manifest`` and write it atomically as ``directory/manifest.json``."""
    from engines.atomic import write_atomic

    text = json.dumps(seal_manifest(manifest).model_dump(mode="json"), indent=2) + "\n"
    write_atomic(directory / MANIFEST_FILE, text.encode())


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
        raw = _read_json(mpath)
        version = raw.get("format_version")
        if version == 1:
            raise BundleError(
                f"bundle format version 1 has no manifest digest; re-export it, or after checking its "
                f"tags and thresholds seal it with `python -m engines.seal {path}`"
            )
        if version != FORMAT_VERSION:
            raise BundleError(
                f"bundle format version {version!r} is not supported (expected {FORMAT_VERSION}): {path}"
            )
        manifest = _validated(raw, mpath)
        if (
            not manifest.weights_file.endswith(".safetensors")
            or Path(manifest.weights_file).name != manifest.weights_file
        ):
            raise BundleError(
                f"bundle weights must be a .safetensors file inside the bundle, got {manifest.weights_file!r}"
            )
        digest = manifest_digest(raw)
        if digest != manifest.manifest_sha256:
            raise BundleError(
                f"manifest digest mismatch ({digest[:12]}… != {DIGEST_FIELD} {manifest.manifest_sha256[:12] or 'missing'}…): "
                f"{mpath} was edited or corrupted (tags, thresholds or front end would not be what the model was made with)"
            )
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
    def manifest_sha256(self) -> str:
        return self.manifest.manifest_sha256

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
            raise BundleError(
                f"weights do not fit the bundle's model spec: {str(e).splitlines()[0]}"
            ) from None
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
        manifest = manifest.model_copy(
            update={"weights_file": WEIGHTS_FILE, "weights_sha256": sha256_file(tmp / WEIGHTS_FILE)}
        )
        write_manifest(tmp, manifest)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Bundle.load(path)


def seal_bundle(path: str | os.PathLike) -> Bundle:
    """Give a bundle whose manifest the user has checked (e.g. format 1) its manifest digest.

    The weights must still match ``weights_sha256``; everything else in the manifest is taken as is.
    """
    path = Path(path)
    mpath = path / MANIFEST_FILE
    raw = _read_json(mpath)
    raw["format_version"] = FORMAT_VERSION
    raw.pop(DIGEST_FIELD, None)
    manifest = _validated(raw, mpath)
    wpath = path / Path(manifest.weights_file).name
    if not wpath.is_file() or sha256_file(wpath) != manifest.weights_sha256:
        raise BundleError(f"weights {wpath} missing or not matching weights_sha256: not sealing {path}")
    write_manifest(path, manifest)
    return Bundle.load(path)
