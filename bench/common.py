"""Shared by every bench mode: which bundle to measure, and writing a results file safely."""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
from pathlib import Path

from engines.bundle import Bundle
from engines.cache import write_atomic
from engines.errors import UserError

__all__ = [
    "BenchError",
    "RESULTS_DIR",
    "bundle_info",
    "default_arch_random_bundle",
    "free_port",
    "open_bench_bundle",
    "new_document",
    "save_document",
]

# A user folder, not the checkout: a user's runs must not land among the project's recorded results
# (bench/results/, written there with --out-dir bench/results).
RESULTS_DIR = (
    Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "rt-tagger" / "bench"
)
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rt-tagger" / "bench"
RANDOM_NOTE = "randomly initialised bundle with the DEFAULT architecture (timing only, tags meaningless)"


class BenchError(UserError):
    """A benchmark that cannot run as asked (missing tool, bad option); one line for the user."""


def default_arch_random_bundle(path: Path | None = None, n_tags: int = 35, seed: int = 0) -> Bundle:
    """A bundle with the default ModelSpec/FrontEndSpec and random weights, cached on disk.

    Timing depends on the architecture, not on the weights, so this stands in for the shipped model
    until it exists; every result made with it says so.
    """
    import torch

    from engines.bundle import Manifest, save_bundle
    from engines.frontend import FrontEndSpec
    from engines.model import ModelSpec, ResNetTagger

    path = Path(path) if path else CACHE_DIR / f"random-default-{n_tags}tags-seed{seed}"
    if (path / "manifest.json").is_file():
        try:
            return Bundle.load(path)
        except UserError:
            pass  # stale or damaged cache: rebuild below
    torch.manual_seed(seed)
    spec = ModelSpec(n_tags=n_tags)
    model = ResNetTagger(spec).eval()
    manifest = Manifest(
        name="random-default-arch",
        frontend=FrontEndSpec(),
        model=spec,
        tags=[f"tag{i:02d}" for i in range(n_tags)],
        thresholds=[0.5] * n_tags,
        provenance={"note": RANDOM_NOTE, "seed": seed},
    )
    return save_bundle(path, model, manifest, overwrite=True)


def open_bench_bundle(path: str | None) -> tuple[Bundle, str]:
    """The bundle to measure and a label for it.

    ``path`` given: that bundle. Otherwise the shipped default model if this install has it, else a
    random-weight bundle of the default architecture (the label says which).
    """
    if path:
        try:  # a shipped bundle's name (e.g. lite) as the CLI takes it
            from rt_tagger.bundled_model import resolve_bundle

            path = str(resolve_bundle(path))
        except ImportError:
            pass
        bundle = Bundle.load(path)
        return bundle, f"bundle {bundle.manifest.name} ({path})"
    try:
        from rt_tagger.bundled_model import load_bundle

        bundle = load_bundle(None)
        return bundle, f"shipped default model {bundle.manifest.name}"
    except (ImportError, UserError):
        bundle = default_arch_random_bundle()
        return bundle, RANDOM_NOTE


def bundle_info(bundle: Bundle, label: str) -> dict:
    n_params = None
    try:
        n_params = sum(int(v.numel()) for v in bundle.state_dict().values())
    except UserError:
        pass
    m = bundle.manifest
    return {
        "label": label,
        "path": str(bundle.path),
        "name": m.name,
        "weights_sha256": m.weights_sha256[:12],
        "model": m.model.model_dump(mode="json"),
        "frontend": m.frontend.model_dump(mode="json"),
        "n_tensors_params": n_params,
    }


def new_document(mode: str, machine: dict, settings: dict) -> dict:
    return {
        "bench_schema": 1,
        "mode": mode,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "settings": settings,
        "results": [],
        "summary": {},
        "notes": [],
    }


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now, for the ZeroMQ endpoints of processes we start."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def save_document(doc: dict, out_dir: Path, slug: str, tag: str | None = None) -> Path:
    """Write ``doc`` as ``<out_dir>/<mode>-<slug>-<date>[-<tag>].json`` atomically; returns the path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    date = doc["created"][:10]
    path = out_dir / f"{doc['mode']}-{slug}-{date}{'-' + tag if tag else ''}.json"
    write_atomic(path, json.dumps(doc, indent=2, default=_json_default) + "\n")
    return path


def _json_default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
