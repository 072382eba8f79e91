"""Turn results.json into report.md and report.png.

Every figure is the median over runs with the min-max range; a ratio between two contenders is
computed within each run first (both measured minutes apart, in the same machine state), then
summarised the same way. Targets come from issues 5, 6, 11 and 16.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from . import aoti, concurrency, text
from .contenders import CONTENDERS
from .efs import Settings
from .preprocess import RESIZE
from .sessions import BATCH, WARM_SIZES, WARMUP
from .tree import MODELS, SIZES_MP, TIMED_PHOTO

TORCH, PY, NATIVE = NAMES = tuple(c.name for c in CONTENDERS)
MIB = 2**20
EFS_DOC = "https://docs.aws.amazon.com/efs/latest/ug/performance.html"
BURST_NEWS = (
    "https://aws.amazon.com/about-aws/whats-new/2020/06/"
    "amazon-efs--increases-file-system-minimum-throughput/"
)
# The EFS model's assumptions, explained (and sourced) in the report's EFS section.
LATENCIES_S = (0.25e-3, 1e-3)
THROUGHPUTS = (1500 * MIB, 100 * MIB)
WARM_FIELDS = ("p50_ms", "p99_ms", "inference_p50_ms", "overhead_p50_ms", "overhead_p99_ms")

Figures = dict[str, Any]  # one contender's figures in one run
Getter = Callable[[Figures], float]
Runs = list[dict[str, Figures]]


# --- numbers -------------------------------------------------------------------------------------
def get(*keys: str) -> Getter:
    """A figure by its path in results.json: ``get("session", "cold_start_s")``."""

    def getter(figures: Figures) -> float:
        value: Any = figures
        for key in keys:
            value = value[key]
        return float(value)

    return getter


COLD_WALL = get("session", "cold_start_s")
COLD_RSS = get("session", "cold_peak_rss_mb")
EFS_CALLS = get("metadata", "efs_calls")
EFS_BYTES = get("pages", "efs_bytes")
CUDA_CALLS = get("metadata", "calls", "cuda")


EFS_WALL = get("efs", "cold_start_s")
EFS_OPS = get("efs", "metadata_ops")
EFS_FAILED = get("efs", "failed_lookups")
EFS_READS = get("efs", "reads")
EFS_READ_BYTES = get("efs", "bytes")


def non_cuda_calls(figures: Figures) -> float:
    """EFS metadata calls minus those on CUDA files: an estimate for the CPU-only torch build."""
    return EFS_CALLS(figures) - CUDA_CALLS(figures)


def modelled_efs(latency: float, throughput: float) -> Getter:
    """Local cold start (warm page cache) + EFS metadata round trips + bytes over the wire."""
    return lambda f: COLD_WALL(f) + EFS_CALLS(f) * latency + EFS_BYTES(f) / throughput


def expected_on_efs(throughput: float) -> Getter:
    """Issue 16's bound: the local cold start plus the bytes read from the stand-in at its
    throughput, as if every round trip were hidden behind the transfer."""
    return lambda f: COLD_WALL(f) + EFS_READ_BYTES(f) / throughput


def per_run(runs: Runs, contender: str, getter: Getter) -> list[float]:
    return [getter(run[contender]) for run in runs]


def ratios(runs: Runs, a: str, b: str, getter: Getter) -> list[float]:
    """``a / b`` within each run."""
    return [getter(run[a]) / getter(run[b]) for run in runs]


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def fmt(values: Iterable[float], digits: int = 0, scale: float = 1) -> str:
    """Median (min-max)."""
    values = [v * scale for v in values]
    mid, low, high = statistics.median(values), min(values), max(values)
    if f"{low:.{digits}f}" == f"{high:.{digits}f}":
        return f"{mid:,.{digits}f}"
    return f"{mid:,.{digits}f} ({low:,.{digits}f}-{high:,.{digits}f})"


def verdict(values: list[float], limit: float) -> str:
    return "**met**" if median(values) <= limit else "**missed**"


# --- markdown ------------------------------------------------------------------------------------
def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def lambda_targets(runs: Runs) -> list[list[str]]:
    """Issue 6's targets: [what, target, median ratio, verdict, the figures compared]."""
    checks: list[tuple[str, str, Getter, float, int]] = [
        (PY, "metadata calls on EFS at cold start", EFS_CALLS, 1 / 100, 0),
        (PY, "cold-start wall (s)", COLD_WALL, 1 / 5, 2),
        (PY, "peak RSS at cold start (MB)", COLD_RSS, 1 / 3, 0),
    ]
    for key in warm_keys():
        overhead = get("session", "warm", key, "overhead_p50_ms")
        checks.append((PY, f"warm overhead p50, {key} (ms)", overhead, 1 / 3, 1))
    checks.append((NATIVE, "cold-start wall (s)", COLD_WALL, 1 / 8, 2))
    rows = []
    for who, what, getter, limit, digits in checks:
        values = ratios(runs, who, TORCH, getter)
        ours, theirs = per_run(runs, who, getter), per_run(runs, TORCH, getter)
        compared = f"{fmt(ours, digits)} vs {fmt(theirs, digits)}"
        ratio = f"1/{1 / median(values):.1f}"
        rows.append(
            [f"{who}: {what}", f"<= 1/{1 / limit:.0f}", ratio, verdict(values, limit), compared]
        )
    return rows


