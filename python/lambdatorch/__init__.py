"""lambdatorch: PyTorch inference on AWS Lambda without importing Python torch.

``load`` a model directory (manifest + TorchScript file), then ``predict`` on image bytes or
arrays; or ``handle`` a Lambda event with the service core both handlers share. Decoding,
preprocessing and inference run in Rust through libtorch with the GIL released.

The extension (``_core``) is imported on first use of a name that needs it, after ``_libtorch``
has found, checked and loaded libtorch: ``import lambdatorch`` itself always succeeds (so that
``lambdatorch doctor`` can diagnose a broken tree), while ``from lambdatorch import load`` or
``lambdatorch.load(...)`` raise ``LibTorchError`` (an ``ImportError``) when libtorch is wrong.
``export`` (which needs Python torch, to fill EFS, not on Lambda) is imported on first use too,
and so are the exception classes (``errors``): on EFS every module a cold start imports costs
round trips, and a start that raises nothing needs none of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._libtorch import LIBTORCH_VERSION, import_core

if TYPE_CHECKING:
    from ._core import Model, Prediction, __version__, handle, load
    from ._export import export
    from .errors import (
        ImageTooLarge,
        InferenceError,
        InternalError,
        InvalidImage,
        InvalidInput,
        LambdaTorchError,
        LibTorchError,
        ManifestError,
        ModelNotFound,
        PayloadTooLarge,
    )

_FROM_CORE = ("Model", "Prediction", "__version__", "handle", "load")
_FROM_ERRORS = (
    "ImageTooLarge",
    "InferenceError",
    "InternalError",
    "InvalidImage",
    "InvalidInput",
    "LambdaTorchError",
    "LibTorchError",
    "ManifestError",
    "ModelNotFound",
    "PayloadTooLarge",
)

__all__ = [
    "LIBTORCH_VERSION",
    "ImageTooLarge",
    "InferenceError",
    "InternalError",
    "InvalidImage",
    "InvalidInput",
    "LambdaTorchError",
    "LibTorchError",
    "ManifestError",
    "Model",
    "ModelNotFound",
    "PayloadTooLarge",
    "Prediction",
    "__version__",
    "export",
    "handle",
    "load",
]


def __getattr__(name: str) -> Any:
    if name in _FROM_CORE:
        value = getattr(import_core(), name)
        globals()[name] = value
        return value
    if name in _FROM_ERRORS:
        from . import errors

        value = getattr(errors, name)
        globals()[name] = value
        return value
    if name == "export":
        from ._export import export

        globals()[name] = export
        return export
    raise AttributeError(f"module 'lambdatorch' has no attribute {name!r}")
