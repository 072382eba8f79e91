"""AOTInductor packages against TorchScript (issue 11), on the benchmark's EFS tree.

Part of ``python -m bench`` (its report's last section); alone, ``python -m bench.aoti [--quick]
[--out DIR]`` writes DIR/aoti.json and DIR/aoti.md.

For ResNet-18 and MobileNetV3-small (torchvision architectures, random weights, seeded), both
formats as ``lambdatorch export`` writes them (TorchScript: traced, frozen and optimized for
inference; AOTI: ``torch.export`` with a dynamic batch dimension, compiled for AVX2), added to the
tree as ``<model>-torchscript`` and ``<model>-aoti``:

- the engine: a fresh ``python -S`` with only the tree's ``python/`` on the path imports
  lambdatorch, loads the model (warmup included, as the manifest asks), runs a first batch-1
  forward, then timed forwards at batch 1 and 8; its peak RSS; for AOTI also whether anything
  mapped ``libtorch_cuda.so``, and what loading PyPI's CUDA-enabled ``libtorch.so`` would add
  (what a package linked against it costs);
- cold start through both handlers (``lambdatorch-python`` and ``lambdatorch-native``, as
  ``contenders.py`` starts them, warm page cache), the model preloaded: seconds to the first
  response and the peak RSS then.

Formats alternate within each round, and ratios are taken within a round (both measured seconds
apart, in the same machine state) before the median over rounds.

Compiling is slow (ResNet-18: tens of seconds to minutes), so exported models are cached in
``target/aoti-cache/`` under a key of torch's version, the model and the export code; a rerun
compiles nothing. ``--quick`` (CI, a fresh clone, so nothing cached) benchmarks ResNet-18 only,
the faster of the two to compile, and says so.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scripts.local_lambda import REPO

from .contenders import Contender, event, running
from .tree import Tree, build

WORK = REPO / "target" / "bench"
CACHE = REPO / "target" / "aoti-cache"
ARCHITECTURES = {"resnet18": "resnet18", "mobilenet": "mobilenet_v3_small"}
FORMATS = ("torchscript", "aoti")
HANDLERS = ("lambdatorch-python", "lambdatorch-native")
#: Bump when the way the benchmark builds its models changes (weights, preset): a new cache key.
RECIPE = 1
QUICK_MODELS = ("resnet18",)
QUICK_SKIP = (
    "--quick benchmarks ResNet-18 only: each model is one more AOTI compile, and a fresh clone has "
    "none cached; MobileNetV3-small's is the slower one (15 generated kernels against ResNet-18's "
    "3: 258 s against 63 s here, both on a busy machine)"
)


@dataclass(frozen=True)
class Plan:
    rounds: int
    batch1: int  # timed forwards at batch 1, per round
    batch8: int  # timed forwards at batch 8, per round


FULL = Plan(rounds=5, batch1=40, batch8=10)
QUICK = Plan(rounds=1, batch1=5, batch8=2)


@dataclass(frozen=True)
class Serving(Contender):
    """A lambdatorch handler preloading and defaulting to ``model``."""

    model: str = ""

    def env(self, tree: Tree, runtime_api: str) -> dict[str, str]:
        return super().env(tree, runtime_api) | {
            "LAMBDATORCH_PRELOAD": self.model,
            "LAMBDATORCH_DEFAULT_MODEL": self.model,
        }


# --- models --------------------------------------------------------------------------------------
def settings(model: str, fmt: str) -> dict[str, Any]:
    """Everything the exported model depends on: the cache key's contents (the export code itself
    by digest, so a changed setting or lever there is a new key)."""
    import torch
    from lambdatorch import _aoti, _export, _export_prepack

    code = hashlib.sha256()
    for module in (_export, _aoti, _export_prepack):
        code.update(Path(str(module.__file__)).read_bytes())
    return {
        "recipe": RECIPE,
        "model": model,
        "format": fmt,
        "cpu": "avx2",
        "torch": torch.__version__,
        "export_code": code.hexdigest(),
    }


def cache_dir(model: str, fmt: str) -> Path:
    key = settings(model, fmt)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return CACHE / f"{model}-{fmt}-torch{key['torch']}-{digest}"


def exported(model: str, fmt: str, log: Path) -> tuple[Path, float | None]:
    """The exported model directory, from the cache or compiled now (then the seconds it took)."""
    cached = cache_dir(model, fmt)
    if (cached / "model" / "manifest.json").is_file():
        return cached / "model", None
    import torch
    import torchvision
    from lambdatorch import _export

    from scripts.make_fixtures import calibrate_batch_norm

    torch.manual_seed(0)
    module = getattr(torchvision.models, ARCHITECTURES[model])(weights=None)
    calibrate_batch_norm(module)
    categories = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    shutil.rmtree(cached, ignore_errors=True)
    cached.mkdir(parents=True)
    print(f"bench aoti: exporting {model} to {fmt} (cached in {cached})", flush=True)
    began = time.monotonic()
    example = torch.randn(1, 3, 224, 224)
    options = {"preset": "imagenet", "labels": categories, "format": fmt, "cpu": "avx2"}
    report = _export.export_model(module, example, cached / "model", **options)
    seconds = time.monotonic() - began
    (cached / "settings.json").write_text(
        json.dumps(
            settings(model, fmt)
            | {
                "export_s": seconds,
                "max_abs_diff": report.max_abs_diff,
                "optimization": report.optimization,
            }
        )
    )
    with log.open("a") as out:
        print(f"{model} {fmt}: exported in {seconds:.1f} s, {report.optimization}", file=out)
    return cached / "model", seconds


def add_to_tree(tree: Tree, model: str, fmt: str, source: Path) -> str:
    """Copies an exported model into the tree as ``<model>-<fmt>``, unless already there."""
    name = f"{model}-{fmt}"
    dest = tree.models / name
    stamp = dest / ".bench-source"
    if not (stamp.is_file() and stamp.read_text() == str(source)):
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(source, dest, symlinks=True)
        stamp.write_text(str(source))
    return name


# --- measurements --------------------------------------------------------------------------------
PROBE = r"""
import ctypes, json, os, sys, time
began = time.perf_counter()
import numpy as np
import lambdatorch
imported = time.perf_counter()
model_dir, lib_dir, n1, n8 = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024

