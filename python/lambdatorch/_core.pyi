"""The Rust extension: model loading, preprocessing and inference through libtorch."""

from os import PathLike
from typing import Any, TypeAlias, final

import numpy as np
import numpy.typing as npt

__version__: str
LIBTORCH_VERSION: str

_ImageLike: TypeAlias = bytes | bytearray | npt.NDArray[np.uint8]
#: A text (``str``, or UTF-8 ``bytes``), or a pair of texts for models with ``"pair": true``.
_TextLike: TypeAlias = str | bytes | tuple[str | bytes, str | bytes] | list[str | bytes]

@final
class Prediction:
    """One class of a classification model's answer."""

    @property
    def index(self) -> int:
        """Class index in the model's output."""

    @property
    def label(self) -> str | None:
        """Class label from the manifest's labels, if any."""

    @property
    def score(self) -> float:
        """Probability (softmax) or raw score, as the manifest says."""

    def __new__(cls, index: int, label: str | None, score: float) -> Prediction: ...
    def __eq__(self, value: object, /) -> bool: ...
    def __ne__(self, value: object, /) -> bool: ...
    __hash__: None  # type: ignore[assignment]

@final
class Model:
    """A loaded model, shared by every thread of the process."""

    @property
    def name(self) -> str:
        """The model's name: its directory name."""

    @property
    def manifest(self) -> dict[str, Any]:
        """The validated manifest with defaults filled in."""

    def predict(self, image: _ImageLike | _TextLike, top_k: int | None = None) -> list[Prediction]:
        """Classify one image: encoded bytes (JPEG, PNG, WebP, GIF, BMP) or an HxWxC uint8 array;
        or, for a text model, one text (a ``(first, second)`` pair for pair models).

        ``top_k`` defaults to the manifest's ``output.top_k``.
        """

    def predict_batch(
        self, images: list[_ImageLike] | list[_TextLike], top_k: int | None = None
    ) -> list[list[Prediction]]:
        """Classify up to ``max_batch`` images (or texts, for a text model) in one forward pass."""

    def embed(self, texts: list[_TextLike] | str) -> npt.NDArray[np.float32]:
        """One vector per text, ``(N, dims)`` float32, pooled and normalised as the manifest's
        ``output`` (``"type": "embedding"``) says. A lone ``str`` is a batch of one."""

    def tokenize(self, texts: list[_TextLike] | str) -> dict[str, npt.NDArray[np.int64]]:
        """The token tensors texts become, as the model runs them: ``input_ids``,
        ``attention_mask`` and ``token_type_ids``, int64 ``(N, tokens)``, padded and truncated as
        the manifest says. A lone ``str`` is a batch of one."""

    def preprocess(self, image: _ImageLike) -> npt.NDArray[np.float32]:
        """The model's input tensor for one image: float32, NCHW, batch 1."""

    def forward(self, array: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """Run the model on an array of its input dtype; returns its first output, raw.

        Image models take float32 NCHW arrays; tensor models the manifest's ``input.dtype``
        (``float32``, ``float64``, ``float16``, ``int64``, ``int32``, ``uint8``, ``bool``; a
        ``bfloat16`` model takes and returns float32, since numpy has no bfloat16). The output
        keeps the model's own dtype.
        """

def load(path: str | PathLike[str]) -> Model:
    """Load the model at a directory or manifest path; cached per process."""

def valid_model_name(name: str) -> bool:
    """Whether ``name`` is a valid model name: 1 to 64 of ``[A-Za-z0-9._-]``, alphanumeric first."""

def handle(event: dict[str, Any], request_id: str | None = None) -> dict[str, Any]:
    """Run one Lambda event through the service core, configured from the environment.

    HTTP-style events (API Gateway v1/v2, Function URLs, ALB) always get a proxy response dict;
    direct invokes return the response dict or raise the error (``InvalidImage``, ...). Each
    event is logged as one JSON line on stderr, with ``request_id``, as the native handler does.
    """

def preload() -> None:
    """Load the models named by ``LAMBDATORCH_PRELOAD`` (comma-separated)."""
