"""lambdatorch's exceptions: one class per error type of the contract.

Each also derives from the standard exception a Python user would catch anyway (``ValueError`` for
bad input, ``LookupError`` for an unknown model, ``ImportError`` for a missing libtorch). The Rust
core raises these classes by name; the handlers report the same names as the Lambda ``errorType``.
"""

__all__ = [
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
]


class LambdaTorchError(Exception):
    """Base class of every lambdatorch error."""


class InvalidInput(LambdaTorchError, ValueError):
    """A request or argument is malformed (HTTP 400)."""


class InvalidImage(InvalidInput):
    """The bytes do not decode to a supported image (HTTP 400)."""


class ImageTooLarge(InvalidInput):
    """An image over the pixel limit, refused from its header before decoding (HTTP 413)."""


class PayloadTooLarge(InvalidInput):
    """A request body, tensor or text over its configured limit, refused before use (HTTP 413)."""


class ModelNotFound(LambdaTorchError, LookupError):
    """No model of that name (or an invalid name) under the models root (HTTP 404)."""


class ManifestError(LambdaTorchError):
    """A model directory whose manifest or files are wrong; the message names file and field."""


class LibTorchError(LambdaTorchError, ImportError):
    """libtorch is missing, of the wrong version, or failed to load."""


class InferenceError(LambdaTorchError):
    """The model failed to run on input that passed validation (HTTP 500)."""


class InternalError(LambdaTorchError):
    """A bug in lambdatorch, never the caller's or the model's fault (HTTP 500)."""