model = lambdatorch.load(model_dir)
loaded = time.perf_counter()
rng = np.random.default_rng(0)
x = {b: rng.standard_normal((b, 3, 224, 224), dtype=np.float32) for b in (1, 8)}
t = time.perf_counter()
model.forward(x[1])
first = time.perf_counter() - t
times = {}
for batch, count in ((1, n1), (8, n8)):
    for _ in range(2 if count else 0):
        model.forward(x[batch])
    times[batch] = []
    for _ in range(count):
        t = time.perf_counter()
        model.forward(x[batch])
        times[batch].append((time.perf_counter() - t) * 1e3)
maps = open("/proc/self/maps").read()
out = {
    "import_s": imported - began,
    "load_s": loaded - imported,
    "first_inference_ms": first * 1e3,
    "batch1_ms": sorted(times[1])[len(times[1]) // 2],
    "batch8_ms": sorted(times[8])[len(times[8]) // 2] if times[8] else None,
    "peak_rss_mb": status("VmHWM"),
    "rss_mb": status("VmRSS"),
    "libtorch_cuda_mapped": "libtorch_cuda.so" in maps,
}
if model.manifest["format"] == "aoti":
    # What a package linked against libtorch.so (Inductor's default) would load on top.
    t = time.perf_counter()
    ctypes.CDLL(os.path.join(lib_dir, "libtorch.so"), mode=ctypes.RTLD_GLOBAL)
    out["cuda_libtorch"] = {
        "load_s": time.perf_counter() - t,
        "rss_added_mb": status("VmRSS") - out["rss_mb"],
        "libtorch_cuda_mapped": "libtorch_cuda.so" in open("/proc/self/maps").read(),
    }
print(json.dumps(out))
"""


def engine(
    tree: Tree, model_dir: Path, plan: Plan, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """The probe above on one model, in a fresh interpreter that sees only the tree."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(tree.python),
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "2048",
        **(env or {}),
    }
    lib_dir = tree.python / "torch" / "lib"
    args = [str(model_dir), str(lib_dir), str(plan.batch1), str(plan.batch8)]
    out = subprocess.run(
        [sys.executable, "-S", "-c", PROBE, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if out.returncode != 0:
        raise RuntimeError(f"bench aoti: the probe failed on {model_dir}:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.splitlines()[-1])


def cold_start(tree: Tree, handler: str, name: str, image: bytes, log: Path) -> dict[str, float]:
    serving = Serving(handler, "", model=name)
    with running(serving, tree, log) as process:
        seconds = process.cold_start(event(name, image))
        return {"cold_start_s": seconds, "cold_peak_rss_mb": process.memory_mb("VmHWM")}


def run(tree: Tree, quick: bool, logs: Path) -> dict[str, Any]:
    """Exports (or takes from the cache), adds to the tree and measures; the results."""
    plan = QUICK if quick else FULL
    models = QUICK_MODELS if quick else tuple(ARCHITECTURES)
    results: dict[str, Any] = {"plan": vars(plan), "models": list(models), "exports": {}}
    if quick:
        results["skipped"] = QUICK_SKIP
        print(f"bench aoti: {QUICK_SKIP}", flush=True)
    names = {}
    for model in models:
        for fmt in FORMATS:
            source, seconds = exported(model, fmt, logs / "aoti-export.log")
            names[model, fmt] = add_to_tree(tree, model, fmt, source)
            manifest = json.loads((source / "manifest.json").read_text())
            export = json.loads((source.parent / "settings.json").read_text())
            results["exports"][f"{model} {fmt}"] = {
                "compile_s": export["export_s"],
                "cached": seconds is None,
                "cpu_isa": manifest.get("cpu_isa"),
                "optimization": export.get("optimization", "?"),
            }
    image = tree.image("0.3MP").read_bytes()
    results["rounds"] = []
    for round_ in range(plan.rounds):
        entry: dict[str, Any] = {}
        for model in models:
            order = FORMATS if round_ % 2 == 0 else FORMATS[::-1]
            for fmt in order:
                name = names[model, fmt]
                figures = {"engine": engine(tree, tree.models / name, plan)}
                for handler in HANDLERS:
                    figures[handler] = cold_start(
                        tree, handler, name, image, logs / f"aoti-{handler}-{name}.log"
                    )
                entry[f"{model} {fmt}"] = figures
                e = figures["engine"]
                print(
                    f"bench aoti: round {round_ + 1}: {name:<22} load {e['load_s']:.2f} s, "
                    f"first {e['first_inference_ms']:.0f} ms, b1 {e['batch1_ms']:.1f} ms, "
                    f"b8 {e['batch8_ms']:.0f} ms, peak {e['peak_rss_mb']:.0f} MB; cold start "
                    + ", ".join(f"{h} {figures[h]['cold_start_s']:.2f} s" for h in HANDLERS),
                    flush=True,
                )
        results["rounds"].append(entry)
    return results


# --- report --------------------------------------------------------------------------------------
def _values(results: dict[str, Any], model: str, fmt: str, *path: str) -> list[float]:
    out = []
    for entry in results["rounds"]:
        value: Any = entry[f"{model} {fmt}"]
        for key in path:
            value = value[key]
        out.append(float(value))
    return out


def _ratios(results: dict[str, Any], model: str, *path: str) -> list[float]:
    """AOTI / TorchScript within each round."""
    aoti = _values(results, model, "aoti", *path)
    ts = _values(results, model, "torchscript", *path)
    return [a / t for a, t in zip(aoti, ts, strict=True)]


def _fmt(values: list[float], digits: int = 0) -> str:
    mid, low, high = statistics.median(values), min(values), max(values)
    if f"{low:.{digits}f}" == f"{high:.{digits}f}":
        return f"{mid:,.{digits}f}"
    return f"{mid:,.{digits}f} ({low:,.{digits}f}-{high:,.{digits}f})"


#: (what, figure path, AOTI/TorchScript limit, whether the target is an upper bound, as stated)
TARGETS = (
    ("forward batch 8: TorchScript / AOTI >= 1.25", ("engine", "batch8_ms"), 1 / 1.25),
    ("forward batch 1: TorchScript / AOTI >= 0.95", ("engine", "batch1_ms"), 1 / 0.95),
    ("cold start, Python handler: AOTI / TorchScript <= 1.5", ("lambdatorch-python",
     "cold_start_s"), 1.5),
    ("peak RSS (engine): AOTI / TorchScript <= 1.2", ("engine", "peak_rss_mb"), 1.2),
)  # fmt: skip


def targets(results: dict[str, Any]) -> list[list[str]]:
    """One row per target and model: the median ratio (as the target states it) and a verdict."""
    rows = []
    for what, path, limit in TARGETS:
        inverted = what.startswith("forward")
        for model in results["models"]:
            ratios = _ratios(results, model, *path)
            shown = [1 / r for r in ratios] if inverted else ratios
            met = statistics.median(ratios) <= limit
            rows.append([what, model, _fmt(shown, 2), "**met**" if met else "**missed**"])
    return rows


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


FIGURES = (
    ("load, warmup included (s)", ("engine", "load_s"), 2),
    ("first inference, batch 1 (ms)", ("engine", "first_inference_ms"), 0),
    ("forward batch 1 (ms)", ("engine", "batch1_ms"), 1),
    ("forward batch 8 (ms)", ("engine", "batch8_ms"), 0),
    ("peak RSS, engine (MB)", ("engine", "peak_rss_mb"), 0),
    ("cold start, Python handler (s)", ("lambdatorch-python", "cold_start_s"), 2),
    ("cold start, native handler (s)", ("lambdatorch-native", "cold_start_s"), 2),
    ("peak RSS at cold start, Python handler (MB)", ("lambdatorch-python", "cold_peak_rss_mb"), 0),
    ("peak RSS at cold start, native handler (MB)", ("lambdatorch-native", "cold_peak_rss_mb"), 0),
)


def section(results: dict[str, Any]) -> str:
    """The report's AOTInductor section."""
    if not results.get("rounds"):
        return "## AOTInductor against TorchScript\n\nNot run.\n"
    rows = []
    for what, path, digits in FIGURES:
        for model in results["models"]:
            rows.append(
                [what, model]
                + [_fmt(_values(results, model, fmt, *path), digits) for fmt in FORMATS]
                + [_fmt(_ratios(results, model, *path), 2)]
            )
    cuda = []
    for model in results["models"]:
        extra = [r[f"{model} aoti"]["engine"].get("cuda_libtorch") for r in results["rounds"]]
        mapped = any(
            r[f"{model} aoti"]["engine"]["libtorch_cuda_mapped"] for r in results["rounds"]
        )
        if all(extra):
            cuda.append(
                f"- {model}: `libtorch_cuda.so` mapped while serving: {'yes' if mapped else 'no'}; "
                f"loading PyPI's `libtorch.so` on top takes "
                f"{_fmt([e['load_s'] for e in extra], 2)} s and adds "
                f"{_fmt([e['rss_added_mb'] for e in extra])} MB of RSS"
            )
    exports = "\n".join(
        f"- {what}: {e['optimization']}; exported in {e['compile_s']:.0f} s"
        + (" (taken from the cache)" if e["cached"] else "")
        + (f", ISA {e['cpu_isa']}" if e.get("cpu_isa") else "")
        for what, e in results["exports"].items()
    )
    skipped = f"\n{results['skipped']}.\n" if results.get("skipped") else ""
    plan = results["plan"]
    return f"""## AOTInductor against TorchScript (issue 11)
{skipped}
Both formats as `lambdatorch export` writes them (TorchScript traced and frozen, and optimized
for inference when that reloads, see "Exports" below; AOTI through `torch.export` with a dynamic
batch dimension, frozen, compiled for AVX2), the same random weights. Engine figures from a
fresh `python -S` that sees only the tree ({plan["rounds"]} rounds; per round the median of
{plan["batch1"]} forwards at batch 1 and {plan["batch8"]} at batch 8, 2 threads); cold starts
through each handler on a warm page cache, the model preloaded. Median over rounds (min-max);
the ratio AOTI / TorchScript is taken within each round, the formats alternating.

{_table(["issue 11 target", "model", "median", ""], targets(results))}

{_table(["figure", "model", "TorchScript", "AOTI", "AOTI / TorchScript"], rows)}

What PyPI's CUDA-enabled build would add (packages are exported with
`aot_inductor.link_libtorch=False`, so nothing loads `libtorch.so`):

{chr(10).join(cuda) or "- not measured"}

Exports:

{exports}
"""


def summary(results: dict[str, Any]) -> str:
    if not results.get("rounds"):
        return "targets (issue 11): not run"
    return "\n".join(
        ["targets (issue 11):"]
        + [f"  {r[0]} ({r[1]}): {r[2]} {r[3].strip('*')}" for r in targets(results)]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "bench")
    args = parser.parse_args()
    tree = build(WORK)
    logs = WORK / ("logs-quick" if args.quick else "logs")
    logs.mkdir(parents=True, exist_ok=True)
    results = run(tree, args.quick, logs)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "aoti.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "aoti.md").write_text(section(results))
    print(summary(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
