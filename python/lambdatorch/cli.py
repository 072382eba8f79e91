"""The ``lambdatorch`` command: fill, check and try out an EFS tree.

Standard-library ``argparse`` only, so the EFS tree needs nothing beyond lambdatorch and numpy.
Every failure prints one line naming the problem and the fix, never a traceback.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from .errors import LambdaTorchError

#: Manifest presets for ``add-model --preset``.
PRESETS: dict[str, dict[str, Any]] = {
    "imagenet": {
        "input": {
            "type": "image",
            "size": [224, 224],
            "resize_shorter": 256,
            "crop": "center",
            "interpolation": "bilinear",
            "color": "rgb",
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
            "decode": "exact",
        },
        "output": {"type": "classification", "softmax": True, "top_k": 5},
        "max_batch": 8,
        "threads": "auto",
        "warmup": True,
    },
}


class CommandError(Exception):
    """A failure to report in one line, with the fix."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
    if args.preset is None and args.manifest is None:
        raise CommandError("say what the model takes: --preset imagenet or --manifest FILE")
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
        model_file = staging / ("model" + (source.suffix or ".pt"))
        shutil.copyfile(source, model_file)
        manifest.update({"format": "torchscript", "file": model_file.name})
        manifest["sha256"] = sha256_of(model_file)
        if args.labels:
            shutil.copyfile(args.labels, staging / "labels.txt")
            manifest.setdefault("output", {"type": "classification"})["labels"] = "labels.txt"
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


def predict(args: argparse.Namespace) -> int:
    import lambdatorch

    model = lambdatorch.load(args.model)
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


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="lambdatorch", description="Serve TorchScript models from AWS Lambda with EFS."
    )
    commands = top.add_subparsers(dest="command", required=True)

    add = commands.add_parser("add-model", help="add a TorchScript model to the EFS tree")
    add.add_argument("name", help="model name, the directory under models/")
    add.add_argument("--file", required=True, help="the TorchScript file (torch.jit.save)")
    add.add_argument("--labels", help="class labels, one a line")
    add.add_argument("--preset", choices=sorted(PRESETS), help="manifest preset")
    add.add_argument("--manifest", help="JSON file of manifest fields (over the preset)")
    add.add_argument("--root", default="/mnt/efs", help="the EFS tree (default /mnt/efs)")
    add.add_argument("--force", action="store_true", help="replace an existing model")
    add.set_defaults(run=add_model)

    pred = commands.add_parser("predict", help="predict images locally, print JSON")
    pred.add_argument("--model", required=True, help="model directory or manifest")
    pred.add_argument("--top-k", type=int, default=None)
    pred.add_argument("images", nargs="+")
    pred.set_defaults(run=predict)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.run(args))
    except CommandError as err:
        print(f"lambdatorch {args.command}: {err}", file=sys.stderr)
        return 2
    except (LambdaTorchError, OSError) as err:
        print(f"lambdatorch {args.command}: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
