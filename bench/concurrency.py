"""``python -m bench.concurrency [--quick] [--out DIR]``: the native handler under many requests.

Part of ``make bench`` (its "Many requests at once" section); run alone, it writes its own report.

Issue 14's measurements, on the benchmark's EFS tree (``tree.py``: ResNet-18 and MobileNetV3-small
with random weights, photos at 0.3 MP), with ``bootstrap`` polling the benchmark's Runtime API
(``runtime_api.py``, which hands events to every poller at once, as Lambda Managed Instances do):

- throughput (images per second) and p50/p99 latency, as Lambda bills them, at concurrency 1, 2, 4,
  8 and 16, for the sequential handler (no ``AWS_LAMBDA_MAX_CONCURRENCY``: requests wait in
  Lambda's queue) against the concurrent one with batching (``AWS_LAMBDA_MAX_CONCURRENCY`` = the
  concurrency, ``LAMBDATORCH_BATCH_DELAY_MS`` = 2; one forward lane per CPU);
- resident memory with 1, 2 and 4 models loaded, and while requests cycle through 4 models under
  a model cache (``LAMBDATORCH_MODEL_CACHE_MB``) that holds the first 2 as they measured resident:
  it must stay within the cache plus the process's base, +10%.

Alone, writes DIR/concurrency.json and DIR/concurrency.md (DIR: target/bench); bench/concurrency.md
is such a run, kept until a full ``make bench`` reports the section in bench/report.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from scripts.local_lambda import FUNCTION_ENV, REPO

from .contenders import BOOTSTRAP, event
from .runtime_api import RuntimeAPI, RuntimeFailure
from .tree import Tree, build

WORK = REPO / "target" / "bench"
LEVELS = (1, 2, 4, 8, 16)
DELAY_MS = 2
MODELS = ("resnet18", "mobilenet", "resnet18-fast", "mobilenet-fast")


class Handler:
    """``bootstrap`` on its own Runtime API, with `env` on top of Lambda's."""

    def __init__(self, tree: Tree, env: dict[str, str], log: Path) -> None:
        self.api = RuntimeAPI()
        self.log = log.open("w")
        self.process = subprocess.Popen(
            [str(BOOTSTRAP)],
            env={
                "PATH": os.environ["PATH"],
                **FUNCTION_ENV,
                "AWS_LAMBDA_RUNTIME_API": self.api.address,
                "LAMBDATORCH_MODELS": str(tree.models),
                "LAMBDATORCH_LIBTORCH": str(tree.python / "torch" / "lib"),
                **env,
            },
            stdout=self.log,
            stderr=self.log,
        )

    def invoke(self, payload: bytes) -> float:
        """Billed seconds of one invocation."""
        return self.api.invoke(payload, lambda: self.process.poll() is None).seconds

    def rss_mb(self) -> float:
        """Resident memory of the handler (bootstrap execs it: same pid)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.api.close()
        self.log.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def load(tree: Tree, model: str, concurrent: int, requests: int, log: Path) -> dict[str, Any]:
    """Throughput and latency of `requests` invokes kept `concurrent` at a time."""
    env = {"LAMBDATORCH_PRELOAD": model}
    if concurrent:
        env |= {
            "AWS_LAMBDA_MAX_CONCURRENCY": str(concurrent),
            "LAMBDATORCH_BATCH_DELAY_MS": str(DELAY_MS),
        }
    handler = Handler(tree, env, log)
    try:
        payload = event(model, tree.image("0.3MP").read_bytes())
        for _ in range(5):
            handler.invoke(payload)
        level = max(concurrent, 1)
        started = time.perf_counter()
        with ThreadPoolExecutor(level) as pool:
            seconds = list(pool.map(lambda _: handler.invoke(payload), range(requests)))
        elapsed = time.perf_counter() - started
    finally:
        handler.close()
    return {
        "images_per_s": requests / elapsed,
        "p50_ms": percentile(seconds, 0.5) * 1e3,
        "p99_ms": percentile(seconds, 0.99) * 1e3,
    }


def memory(tree: Tree, requests: int, log: Path) -> dict[str, Any]:
    """RSS with 1, 2, 4 models loaded; then cycling through 4 under a cache of 2."""
    sizes = {m: (tree.models / m / "model.pt").stat().st_size / 2**20 for m in MODELS}
    image = tree.image("0.3MP").read_bytes()
    out: dict[str, Any] = {"model_mb": sizes}
    base = Handler(tree, {}, log)
    try:
        # Served, but by no model: libtorch linked and the runtime up, nothing loaded.
        with contextlib.suppress(RuntimeFailure):
            base.invoke(event("no-such-model", image))
        out["base_mb"] = base.rss_mb()
    finally:
        base.close()
    for count in (1, 2, 4):
        handler = Handler(tree, {"LAMBDATORCH_PRELOAD": ",".join(MODELS[:count])}, log)
        try:
            for model in MODELS[:count]:
                handler.invoke(event(model, image))
            out[f"rss_{count}_models_mb"] = handler.rss_mb()
        finally:
            handler.close()
    # Room for two models as they really sit in memory (the cache charges resident growth).
    cache = int(out["rss_2_models_mb"] - out["base_mb"]) + 1
    handler = Handler(tree, {"LAMBDATORCH_MODEL_CACHE_MB": str(cache)}, log)
    peak = 0.0
    try:
        for i in range(requests):
            handler.invoke(event(MODELS[i % len(MODELS)], image))
            peak = max(peak, handler.rss_mb())
    finally:
        handler.close()
    out |= {"cache_mb": cache, "cycling_peak_rss_mb": peak}
    return out


def run(tree: Tree, quick: bool, logs: Path) -> dict[str, Any]:
    """Throughput and latency at each concurrency, then memory; the results."""
    logs.mkdir(parents=True, exist_ok=True)
    requests = 16 if quick else 160
    models = ("mobilenet",) if quick else ("resnet18", "mobilenet")
    levels = (1, 8) if quick else LEVELS
    results: dict[str, Any] = {
        "quick": quick,
        "requests": requests,
        "delay_ms": DELAY_MS,
        "models": list(models),
        "levels": list(levels),
    }
    for model in models:
        for level in levels:
            for mode, concurrent in (("sequential", 0), ("batching", level)):
                key = f"{model}/{mode}/{level}"
                results[key] = load(tree, model, concurrent, requests, logs / "concurrency.log")
                print(
                    f"bench concurrency: {key}",
                    {k: round(v, 1) for k, v in results[key].items()},
                    flush=True,
                )
    results["memory"] = memory(tree, 8 if quick else 40, logs / "concurrency-memory.log")
    return results


def targets(results: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """Issue 14's targets that this run measured: (what, measured, met)."""
    out = []
    model = "resnet18" if "resnet18" in results["models"] else results["models"][0]
    level = 8 if 8 in results["levels"] else max(results["levels"])
    seq, bat = results[f"{model}/sequential/{level}"], results[f"{model}/batching/{level}"]
    alone = results[f"{model}/sequential/1"]["p50_ms"] if 1 in results["levels"] else None
    ratio = bat["images_per_s"] / seq["images_per_s"]
    out.append(
        (
            f"throughput at concurrency {level} with batching, {model}: at least 1.3x sequential",
            f"{ratio:.2f}x",
            ratio >= 1.3,
        )
    )
    if alone:
        # Little's law: with `level` requests always in flight, their mean latency is level / X.
        needed = level / (3 * alone / 1e3)
        out.append(
            (
                f"p99 at concurrency {level}, {model}: at most 3x the single-request p50 "
                f"({3 * alone:.0f} ms)",
                f"{bat['p99_ms']:.0f} ms (a mean of 3x needs {needed:.0f} img/s: "
                f"{needed / seq['images_per_s']:.1f}x sequential)",
                bat["p99_ms"] <= 3 * alone,
            )
        )
    mem = results["memory"]
    bound = mem["cycling_peak_rss_mb"] / (mem["base_mb"] + mem["cache_mb"])
    out.append(
        (
            "memory while cycling 4 models through a cache of 2: at most 1.10x base + cache",
            f"{bound:.2f}x",
            bound <= 1.10,
        )
    )
    return out


