"""ONNX export of a bundle: one graph ``mel → (probabilities, embeddings)`` with a dynamic batch axis.

The sigmoid is inside the graph, so every runtime returns probabilities directly. Inputs and
outputs are float32 in every variant; the ``fp16`` variant computes in half precision inside the
graph (casts at the edges), which is what strongly typed TensorRT-RTX networks need: they take
their precision from the graph, not from a builder flag.

Artifacts are cached under ``<bundle>/compiled/tagger.<precision>.opset<N>.onnx``, keyed by
(weights sha256, manifest digest, opset, precision, I/O names); the exporter versions are recorded, not keyed, so
a bundle shipped with its ONNX file stays usable after a torch upgrade; see :mod:`engines.cache`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from engines.bundle import Bundle
from engines.cache import Artifact, bundle_artifact, load_or_build, write_atomic
from engines.errors import UserError

__all__ = [
    "DEFAULT_OPSET",
    "INPUT_NAME",
    "OUTPUT_NAMES",
    "PRECISIONS",
    "OnnxError",
    "onnx_artifact",
    "export_onnx",
    "check_onnx_file",
]

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18  # the torch dynamo exporter's minimum; parsed by TensorRT 10 / TensorRT-RTX 1.x
INPUT_NAME = "mel"
OUTPUT_NAMES = ("probabilities", "embeddings")
PRECISIONS = ("fp32", "fp16")
MAX_EXPORT_BATCH = 1 << 16  # the dynamic axis' upper bound as seen by torch.export


class OnnxError(UserError):
    """An ONNX file that cannot be exported or read."""


def _wrapped(bundle: Bundle, precision: str):
    import torch

    model = bundle.build_model()
    dtype = {"fp32": torch.float32, "fp16": torch.float16}[precision]
    model = model.to(dtype)

    class Exported(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits, emb = self.model(mel.to(dtype))
            return torch.sigmoid(logits).float(), emb.float()

    return Exported().eval()


def onnx_artifact(bundle: Bundle, precision: str = "fp32", opset: int = DEFAULT_OPSET) -> Artifact:
    """Where the ONNX file of this variant lives and the key it must carry."""
    if precision not in PRECISIONS:
        raise OnnxError(f"ONNX precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    key = {
        "kind": "onnx",
        "opset": int(opset),
        "precision": precision,
        "input": INPUT_NAME,
        "outputs": list(OUTPUT_NAMES),
    }
    return bundle_artifact(bundle, f"tagger.{precision}.opset{opset}.onnx", key)


def _export_to(bundle: Bundle, precision: str, opset: int, path: Path) -> None:
    import torch

    spec = bundle.frontend
    example = torch.zeros(2, spec.n_mels, spec.window_frames)
    batch = torch.export.Dim("batch", min=1, max=MAX_EXPORT_BATCH)
    # The exporter's optimiser passes log every rewrite at INFO; keep the CLI's output readable.
    noisy = [logging.getLogger(n) for n in ("onnxscript", "onnx_ir", "torch.onnx")]
    levels = [lg.level for lg in noisy]
    for lg in noisy:
        lg.setLevel(logging.WARNING)
    try:
        program = torch.onnx.export(
            _wrapped(bundle, precision),
            (example,),
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            opset_version=opset,
            dynamic_shapes=({0: batch},),
            dynamo=True,
            verbose=False,
        )
    except Exception as e:  # noqa: BLE001 - the exporter raises many types; one line for the user
        raise OnnxError(
            f"ONNX export of {bundle.path} failed: {type(e).__name__}: {str(e).splitlines()[0]}"
        ) from e
    finally:
        for lg, level in zip(noisy, levels, strict=True):
            lg.setLevel(level)
    write_atomic(path, program.model_proto.SerializeToString())


def check_onnx_file(path: Path) -> None:
    """Raise :class:`OnnxError` unless ``path`` is a well-formed ONNX model with our I/O names."""
    import onnx

    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as e:  # noqa: BLE001 - protobuf/checker errors vary; one line for the user
        raise OnnxError(
            f"corrupt or unreadable ONNX file {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from None
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    if inputs != [INPUT_NAME] or tuple(outputs) != OUTPUT_NAMES:
        raise OnnxError(
            f"ONNX file {path} has I/O {inputs} -> {outputs}, expected [{INPUT_NAME}] -> {list(OUTPUT_NAMES)}"
        )


def export_onnx(
    bundle: Bundle, precision: str = "fp32", opset: int = DEFAULT_OPSET, *, rebuild: bool = False
) -> Path:
    """The bundle's ONNX file for ``precision``, exported now if missing or stale.

    Raises:
        OnnxError: export failed.
        CacheError: the file is missing or stale and cannot be written here.
    """
    artifact = onnx_artifact(bundle, precision, opset)

    def build(tmp: Path) -> dict:
        import onnx
        import torch

        _export_to(bundle, precision, opset, tmp)
        check_onnx_file(tmp)
        return {"exported_with": {"torch": torch.__version__, "onnx": onnx.__version__}}

    return load_or_build(artifact, build, rebuild=rebuild, what="ONNX model")
