"""Export a Hugging Face text model with its tokenizer as a lambdatorch model directory.

Runs where the EFS tree is filled, with Python torch and ``transformers`` (a directory written by
``save_pretrained``, or a hub name where the hub is reachable). The model is wrapped so that its
``forward`` takes the tokenizer's tensors by name (``input_ids``, ``attention_mask`` and, when the
tokenizer makes them, ``token_type_ids``) and returns logits (classification) or token vectors
(embedding), traced on a padded batch (so the attention mask's path is recorded) to TorchScript,
or exported with ``torch.export`` (batch and tokens dynamic, tokens up to ``max_length``) and
compiled to an AOTInductor package, and checked on other batches against the eager model; the
fast tokenizer's ``tokenizer.json`` is saved beside it
with its pad token and side, so lambdatorch tokenizes as ``transformers`` does. The result is
checked once more through lambdatorch before it is kept.
"""

from __future__ import annotations

import inspect
import json
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._export import (
    AOTI_MAX_BATCH,
    MODEL_FILE,
    _first_line,
    _quiet_jit,
    _save_aoti,
    check_format,
    require_torch,
)
from ._manifests import sha256_of
from .errors import InferenceError, InvalidInput

TOKENIZER_FILE = "tokenizer.json"
#: The exported module must give the eager model's output within this, and lambdatorch within
#: PARITY_ATOL of it.
TRACE_ATOL = 1e-5
PARITY_ATOL = 1e-4
CHECK_TEXTS = [
    "lambdatorch exports this model.",
    "A second, longer sentence: the batch is padded, and the mask must be honoured.",
    "Ünïcödé, 東京, and an emoji 🤖.",
]


@dataclass(frozen=True)
class TextExportReport:
    """What ``export_text`` wrote and how close lambdatorch came to the eager model."""

    path: Path
    #: The model's file (TorchScript) or package directory (AOTInductor) in ``path``.
    file: str
    inputs: list[str]
    output_shape: tuple[int, ...]
    max_abs_diff: float


def _wrappers(torch: Any) -> dict[int, type]:
    class TextModel2(torch.nn.Module):
        def __init__(self, model: Any, task: str) -> None:
            super().__init__()
            self.model, self.task = model, task

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask)
            return out.logits if self.task == "classification" else out.last_hidden_state

    class TextModel3(torch.nn.Module):
        def __init__(self, model: Any, task: str) -> None:
            super().__init__()
            self.model, self.task = model, task

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            out = self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )
            return out.logits if self.task == "classification" else out.last_hidden_state

    return {2: TextModel2, 3: TextModel3}


