"""Text models (issue 13): lambdatorch's Python handler against the one people write.

Part of ``make bench`` (its report's "Text models" section); alone, ``python -m bench.text
[--quick] [--out DIR]`` writes DIR/text.json and DIR/text.md (DIR: target/bench); bench/text.md is
such a run, kept until a full ``make bench`` reports the section in bench/report.md.

The tree is the benchmark's (``tree.py``) with transformers and its dependencies linked from the
venv, as torch is, and the fixtures' text classifier and embedding model (``make fixtures``: tiny
BERTs, 2 layers of 32 units, so that the overhead shows) copied into its ``models/``. Each
handler is a Lambda handler called directly in a fresh ``python -S`` whose only import path is
the tree's ``python/`` (and the function's own directory): ``lambdatorch.handler.lambda_handler``
with the model in ``LAMBDATORCH_PRELOAD``, or ``function/transformers_handler.py``
(``import torch, transformers``, a fast tokenizer from the same ``tokenizer.json``,
``torch.jit.load``). Per model, handler and run:

- cold start: from starting the process to the first answer (one text): imports, init with the
  model loaded, the request; on a warm page cache, and from a fresh mount of the EFS stand-in
  (``efs.py``, with what it served) where ``/dev/fuse`` exists;
- peak RSS after the warm requests;
- warm requests of 1 and 32 sentences, after a few untimed ones: total, the handler call from the
  event to the response (Python dicts and lists, before the runtime's JSON, which both pay
  alike); forward, the handler's ``timings_ms.inference`` (the forward pass and the output head,
  the same span in both: see the transformers handler); overhead, total minus forward, per
  request (tokenizing, building tensors, converting the answer to Python).

Handlers alternate in order between runs, and ratios are taken within a run before the median.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scripts.local_lambda import FUNCTION_ENV, REPO

from .efs import mounted, unavailable
from .on_efs import SETTINGS, MountedTree, record_pages
from .tree import Tree, build, link, requirement_closure

WORK = REPO / "target" / "bench"
FIXTURES = Path(os.environ.get("LAMBDATORCH_FIXTURES", REPO / "target" / "fixtures"))
MODELS = ("text-classifier", "text-embedder")
HANDLERS = ("lambdatorch", "transformers")
FUNCTION = Path(__file__).resolve().parent / "function"
SIZES = (1, 32)
TIMEOUT_S = 900  # a child that hangs is killed: its run fails
WARMUP = 3  # untimed requests per batch size: TorchScript's profiling executor optimises first

SENTENCES = [
    "The movie was great, and the music even better.",
    "I did not like this at all; the plot made no sense.",
    "Café au lait in Zürich, then sushi in 東京 🤖.",
    "Delivery was late but the support team sorted it out quickly.",
]


@dataclass(frozen=True)
class Plan:
    runs: int
    rounds: int  # timed warm requests per batch size
    standin_models: tuple[str, ...]  # models whose cold start is measured on the stand-in


FULL = Plan(runs=3, rounds=50, standin_models=MODELS)
QUICK = Plan(runs=1, rounds=5, standin_models=MODELS[:1])

# The child prints one JSON line when it has answered its first request, then, after the warm
# requests, a second one.
CHILD = """
import importlib, json, sys, time
module, name, sentences, rounds, warmup, sizes = sys.argv[1:7]
sentences, rounds, warmup = json.loads(sentences), int(rounds), int(warmup)
handler = importlib.import_module(module).lambda_handler

def answer(texts):
    began = time.perf_counter()
    reply = handler({"model": name, "texts": texts}, None)
    return (time.perf_counter() - began) * 1e3, reply["timings_ms"]["inference"]

answer(sentences[:1])
print("answered", flush=True)
warm = {}
for size in map(int, sizes.split(",")) if rounds else ():
    texts = (sentences * size)[:size]
    for _ in range(warmup):
        answer(texts)
    timed = [answer(texts) for _ in range(rounds)]
    warm[size] = {"totals": [t for t, _ in timed], "forwards": [f for _, f in timed]}
