"""Choosing a backend by name, or automatically."""

from __future__ import annotations

import logging

from engines.base import Backend, BackendError
from engines.bundle import Bundle

__all__ = ["BACKENDS", "open_backend"]

log = logging.getLogger(__name__)

# name -> "module:Class"; imported lazily so unavailable toolkits cost nothing.
BACKENDS: dict[str, str] = {
    "torch-cpu": "engines.torch_cpu:TorchCPUBackend",
}


def _load(name: str) -> type[Backend]:
    import importlib

    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def open_backend(bundle: Bundle, name: str = "auto", **kwargs) -> Backend:
    """Build and activate a backend. ``auto`` picks the fastest one available here and logs why."""
    if name != "auto":
        if name not in BACKENDS:
            raise BackendError(f"unknown backend {name!r}; choose from: auto, {', '.join(BACKENDS)}")
        return _load(name)(bundle, **kwargs).activate()
    backend = _load("torch-cpu")(bundle, **kwargs).activate()
    log.info("backend auto-selected: %s (%s)", backend.name, backend.device)
    return backend
