"""The part of ``lambdatorch doctor`` that runs inside the EFS tree, in its own interpreter.

``doctor`` runs this file by path, ``python -S .../_doctor_child.py [--record-pages] MODEL_DIR...``,
with ``PYTHONPATH=root/python`` as the only import path, as on Lambda. It imports the tree's
lambdatorch, loads libtorch, then loads each model and runs one inference on zeros shaped from its
manifest. Each model's failure is caught on its own; the report is one JSON line after ``MARK`` on
stdout. With ``--record-pages`` it then writes libtorch's page record (which pages of libtorch
this cold start touched, for later cold starts to prefetch: ``lambdatorch._libtorch``); without,
it writes nothing.

It is run by path, not with ``-m lambdatorch._doctor_child``: the lambdatorch it checks is the
tree's, which may be missing, broken or older than this file. So at module level only the standard
library: lambdatorch and numpy are imported in :func:`probe`, where their failure is reported.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

#: Starts the report's line on stdout, so that anything else printed there is ignored.
MARK = "lambdatorch-doctor-report "


def probe(models: list[str], record_pages: bool = False) -> dict[str, Any]:
    """What the tree on ``sys.path`` does: the stage reached, the error that stopped it, whether
    libtorch's load was prefetched from a page record, for each model directory in ``models`` its
    load and inference times and shapes, or its error; and with ``record_pages`` the page record
    written after them, or why none was."""
    report: dict[str, Any] = {"stage": "import lambdatorch", "error": None, "models": {}}
    try:
        start = time.perf_counter()
        import lambdatorch
        from lambdatorch import _libtorch

        report["stage"] = "load libtorch"
        core = _libtorch.import_core()
        report["core"] = {
            "ms": (time.perf_counter() - start) * 1e3,
            "libtorch": str(_libtorch.preload()),
            "version": getattr(core, "__version__", "?"),
            "page_record": page_record_state(_libtorch.preload()),
        }
    except BaseException as err:
        if isinstance(err, KeyboardInterrupt):
            raise
        report["error"] = {"type": type(err).__name__, "message": str(err)}
    else:
        for path in models:
            result: dict[str, Any] = {}
            report["models"][path] = result
            valid = getattr(core, "valid_model_name", None)  # older trees may not have it
            result["valid_name"] = valid and bool(valid(path.rstrip("/").rsplit("/", 1)[-1]))
            try:
                start = time.perf_counter()
                model = lambdatorch.load(path)
                result["load_ms"] = (time.perf_counter() - start) * 1e3
                spec = model.manifest["input"]
                if spec["type"] == "text":
                    result.update(run_text(model))
                    continue
                shape = input_shape(spec)
                if model.manifest["format"] == "aoti":
                    # Its ISA was checked against this CPU at load; shown on the ok line.
                    result["cpu_isa"] = model.manifest.get("cpu_isa")
                result["input_shape"] = shape
                import numpy

                x = numpy.zeros(shape, input_dtype(spec))
                start = time.perf_counter()
                try:
                    y = model.forward(x)
                except lambdatorch.InvalidInput as err:
                    # An AOTInductor package exported with a static batch takes max_batch
                    # inputs only (loading checked that the two agree).
                    if "static batch" not in str(err):
                        raise
                    shape[0] = model.manifest["max_batch"]
                    result["input_shape"] = shape
                    x = numpy.zeros(shape, input_dtype(spec))
                    start = time.perf_counter()
                    y = model.forward(x)
                result["inference_ms"] = (time.perf_counter() - start) * 1e3
                result["output_shape"] = list(y.shape)
            except BaseException as err:
                if isinstance(err, KeyboardInterrupt):
                    raise
                result["error"] = {"type": type(err).__name__, "message": str(err)}
        if record_pages:
            report["record"] = record(_libtorch)
    report["torch"] = "torch" in sys.modules
    return report


def page_record_state(lib_dir: Any) -> str:
    """``used`` when ``lib_dir`` has a page record that matches its libraries (the load just
    timed was prefetched from it), ``stale`` when it has one that no longer does, else ``none``
    (also for a tree whose lambdatorch predates page records)."""
    try:
        from lambdatorch import _libtorch

        record = _libtorch.read_record(lib_dir)
        if record is None:
            return "stale" if (lib_dir / _libtorch.PAGES_FILE).exists() else "none"
        return "used" if _libtorch.recorded_plan(lib_dir, record) is not None else "stale"
    except Exception:
        return "none"


def record(libtorch: Any) -> dict[str, Any]:
    """Write the page record of the libtorch this process loaded: its path, or the error."""
    try:
        written = libtorch.record_pages()
    except Exception as err:
        return {"error": {"type": type(err).__name__, "message": str(err)}}
    if written is None:
        message = "libtorch was not loaded"
        return {"error": {"type": "LambdaTorchError", "message": message}}
    return {"path": str(written)}


def run_text(model: Any) -> dict[str, Any]:
    """One text through a text model: its token shape, and the inference time and output shape
    of a classification or embedding (a raw text model is only tokenized)."""
    texts: list[Any] = ["lambdatorch doctor"]
    if model.manifest["input"].get("pair"):
        texts = [("lambdatorch", "doctor")]
    result: dict[str, Any] = {"input_shape": list(model.tokenize(texts)["input_ids"].shape)}
    output = model.manifest["output"]["type"]
    start = time.perf_counter()
    if output == "embedding":
        shape = list(model.embed(texts).shape)
    elif output == "classification":
        rows = model.predict_batch(texts)
        shape = [len(rows), len(rows[0])]
    else:
        # No API returns a text model's raw output: tokenized only.
        shape = ["not run (raw output)"]
    result["inference_ms"] = (time.perf_counter() - start) * 1e3
    result["output_shape"] = shape
    return result


def input_shape(spec: dict[str, Any]) -> list[int]:
    """A batch of one, shaped as the manifest's ``input`` says."""
    if spec["type"] == "image":
        channels = 1 if spec.get("color") == "gray" else 3
        return [1, channels, *spec["size"]]
    return [1 if d == -1 else d for d in spec["shape"]]


def input_dtype(spec: dict[str, Any]) -> str:
    """The numpy dtype ``forward`` takes for the manifest's ``input``: a tensor input's own (but
    float32 for bfloat16, which numpy lacks), float32 for images."""
    dtype = spec.get("dtype", "float32") if spec["type"] == "tensor" else "float32"
    return "float32" if dtype == "bfloat16" else str(dtype)


def only_tree_on_path() -> None:
    """Drop the directory Python put before ``PYTHONPATH`` (this file's, as it is run by path) and
    any empty entry (the current directory), so that only the tree's ``python/`` is searched."""
    here = os.path.realpath(os.path.dirname(os.path.abspath(__file__)))
    if sys.path and sys.path[0] and os.path.realpath(sys.path[0]) == here:
        del sys.path[0]
    sys.path[:] = [p for p in sys.path if p]


def main(argv: list[str]) -> int:
    record_pages = argv[:1] == ["--record-pages"]
    print(MARK + json.dumps(probe(argv[record_pages:], record_pages)), flush=True)
    return 0


if __name__ == "__main__":
    only_tree_on_path()
    sys.exit(main(sys.argv[1:]))