# VmHWM, not ru_maxrss, which keeps the high-water mark of the parent that forked this process
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) / 1024
loaded = sorted(m for m in ("torch", "transformers", "tokenizers") if m in sys.modules)
print(json.dumps({"peak_rss_mb": peak, "warm": warm, "modules": loaded}), flush=True)
"""


# --- the tree ------------------------------------------------------------------------------------
def prepare(tree: Tree) -> None:
    """Adds transformers (linked from the venv) and the fixtures' text models to the tree."""
    installed = {p.name for p in tree.python.iterdir()}
    for name in requirement_closure(["transformers"]):
        dist = importlib.metadata.distribution(name)
        if not any(top in installed for top in tops(dist)):
            link(dist, tree.python)
    for model in MODELS:
        source = FIXTURES / "text" / "models" / model
        if not (source / "manifest.json").is_file():
            raise SystemExit(f"bench text: {source} is missing: run `make fixtures` first")
        shutil.copytree(source, tree.models / model, dirs_exist_ok=True)  # small: copied anew


def tops(dist: importlib.metadata.Distribution) -> set[str]:
    """A distribution's top-level entries (packages, modules, its dist-info)."""
    return {f.parts[0] for f in dist.files or [] if f.parts[0] != ".."}


# --- measurements --------------------------------------------------------------------------------
def env(tree: Tree, handler: str, model: str) -> dict[str, str]:
    common = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HF_HUB_OFFLINE": "1"}
    if handler == "lambdatorch":
        return common | {
            **FUNCTION_ENV,
            "PYTHONPATH": str(tree.python),
            "LAMBDATORCH_MODELS": str(tree.models),
            "LAMBDATORCH_PRELOAD": model,
            "LAMBDATORCH_DEFAULT_MODEL": model,
        }
    return common | {
        **FUNCTION_ENV,
        "PYTHONPATH": f"{FUNCTION}{os.pathsep}{tree.python}",
        "MODELS_DIR": str(tree.models),
        "DEFAULT_MODEL": model,
    }


def serve(tree: Tree, handler: str, model: str, rounds: int, log: Path) -> dict[str, Any]:
    """One fresh process: its cold start, then ``rounds`` warm requests per batch size."""
    module = {"lambdatorch": "lambdatorch.handler", "transformers": "transformers_handler"}
    args = [module[handler], model, json.dumps(SENTENCES), str(rounds), str(WARMUP)]
    command = [sys.executable, "-S", "-P", "-c", CHILD, *args, ",".join(map(str, SIZES))]
    with log.open("w") as err:
        began = time.perf_counter()
        child = subprocess.Popen(
            command, env=env(tree, handler, model), stdout=subprocess.PIPE, stderr=err, text=True
        )
        watchdog = threading.Timer(TIMEOUT_S, child.kill)
        watchdog.start()
        try:
            assert child.stdout is not None
            first = child.stdout.readline()
            cold_s = time.perf_counter() - began
            rest = child.stdout.read()
            child.wait()
        finally:
            watchdog.cancel()
    if child.returncode != 0 or first.strip() != "answered":
        raise RuntimeError(f"bench text: {handler} on {model} failed: see {log}")
    return {"cold_start_s": cold_s, **json.loads(rest.strip().splitlines()[-1])}


def warm_summary(warm: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float]]:
    out = {}
    for size, figures in warm.items():
        overheads = [t - f for t, f in zip(figures["totals"], figures["forwards"], strict=True)]
        out[size] = {
            "total_ms": statistics.median(figures["totals"]),
            "forward_ms": statistics.median(figures["forwards"]),
            "overhead_ms": statistics.median(overheads),
        }
    return out