def export_text(
    source: str | Path,
    out_dir: str | Path,
    *,
    task: str = "classification",
    pooling: str = "mean",
    normalize: bool = True,
    max_length: int = 128,
    max_batch: int = 32,
    format: str = "torchscript",
    cpu: str = "avx2",
) -> TextExportReport:
    """Export the Hugging Face model at ``source`` (with its fast tokenizer) to ``out_dir``.

    ``task`` is ``classification`` (``AutoModelForSequenceClassification``: labels from its
    ``id2label``) or ``embedding`` (``AutoModel``: token vectors pooled by ``pooling``, ``mean``
    or ``cls``, L2-normalised when ``normalize``). ``format`` is ``torchscript`` or ``aoti``
    (compiled for ``cpu``, as :func:`lambdatorch.export` does).
    """
    if task not in ("classification", "embedding"):
        raise InvalidInput(f"task must be 'classification' or 'embedding', got {task!r}")
    check_format(format, cpu)
    torch = require_torch()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import transformers
    except ImportError as err:
        raise ImportError(f"exporting a Hugging Face model needs transformers: {err}") from err
    tok = transformers.AutoTokenizer.from_pretrained(str(source))
    if not getattr(tok, "is_fast", False):
        raise InvalidInput(
            f"{source}: the tokenizer is not a fast (tokenizer.json) one, which lambdatorch needs"
        )
    auto = (
        transformers.AutoModelForSequenceClassification
        if task == "classification"
        else transformers.AutoModel
    )
    model = auto.from_pretrained(str(source))
    model.eval()
    # The model's own arguments decide: BERT takes token_type_ids, DistilBERT does not.
    takes = inspect.signature(model.forward).parameters
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in takes:
        names.append("token_type_ids")

    def encode(texts: list[str]) -> dict[str, Any]:
        return tok(
            texts,
            padding="longest",
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
            return_token_type_ids="token_type_ids" in names,
        )

    wrapper = _wrappers(torch)[len(names)](model, task)
    example = encode(CHECK_TEXTS[:2])
    with torch.no_grad(), _quiet_jit(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings on shape arithmetic, checked below
        args = tuple(example[n] for n in names)
        if format == "aoti":
            program = _export_program(torch, wrapper, args, max_length)
            exported = program.module()
        else:
            program = exported = torch.jit.trace(wrapper, args)
        for texts in (CHECK_TEXTS, CHECK_TEXTS[2:], CHECK_TEXTS[::-1]):
            batch = encode(texts)
            args = tuple(batch[n] for n in names)
            diff = float((exported(*args) - wrapper(*args)).abs().max())
            if not diff <= TRACE_ATOL:
                raise InferenceError(
                    f"the exported model differs from the eager one by {diff:.3g} on a batch of "
                    f"{len(texts)}: it does not export to shape-independent code"
                )
    out = Path(out_dir)
    staging = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        if format == "aoti":
            _, head = _save_aoti(torch, program, staging, cpu)
        else:
            with _quiet_jit():
                program.save(str(staging / MODEL_FILE))
            head = {
                "format": "torchscript",
                "file": MODEL_FILE,
                "sha256": sha256_of(staging / MODEL_FILE),
            }
        backend = type(tok.backend_tokenizer).from_str(tok.backend_tokenizer.to_str())
        backend.no_truncation()
        if tok.pad_token is not None:
            backend.enable_padding(
                pad_id=tok.pad_token_id, pad_token=tok.pad_token, direction=tok.padding_side
            )
        backend.save(str(staging / TOKENIZER_FILE))
        if task == "classification":
            labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
            output: dict[str, Any] = {
                "type": "classification",
                "labels": labels,
                "top_k": min(5, len(labels)),
            }
        else:
            output = {"type": "embedding", "pooling": pooling, "normalize": normalize}
        manifest = {
            **head,
            "input": {
                "type": "text",
                "tokenizer": TOKENIZER_FILE,
                "max_length": max_length,
                "inputs": names,
            },
            "output": output,
            "max_batch": max_batch,
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        shape, diff = _check(torch, staging, exported, encode, names, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return TextExportReport(out, head["file"], names, shape, diff)


def _export_program(torch: Any, wrapper: Any, args: tuple[Any, ...], max_length: int) -> Any:
    """``torch.export`` of ``wrapper`` with the batch and the tokens dynamic, every input alike
    (tokens up to ``max_length``, so the package bounds what the manifest lets through)."""
    batch = torch.export.Dim("batch", min=1, max=AOTI_MAX_BATCH)
    tokens = torch.export.Dim("tokens", min=1, max=max_length)
    try:
        return torch.export.export(
            wrapper, args, dynamic_shapes=tuple({0: batch, 1: tokens} for _ in args)
        )
    except Exception as err:
        raise InvalidInput(
            f"torch.export failed on the model: {type(err).__name__}: {_first_line(err)}"
        ) from err


def _check(
    torch: Any, staging: Path, exported: Any, encode: Any, names: list[str], output: dict[str, Any]
) -> tuple[tuple[int, ...], float]:
    """lambdatorch on the check texts against the exported model run by Python torch."""
    import numpy as np

    from ._libtorch import import_core

    model = import_core().load(staging)
    batch = encode(CHECK_TEXTS)
    ours = model.tokenize(CHECK_TEXTS)
    for name in names:
        if not np.array_equal(ours[name], batch[name].numpy()):
            raise InferenceError(f"lambdatorch's {name} differ from transformers' tokenizer's")
    with torch.no_grad():
        result = exported(*(batch[n] for n in names))
    if output["type"] == "classification":
        want = torch.softmax(result.float(), 1).numpy()
        rows = model.predict_batch(CHECK_TEXTS, top_k=want.shape[1])
        got = np.zeros_like(want)
        for i, row in enumerate(rows):
            for p in row:
                got[i, p.index] = p.score
    else:
        mask = batch["attention_mask"].unsqueeze(-1).float()
        if output["pooling"] == "cls":
            pooled = result[:, 0]
        else:
            pooled = (result * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        if output["normalize"]:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        want, got = pooled.numpy(), model.embed(CHECK_TEXTS)
    diff = float(np.max(np.abs(got - want)))
    if not diff <= PARITY_ATOL:
        raise InferenceError(
            f"lambdatorch's output differs from Python torch's by {diff:.3g} (limit "
            f"{PARITY_ATOL:g}): the exported model does not reproduce the module"
        )
    return tuple(got.shape), diff
