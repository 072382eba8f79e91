"""One session per contender and run: a Lambda execution environment's life, from cold start on.

1. cold start: the process starts with the first event (ResNet-18, 0.3 MP) already waiting; wall
   time to its response, and the peak RSS at that moment;
2. warm latency: for each model and image size, a few warm-up requests, then ``requests`` timed
   ones; per request the billed duration (total) and the handler's own inference time;
3. throughput: batches of 8 images (0.3 MP: eight 3 MP photos would exceed Lambda's 6 MB payload);
4. steady state: more 0.3 MP requests until ``steady_after`` in all, then the resident memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .contenders import PRELOADED, Contender, event, running
from .tree import MODELS, Tree

BATCH = 8
WARMUP = 3  # per configuration: TorchScript's profiling executor optimises on the first calls


@dataclass(frozen=True)
class Plan:
    requests: int  # timed warm requests per model and image size
    batches: int  # timed batches per model
    steady_after: int  # requests in all before the steady-state memory reading


FULL = Plan(requests=200, batches=20, steady_after=1000)
QUICK = Plan(requests=5, batches=2, steady_after=50)
WARM_SIZES = ("0.3MP", "3MP")


def session(contender: Contender, tree: Tree, plan: Plan, log: Path) -> dict[str, Any]:
    images = {size: tree.image(size).read_bytes() for size in WARM_SIZES}
    with running(contender, tree, log) as handler:
        cold_s = handler.cold_start(event(PRELOADED, images["0.3MP"]))
        result: dict[str, Any] = {
            "cold_start_s": cold_s,
            "cold_peak_rss_mb": handler.memory_mb("VmHWM"),
            "cold_rss_file_mb": handler.memory_mb("RssFile"),  # mapped files: libraries mostly
            "cold_rss_anon_mb": handler.memory_mb("RssAnon"),  # heap: weights, activations
        }
        sent = 1

        def timed(payload: bytes, count: int) -> tuple[list[float], list[float]]:
            nonlocal sent
            totals, inferences = [], []
            for i in range(WARMUP + count):
                invocation = handler.invoke(payload)
                sent += 1
                if i >= WARMUP:
                    totals.append(invocation.seconds * 1e3)
                    inferences.append(invocation.json()["timings_ms"]["inference"])
            return totals, inferences

        result["warm"] = {}
        for model in MODELS:
            for size, image in images.items():
                totals, inferences = timed(event(model, image), plan.requests)
                result["warm"][f"{model} {size}"] = latency_summary(totals, inferences)
        result["throughput_ips"] = {}
        for model in MODELS:
            totals, _ = timed(event(model, images["0.3MP"], BATCH), plan.batches)
            result["throughput_ips"][model] = BATCH * len(totals) / (sum(totals) / 1e3)
        small = event(PRELOADED, images["0.3MP"])
        while sent < plan.steady_after:
            handler.invoke(small)
            sent += 1
        result["steady_requests"] = sent
        result["steady_rss_mb"] = handler.memory_mb("VmRSS")
        result["steady_peak_rss_mb"] = handler.memory_mb("VmHWM")
    return result


def latency_summary(totals: list[float], inferences: list[float]) -> dict[str, float]:
    total, inference = np.array(totals), np.array(inferences)
    overhead = total - inference
    return {
        "p50_ms": float(np.percentile(total, 50)),
        "p99_ms": float(np.percentile(total, 99)),
        "inference_p50_ms": float(np.percentile(inference, 50)),
        "overhead_p50_ms": float(np.percentile(overhead, 50)),
        "overhead_p99_ms": float(np.percentile(overhead, 99)),
        "requests": len(totals),
    }