def on_standin(tree: Tree, handler: str, model: str, logs: Path) -> dict[str, Any]:
    """A cold start from a fresh mount of the tree on the EFS stand-in."""
    log = logs / f"text-{handler}-{model}.efs.log"
    with mounted(
        tree.efs, tree.work / "efs-mount", SETTINGS, logs / f"text-{handler}.standin.log"
    ) as mount:
        served = serve(MountedTree(tree.work, mount.path), handler, model, 0, log)
    stats = mount.stats
    return {
        "cold_start_s": served["cold_start_s"],
        "modules": served["modules"],
        **{k: stats[k] for k in ("metadata_ops", "failed_lookups", "reads", "bytes")},
    }


def run(tree: Tree, quick: bool, logs: Path) -> dict[str, Any]:
    """Both handlers on both models, locally and on the stand-in; the results."""
    plan = QUICK if quick else FULL
    prepare(tree)
    skipped = unavailable()
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "plan": vars(plan),
        "sentences": SENTENCES,
        "standin": {"settings": SETTINGS.describe(), "skipped": skipped},
        "runs": [],
    }
    if skipped:
        print(f"bench text: skipping the cold starts on the EFS stand-in: {skipped}", flush=True)
    for index in range(plan.runs):
        entry: dict[str, Any] = {}
        for model in MODELS:
            order = HANDLERS if index % 2 == 0 else HANDLERS[::-1]
            for handler in order:
                log = logs / f"text-{handler}-{model}.log"
                served = serve(tree, handler, model, plan.rounds, log)
                figures = {**served, "warm": warm_summary(served["warm"])}
                if not skipped and model in plan.standin_models:
                    figures["standin"] = on_standin(tree, handler, model, logs)
                entry[f"{model} {handler}"] = figures
                warm = figures["warm"]["32"]
                print(
                    f"bench text: run {index + 1}: {model} {handler:<12} cold start "
                    f"{figures['cold_start_s']:.2f} s"
                    + (
                        f" ({figures['standin']['cold_start_s']:.2f} s on the stand-in)"
                        if "standin" in figures
                        else ""
                    )
                    + f", peak {figures['peak_rss_mb']:.0f} MB, batch 32 {warm['total_ms']:.2f} ms"
                    f" of which overhead {warm['overhead_ms']:.2f} ms",
                    flush=True,
                )
        results["runs"].append(entry)
    return results


# --- report --------------------------------------------------------------------------------------
def values(results: dict[str, Any], model: str, handler: str, *path: str) -> list[float]:
    out = []
    for entry in results["runs"]:
        value: Any = entry[f"{model} {handler}"]
        for key in path:
            if key not in value:
                return []
            value = value[key]
        out.append(float(value))
    return out


def ratios(results: dict[str, Any], model: str, *path: str) -> list[float]:
    """lambdatorch / transformers within each run."""
    ours, theirs = (values(results, model, h, *path) for h in HANDLERS)
    return [a / b for a, b in zip(ours, theirs, strict=True)]


def targets(results: dict[str, Any]) -> list[list[str]]:
    """Issue 13's targets per model: [what, model, median ratio as 1/x, verdict]. Cold start is
    judged on the stand-in where it ran (the case the issue is about), else locally."""
    from .report import fmt

    standin = not results["standin"]["skipped"]
    rows = []
    for what, path, limit in (
        ("cold start" + (", EFS stand-in" if standin else ", local"),
         ("standin", "cold_start_s") if standin else ("cold_start_s",), 1 / 8),
        ("peak RSS", ("peak_rss_mb",), 1 / 3),
        ("overhead, batch of 32", ("warm", "32", "overhead_ms"), 1 / 2),
    ):  # fmt: skip
        for model in MODELS:
            found = ratios(results, model, *path)
            if found:
                met = statistics.median(found) <= limit
                shown = f"{fmt(found, 2)} (1/{1 / statistics.median(found):.1f})"
                rows.append(
                    [f"{what}: at most 1/{1 / limit:g}", model, shown, "met" if met else "missed"]
                )
    return rows


