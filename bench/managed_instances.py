"""``python -m bench.managed_instances [--model NAME] [--counts 1,2,4]``: memory of the Python
handler when Lambda Managed Instances runs one process per concurrent request.

On Managed Instances the Python runtime serves each concurrent request from its own interpreter
process, each with its own init (AWS: "Python runtime for Lambda Managed Instances"). This starts
N such processes at once, each a fresh ``python -S -P`` whose only import path is an EFS-like
tree's ``python/``, each importing ``lambdatorch.handler`` with ``LAMBDATORCH_PRELOAD`` set and
answering one request. While all N are alive (a process that waits on stdin after answering), it
reads ``/proc/PID/smaps_rollup`` of each and, from ``/proc/PID/smaps``, splits each one's memory
by what it maps: libtorch (``torch/lib``), lambdatorch's extension, numpy, other files (the
interpreter, libc, ...) and anonymous memory (heap: the loaded model's weights, allocator arenas,
Python objects).

Pss divides each shared page among the processes that map it, so the sum of Pss over the N
processes is what the N of them cost together; Rss counts shared pages in full in every process.

The tree is a fresh one in a temporary directory, laid out by
``scripts/local_lambda.install_python`` (the wheel in dist/) with a copy of libtorch of its own
(see ``tree``), or ``--tree DIR``. Models come from ``target/fixtures/models``. Prints Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from scripts.local_lambda import FUNCTION_ENV, REPO, install_python

MODELS = REPO / "target" / "fixtures" / "models"
IMAGE = REPO / "target" / "fixtures" / "images" / "chelsea.jpg"
KIB = 1024

# What each worker runs: the handler's import is Lambda's init phase, then one request, then it
# stays alive (as a Managed Instances worker does between requests) until told to exit.
CHILD = """
import base64, json, os, sys, time
t0 = time.perf_counter()
import lambdatorch.handler as handler
t1 = time.perf_counter()
with open(os.environ["BENCH_IMAGE"], "rb") as f:
    event = {"image": base64.b64encode(f.read()).decode()}
out = handler.lambda_handler(event, None)
t2 = time.perf_counter()
print(json.dumps({"model": out["model"], "label": out["predictions"][0]["label"],
                  "init_s": t1 - t0, "request_s": t2 - t1}), flush=True)
sys.stdin.readline()
"""

# smaps fields summed per category (kB in /proc, MiB in the report).
FIELDS = ("Rss", "Pss", "Shared_Clean", "Shared_Dirty", "Private_Clean", "Private_Dirty")
CATEGORIES = ("libtorch", "lambdatorch", "numpy", "other files", "anonymous")


def category(path: str) -> str:
    """What a mapping is, from its path in ``/proc/PID/smaps``."""
    if not path.startswith("/"):
        return "anonymous"  # [heap], [stack], [anon:...] and unnamed mappings
    name = path.rsplit("/", 1)[-1]
    if "/torch/lib/" in path or name.startswith(("libtorch", "libc10", "libgomp")):
        return "libtorch"
    if "/lambdatorch/" in path:
        return "lambdatorch"
    if "/numpy/" in path or "/numpy.libs/" in path:
        return "numpy"
    return "other files"


def read_smaps(pid: int) -> dict[str, dict[str, int]]:
    """kB per category and field of one process, from ``/proc/PID/smaps``."""
    totals = {c: dict.fromkeys(FIELDS, 0) for c in CATEGORIES}
    current = totals["anonymous"]
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head, _, rest = line.partition(" ")
        if "-" in head and not head.endswith(":"):  # a mapping's header: addresses perms ... path
            parts = line.split(maxsplit=5)
            current = totals[category(parts[5] if len(parts) > 5 else "")]
        elif head.endswith(":") and head[:-1] in FIELDS:
            current[head[:-1]] += int(rest.split()[0])
    return totals


def read_rollup(pid: int) -> dict[str, int]:
    """kB per field of one process, from ``/proc/PID/smaps_rollup``."""
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, value = line.partition(":")
        if key in FIELDS:
            out[key] = int(value.split()[0])
    return out


#: What of torch a tree needs: its version file and the libraries the handler loads.
TORCH_FILES = (
    "version.py",
    "lib/libtorch_cpu.so",
    "lib/libc10.so",
    "lib/libgomp.so.1",
    "lib/libtorch.so",
)


@contextmanager
def tree(existing: Path | None) -> Iterator[Path]:
    """An EFS-like tree's ``python/``: ``existing`` as it is, else a fresh one whose libtorch is a
    copy of its own.

    A copy, not the venv's torch that ``install_python`` links: page-cache pages belong to a
    file, and Pss splits them among every process on the machine that maps that file. Sharing
    the venv's libtorch with whatever else runs here would make each worker's share look smaller
    than the N workers alone make it. (The nvidia libraries PyPI's libtorch_cpu.so needs stay
    linked from the venv; the CPU-only build on EFS has none.)
    """
    if existing is not None:
        yield existing
        return
    with tempfile.TemporaryDirectory(prefix="lambdatorch-mi-") as tmp:
        python_dir = install_python(Path(tmp))
        venv_torch = (python_dir / "torch").resolve()
        (python_dir / "torch").unlink()
        for name in TORCH_FILES:
            (python_dir / "torch" / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(venv_torch / name, python_dir / "torch" / name)
            # Written back, so that its pages in the page cache are clean, as a tree's are.
            fd = os.open(python_dir / "torch" / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        yield python_dir


def measure(python_dir: Path, model: str, count: int) -> list[dict[str, object]]:
    """Start ``count`` workers at once; the memory of each while all are alive."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        **FUNCTION_ENV,
        "PYTHONPATH": str(python_dir),
        "LAMBDATORCH_MODELS": str(MODELS),
        "LAMBDATORCH_PRELOAD": model,
        "LAMBDATORCH_DEFAULT_MODEL": model,
        "BENCH_IMAGE": str(IMAGE),
    }
    # stderr: the core's JSON log line per request, and a traceback if the worker fails.
    logs = [tempfile.TemporaryFile(mode="w+") for _ in range(count)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-S", "-P", "-c", CHILD],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        for log in logs
    ]
    try:
        answers = []
        for proc, log in zip(procs, logs, strict=True):
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line:
                status = proc.wait()
                log.seek(0)
                raise RuntimeError(f"worker exited with {status} before answering:\n{log.read()}")
            answers.append(json.loads(line))
        time.sleep(0.2)  # let the last answer's buffers settle
        rows = []
        for proc, answer in zip(procs, answers, strict=True):
            rows.append(
                {
                    "pid": proc.pid,
                    **answer,
                    "rollup": read_rollup(proc.pid),
                    "by": read_smaps(proc.pid),
                }
            )
        return rows
    finally:
        for proc in procs:
            if proc.stdin is not None:
                proc.stdin.close()  # EOF: the worker's readline returns and it exits
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()


