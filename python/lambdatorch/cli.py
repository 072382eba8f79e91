"""The ``lambdatorch`` command: fill, check and try out an EFS tree.

Standard-library ``argparse`` only, so the EFS tree needs nothing beyond lambdatorch and numpy.
Every failure prints one line naming the problem and the fix, never a traceback. ``export`` is the
one command that needs Python torch; it imports it only when run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from . import _aoti
from ._doctor_child import MARK as _PROBE_MARK
from ._libtorch import _FIX as _LIBTORCH_FIX
from ._libtorch import LIBTORCH_VERSION, release, version_of
from ._manifests import PRESETS, sha256_of
from ._torchscript import forward_arguments
from .errors import LambdaTorchError, ManifestError

#: Where ``add-model`` unpacks an AOTInductor package inside the model directory.
AOTI_DIR = "package"


class CommandError(Exception):
    """A failure to report in one line, with the fix."""


def one_line(message: str) -> str:
    """A message on one line: a TorchScript error's first line and its last (the actual error)."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if len(lines) <= 1:
        return "".join(lines)
    return f"{lines[0]} ... {lines[-1]}"


def add_model(args: argparse.Namespace) -> int:
    import lambdatorch
    from lambdatorch._libtorch import import_core

    if not import_core().valid_model_name(args.name):
        raise CommandError(
            f"{args.name!r} is not a valid model name: use 1 to 64 letters, digits, '.', '_' "
            "or '-', starting with a letter or digit"
        )
    source = Path(args.file)
    if not source.is_file():
        raise CommandError(f"--file {source}: no such file")
    if args.preset is None and args.manifest is None and args.tokenizer is None:
        raise CommandError(
            "say what the model takes: --preset imagenet, --tokenizer tokenizer.json (a text "
            "model) or --manifest FILE"
        )
    manifest: dict[str, Any] = json.loads(json.dumps(PRESETS.get(args.preset or "", {})))
    if args.manifest:
        try:
            extra = json.loads(Path(args.manifest).read_text())
        except (OSError, ValueError) as err:
            raise CommandError(f"--manifest {args.manifest}: {err}") from err
        manifest.update(extra)
    dest = Path(args.root) / "models" / args.name
    if dest.exists() and not args.force:
        raise CommandError(f"{dest} already exists; pass --force to replace it")
    staging = dest.with_name(f".{args.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        if source.suffix == ".pt2" or _aoti.is_package(source):
            # Unpacked here, so that nothing is extracted at cold start (see _aoti).
            package = staging / AOTI_DIR
            try:
                _aoti.unpack(source, package)
                isa = _aoti.cpu_isa(package)
                digest = _aoti.tree_sha256(package)
            except _aoti.PackageError as err:
                raise ManifestError(f"--file {source}: {err}") from err
            manifest.update({"format": "aoti", "file": AOTI_DIR, "cpu_isa": isa})
            manifest["sha256"] = digest
        else:
            model_file = staging / ("model" + (source.suffix or ".pt"))
            shutil.copyfile(source, model_file)
            manifest.update({"format": "torchscript", "file": model_file.name})
            manifest["sha256"] = sha256_of(model_file)
        if args.labels:
            shutil.copyfile(args.labels, staging / "labels.txt")
            manifest.setdefault("output", {"type": "classification"})["labels"] = "labels.txt"
        if args.tokenizer:
            _add_tokenizer(Path(args.tokenizer), staging, manifest)
        ordered = {"format": manifest.pop("format"), "file": manifest.pop("file"), **manifest}
        (staging / "manifest.json").write_text(json.dumps(ordered, indent=2) + "\n")
        start = time.perf_counter()
        lambdatorch.load(staging)  # validates the manifest, verifies the digest, runs warmup
        load_ms = (time.perf_counter() - start) * 1e3
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if dest.exists():
        shutil.rmtree(dest)
    staging.rename(dest)
    print(f"added model {args.name!r} in {dest} (loaded and warmed up in {load_ms:.0f} ms)")
    return 0


#: The tensors a text model's ``inputs`` may name (``manifest.rs``: ``TextTensor``).
TEXT_TENSORS = ("input_ids", "attention_mask", "token_type_ids")


def _add_tokenizer(source: Path, staging: Path, manifest: dict[str, Any]) -> None:
    """Copies the tokenizer beside the model and makes the input a text input whose ``inputs``
    are the TorchScript module's own ``forward`` arguments (unless the manifest lists them)."""
    if not source.is_file():
        raise CommandError(f"--tokenizer {source}: no such file")
    shutil.copyfile(source, staging / "tokenizer.json")
    text = manifest.get("input") if manifest.get("input", {}).get("type") == "text" else {}
    text = {"type": "text", **(text or {}), "tokenizer": "tokenizer.json"}
    if "inputs" not in text and manifest.get("format") == "torchscript":
        found = forward_arguments(staging / manifest["file"])
        if found is None or not found or any(n not in TEXT_TENSORS for n in found):
            raise CommandError(
                f"cannot map the tokenizer's tensors onto the model's forward arguments "
                f"({found if found else 'not readable from the archive'}): list them, in order, "
                f'as "input": {{"inputs": [...]}} in --manifest (names from {list(TEXT_TENSORS)})'
            )
        text["inputs"] = found
    manifest["input"] = text


def predict(args: argparse.Namespace) -> int:
    import lambdatorch

    model = lambdatorch.load(args.model)
    if args.text:
        return _predict_texts(model, args)
    if not args.images:
        raise CommandError("give images to predict, or --text TEXT for a text model")
    results = []
    for path in args.images:
        start = time.perf_counter()
        predictions = model.predict(Path(path).read_bytes(), top_k=args.top_k)
        results.append(
            {
                "image": path,
                "predictions": [
                    {"index": p.index, "label": p.label, "score": p.score} for p in predictions
                ],
                "ms": round((time.perf_counter() - start) * 1e3, 3),
            }
        )
    print(json.dumps({"model": model.name, "results": results}, indent=2))
    return 0


def _predict_texts(model: Any, args: argparse.Namespace) -> int:
    start = time.perf_counter()
    if model.manifest["output"]["type"] == "embedding":
        embeddings = model.embed(args.text)
        answer: dict[str, Any] = {
            "embeddings": embeddings.tolist(),
            "dims": int(embeddings.shape[1]),
        }
    else:
        rows = model.predict_batch(args.text, top_k=args.top_k)
        answer = {
            "results": [
                {
                    "text": text,
                    "predictions": [
                        {"index": p.index, "label": p.label, "score": p.score} for p in row
                    ],
                }
                for text, row in zip(args.text, rows, strict=True)
            ]
        }
    answer["ms"] = round((time.perf_counter() - start) * 1e3, 3)
    print(json.dumps({"model": model.name, **answer}, indent=2, ensure_ascii=False))
    return 0


# --- doctor ------------------------------------------------------------------------------------

#: The design's model-name pattern; used only when the tree's own lambdatorch cannot answer.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

_CPU_INDEX = "--index-url https://download.pytorch.org/whl/cpu"
_STRAY_FIX = "remove it or move it out of models/"
_NOT_RUN = "not run: libtorch did not load"
_PROBE_TIMEOUT_S = 900
#: Runs in a fresh interpreter whose only import path is ``root/python``, as on Lambda; by path, so
#: that it needs nothing from the tree's own lambdatorch (see the module).
_PROBE = Path(__file__).with_name("_doctor_child.py")


@dataclass
class Check:
    """One line of ``doctor``: on failure ``detail`` is the problem and ``fix`` what to do."""

    check: str
    ok: bool
    detail: str
    fix: str | None = None

    def line(self) -> str:
        if self.ok:
            return f"ok  {self.check}  {self.detail}"
        return f"FAIL  {self.check}  {self.detail} -- fix: {self.fix}"


def _torch_install(python: Path, upgrade: bool = False) -> str:
    flag = " --upgrade" if upgrade else ""
    return f"pip install --target {python}{flag} torch=={LIBTORCH_VERSION} {_CPU_INDEX}"


def _dist_version(python: Path, package: str) -> str | None:
    """The version pip recorded for ``package`` (``<package>-<version>.dist-info``), if any."""
    for info in sorted(python.glob(f"{package}-*.dist-info")):
        return info.name[len(package) + 1 : -len(".dist-info")]
    return None


def _package_check(python: Path, package: str, fix: str) -> Check:
    where = python / package
    name = f"python/{package}"
    if not python.is_dir():
        return Check(name, False, f"{python} is not a directory", fix)
    if not (where / "__init__.py").is_file():
        problem = f"{where} is not a package" if where.exists() else f"no {package} in {python}"
        return Check(name, False, problem, fix)
    version = _dist_version(python, package)
    return Check(name, True, f"{version} in {where}" if version else str(where))


def _torch_version_check(python: Path) -> Check:
    torch = python / "torch"
    fix = _torch_install(python, upgrade=True)
    if not torch.is_dir():
        return Check("torch-version", False, f"no torch in {python}, so no libtorch", fix)
    version = version_of(torch / "lib")
    if version is None:
        return Check(
            "torch-version", False, f"cannot read torch's version from {torch / 'version.py'}", fix
        )
    if release(version) != LIBTORCH_VERSION:
        return Check(
            "torch-version",
            False,
            f"torch {version} in {torch}, but lambdatorch needs {LIBTORCH_VERSION}",
            fix,
        )
    return Check("torch-version", True, f"{version} (lambdatorch needs {LIBTORCH_VERSION})")


def _run_probe(
    python: Path, models: list[Path], record_pages: bool = False
) -> tuple[dict[str, Any] | None, str]:
    """The probe's report, or None and why it gave none; with ``record_pages`` the probe writes
    libtorch's page record after running the models (the one write into the tree)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(python),
        "PYTHONDONTWRITEBYTECODE": "1",  # a check must not write into the tree
    }
    command = [sys.executable, "-S", str(_PROBE), *["--record-pages"] * record_pages]
    command += [str(m.absolute()) for m in models]
    try:
        out = subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=_PROBE_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return None, f"the check process did not finish in {_PROBE_TIMEOUT_S} s"
    except OSError as err:
        return None, f"cannot start {sys.executable}: {err}"
    for line in out.stdout.splitlines():
        if line.startswith(_PROBE_MARK):
            try:
                report = json.loads(line[len(_PROBE_MARK) :])
            except ValueError:
                break
            if isinstance(report, dict):
                return report, ""
    last = (out.stderr.strip().splitlines() or ["(no output)"])[-1].strip()
    return None, f"the check process exited with status {out.returncode}: {last}"


def _libtorch_check(python: Path, report: dict[str, Any] | None, why: str) -> Check:
    if report is None:
        fix = (
            f"run PYTHONPATH={python} {sys.executable} -S -c "
            "'import lambdatorch._libtorch as t; t.import_core()' to see the whole error"
        )
        return Check("libtorch", False, why, fix)
    error = report.get("error")
    if error is None:
        core = report["core"]
        return Check(
            "libtorch",
            True,
            f"lambdatorch {core['version']} and libtorch from {core['libtorch']} "
            f"loaded in {core['ms']:.0f} ms"
            + _PAGE_RECORD_STATES.get(core.get("page_record"), _PAGE_RECORD_STATES["none"]),
        )
    message = str(error["message"])
    if message.endswith(_LIBTORCH_FIX):
        message = message[: -len(_LIBTORCH_FIX)].rstrip()
    problem = f"{error['type']}: {one_line(message)}"
    if report.get("stage") == "import lambdatorch":
        problem = f"not run: lambdatorch does not import from {python} ({problem})"
        return Check("libtorch", False, problem, f"pip install --target {python} lambdatorch")
    if "extension failed to load" in message:
        fix = f"reinstall lambdatorch: pip install --target {python} --force-reinstall lambdatorch"
        return Check("libtorch", False, problem, fix)
    return Check("libtorch", False, problem, _torch_install(python, upgrade=True))


#: The end of the libtorch line, by whether its load was prefetched from a page record.
_PAGE_RECORD_STATES = {
    "used": ", its pages prefetched as its page record says",
    "stale": ", not prefetched: its page record is of other files (--record-pages writes it again)",
    "none": ", not prefetched: no page record yet (--record-pages writes one)",
}


def _page_record_check(report: dict[str, Any] | None) -> Check:
    """The line of ``--record-pages``: the record written, or why not."""
    if report is None or report.get("error") is not None:
        return Check("page-record", False, _NOT_RUN, "fix the libtorch check first")
    outcome = report.get("record") or {}
    if "path" not in outcome:
        error = outcome.get("error") or {"type": "?", "message": "the check wrote no record"}
        problem = f"{error['type']}: {one_line(str(error['message']))}"
        fix = (
            "run it where the tree is writable (on the machine that fills EFS), or upgrade "
            "lambdatorch in the tree"
        )
        return Check("page-record", False, problem, fix)
    path = Path(outcome["path"])
    record = json.loads(path.read_text())
    size = sum(n for entry in record["libraries"].values() for _, n in entry["ranges"])
    return Check(
        "page-record",
        True,
        f"wrote {path}: {size / 2**20:.0f} MiB of libtorch's pages that loading and running "
        "the models touched, which cold starts prefetch",
    )


def _torch_unused_check(python: Path, report: dict[str, Any] | None) -> Check:
    if report is None or report.get("error") is not None:
        return Check("no-python-torch", False, _NOT_RUN, "fix the libtorch check first")
    if report.get("torch"):
        return Check(
            "no-python-torch",
            False,
            f"Python torch was imported while lambdatorch ran from {python} (seconds and "
            "hundreds of MB on every cold start)",
            f"reinstall lambdatorch: pip install --target {python} --upgrade lambdatorch",
        )
    return Check("no-python-torch", True, "lambdatorch ran without importing Python torch")


def _model_fix(root: Path, entry: Path, error: dict[str, Any]) -> str:
    kind, message = error.get("type"), str(error.get("message", ""))
    add_again = f"lambdatorch add-model {entry.name} --file MODEL.pt --root {root} --force"
    if "corrupt, truncated or replaced" in message:
        return (
            f"copy the model file again ({add_again}), or put the new file's sha256 in "
            f"{entry / 'manifest.json'} if it was replaced on purpose"
        )
    if "not a loadable TorchScript model" in message:
        return f"save it again with torch.jit.save (or lambdatorch export), then {add_again}"
    if "CPU ISA" in message:
        return (
            f"export it again for this CPU (lambdatorch export --format aoti --cpu avx2), then "
            f"lambdatorch add-model {entry.name} --file model.pt2 --root {root} --force"
        )
    if "AOTInductor package" in message or "a file in it is corrupt" in message:
        return f"add the package again: lambdatorch add-model {entry.name} --file model.pt2 " + (
            f"--root {root} --force"
        )
    if kind == "ManifestError":
        return f"correct the field the message names in {entry / 'manifest.json'}"
    if kind in ("InferenceError", "InvalidInput"):
        return (
            f"make input in {entry / 'manifest.json'} describe what the model takes "
            "(size, color, shape), or export the model again"
        )
    return (
        f"load it by hand for more: python -c \"import lambdatorch; lambdatorch.load('{entry}')\""
    )


def _model_check(
    root: Path, entry: Path, report: dict[str, Any] | None, valid_name: bool | None
) -> Check:
    name = f"models/{entry.name}"
    result = (report or {}).get("models", {}).get(str(entry.absolute()))
    if result is not None and result.get("valid_name") is not None:
        valid_name = result["valid_name"]  # the tree's own rule, when it could say
    if valid_name is False:
        return Check(
            name,
            False,
            f"{entry.name!r} is not a valid model name (^[A-Za-z0-9][A-Za-z0-9._-]{{0,63}}$), "
            "so no request can reach it",
            f"rename it to 1 to 64 letters, digits, '.', '_' or '-' starting with a letter or "
            f"digit, or {_STRAY_FIX}",
        )
    if result is None:
        return Check(name, False, _NOT_RUN, "fix the libtorch check first")
    error = result.get("error")
    if error is not None:
        problem = f"{error['type']}: {one_line(str(error['message']))}"
        return Check(name, False, problem, _model_fix(root, entry, error))
    isa = result.get("cpu_isa")
    return Check(
        name,
        True,
        f"loaded in {result['load_ms']:.0f} ms, inference {result['inference_ms']:.1f} ms "
        f"({'x'.join(map(str, result['input_shape']))} -> "
        f"{'x'.join(map(str, result['output_shape']))})"
        + (f", AOTInductor for {isa}, which this CPU has" if isa else ""),
    )


def _scan_models(models: Path) -> list[tuple[Path, Check | None]]:
    """Each entry of ``models/``, with a failed check when it cannot be a model directory."""
    entries: list[tuple[Path, Check | None]] = []
    for entry in sorted(models.iterdir()):
        name = f"models/{entry.name}"
        if not entry.is_dir():
            entries.append((entry, Check(name, False, f"{entry} is not a directory", _STRAY_FIX)))
        elif not (entry / "manifest.json").is_file():
            problem = f"{entry} has no manifest.json, so it is not a model"
            entries.append((entry, Check(name, False, problem, _STRAY_FIX)))
        else:
            entries.append((entry, None))
    return entries


def _safely(name: str, make: Callable[[], Check]) -> Check:
    """``make()``, or a failed check if the check itself raised (unreadable files and the like)."""
    try:
        return make()
    except Exception as err:
        return Check(
            name,
            False,
            f"the check itself failed: {type(err).__name__}: {err}",
            "fix what the message names and run lambdatorch doctor again",
        )


def run_doctor(
    root: Path, emit: Callable[[Check], None] | None = None, record_pages: bool = False
) -> list[Check]:
    """Every check of the tree at ``root``, in order; ``emit`` sees each as soon as it is made.
    With ``record_pages``, libtorch's page record is written once the models ran, and checked."""
    checks: list[Check] = []

    def record(check: Check) -> None:
        checks.append(check)
        if emit is not None:
            emit(check)

    def add(name: str, make: Callable[[], Check]) -> None:
        record(_safely(name, make))

    python, models = root / "python", root / "models"
    for package, fix in (
        ("lambdatorch", f"pip install --target {python} lambdatorch"),
        ("numpy", f"pip install --target {python} numpy"),
        ("torch", _torch_install(python)),
    ):
        add(f"python/{package}", partial(_package_check, python, package, fix))
    add("torch-version", lambda: _torch_version_check(python))

    entries: list[tuple[Path, Check | None]] = []
    add_one = f"lambdatorch add-model NAME --file model.pt --preset imagenet --root {root}"
    if not models.is_dir():
        listing = Check("models/", False, f"{models} is not a directory", add_one)
    else:
        try:
            entries = _scan_models(models)
            listing = Check("models/", True, "")
        except OSError as err:
            listing = Check("models/", False, f"cannot list {models}: {err}", "make it readable")
    candidates = [entry for entry, stray in entries if stray is None]

    report, why = _run_probe(python, candidates, record_pages)
    add("libtorch", lambda: _libtorch_check(python, report, why))
    add("no-python-torch", lambda: _torch_unused_check(python, report))

    if listing.ok:
        if candidates:
            listing.detail = f"{len(candidates)} model(s) in {models}"
        else:
            listing = Check("models/", False, f"no model directories in {models}", add_one)
    record(listing)
    for entry, stray in entries:
        if stray is not None:
            record(stray)
        else:
            valid = MODEL_NAME.fullmatch(entry.name) is not None
            add(f"models/{entry.name}", partial(_model_check, root, entry, report, valid))
    if record_pages:
        add("page-record", lambda: _page_record_check(report))
    return checks


def doctor(args: argparse.Namespace) -> int:
    def emit(check: Check) -> None:
        print(check.line(), flush=True)

    checks = run_doctor(Path(args.root), None if args.json else emit, args.record_pages)
    if args.json:
        print(json.dumps([asdict(check) for check in checks], indent=2))
    return 0 if all(check.ok for check in checks) else 1


# --- export ------------------------------------------------------------------------------------


def _shape(text: str) -> list[int]:
    try:
        shape = [int(part) for part in text.split(",")]
    except ValueError:
        shape = []
    if not shape or any(d < 1 for d in shape):
        raise argparse.ArgumentTypeError(
            f"expected positive integers like 1,3,224,224, got {text!r}"
        )
    return shape


def _factory(spec: str) -> Callable[..., Any]:
    """``PKG.MOD:CALLABLE`` (``CALLABLE`` may be dotted) imported from the current directory too."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CommandError(
            f"--module {spec}: expected PKG.MOD:CALLABLE, e.g. torchvision.models:resnet18"
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as err:
        raise CommandError(f"--module {spec}: cannot import {module_name}: {err}") from err
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as err:
            raise CommandError(f"--module {spec}: {module_name} has no {attr}") from err
    if not callable(target):
        raise CommandError(f"--module {spec}: {attr} is not callable")
    factory: Callable[..., Any] = target
    return factory


def export_text_command(args: argparse.Namespace) -> int:
    from ._export_text import export_text

    try:
        report = export_text(
            args.hf,
            args.out,
            task=args.task,
            pooling=args.pooling,
            normalize=not args.no_normalize,
            max_length=args.max_length,
            format=args.format,
            cpu=args.cpu,
        )
    except ImportError as err:
        raise CommandError(str(err)) from err
    except (LambdaTorchError, OSError):
        raise
    except Exception as err:
        raise CommandError(f"--hf {args.hf}: {type(err).__name__}: {one_line(str(err))}") from err
    print(f"wrote {report.path / report.file}, tokenizer.json, manifest.json")
    print(
        f"inputs {report.inputs}; lambdatorch vs Python torch on the check texts: max abs diff "
        f"{report.max_abs_diff:.3g}, output {'x'.join(map(str, report.output_shape))}"
    )
    return 0


def export_command(args: argparse.Namespace) -> int:
    from ._export import FactoryError, export_factory, require_torch

    if args.hf:
        return export_text_command(args)
    if args.module is None or args.example_shape is None:
        raise CommandError("export needs --module and --example-shape (or --hf DIR)")

    try:
        kwargs = json.loads(args.kwargs)
    except ValueError as err:
        raise CommandError(f"--kwargs: not JSON: {err}") from err
    if not isinstance(kwargs, dict):
        raise CommandError("--kwargs: expected a JSON object, e.g. '{\"num_classes\": 10}'")
    try:
        require_torch()
    except ImportError as err:  # no Python torch here
        raise CommandError(str(err)) from err
    factory = _factory(args.module)
    method = "script" if args.script else "trace"
    try:
        report = export_factory(
            factory,
            kwargs,
            args.example_shape,
            args.out,
            preset=args.preset,
            labels=args.labels,
            method=method,
            optimize=not args.no_optimize,
            format=args.format,
            cpu=args.cpu,
        )
    except FactoryError as err:
        raise CommandError(f"{args.module}{err}") from err
    except (LambdaTorchError, OSError):
        raise
    except Exception as err:
        other = "tracing (drop --script)" if args.script else "--script"
        raise CommandError(
            f"{method} failed: {type(err).__name__}: {one_line(str(err))} (try {other})"
        ) from err

    written = ", ".join(str(report.path / name) for name in report.files)
    print(f"wrote {written}")
    if args.format == "aoti":
        print(f"model.pt2: {report.size} bytes, unpacked to package/, sha256 {report.sha256}")
        print(f"AOTInductor: {report.optimization}")
    else:
        print(f"model.pt: {report.size} bytes, sha256 {report.sha256}")
        print(f"TorchScript: {report.method}, {report.optimization}")
    shape = "x".join(map(str, args.example_shape))
    out = "x".join(map(str, report.output_shape))
    print(
        f"parity on a seeded random {shape} input: lambdatorch vs Python torch max abs diff "
        f"{report.max_abs_diff:.3g} (limit {report.tolerance:g}), output {out}"
    )
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="lambdatorch", description="Serve TorchScript models from AWS Lambda with EFS."
    )
    commands = top.add_subparsers(dest="command", required=True)

    add = commands.add_parser(
        "add-model", help="add a TorchScript model or an AOTInductor package to the EFS tree"
    )
    add.add_argument("name", help="model name, the directory under models/")
    add.add_argument(
        "--file",
        required=True,
        help="the TorchScript file (torch.jit.save) or AOTInductor package (.pt2, unpacked)",
    )
    add.add_argument("--labels", help="class labels, one a line")
    add.add_argument(
        "--tokenizer",
        help="a Hugging Face tokenizer.json: a text model, whose inputs are read from the model",
    )
    add.add_argument("--preset", choices=sorted(PRESETS), help="manifest preset")
    add.add_argument("--manifest", help="JSON file of manifest fields (over the preset)")
    add.add_argument("--root", default="/mnt/efs", help="the EFS tree (default /mnt/efs)")
    add.add_argument("--force", action="store_true", help="replace an existing model")
    add.set_defaults(run=add_model)

    pred = commands.add_parser("predict", help="predict images or texts locally, print JSON")
    pred.add_argument("--model", required=True, help="model directory or manifest")
    pred.add_argument("--top-k", type=int, default=None)
    pred.add_argument(
        "--text", action="append", help="a text (repeat for a batch): text models, embeddings too"
    )
    pred.add_argument("images", nargs="*")
    pred.set_defaults(run=predict)

    doc = commands.add_parser(
        "doctor",
        help="check an EFS tree: packages, torch version, libtorch, every model",
        description="Check the EFS tree as Lambda will use it; one line per check (ok, or FAIL "
        "with the fix). Exit 0 only when every check passes.",
    )
    doc.add_argument("--root", default="/mnt/efs", help="the EFS tree (default /mnt/efs)")
    doc.add_argument("--json", action="store_true", help="print the checks as a JSON list")
    doc.add_argument(
        "--record-pages",
        action="store_true",
        help="then write which pages of libtorch loading and running the models touched "
        "(torch/lib/.lambdatorch-pages.json), for cold starts to prefetch; the one write "
        "into the tree, where it is otherwise left untouched",
    )
    doc.set_defaults(run=doctor)

    exp = commands.add_parser(
        "export",
        help="export a torch.nn.Module to TorchScript or AOTInductor plus manifest (needs "
        "Python torch)",
        description="Build a module with PKG.MOD:CALLABLE(**kwargs) (imported from the current "
        "directory too), save it as TorchScript (or, with --format aoti, compile it through "
        "torch.export to an AOTInductor package) with a manifest in --out, then check that "
        "lambdatorch reproduces Python torch's output on a seeded random example.",
    )
    exp.add_argument(
        "--module",
        metavar="PKG.MOD:CALLABLE",
        help="what builds the module, e.g. torchvision.models:resnet18",
    )
    exp.add_argument(
        "--kwargs", default="{}", metavar="JSON", help="keyword arguments, a JSON object"
    )
    exp.add_argument(
        "--example-shape",
        type=_shape,
        metavar="N,C,H,W",
        help="example input shape, batch first (torch.randn, seeded)",
    )
    exp.add_argument("--out", required=True, help="the model directory to write")
    exp.add_argument("--preset", choices=sorted(PRESETS), help="manifest preset (input, output)")
    exp.add_argument("--labels", help="class labels, one a line (makes a classification output)")
    exp.add_argument("--script", action="store_true", help="torch.jit.script instead of trace")
    exp.add_argument(
        "--no-optimize", action="store_true", help="skip freeze + optimize_for_inference"
    )
    exp.add_argument(
        "--format",
        choices=["torchscript", "aoti"],
        default="torchscript",
        help="TorchScript (default) or an AOTInductor package through torch.export",
    )
    exp.add_argument(
        "--cpu",
        choices=["avx2", "avx512", "native"],
        default="avx2",
        help="aoti: the vector ISA to compile for (default avx2, what every x86_64 Lambda host "
        "has; native: this CPU's best)",
    )
    text = exp.add_argument_group(
        "text models", "--hf DIR instead of --module: a Hugging Face model and its tokenizer"
    )
    text.add_argument("--hf", metavar="DIR", help="a save_pretrained directory (or a hub name)")
    text.add_argument("--task", choices=["classification", "embedding"], default="classification")
    text.add_argument("--pooling", choices=["mean", "cls"], default="mean", help="embedding")
    text.add_argument("--no-normalize", action="store_true", help="embedding: skip L2 norm")
    text.add_argument("--max-length", type=int, default=128, help="tokens per text")
    exp.set_defaults(run=export_command)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.run(args))
    except CommandError as err:
        print(f"lambdatorch {args.command}: {one_line(str(err))}", file=sys.stderr)
        return 2
    except (LambdaTorchError, OSError) as err:
        message = one_line(str(err))
        print(f"lambdatorch {args.command}: {type(err).__name__}: {message}", file=sys.stderr)
        return 1