FIGURES = (
    ("cold start, local (s)", ("cold_start_s",), 2),
    ("cold start, EFS stand-in (s)", ("standin", "cold_start_s"), 2),
    ("stand-in: metadata operations", ("standin", "metadata_ops"), 0),
    ("stand-in: failed lookups", ("standin", "failed_lookups"), 0),
    ("stand-in: MiB read", ("standin", "bytes"), 0),
    ("peak RSS (MB)", ("peak_rss_mb",), 0),
    ("batch 1: total (ms)", ("warm", "1", "total_ms"), 2),
    ("batch 1: forward (ms)", ("warm", "1", "forward_ms"), 2),
    ("batch 1: overhead (ms)", ("warm", "1", "overhead_ms"), 2),
    ("batch 32: total (ms)", ("warm", "32", "total_ms"), 2),
    ("batch 32: forward (ms)", ("warm", "32", "forward_ms"), 2),
    ("batch 32: overhead (ms)", ("warm", "32", "overhead_ms"), 2),
)


def section(results: dict[str, Any]) -> str:
    """The report's text-model section."""
    from .report import fmt, table

    if not results.get("runs"):
        return "## Text models (issue 13)\n\nNot run.\n"
    rows = []
    for what, path, digits in FIGURES:
        scale = 1 / 2**20 if path[-1] == "bytes" else 1
        for model in MODELS:
            found = [values(results, model, h, *path) for h in HANDLERS]
            if all(found):
                rows.append(
                    [what, model]
                    + [fmt(v, digits, scale) for v in found]
                    + [fmt(ratios(results, model, *path), 2)]
                )
    plan, standin = results["plan"], results["standin"]
    where = (
        f"skipped: {standin['skipped']}"
        if standin["skipped"]
        else f"{standin['settings']}; a fresh mount per cold start, "
        f"models: {', '.join(plan['standin_models'])}"
    )
    return f"""## Text models (issue 13)

lambdatorch's Python handler (`lambdatorch.handler.lambda_handler`) against the one people write
(`bench/function/transformers_handler.py`: `import torch, transformers`, a fast tokenizer from the
same `tokenizer.json`, `torch.jit.load`), each called directly in a fresh `python -S` that sees only
the tree, on the fixtures' tiny BERTs (2 layers of 32 units, so that the overhead shows). Cold
start: process start to the first answer (one text). Warm: {plan["rounds"]} requests per batch size
and run; total is the handler call, forward its `timings_ms.inference` (forward pass and output
head in both), overhead the difference per request; the sentences are
{len(results["sentences"])} short ones, repeated. {plan["runs"]} runs, median (min-max); ratios
lambdatorch / transformers within each run. EFS stand-in: {where}.

{table(["issue 13 target", "model", "lambdatorch / transformers", ""], targets(results))}

{table(["figure", "model", *HANDLERS, "ratio"], rows)}
"""


def summary(results: dict[str, Any]) -> str:
    if not results.get("runs"):
        return "targets (issue 13): not run"
    return "\n".join(
        ["targets (issue 13):"] + [f"  {r[0]} ({r[1]}): {r[2]} {r[3]}" for r in targets(results)]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: one run, few requests")
    parser.add_argument("--out", type=Path, default=WORK)
    args = parser.parse_args()
    tree = build(WORK)
    logs = WORK / ("logs-quick" if args.quick else "logs")
    logs.mkdir(parents=True, exist_ok=True)
    prepare(tree)
    if not unavailable():  # as `make bench` does first: the pages a lambdatorch start touches
        record_pages(tree, logs / "record-pages.log")
    results = run(tree, args.quick, logs)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "text.json").write_text(json.dumps(results, indent=1) + "\n")
    preface = f"`python -m bench.text`, run {results['date']} on {os.cpu_count()} CPUs.\n\n"
    (args.out / "text.md").write_text(section(results).replace("\n\n", "\n\n" + preface, 1))
    print(summary(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