def section(results: dict[str, Any]) -> str:
    """The report's section: the table, memory and the targets."""
    if not results.get("models"):
        return "## Many requests at once (native handler)\n\nNot run.\n"
    models, levels = results["models"], results["levels"]
    lines = [
        "## Many requests at once (native handler)",
        "",
        f"{results['requests']} requests of one 0.3 MP photo per cell; billed latency; batching "
        f"delay {results['delay_ms']} ms, one forward lane per CPU. Sequential: no "
        "`AWS_LAMBDA_MAX_CONCURRENCY`.",
        "",
        "| model | concurrency | sequential img/s | batching img/s | ratio | "
        "sequential p50 ms | batching p50 ms | batching p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model in models:
        for level in levels:
            seq, bat = results[f"{model}/sequential/{level}"], results[f"{model}/batching/{level}"]
            lines.append(
                f"| {model} | {level} | {seq['images_per_s']:.1f} | {bat['images_per_s']:.1f} | "
                f"{bat['images_per_s'] / seq['images_per_s']:.2f}x | {seq['p50_ms']:.0f} | "
                f"{bat['p50_ms']:.0f} | {bat['p99_ms']:.0f} |"
            )
    mem = results["memory"]
    lines += [
        "",
        f"Memory: base {mem['base_mb']:.0f} MB (libtorch, no model); "
        + ", ".join(f"{n} models loaded {mem[f'rss_{n}_models_mb']:.0f} MB" for n in (1, 2, 4))
        + f". Cycling through 4 models with a {mem['cache_mb']} MB cache (what the first two "
        f"cost resident): peak {mem['cycling_peak_rss_mb']:.0f} MB.",
        "",
        "| target (issue 14) | measured | |",
        "|---|---|---|",
    ]
    lines += [
        f"| {what} | {measured} | {'met' if met else '**missed**'} |"
        for what, measured, met in targets(results)
    ]
    return "\n".join(lines) + "\n"


def summary(results: dict[str, Any]) -> str:
    if not results.get("models"):
        return "targets (issue 14): not run"
    return "\n".join(
        ["targets (issue 14):"]
        + [
            f"  {what}: {measured} {'met' if met else 'MISSED'}"
            for what, measured, met in targets(results)
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: few requests")
    parser.add_argument("--out", type=Path, default=WORK)
    args = parser.parse_args()
    if not os.access(BOOTSTRAP, os.X_OK):
        raise SystemExit(f"bench: {BOOTSTRAP} is missing: run `make lambda` first")
    results = run(build(WORK), args.quick, WORK / "logs-concurrency")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "concurrency.json").write_text(json.dumps(results, indent=2) + "\n")
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    preface = f"`python -m bench.concurrency`, run {when} on {os.cpu_count()} CPUs.\n\n"
    (args.out / "concurrency.md").write_text(section(results).replace("\n\n", "\n\n" + preface, 1))
    print(summary(results))
    print(f"wrote {args.out / 'concurrency.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