def mib(kb: float) -> str:
    return f"{kb / KIB:.0f}"


def report(model: str, results: dict[int, list[dict]]) -> str:
    lines = [
        f"Model `{model}`, one request each; MiB per process (mean over the N processes).",
        "",
        "| N | Rss | Pss | Shared_Clean | Private_Clean | Private_Dirty | sum of Pss | N x Rss |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for count, rows in results.items():
        mean = {k: sum(r["rollup"][k] for r in rows) / count for k in FIELDS}
        total_pss = sum(r["rollup"]["Pss"] for r in rows)
        total_rss = sum(r["rollup"]["Rss"] for r in rows)
        lines.append(
            f"| {count} | {mib(mean['Rss'])} | {mib(mean['Pss'])} | {mib(mean['Shared_Clean'])} "
            f"| {mib(mean['Private_Clean'])} | {mib(mean['Private_Dirty'])} | {mib(total_pss)} "
            f"| {mib(total_rss)} |"
        )
    lines += [
        "",
        "By mapping, mean per process, MiB: Rss / Pss / shared (clean + dirty) / private.",
        "",
        "| N | " + " | ".join(CATEGORIES) + " |",
        "|---|" + "---|" * len(CATEGORIES),
    ]
    for count, rows in results.items():
        cells = []
        for cat in CATEGORIES:
            mean = {k: sum(r["by"][cat][k] for r in rows) / count for k in FIELDS}
            shared = mean["Shared_Clean"] + mean["Shared_Dirty"]
            private = mean["Private_Clean"] + mean["Private_Dirty"]
            cells.append(
                f"{mib(mean['Rss'])} / {mib(mean['Pss'])} / {mib(shared)} / {mib(private)}"
            )
        lines.append(f"| {count} | " + " | ".join(cells) + " |")
    timings = [r for rows in results.values() for r in rows]
    init = sorted(r["init_s"] for r in timings)
    lines += [
        "",
        f"Init (import lambdatorch.handler, preload) {init[0]:.2f}-{init[-1]:.2f} s over "
        f"{len(init)} workers; every worker answered `{timings[0]['label']}`.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mobilenet", help="fixture model to preload")
    parser.add_argument("--counts", default="1,2,4", help="numbers of concurrent workers")
    parser.add_argument(
        "--tree",
        type=Path,
        help="an existing tree's python/ (e.g. .efs/python); default: a fresh one",
    )
    args = parser.parse_args()
    if not (MODELS / args.model / "manifest.json").exists():
        sys.exit(f"no model {args.model} in {MODELS}: run `make fixtures`")
    counts = [int(c) for c in args.counts.split(",")]
    with tree(args.tree) as python_dir:
        # One run first, not measured: the page cache then holds the tree for every N alike.
        measure(python_dir, args.model, 1)
        results = {count: measure(python_dir, args.model, count) for count in counts}
    print(report(args.model, results))


if __name__ == "__main__":
    main()
