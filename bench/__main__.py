"""``python -m bench [--quick] [--out DIR]``: run the whole benchmark and write its report.

Writes DIR/results.json (every figure of every run), DIR/report.md and DIR/report.png. Inputs and
logs live in target/bench/. Each run visits the contenders in a rotated order; for each, first the
probes (bytes read, which starts from an evicted page cache, then the strace count, which warms it
again), then the session whose cold start is measured on a warm page cache, as the EFS model wants,
then a cold start on the EFS stand-in (``efs.py``, a fresh FUSE mount of the tree with EFS's
latency and throughput), where ``/dev/fuse`` exists; elsewhere that part is skipped, and said so.
Then AOTInductor against TorchScript (``aoti.py``), the native handler under many requests at
once (``concurrency.py``) and text models against ``transformers`` (``text.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from scripts.local_lambda import REPO

from . import aoti, concurrency, on_efs, report, text
from .contenders import BOOTSTRAP, CONTENDERS
from .efs import unavailable
from .preprocess import ENV as SINGLE_THREAD
from .probes import bytes_read, metadata_calls
from .sessions import FULL, QUICK, session
from .tree import build, describe

WORK = REPO / "target" / "bench"
RUNS = {False: 5, True: 1}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: few runs and requests")
    parser.add_argument("--out", type=Path, default=REPO / "bench")
    args = parser.parse_args()
    if not shutil.which("strace"):
        sys.exit("bench: strace is missing (apt-get install strace)")
    if not os.access(BOOTSTRAP, os.X_OK):
        sys.exit(f"bench: {BOOTSTRAP} is missing: run `make lambda` first")
    began = time.monotonic()
    tree = build(WORK)
    text.prepare(tree)  # before the page record, which runs every model of the tree
    logs = WORK / ("logs-quick" if args.quick else "logs")
    logs.mkdir(parents=True, exist_ok=True)
    plan = QUICK if args.quick else FULL
    results: dict[str, Any] = {
        "machine": machine(),
        "quick": args.quick,
        "plan": vars(plan) | {"runs": RUNS[args.quick]},
        "images": describe(tree),
    }
    skipped = unavailable()
    results["efs"] = {"settings": vars(on_efs.SETTINGS), "skipped": skipped}
    if skipped:
        print(f"bench: skipping the cold starts on the EFS stand-in: {skipped}", flush=True)
    else:  # as `lambdatorch doctor` does on the machine that fills EFS
        results["efs"]["recorded"] = on_efs.record_pages(tree, logs / "record-pages.log")
    print(f"bench: inputs ready ({time.monotonic() - began:.0f} s); preprocessing", flush=True)
    results["preprocess"] = preprocess(args.quick, logs)
    print(f"bench: preprocessing done ({time.monotonic() - began:.0f} s)", flush=True)
    results["runs"] = []
    for run in range(RUNS[args.quick]):
        shift = run % len(CONTENDERS)
        entry = {}
        for contender in CONTENDERS[shift:] + CONTENDERS[:shift]:
            started = time.monotonic()
            figures = {
                "pages": bytes_read(contender, tree, logs),
                "metadata": metadata_calls(contender, tree, logs),
                "session": session(contender, tree, plan, logs / f"{contender.name}.log"),
            }
            if not skipped:
                figures["efs"] = on_efs.cold_start(contender, tree, logs)
            entry[contender.name] = figures
            print(
                f"bench: run {run + 1}: {contender.name:<19} cold start "
                f"{figures['session']['cold_start_s']:.2f} s, "
                f"{figures['metadata']['efs_calls']} EFS metadata calls, "
                f"{figures['pages']['efs_bytes'] / 2**20:.0f} MiB read"
                + (
                    ""
                    if skipped
                    else f"; on the stand-in {figures['efs']['cold_start_s']:.2f} s, "
                    f"{figures['efs']['metadata_ops']} metadata operations "
                    f"({figures['efs']['failed_lookups']} failed lookups), "
                    f"{figures['efs']['reads']} reads, {figures['efs']['bytes'] / 2**20:.0f} MiB"
                )
                + f" ({time.monotonic() - started:.0f} s)",
                flush=True,
            )
        results["runs"].append(entry)
    print(f"bench: AOTInductor against TorchScript ({time.monotonic() - began:.0f} s)", flush=True)
    results["aoti"] = aoti.run(tree, args.quick, logs)
    print(f"bench: many requests at once ({time.monotonic() - began:.0f} s)", flush=True)
    results["concurrency"] = concurrency.run(tree, args.quick, logs)
    print(f"bench: text models ({time.monotonic() - began:.0f} s)", flush=True)
    results["text"] = text.run(tree, args.quick, logs)
    results["seconds"] = time.monotonic() - began
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    report.write(results, args.out)
    print(report.summary(results))
    print(f"bench: wrote {args.out}/report.md and report.png in {results['seconds']:.0f} s")
    return 0


def preprocess(quick: bool, logs: Path) -> dict[str, Any]:
    out = logs / "preprocess.json"
    command = [sys.executable, "-m", "bench.preprocess", str(WORK), str(out)]
    subprocess.run(
        command + ["--quick"] * quick, check=True, cwd=REPO, env={**os.environ, **SINGLE_THREAD}
    )
    return json.loads(out.read_text())


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    versions = {
        name: metadata.version(name)
        for name in (
            "lambdatorch",
            "torch",
            "torchvision",
            "pillow",
            "numpy",
            "opencv-python-headless",
        )
    }
    from PIL import features

    commit = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    strace = subprocess.run(["strace", "-V"], capture_output=True, text=True).stdout.split("\n")[0]
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": versions,
        "libjpeg_turbo": features.version("libjpeg_turbo"),
        "strace": strace,
        "commit": commit,
    }


if __name__ == "__main__":
    sys.exit(main())