def target_notes(runs: Runs) -> str:
    """What stands behind the cold-start targets, from this run's own figures."""

    def mid(name: str, getter: Getter) -> float:
        return median(per_run(runs, name, getter))

    worst = modelled_efs(LATENCIES_S[-1], THROUGHPUTS[-1])
    notes = [
        f"{PY}: {mid(PY, CUDA_CALLS):,.0f} of its {mid(PY, EFS_CALLS):,.0f} EFS metadata calls are"
        " on the CUDA libraries that PyPI's libtorch_cpu.so links; with CUDA files left out on"
        f" both sides (the CPU-only build) the ratio is"
        f" 1/{1 / median(ratios(runs, PY, TORCH, non_cuda_calls)):.0f}.",
        f"{PY}: peak RSS {mid(PY, COLD_RSS):,.0f} MB before the first response; at the first"
        " response it holds"
        f" {mid(PY, get('session', 'cold_rss_file_mb')):,.0f} MB of mapped files (shared"
        f" libraries) and {mid(PY, get('session', 'cold_rss_anon_mb')):,.0f} MB of heap.",
        "Cold-start wall is measured locally on a warm page cache, where torch-python's"
        f" {mid(TORCH, EFS_CALLS):,.0f} metadata calls cost microseconds each; on EFS (1 ms per"
        f" call, 100 MiB/s) the modelled ratios are"
        f" 1/{1 / median(ratios(runs, PY, TORCH, worst)):.1f} ({PY}) and"
        f" 1/{1 / median(ratios(runs, NATIVE, TORCH, worst)):.1f} ({NATIVE}). lambdatorch's own"
        " start (libtorch, the model's load and warmup) is not broken down further here.",
    ]
    return "\n".join(f"- {note}" for note in notes)


def warm_keys() -> list[str]:
    return [f"{model} {size}" for model in MODELS for size in WARM_SIZES]


