"""lambdatorch: PyTorch inference on AWS Lambda without importing Python torch.

``load`` a model directory (manifest + TorchScript file), then ``predict`` on image bytes or
arrays. Decoding, preprocessing and inference run in Rust through libtorch with the GIL released.

The extension (``_core``) is imported on first use of a name that needs it, after ``_libtorch``
has found, checked and loaded libtorch: ``import lambdatorch`` itself always succeeds (so that
``lambdatorch doctor`` can diagnose a broken tree), while ``from lambdatorch import load`` or
``lambdatorch.load(...)`` raise ``LibTorchError`` (an ``ImportError``) when libtorch is wrong.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._libtorch import LIBTORCH_VERSION, import_core
from .errors import (
    ImageTooLarge,
    InferenceError,
    InvalidImage,
    InvalidInput,
    LambdaTorchError,
    LibTorchError,
    ManifestError,
    ModelNotFound,
)

if TYPE_CHECKING:
    from ._core import Model, Prediction, __version__, load

_FROM_CORE = ("Model", "Prediction", "__version__", "load")

__all__ = [
    "LIBTORCH_VERSION",
    "ImageTooLarge",
    "InferenceError",
    "InvalidImage",
    "InvalidInput",
    "LambdaTorchError",
    "LibTorchError",
    "ManifestError",
    "Model",
    "ModelNotFound",
    "Prediction",
    "__version__",
    "load",
]


def __getattr__(name: str) -> Any:
    if name in _FROM_CORE:
        value = getattr(import_core(), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lambdatorch' has no attribute {name!r}")
