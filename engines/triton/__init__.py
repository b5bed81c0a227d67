"""The tagger network as fused Triton kernels, and the ``triton-fused`` backend that runs it.

Modules, from the bottom up:

- ``kernels_stem.py``, ``kernels_conv.py``: the Triton kernels (stem + pool; implicit-GEMM
  convolution with bias, residual, ReLU and shortcut fused);
- ``tiles.py``: launch configurations, the candidate catalogues, and a network's ``TilePlan``;
- ``packing.py``: BatchNorm folding and the weight layouts the kernels read;
- ``launch.py``: one launcher per kernel (and the cuDNN candidate on the same tensors);
- ``network.py``: ``FusedResNet``, the whole network for one ``TilePlan``;
- ``tune.py``: timing candidates into a plan per batch size;
- ``keys.py``: what a cached tuning depends on;
- ``backend.py``: ``TritonFusedBackend`` behind the engines protocol.

Importing this package imports torch and triton.
"""

from engines.triton.backend import TritonFusedBackend
from engines.triton.network import FusedResNet
from engines.triton.tiles import CUDNN, Tile, TilePlan

__all__ = ["TritonFusedBackend", "FusedResNet", "Tile", "TilePlan", "CUDNN"]
