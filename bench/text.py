"""``python -m bench.text [--quick] [--out DIR]``: text models, lambdatorch against the handler
people write (``import torch, transformers``, a fast tokenizer + ``torch.jit.load``), issue 13.

Not part of ``make bench`` yet. Each handler runs in a fresh ``python -S`` whose only import path
is the venv's site-packages (the stand-in for the EFS tree: torch, transformers and lambdatorch are
all there, so each imports only what it needs). Per model (the fixtures' text classifier and
embedding model, ``make fixtures``) and handler: cold start (process start to the first answer:
imports, load, one text), peak RSS, and warm latency for batches of 1 and 32 sentences, with the
forward pass timed alone so that the overhead (total minus forward) can be compared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("LAMBDATORCH_FIXTURES", REPO / "target" / "fixtures"))
MODELS = FIXTURES / "text" / "models"
SITE = sysconfig.get_paths()["purelib"]

SENTENCES = [
    "The movie was great, and the music even better.",
    "I did not like this at all; the plot made no sense.",
    "Café au lait in Zürich, then sushi in 東京 🤖.",
    "Delivery was late but the support team sorted it out quickly.",
]

# Each child prints one JSON line: its cold start (from its own start), then the warm figures.
CHILD_COMMON = """
import json, resource, sys, time
start = time.perf_counter()
model_dir, sentences, rounds = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
"""

LAMBDATORCH = (
    CHILD_COMMON
    + """
import os
os.environ["LAMBDATORCH_MODELS"] = os.path.dirname(model_dir)
import lambdatorch
name = os.path.basename(model_dir)
def answer(texts):
    t = time.perf_counter()
    reply = lambdatorch.handle({"model": name, "texts": texts})
    total = (time.perf_counter() - t) * 1e3
    return total, reply["timings_ms"]["inference"]
answer(sentences[:1])
cold = (time.perf_counter() - start) * 1e3
"""
)

TRANSFORMERS = (
    CHILD_COMMON
    + """
import torch, transformers
manifest = json.load(open(model_dir + "/manifest.json"))
tok = transformers.PreTrainedTokenizerFast(tokenizer_file=model_dir + "/tokenizer.json")
tok.pad_token = "[PAD]" if tok.convert_tokens_to_ids("[PAD]") is not None else "<pad>"
model = torch.jit.load(model_dir + "/model.pt").eval()
names = manifest["input"]["inputs"]
max_length = manifest["input"]["max_length"]
embedding = manifest["output"]["type"] == "embedding"
def answer(texts):
    t = time.perf_counter()
    batch = tok(texts, padding="longest", truncation=True, max_length=max_length,
                return_tensors="pt", return_token_type_ids=True)
    with torch.no_grad():
        f = time.perf_counter()
        out = model(*(batch[n] for n in names))
        forward = (time.perf_counter() - f) * 1e3
        if embedding:
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (out * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            result = torch.nn.functional.normalize(pooled, p=2, dim=1).tolist()
        else:
            result = torch.softmax(out, 1).topk(min(3, out.shape[1])).values.tolist()
    json.dumps(result)
    return (time.perf_counter() - t) * 1e3, forward
answer(sentences[:1])
cold = (time.perf_counter() - start) * 1e3
"""
)

WARM = """
warm = {}
for size in (1, 32):
    texts = (sentences * 32)[:size]
    totals, forwards = [], []
    for _ in range(rounds):
        total, forward = answer(texts)
        totals.append(total); forwards.append(forward)
    warm[size] = {"totals": totals, "forwards": forwards}
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
loaded = sorted(m for m in ("torch", "transformers") if m in sys.modules)
print(json.dumps({"cold_ms": cold, "peak_rss_mb": peak, "warm": warm, "modules": loaded}))
"""

HANDLERS = {"lambdatorch": LAMBDATORCH + WARM, "transformers": TRANSFORMERS + WARM}


def run(handler: str, model: Path, rounds: int) -> dict:
    began = time.perf_counter()
    out = subprocess.run(
        [
            sys.executable,
            "-S",
            "-c",
            HANDLERS[handler],
            str(model),
            json.dumps(SENTENCES),
            str(rounds),
        ],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], "PYTHONPATH": SITE, "HF_HUB_OFFLINE": "1"},
        timeout=600,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"bench.text: {handler} on {model.name} failed:\n{out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_ms"] = (time.perf_counter() - began) * 1e3
    return result


def summary(result: dict) -> dict:
    warm = {}
    for size, figures in result["warm"].items():
        total = statistics.median(figures["totals"])
        forward = statistics.median(figures["forwards"])
        overheads = [t - f for t, f in zip(figures["totals"], figures["forwards"], strict=True)]
        warm[size] = {
            "total_ms": total,
            "forward_ms": forward,
            "overhead_ms": statistics.median(overheads),
        }
    return {"cold_ms": result["cold_ms"], "peak_rss_mb": result["peak_rss_mb"], "warm": warm}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one run, few rounds")
    parser.add_argument("--out", type=Path, default=REPO / "target" / "bench-text")
    args = parser.parse_args()
    runs, rounds = (1, 5) if args.quick else (3, 30)
    results: dict = {"runs": runs, "rounds": rounds, "models": {}}
    for model in ("text-classifier", "text-embedder"):
        per = {h: [] for h in HANDLERS}
        for run_index in range(runs):
            order = list(HANDLERS) if run_index % 2 == 0 else list(HANDLERS)[::-1]
            for handler in order:
                per[handler].append(summary(run(handler, MODELS / model, rounds)))
        results["models"][model] = per
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "text.json").write_text(json.dumps(results, indent=1) + "\n")
    lines = [
        "| model | handler | cold start ms | peak RSS MB | batch 1 total / overhead ms |"
        " batch 32 total / overhead ms |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for model, per in results["models"].items():
        for handler, rows in per.items():

            def med(key: str, size: str | None = None, rows: list = rows) -> float:
                return statistics.median(r["warm"][size][key] if size else r[key] for r in rows)

            lines.append(
                f"| {model} | {handler} | {med('cold_ms'):.0f} | {med('peak_rss_mb'):.0f} | "
                f"{med('total_ms', '1'):.2f} / {med('overhead_ms', '1'):.2f} | "
                f"{med('total_ms', '32'):.2f} / {med('overhead_ms', '32'):.2f} |"
            )
    (args.out / "text.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
