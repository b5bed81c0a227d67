"""Torch eager on the CPU: the reference backend every other backend is compared with."""

from __future__ import annotations

import numpy as np

from engines.base import Backend, Inference

__all__ = ["TorchCPUBackend"]


class TorchCPUBackend(Backend):
    name = "torch-cpu"

    def __init__(self, bundle, max_batch: int = 64, threads: int | None = None) -> None:
        super().__init__(bundle, max_batch)
        self.threads = threads

    def activate_impl(self) -> None:
        import torch

        if self.threads:
            torch.set_num_threads(self.threads)
        self._torch = torch
        self.model = self.bundle.build_model()

    def infer_impl(self, mel: np.ndarray) -> Inference:
        torch = self._torch
        with torch.inference_mode():
            logits, emb = self.model(torch.from_numpy(mel))
            return Inference(torch.sigmoid(logits).numpy(), emb.numpy())

    def deactivate_impl(self) -> None:
        self.model = None
