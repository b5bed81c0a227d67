"""engines: model bundles, the backend protocol and its implementations, ONNX/TensorRT loaders.

``import engines`` stays light: no torch, onnxruntime or tensorrt import happens here.
"""

from engines.base import Backend, BackendError, Inference
from engines.bundle import Bundle, BundleError, Manifest, save_bundle
from engines.errors import UserError
from engines.frontend import FrontEndSpec
from engines.model_spec import ModelSpec

__all__ = [
    "Backend",
    "BackendError",
    "Inference",
    "Bundle",
    "BundleError",
    "Manifest",
    "save_bundle",
    "FrontEndSpec",
    "ModelSpec",
    "UserError",
]