def header(results: dict[str, Any]) -> str:
    m, plan = results["machine"], results["plan"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    images = ", ".join(f"{k} {v}" for k, v in results["images"].items())
    quick = "\n**QUICK smoke run: too few runs and requests to conclude anything.**\n"
    command = "make bench QUICK=1" if results["quick"] else "make bench"
    contenders = table(["contender", "what runs"], [[c.name, c.what] for c in CONTENDERS])
    return f"""# lambdatorch benchmark
{quick if results["quick"] else ""}
Generated by `{command}` in {results["seconds"] / 60:.0f} min on {m["date"]}, commit {m["commit"]}.
Machine: {m["cpu"]}, {m["cores"]} cores ({m["usable_cores"]} usable), {m["memory_gb"]:.0f} GB,
Linux {m["kernel"]}, Python {m["python"]}; {versions};
Pillow's libjpeg-turbo {m["libjpeg_turbo"]}; {m["strace"]}.
Each figure is the median of {plan["runs"]} run(s), with min-max.

The contenders share one EFS-style tree (`pip install --target`), the same TorchScript files
(ResNet-18 and MobileNetV3-small: torchvision architectures, random weights) and the same JPEGs
(scikit-image's {TIMED_PHOTO} photo, q90; {images}):

{contenders}

All three poll a local Lambda Runtime API (`bench/runtime_api.py`) that times each invocation as
Lambda bills it; the Python ones run under a minimal Python runtime loop
(`bench/python_runtime.py`) in `python -S`, with only the tree (and for torch-python the handler's
own directory) on their path. `AWS_LAMBDA_FUNCTION_MEMORY_SIZE=2048`: two threads for lambdatorch;
torch uses one per core, also two here. torch is PyPI's CUDA-enabled build, the only one this
machine can fetch; users put the CPU-only build on EFS (see Cold start for the CUDA share).
"""


def cold_start_section(runs: Runs) -> str:
    def row(name: str, *getters: tuple[Getter, int]) -> list[str]:
        return [name] + [fmt(per_run(runs, name, g), digits) for g, digits in getters]

    calls = table(
        [
            "contender",
            "wall (s)",
            "peak RSS (MB)",
            "RSS: mapped files (MB)",
            "RSS: heap (MB)",
            "metadata calls",
            "on EFS",
            "distinct EFS paths",
            "on CUDA files",
        ],
        [
            row(
                n,
                (COLD_WALL, 2),
                (COLD_RSS, 0),
                (get("session", "cold_rss_file_mb"), 0),
                (get("session", "cold_rss_anon_mb"), 0),
                (lambda f: sum(f["metadata"]["calls"].values()), 0),
                (EFS_CALLS, 0),
                (get("metadata", "efs_paths"), 0),
                (CUDA_CALLS, 0),
            )
            for n in NAMES
        ],
    )
    categories = ("libtorch", "cuda", "models", "python")
    pages = table(
        ["contender", "libtorch", "CUDA libraries", "models", "other (Python, numpy...)", "total"],
        [
            [n]
            + [fmt(per_run(runs, n, get("pages", "bytes", k)), 1, 1 / MIB) for k in categories]
            + [fmt(per_run(runs, n, EFS_BYTES), 1, 1 / MIB)]
            for n in NAMES
        ],
    )
    ratio = table(
        [
            "ratio within each run",
            "wall",
            "peak RSS",
            "EFS metadata calls",
            "EFS metadata calls, CUDA files left out",
            "bytes read",
        ],
        [
            [f"{n} / {TORCH}"]
            + [
                fmt(ratios(runs, n, TORCH, g), 4)
                for g in (COLD_WALL, COLD_RSS, EFS_CALLS, non_cuda_calls, EFS_BYTES)
            ]
            for n in (PY, NATIVE)
        ],
    )
    return f"""## Cold start

Fresh process to first response: ResNet-18 is preloaded during init, and the first event (a 0.3 MP
JPEG) is waiting when the process starts, as on Lambda. Wall time and peak RSS come from a session
on a warm page cache; metadata calls from a separate start under `strace -f` (calls that take a
path, and `getdents64`): "on EFS" are those naming a file in the tree, "distinct EFS paths" is the
lower bound if the NFS client cached every lookup. Bytes read come from another start after the
tree's files were evicted from the page cache.

{calls}

MiB read from the tree (page-cache residency after the first response, readahead included):

{pages}

{ratio}

PyPI's torch is CUDA-enabled: the calls "on CUDA files" and the "CUDA libraries" bytes (nvidia/,
triton/, cuda/, libtorch_cuda.so and the like) do not exist in the CPU-only build users put on
EFS, whose libtorch_cpu.so is also smaller. torch-python imports all of it; lambdatorch loads only
what PyPI's libtorch_cpu.so itself links (the CUDA runtime, through its RPATH). Leaving those
calls out estimates the CPU-only build; torch-python's tens of thousands of calls on Python files
remain. "RSS: mapped files" is mostly shared libraries, "heap" the weights and activations.
"""


def efs_section(runs: Runs) -> str:
    scenarios = [(lat, thr) for lat in LATENCIES_S for thr in THROUGHPUTS]
    header = ["contender"] + [
        f"{lat * 1e3:g} ms/op, {thr / MIB:,.0f} MiB/s" for lat, thr in scenarios
    ]
    rows = [[n] + [fmt(per_run(runs, n, modelled_efs(*s)), 2) for s in scenarios] for n in NAMES]
    rows += [
        [f"{n} / {TORCH}"] + [fmt(ratios(runs, n, TORCH, modelled_efs(*s)), 3) for s in scenarios]
        for n in (PY, NATIVE)
    ]
    return f"""## Modelled EFS cold start (seconds)

modelled = local cold-start wall (warm page cache) + metadata calls on EFS x latency per operation
\\+ bytes read from EFS / throughput per client.

Assumptions: AWS's [EFS performance page]({EFS_DOC}) gives about 1 ms per read operation for
Regional file systems in General Purpose mode, and up to 1,500 MiB/s per client with Elastic
throughput. 0.25 ms per operation stands for metadata calls answered faster than reads (One Zone
file systems, server-side caching). 100 MiB/s is the burst rate of a small file system in Bursting
mode ([AWS, 2020]({BURST_NEWS})) and nearer to what one function faulting in pages on demand gets.
Not modelled: the NFS client's attribute and lookup caches, which could merge repeated calls on a
path (see "distinct EFS paths" above); parallel requests; and the round trips of page faults (a
lazily mapped library is read in many small requests, so the throughput term is optimistic).

{table(header, rows)}
"""


def standin_targets(runs: Runs, settings: dict[str, Any]) -> list[list[str]]:
    """Issue 16's targets: [what, target, measured, verdict, the figures compared]."""
    throughput = settings["mib_s"] * MIB
    rows = []
    wall = ratios(runs, PY, TORCH, EFS_WALL)
    rows.append(
        [
            f"{PY}: cold start on the stand-in, against {TORCH}",
            "<= 1/10",
            f"1/{1 / median(wall):.1f}",
            verdict(wall, 1 / 10),
            f"{fmt(per_run(runs, PY, EFS_WALL), 2)} vs {fmt(per_run(runs, TORCH, EFS_WALL), 2)} s",
        ]
    )
    for who in (PY, NATIVE):
        failed = per_run(runs, who, EFS_FAILED)
        rows.append(
            [f"{who}: failed lookups in the tree", "<= 10", fmt(failed), verdict(failed, 10), ""]
        )
        ops = ratios(runs, who, TORCH, EFS_OPS)
        rows.append(
            [
                f"{who}: metadata operations on the tree, against {TORCH}",
                "<= 1/200",
                f"1/{1 / median(ops):.0f}",
                verdict(ops, 1 / 200),
                f"{fmt(per_run(runs, who, EFS_OPS))} vs {fmt(per_run(runs, TORCH, EFS_OPS))}",
            ]
        )
    bound = [EFS_WALL(run[PY]) / expected_on_efs(throughput)(run[PY]) for run in runs]
    rows.append(
        [
            f"{PY}: cold start on the stand-in / (local cold start + bytes / throughput)",
            "<= 1.2",
            f"{median(bound):.2f}",
            verdict(bound, 1.2),
            f"{fmt(per_run(runs, PY, EFS_WALL), 2)} vs "
            f"{fmt(per_run(runs, PY, expected_on_efs(throughput)), 2)} s",
        ]
    )
    return rows


def standin_section(runs: Runs, efs: dict[str, Any]) -> str:
    if efs.get("skipped"):
        return f"## Cold start on the EFS stand-in\n\nSkipped: {efs['skipped']}.\n"
    settings = efs["settings"]
    described = Settings(**settings).describe()
    recorded = Path(efs.get("recorded", "no record")).name
    modelled = modelled_efs(settings["op_ms"] / 1e3, settings["mib_s"] * MIB)
    rows = [
        [
            name,
            fmt(per_run(runs, name, EFS_WALL), 2),
            fmt(per_run(runs, name, COLD_WALL), 2),
            fmt(per_run(runs, name, modelled), 2),
            fmt(per_run(runs, name, lambda f: EFS_WALL(f) / modelled(f)), 2),
            fmt(per_run(runs, name, EFS_OPS)),
            fmt(per_run(runs, name, EFS_FAILED)),
            fmt(per_run(runs, name, EFS_READS)),
            fmt(per_run(runs, name, EFS_READ_BYTES), 0, 1 / MIB),
        ]
        for name in NAMES
    ]
    header = [
        "contender",
        "on the stand-in (s)",
        "local, warm cache (s)",
        "modelled (s)",
        "measured / modelled",
        "metadata operations",
        "failed lookups",
        "reads",
        "MiB read",
    ]
    targets = table(
        ["issue 16 target", "target", "measured", "", "figures compared"],
        standin_targets(runs, settings),
    )
    return f"""## Cold start on the EFS stand-in

Each contender's cold start (ResNet-18 preloaded, first response) from a fresh mount of the tree
through `bench/efs.py`, a FUSE file system (mfusepy on libfuse3) serving the tree at: {described}.
Attributes and failed lookups are cached by the kernel for {settings["cache_s"]:g} s, file contents
for the mount's life; the module's docstring gives AWS's figures behind each setting. Nothing is
cached at the start: every cold start gets a new mount. Before the runs the benchmark did what
`lambdatorch doctor` does on the machine that fills EFS, recording which pages of libtorch one
lambdatorch cold start touched (`{recorded}`), which later cold starts prefetch.

"modelled" is the model below at the stand-in's settings (local wall + metadata calls x
{settings["op_ms"]:g} ms + bytes / {settings["mib_s"]:g} MiB/s), kept as a cross-check; "measured /
modelled" says how far it is from the measurement, within each run. The stand-in counts what
reaches it: the kernel's caches answer repeated lookups, as an NFS client's do.

{table(header, rows)}

{targets}
"""


def warm_section(runs: Runs, plan: dict[str, Any]) -> str:
    latency = table(
        [
            "model, image",
            "contender",
            "p50",
            "p99",
            "inference p50",
            "overhead p50",
            "overhead p99",
        ],
        [
            [key, n]
            + [fmt(per_run(runs, n, get("session", "warm", key, f)), 1) for f in WARM_FIELDS]
            for key in warm_keys()
            for n in NAMES
        ],
    )
    throughput = table(
        ["model", *NAMES],
        [
            [m] + [fmt(per_run(runs, n, get("session", "throughput_ips", m)), 1) for n in NAMES]
            for m in MODELS
        ],
    )
    memory = table(
        ["contender", "RSS (MB)", "peak RSS (MB)"],
        [
            [n]
            + [
                fmt(per_run(runs, n, get("session", f)))
                for f in ("steady_rss_mb", "steady_peak_rss_mb")
            ]
            for n in NAMES
        ],
    )
    steady = runs[0][TORCH]["session"]["steady_requests"]
    return f"""## Warm latency (ms)

{plan["requests"]} timed requests per model and image, after {WARMUP} warm-up requests; the JPEG is
sent base64-encoded in a direct invoke. Total is the billed duration: from the Runtime API handing
out the event to the response arriving (event parsing, base64, decode, preprocessing, inference,
response). Inference is the handler's own timing of the forward pass and the output head, softmax
and top-k (`timings_ms.inference`; the torch-python handler times the same span). Overhead is
total minus inference, per request.

{latency}

## Throughput (images/s, batches of {BATCH})

{plan["batches"]} batches of {BATCH} copies of the 0.3 MP JPEG per model (eight 3 MP JPEGs would
not fit in Lambda's 6 MB request), counted in images per billed second.

{throughput}

## Memory at steady state

Resident memory after {steady:,} requests (both models loaded, every request shape seen).

{memory}
"""


def preprocess_targets(times: dict[str, dict[str, list[float]]]) -> list[list[str]]:
    """Issue 5's targets: [what, median ratio, verdict]."""
    checks = []
    for size in ("3MP", "12MP"):
        checks += [
            (
                f"exact <= 1.25x OpenCV full decode, {size}",
                "lambdatorch exact",
                "floor: OpenCV decode",
                size,
                1.25,
            ),
            (
                f"fast <= 1.15x Pillow draft decode, {size}",
                "lambdatorch fast",
                "floor: Pillow draft decode",
                size,
                1.15,
            ),
        ]
    for size in SIZES_MP:
        checks += [
            (f"exact faster than OpenCV, {size}", "lambdatorch exact", "OpenCV", size, 1.0),
            (
                f"fast no slower than Pillow draft + torchvision, {size}",
                "lambdatorch fast",
                "Pillow draft + torchvision",
                size,
                1.0,
            ),
        ]
    rows = []
    for what, a, b, size, limit in checks:
        values = [x / y for x, y in zip(times[size][a], times[size][b], strict=True)]
        rows.append([what, fmt(values, 2), verdict(values, limit)])
    return rows


def preprocess_section(pre: dict[str, Any], images: dict[str, str]) -> str:
    times = pre["times_ms"]
    methods = list(times[next(iter(SIZES_MP))])
    sizes = [f"{s} ({images[s]}; 1/{pre['fast_scale'][s]})" for s in SIZES_MP]
    timing = table(
        ["ms per image", *sizes], [[m] + [fmt(times[s][m], 2) for s in SIZES_MP] for m in methods]
    )
    targets = table(["issue 5 target", "ratio", ""], preprocess_targets(times))
    acc = pre["fast_vs_exact"]
    deviation = table(
        ["size", "max abs difference", "mean abs difference"],
        [[s, f"{acc['max_abs'][s]:.3f}", f"{acc['mean_abs'][s]:.4f}"] for s in SIZES_MP],
    )
    agree = ", ".join(f"{m} {k}/{acc['images']}" for m, k in acc["top1_agree"].items())
    return f"""## Preprocessing: JPEG to a 224x224 ImageNet tensor, one thread

Issue 5's benchmark. scikit-image's {TIMED_PHOTO} photo, resized and saved as JPEG q90 at each
size; resize of the shorter side to {RESIZE}, center crop, scaling and normalization. One thread
(`OMP_NUM_THREADS=1`, `torch.set_num_threads(1)`, `cv2.setNumThreads(1)`). Median of {pre["runs"]}
runs (min-max), a run's figure being the median of its iterations; the methods take turns within
a run. "1/n" is the JPEG scale the fast path picks (largest of 1/2, 1/4, 1/8 keeping the shorter
side >= {RESIZE}); the Pillow draft rows decode at that scale. OpenCV resizes with `INTER_AREA`
(antialiased, like torchvision). The floors decode only.

{timing}

{targets}

`decode: "fast"` against `"exact"` on {acc["images"]} images ({", ".join(acc["photos"])}, each at
0.3, 3 and 12 MP), in normalized units (one 8-bit level is about 0.017):

{deviation}

Top-1 agreement, fast vs exact: {agree} (random-weight models, whose classes lie closer together
than a trained model's, so this is a strict test).
"""


def summary(results: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    lines = ["targets (issue 6):"]
    lines += [
        f"  {r[0]}: {r[2]} (target {r[1]}) {r[3].strip('*')}"
        for r in lambda_targets(results["runs"])
    ]
    efs = results.get("efs", {"skipped": "not run"})
    if efs.get("skipped"):
        lines += [f"EFS stand-in: skipped ({efs['skipped']})"]
    else:
        lines += ["targets (issue 16, EFS stand-in):"]
        lines += [
            f"  {r[0]}: {r[2]} (target {r[1]}) {r[3].strip('*')}"
            for r in standin_targets(results["runs"], efs["settings"])
        ]
    lines += ["targets (issue 5):"]
    lines += [
        f"  {r[0]}: {r[1]} {r[2].strip('*')}"
        for r in preprocess_targets(results["preprocess"]["times_ms"])
    ]
    lines += [aoti.summary(results.get("aoti", {}))]
    lines += [concurrency.summary(results.get("concurrency", {}))]
    lines += [text.summary(results.get("text", {}))]
    return "\n".join(lines)


def write(results: dict[str, Any], out: Path) -> None:
    runs = results["runs"]
    targets = table(
        ["issue 6 target (against torch-python)", "target", "median ratio", "", "figures compared"],
        lambda_targets(runs),
    )
    sections = [
        header(results),
        f"## Targets\n\n{targets}\n\n{target_notes(runs)}\n\n![benchmark plots](report.png)\n",
        cold_start_section(runs),
        standin_section(runs, results.get("efs", {"skipped": "not run"})),
        efs_section(runs),
        warm_section(runs, results["plan"]),
        preprocess_section(results["preprocess"], results["images"]),
        aoti.section(results.get("aoti", {})),
        concurrency.section(results.get("concurrency", {})),
        text.section(results.get("text", {})),
    ]
    (out / "report.md").write_text("\n".join(sections))
    plot(results, out / "report.png")


# --- plot ----------------------------------------------------------------------------------------
COLORS = ("#c44e52", "#4c72b0", "#55a868")


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["runs"]
    fig, axes = plt.subplots(2, 3, figsize=(16, 9.5))
    bars(axes[0, 0], runs, COLD_WALL, "Cold start, local (warm page cache)", "s")
    bars(
        axes[0, 1], runs, EFS_CALLS, "Metadata calls on EFS at cold start", "calls (log)", log=True
    )
    efs_bars(axes[0, 2], runs)
    warm_bars(axes[1, 0], runs)
    bars(axes[1, 1], runs, COLD_RSS, "Peak RSS at cold start", "MB")
    preprocess_bars(axes[1, 2], results["preprocess"]["times_ms"])
    quick = " (QUICK smoke run)" if results["quick"] else ""
    m = results["machine"]
    fig.suptitle(f"lambdatorch benchmark{quick}: {m['cpu']}, {m['cores']} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def bars(ax: Any, runs: Runs, getter: Getter, title: str, unit: str, log: bool = False) -> None:
    values = [per_run(runs, n, getter) for n in NAMES]
    mids = [median(v) for v in values]
    errors = [
        [m - min(v) for m, v in zip(mids, values, strict=True)],
        [max(v) - m for m, v in zip(mids, values, strict=True)],
    ]
    ax.bar(NAMES, mids, yerr=errors, color=COLORS, capsize=4)
    for i, mid in enumerate(mids):
        label = f"{mid:,.0f}" if mid >= 100 else f"{mid:.3g}"
        ax.annotate(label, (i, mid), ha="center", va="bottom", fontsize=9)
    ax.set_title(title)
    ax.set_ylabel(unit)
    ax.set_yscale("log" if log else "linear")
    ax.tick_params(axis="x", labelsize=8)


def efs_bars(ax: Any, runs: Runs) -> None:
    """Stacked: local wall, metadata calls, bytes; best and worst assumptions side by side."""
    width = 0.38
    scenarios = ((LATENCIES_S[0], THROUGHPUTS[0]), (LATENCIES_S[-1], THROUGHPUTS[-1]))
    for j, (latency, throughput) in enumerate(scenarios):
        for i, n in enumerate(NAMES):
            parts = [
                median(per_run(runs, n, COLD_WALL)),
                median(per_run(runs, n, EFS_CALLS)) * latency,
                median(per_run(runs, n, EFS_BYTES)) / throughput,
            ]
            x, bottom = i + (j - 0.5) * width, 0.0
            for part, alpha, hatch in zip(parts, (1, 0.55, 0.3), ("", "//", ".."), strict=True):
                ax.bar(x, part, width, bottom=bottom, color=COLORS[i], alpha=alpha, hatch=hatch)
                bottom += part
            label = f"{bottom:.1f}\n{latency * 1e3:g} ms\n{throughput / MIB:,.0f} MiB/s"
            ax.annotate(label, (x, bottom), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(NAMES)), NAMES, fontsize=8)
    ax.set_title("Modelled EFS cold start: local + metadata (//) + bytes (..)")
    ax.set_ylabel("s")
    ax.margins(y=0.3)


def warm_bars(ax: Any, runs: Runs) -> None:
    keys, width = warm_keys(), 0.27
    for i, n in enumerate(NAMES):
        total = [median(per_run(runs, n, get("session", "warm", k, "p50_ms"))) for k in keys]
        inference = [
            median(per_run(runs, n, get("session", "warm", k, "inference_p50_ms"))) for k in keys
        ]
        overhead = [t - f for t, f in zip(total, inference, strict=True)]
        x = [k + (i - 1) * width for k in range(len(keys))]
        ax.bar(x, inference, width, color=COLORS[i], label=n)
        ax.bar(x, overhead, width, bottom=inference, color=COLORS[i], alpha=0.4)
    ax.set_xticks(range(len(keys)), [k.replace(" ", "\n") for k in keys], fontsize=8)
    ax.set_title("Warm latency p50: inference (solid) + overhead (light)")
    ax.set_ylabel("ms")
    ax.legend(fontsize=8)


def preprocess_bars(ax: Any, times: dict[str, dict[str, list[float]]]) -> None:
    import matplotlib.pyplot as plt

    sizes = list(SIZES_MP)
    methods = list(times[sizes[0]])
    width = 0.8 / len(methods)
    for i, m in enumerate(methods):
        x = [s + (i - len(methods) / 2 + 0.5) * width for s in range(len(sizes))]
        hatch = "//" if m.startswith("floor") else None
        ys = [median(times[s][m]) for s in sizes]
        ax.bar(x, ys, width, label=m, color=plt.get_cmap("tab10")(i), hatch=hatch)
    ax.set_xticks(range(len(sizes)), sizes)
    ax.set_yscale("log")
    ax.set_title("Preprocessing to a 224x224 tensor, one thread")
    ax.set_ylabel("ms per image (log)")
    ax.legend(fontsize=7)
