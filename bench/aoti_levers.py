"""``python -m bench.aoti_levers``: what moves AOTI's batch-1 forward against TorchScript's.

Issue 11 measured AOTI slower than TorchScript at batch 1 (ResNet-18, 2 threads). This compiles
ResNet-18 with each candidate setting (cached in ``target/aoti-cache/levers/``), then runs the
benchmark's engine probe (``aoti.py``: a fresh ``python -S`` seeing only the EFS tree) on each
package and on the TorchScript export, in rounds with the order rotated, under each OpenMP
environment below. Prints, and writes ``target/aoti-levers.json``: per variant the median over
rounds of its batch-1 (and batch-8) time relative to TorchScript's in the same round and
environment. Settings that help belong in ``lambdatorch export --format aoti``: ``packed`` (the
dynamic package with its convolution weights packed at export) is what it compiles now.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

from scripts.local_lambda import REPO

from .aoti import CACHE, WORK, Plan, engine, exported
from .tree import build

LEVERS = CACHE / "levers"
BASE = {"freezing": True, "aot_inductor.link_libtorch": False}
#: Stands for ``_export_prepack.PackConvolutionWeights()`` (what ``lambdatorch export`` adds),
#: made at compile time: it imports Python torch.
PACK = "lambdatorch._export_prepack"
#: name -> (inductor configs, static batch size or None for the dynamic batch dimension, the
#: batch size the export traces with: Inductor's size hint for the dynamic dimension)
VARIANTS: dict[str, tuple[dict[str, Any], int | None, int]] = {
    "dynamic": (BASE, None, 2),
    "hint-8": (BASE, None, 8),
    "packed": ({**BASE, "post_grad_custom_pre_pass": PACK}, None, 2),
    "static-1": (BASE, 1, 1),
    "no-freezing": ({"aot_inductor.link_libtorch": False}, None, 2),
    "no-prepack": ({**BASE, "cpp.weight_prepack": False}, None, 2),
    "no-layout-opt": ({**BASE, "layout_optimization": False}, None, 2),
}
ENVIRONMENTS: dict[str, dict[str, str]] = {
    "default": {},
    "OMP_NUM_THREADS=2": {"OMP_NUM_THREADS": "2"},
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
}


def compile_variant(name: str, reference: Path) -> Path:
    """ResNet-18 (the benchmark's weights) compiled with ``VARIANTS[name]``, as a model
    directory beside a copy of the benchmark's manifest."""
    import torch
    import torchvision
    from lambdatorch import _aoti

    from scripts.make_fixtures import calibrate_batch_norm

    configs, static, hint = VARIANTS[name]
    if configs.get("post_grad_custom_pre_pass") == PACK:
        from lambdatorch._export_prepack import PackConvolutionWeights

        configs = {**configs, "post_grad_custom_pre_pass": PackConvolutionWeights()}
    key = f"{name}-torch{torch.__version__}"
    out = LEVERS / key
    if (out / "manifest.json").is_file():
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    torch.manual_seed(0)
    module = torchvision.models.resnet18(weights=None)
    calibrate_batch_norm(module)
    if static:
        program = torch.export.export(module, (torch.randn(static, 3, 224, 224),))
    else:
        batch = torch.export.Dim("batch", min=1, max=1024)
        example = (torch.randn(hint, 3, 224, 224),)
        program = torch.export.export(module, example, dynamic_shapes=({0: batch},))
    print(f"bench aoti_levers: compiling {name}", flush=True)
    os.environ["ATEN_CPU_CAPABILITY"] = "avx2"
    with torch.no_grad():
        torch._inductor.aoti_compile_and_package(
            program, package_path=str(out / "model.pt2"), inductor_configs=configs
        )
    _aoti.unpack(out / "model.pt2", out / "package")
    (out / "model.pt2").unlink()
    manifest = json.loads((reference / "manifest.json").read_text())
    manifest.pop("sha256", None)
    manifest |= {"file": "package", "cpu_isa": _aoti.cpu_isa(out / "package")}
    if static:
        manifest["max_batch"] = static
    shutil.copy(reference / "labels.txt", out / "labels.txt")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--environments", default=",".join(ENVIRONMENTS))
    args = parser.parse_args()
    tree = build(WORK)
    logs = WORK / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    torchscript, _ = exported("resnet18", "torchscript", logs / "aoti-export.log")
    aoti, _ = exported("resnet18", "aoti", logs / "aoti-export.log")
    dirs = {"torchscript": torchscript}
    for name in args.variants.split(","):
        dirs[name] = compile_variant(name, aoti)
    plan = Plan(rounds=args.rounds, batch1=30, batch8=6)
    figures: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for round_ in range(args.rounds):
        for env_name in args.environments.split(","):
            names = list(dirs)
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                static = VARIANTS.get(name, ({}, None, 0))[1]
                run_plan = Plan(plan.rounds, plan.batch1, 0 if static else plan.batch8)
                result = engine(tree, dirs[name], run_plan, ENVIRONMENTS[env_name])
                figures.setdefault(env_name, {}).setdefault(name, []).append(result)
                print(
                    f"round {round_ + 1} {env_name:<24} {name:<14} b1 {result['batch1_ms']:.1f} "
                    f"ms, b8 {result['batch8_ms'] or 0:.0f} ms",
                    flush=True,
                )
    summary: dict[str, dict[str, dict[str, float | None]]] = {}
    for env_name, by_name in figures.items():
        ts = by_name["torchscript"]
        for name, results in by_name.items():
            row: dict[str, float | None] = {}
            for batch in ("batch1_ms", "batch8_ms"):
                pairs = [(r[batch], t[batch]) for r, t in zip(results, ts, strict=True)]
                row[batch] = statistics.median(a for a, _ in pairs) if pairs[0][0] else None
                row[f"{batch} / torchscript"] = (
                    statistics.median(a / b for a, b in pairs) if pairs[0][0] else None
                )
            summary.setdefault(env_name, {})[name] = row
            print(f"{env_name:<24} {name:<14} {json.dumps(row)}")
    out = REPO / "target" / "aoti-levers.json"
    out.write_text(json.dumps({"summary": summary, "figures": figures}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
