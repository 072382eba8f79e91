"""Export a ``torch.nn.Module`` as a lambdatorch model directory: a TorchScript file or an
AOTInductor package (unpacked), plus manifest.

This runs where the EFS tree is filled (an EC2 instance, a notebook), with Python torch installed;
it is not needed on Lambda. torch is imported inside the functions, so ``import lambdatorch`` stays
torch-free. The result is checked before it is kept: lambdatorch loads the saved model and must
give Python torch's output on the example, or the export fails.

It is a private module (``lambdatorch.export`` is the function, resolved lazily by the package):
a submodule of the same name would replace the function on the package whenever it was imported.
"""

from __future__ import annotations

import copy
import io
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._libtorch import LIBTORCH_VERSION
from ._manifests import PRESETS, sha256_of
from .errors import InferenceError, InvalidInput

TORCH_MISSING = f"export needs Python torch: pip install torch=={LIBTORCH_VERSION}"

#: The optimized module is kept only if it gives the plain module's output within this.
OPTIMIZE_ATOL = 1e-5
#: lambdatorch's output on the example must match Python torch's within this.
PARITY_ATOL = 1e-4

MODEL_FILE = "model.pt"
LABELS_FILE = "labels.txt"
#: The unpacked AOTInductor package inside the model directory (as ``add-model`` names it).
AOTI_DIR = "package"
#: ``--cpu`` choices and the ``ATEN_CPU_CAPABILITY`` each compiles with (``None``: this CPU's
#: best). AVX2 is what every x86_64 Lambda host has; AVX-512 is not guaranteed.
CPU_CAPABILITIES: dict[str, str | None] = {"avx2": "avx2", "avx512": "avx512", "native": None}
#: The largest batch an AOTInductor export's dynamic batch dimension allows (``max_batch``'s).
AOTI_MAX_BATCH = 1024


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_model` wrote and how the check went."""

    path: Path
    files: tuple[str, ...]
    sha256: str
    size: int
    method: str
    optimized: bool
    optimization: str
    output_shape: tuple[int, ...]
    max_abs_diff: float
    tolerance: float = PARITY_ATOL


def export(
    module: Any,
    example: Any,
    out_dir: str | os.PathLike[str],
    *,
    name: str | None = None,
    preset: str | None = None,
    input: dict[str, Any] | None = None,
    output: dict[str, Any] | None = None,
    labels: Sequence[str] | str | os.PathLike[str] | None = None,
    method: str = "trace",
    optimize: bool = True,
    format: str = "torchscript",
    cpu: str = "avx2",
) -> Path:
    """Save ``module`` as a lambdatorch model directory and check it; returns the directory.

    ``module`` is a ``torch.nn.Module`` (put in eval mode), ``example`` a float32 tensor it takes,
    batch first. The directory is ``out_dir``, or ``out_dir/name`` when ``name`` is given (then it
    must be a valid model name). ``method`` is ``"trace"`` (``torch.jit.trace`` on the example)
    or ``"script"`` (``torch.jit.script``). With ``optimize``, ``torch.jit.freeze`` and
    ``torch.jit.optimize_for_inference`` are tried and kept only if the output on the example
    stays within 1e-5.

    The manifest's ``input`` is ``input``, else the preset's (``"imagenet"``), else a tensor input
    shaped like ``example`` with any batch size. ``output`` is ``output``, else the preset's,
    else classification when ``labels`` (a list, or a file with one label a line; written as
    ``labels.txt``) are given, else raw. Finally lambdatorch loads the directory and runs the
    example: if its output differs from Python torch's by more than 1e-4, ``InferenceError``.

    >>> lambdatorch.export(resnet18, torch.randn(1, 3, 224, 224), "/mnt/efs/models/resnet18",
    ...                    preset="imagenet", labels="imagenet_classes.txt")
    """
    return export_model(
        module,
        example,
        out_dir,
        name=name,
        preset=preset,
        input=input,
        output=output,
        labels=labels,
        method=method,
        optimize=optimize,
        format=format,
        cpu=cpu,
    ).path


def export_model(
    module: Any,
    example: Any,
    out_dir: str | os.PathLike[str],
    *,
    name: str | None = None,
    preset: str | None = None,
    input: dict[str, Any] | None = None,
    output: dict[str, Any] | None = None,
    labels: Sequence[str] | str | os.PathLike[str] | None = None,
    method: str = "trace",
    optimize: bool = True,
    format: str = "torchscript",
    cpu: str = "avx2",
) -> ExportReport:
    """:func:`export`, returning what it wrote and the parity numbers."""
    torch = require_torch()
    check_format(format, cpu)
    if method not in ("trace", "script"):
        raise InvalidInput(f"method must be 'trace' or 'script', got {method!r}")
    if not isinstance(module, torch.nn.Module):
        raise InvalidInput(f"expected a torch.nn.Module, got {type(module).__name__}")
    if not isinstance(example, torch.Tensor) or example.dtype != torch.float32 or example.ndim < 1:
        raise InvalidInput(
            "example must be a float32 torch.Tensor with a batch dimension first, got "
            + (
                f"{example.dtype} of shape {list(example.shape)}"
                if isinstance(example, torch.Tensor)
                else type(example).__name__
            )
        )
    out = Path(out_dir)
    if name is not None:
        from ._libtorch import import_core

        if not import_core().valid_model_name(name):
            raise InvalidInput(
                f"{name!r} is not a valid model name: use 1 to 64 letters, digits, '.', '_' or "
                "'-', starting with a letter or digit"
            )
        out = out / name
    label_list = _labels(labels)
    manifest = _manifest(example, preset, input, output, label_list is not None)

    example = example.detach().cpu().contiguous()
    module.eval()
    with _quiet_jit(), torch.no_grad():
        try:
            reference = module(example)
        except Exception as err:
            raise InvalidInput(
                f"the module fails on the example of shape {list(example.shape)}: "
                f"{type(err).__name__}: {_first_line(err)}"
            ) from err
        if not isinstance(reference, torch.Tensor):
            raise InvalidInput(
                f"the module returned {type(reference).__name__}; lambdatorch serves modules "
                "whose forward returns one tensor"
            )
        if format == "aoti":
            program = _export_program(torch, module, example)
            reference = program.module()(example)
            final, optimized, optimization = program, True, f"AOTInductor, frozen, {cpu}"
        else:
            compiled = (
                torch.jit.script(module) if method == "script" else torch.jit.trace(module, example)
            )
            final, optimized, optimization = _optimize(torch, compiled, example, optimize)

    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    # Written and checked beside the destination, then moved in: a failed export leaves no model
    # behind, and the check never meets a model cached from an earlier export to the same place.
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out))
    try:
        if format == "aoti":
            size, head = _save_aoti(torch, final, staging, cpu)
            digest = head.pop("sha256")
            files = [AOTI_DIR, "manifest.json"]
        else:
            with _quiet_jit():
                torch.jit.save(final, str(staging / MODEL_FILE))
            digest = sha256_of(staging / MODEL_FILE)
            size = (staging / MODEL_FILE).stat().st_size
            head = {"format": "torchscript", "file": MODEL_FILE}
            files = [MODEL_FILE, "manifest.json"]
        if label_list is not None:
            (staging / LABELS_FILE).write_text("".join(f"{label}\n" for label in label_list))
            files.append(LABELS_FILE)
        manifest = {**head, "sha256": digest, **manifest}
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        output_shape, diff = _check(staging, example, reference)
        for file in files:
            if (out / file).is_dir():
                shutil.rmtree(out / file)
            os.replace(staging / file, out / file)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    shutil.rmtree(staging, ignore_errors=True)
    return ExportReport(
        path=out,
        files=tuple(files),
        sha256=digest,
        size=size,
        method="aoti" if format == "aoti" else "scripted" if method == "script" else "traced",
        optimized=optimized,
        optimization=optimization,
        output_shape=output_shape,
        max_abs_diff=diff,
    )


class FactoryError(Exception):
    """The callable given to ``lambdatorch export`` failed or returned no module."""


def export_factory(
    factory: Callable[..., Any],
    kwargs: dict[str, Any],
    example_shape: Sequence[int],
    out_dir: str | os.PathLike[str],
    **options: Any,
) -> ExportReport:
    """What ``lambdatorch export`` does: build the module with ``factory(**kwargs)`` and export it
    on a random example of ``example_shape`` (both seeded, so random-weight exports reproduce).
    ``options`` are :func:`export_model`'s."""
    torch = require_torch()
    torch.manual_seed(0)
    try:
        module = factory(**kwargs)
    except Exception as err:
        raise FactoryError(f"(**{kwargs}) failed: {type(err).__name__}: {err}") from err
    if not isinstance(module, torch.nn.Module):
        raise FactoryError(f" returned {type(module).__name__}, not a torch.nn.Module")
    torch.manual_seed(0)
    example = torch.randn(list(example_shape))
    return export_model(module, example, out_dir, **options)


def _export_program(torch: Any, module: Any, example: Any) -> Any:
    """``torch.export`` of ``module`` with a dynamic batch dimension. The export sees a batch of
    at least 2 (a batch of 1 would be specialised to a constant)."""
    traced = example if example.shape[0] >= 2 else torch.cat([example, example])
    batch = torch.export.Dim("batch", min=1, max=AOTI_MAX_BATCH)
    try:
        return torch.export.export(module, (traced,), dynamic_shapes=({0: batch},))
    except Exception as err:
        raise InvalidInput(
            f"torch.export failed on the module: {type(err).__name__}: {_first_line(err)}"
        ) from err


@contextmanager
def _cpu_capability(cpu: str) -> Iterator[None]:
    """Inductor compiles for ``ATEN_CPU_CAPABILITY`` when set, else for this CPU's best ISA."""
    before = os.environ.get("ATEN_CPU_CAPABILITY")
    wanted = CPU_CAPABILITIES[cpu]
    if wanted is None:
        os.environ.pop("ATEN_CPU_CAPABILITY", None)
    else:
        os.environ["ATEN_CPU_CAPABILITY"] = wanted
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("ATEN_CPU_CAPABILITY", None)
        else:
            os.environ["ATEN_CPU_CAPABILITY"] = before


def _save_aoti(torch: Any, program: Any, staging: Path, cpu: str) -> tuple[int, dict[str, Any]]:
    """Compiles ``program`` into a ``.pt2`` in ``staging``, unpacks it to ``staging/package``
    and returns the archive's size and the manifest's head (format, file, cpu_isa, sha256)."""
    from . import _aoti

    archive = staging / "model.pt2"
    # Not linked against libtorch.so: its symbols are all in libtorch_cpu.so, which both
    # handlers have loaded, while PyPI's CUDA-enabled libtorch.so pulls libtorch_cuda.so and
    # the CUDA runtime (hundreds of MB, hundreds of ms) into every cold start.
    # The ISA comes from the CPU's flags (and ATEN_CPU_CAPABILITY), not from Inductor's probe
    # (a compile, then a dlopen in a child with a time limit), which can fail on a busy machine
    # and then has Inductor compile scalar code for the rest of the process.
    # Convolution weights are packed for oneDNN at export, not on every call (see _export_prepack).
    from ._export_prepack import PackConvolutionWeights

    configs = {
        "freezing": True,
        "aot_inductor.link_libtorch": False,
        "cpp.vec_isa_ok": True,
        "post_grad_custom_pre_pass": PackConvolutionWeights(),
    }
    with _cpu_capability(cpu), _quiet_jit(), torch.no_grad():
        torch._inductor.aoti_compile_and_package(
            program, package_path=str(archive), inductor_configs=configs
        )
    size = archive.stat().st_size
    package = staging / AOTI_DIR
    _aoti.unpack(archive, package)
    archive.unlink()
    head = {
        "format": "aoti",
        "file": AOTI_DIR,
        "cpu_isa": _aoti.cpu_isa(package),
        "sha256": _aoti.tree_sha256(package),
    }
    wanted = CPU_CAPABILITIES[cpu]
    if wanted and not head["cpu_isa"].lower().startswith(wanted):
        # Inductor compiles for an ISA only where the CPU's flags list it.
        raise InferenceError(
            f"Inductor compiled for {head['cpu_isa']!r}, not {cpu}: this machine's CPU does not "
            f"list {cpu}; export on one that does (any x86_64 Lambda host has AVX2)"
        )
    return size, head


def check_format(format: str, cpu: str) -> None:
    """``InvalidInput`` unless ``format`` and ``cpu`` are options ``export`` knows."""
    if format not in ("torchscript", "aoti"):
        raise InvalidInput(f"format must be 'torchscript' or 'aoti', got {format!r}")
    if cpu not in CPU_CAPABILITIES:
        raise InvalidInput(f"cpu must be one of {', '.join(CPU_CAPABILITIES)}, got {cpu!r}")


def require_torch() -> Any:
    """Python torch, or ``ImportError`` saying how to install it."""
    try:
        import torch
    except ImportError as err:
        raise ImportError(f"{TORCH_MISSING} (import torch: {err})") from err
    return torch


@contextmanager
def _quiet_jit() -> Iterator[None]:
    """torch deprecates ``torch.jit``'s entry points; TorchScript is what lambdatorch serves."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"`torch\.jit\.\w+` is deprecated", category=DeprecationWarning
        )
        yield


def _labels(labels: Sequence[str] | str | os.PathLike[str] | None) -> list[str] | None:
    if labels is None:
        return None
    if isinstance(labels, (str, os.PathLike)):
        try:
            return Path(labels).read_text().splitlines()
        except OSError as err:
            raise InvalidInput(f"labels: cannot read {labels}: {err}") from err
    found = list(labels)
    if not all(isinstance(label, str) and "\n" not in label for label in found):
        raise InvalidInput("labels must be strings without line breaks")
    return found


def _manifest(
    example: Any,
    preset: str | None,
    input: dict[str, Any] | None,
    output: dict[str, Any] | None,
    has_labels: bool,
) -> dict[str, Any]:
    if preset is not None and preset not in PRESETS:
        raise InvalidInput(f"unknown preset {preset!r}; known: {', '.join(sorted(PRESETS))}")
    fields: dict[str, Any] = copy.deepcopy(PRESETS[preset]) if preset else {}
    if input is not None:
        fields["input"] = copy.deepcopy(input)
    elif "input" not in fields:
        shape = [-1, *(int(d) for d in example.shape[1:])]
        fields["input"] = {"type": "tensor", "shape": shape, "dtype": "float32"}
    if output is not None:
        fields["output"] = copy.deepcopy(output)
    elif "output" not in fields:
        fields["output"] = {"type": "classification" if has_labels else "raw"}
    if has_labels:
        if fields["output"].get("type") != "classification":
            raise InvalidInput("labels need a classification output")
        fields["output"]["labels"] = LABELS_FILE
    return {"input": fields.pop("input"), "output": fields.pop("output"), **fields}


def _max_abs_diff(a: Any, b: Any) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float((a - b).abs().max()) if a.numel() else 0.0


def _optimize(torch: Any, compiled: Any, example: Any, optimize: bool) -> tuple[Any, bool, str]:
    """The module to save, whether it is optimized, and how it was made, in words.

    ``optimize_for_inference`` is tried first, then ``freeze`` alone (which folds batch norms
    into convolutions). A candidate is kept only if it gives the plain module's output and still
    does after a save and load: ``optimize_for_inference`` can turn weights into MKLDNN tensors,
    which torch saves but cannot load again.
    """
    if not optimize:
        return compiled, False, "not optimized (asked not to)"
    baseline = compiled(example)
    steps: dict[str, Callable[[], Any]] = {
        "frozen and optimized for inference": lambda: torch.jit.optimize_for_inference(
            torch.jit.freeze(compiled)
        ),
        "frozen": lambda: torch.jit.freeze(compiled),
    }
    dropped: list[str] = []
    for what, make in steps.items():
        try:
            candidate = make()
            diff = _max_abs_diff(candidate(example), baseline)
            if diff <= OPTIMIZE_ATOL:
                buffer = io.BytesIO()
                torch.jit.save(candidate, buffer)
                buffer.seek(0)
                diff = _max_abs_diff(torch.jit.load(buffer)(example), baseline)
                reason = f"after a save and load it changed the output by {diff:.3g}"
            else:
                reason = f"it changed the output by {diff:.3g}"
        except Exception as err:
            diff, reason = float("inf"), f"{type(err).__name__}: {_first_line(err)}"
        if diff <= OPTIMIZE_ATOL:
            note = f" ({'; '.join(dropped)})" if dropped else ""
            return candidate, True, f"{what}{note}"
        dropped.append(f"{what.replace('frozen and ', '')}: {reason}")
    return compiled, False, f"not optimized ({'; '.join(dropped)})"


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [""])[0]


def _check(model_dir: Path, example: Any, reference: Any) -> tuple[tuple[int, ...], float]:
    """lambdatorch's output on ``example`` against Python torch's: shape and max abs diff."""
    import numpy as np

    from ._libtorch import import_core

    got = import_core().load(model_dir).forward(example.numpy())
    want = reference.detach().float().cpu().numpy()
    if got.shape != want.shape:
        raise InferenceError(
            f"lambdatorch's output has shape {list(got.shape)}, Python torch's "
            f"{list(want.shape)}: the exported model does not reproduce the module"
        )
    diff = float(np.max(np.abs(got - want))) if got.size else 0.0
    if not diff <= PARITY_ATOL:
        raise InferenceError(
            f"lambdatorch's output differs from Python torch's by {diff:.3g} (max abs, limit "
            f"{PARITY_ATOL:g}) on the example: the exported model does not reproduce the "
            "module; try method='script' or optimize=False"
        )
    return tuple(got.shape), diff
