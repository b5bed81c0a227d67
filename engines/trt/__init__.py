"""TensorRT: one builder and one runtime over both TensorRT flavours.

- ``tensorrt`` (full TensorRT, ``import tensorrt``): weakly typed networks, FP16 through a builder
  flag, a persistent timing cache.
- ``tensorrt-rtx`` (TensorRT for RTX, ``import tensorrt_rtx_bindings``): strongly typed networks
  only, so FP16 comes from the FP16 ONNX graph; builds on a machine without a GPU for a list of
  compute capabilities; timing caches are no-ops since RTX 1.2 (kernels are JIT-compiled at run
  time instead).

Modules: :mod:`.api` finds the module, :mod:`.keys` says what a plan depends on, :mod:`.builder`
parses ONNX and serialises plans, :mod:`.runtime` is the :class:`~engines.base.Backend`.
Nothing here is imported by ``import engines``.
"""
