"""Predict the demo's digit images the way a Python Lambda function would, beside the handler
people write today.

lambdatorch: a fresh interpreter with no site-packages and only EFS/python on its path (as Lambda's
`PYTHONPATH=/mnt/efs/python`) imports lambdatorch, loads the model and predicts.
torch: a fresh interpreter imports torch and torchvision, loads the same TorchScript file and
preprocesses with torchvision, as handlers do today.

Each child reports its own import, load and per-image times and its peak resident memory. Both run
on a warm page cache here; on EFS every file the import opens is a network round trip (see bench/).

Usage: python demo/run.py EFS_DIR
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPORT = r"""
import resource
print(json.dumps({
    "import_s": t1 - t0, "load_s": t2 - t1, "results": results,
    "torch_imported": "torch" in sys.modules, "numpy_imported": "numpy" in sys.modules,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
"""

LAMBDATORCH = (
    r"""
import json, sys, time
t0 = time.perf_counter()
import lambdatorch
t1 = time.perf_counter()
model = lambdatorch.load(sys.argv[1] + "/models/digits")
t2 = time.perf_counter()
results = []
for path in sys.argv[2:]:
    with open(path, "rb") as f:
        image = f.read()
    start = time.perf_counter()
    predictions = model.predict(image)
    results.append({
        "image": path.rsplit("/", 1)[-1],
        "predictions": [[p.label, round(p.score, 4)] for p in predictions],
        "ms": round((time.perf_counter() - start) * 1e3, 2),
    })
"""
    + REPORT
)

TORCH = (
    r"""
import json, sys, time
t0 = time.perf_counter()
import torch, torchvision
from PIL import Image
from torchvision.transforms import v2
t1 = time.perf_counter()
model = torch.jit.load(sys.argv[1] + "/models/digits/model.pt")
model.eval()
transform = v2.Compose([v2.PILToTensor(), v2.Resize((32, 32), antialias=True),
                        v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5], [0.5])])
t2 = time.perf_counter()
labels = open(sys.argv[1] + "/models/digits/labels.txt").read().split()
results = []
for path in sys.argv[2:]:
    start = time.perf_counter()
    with torch.no_grad():
        x = transform(Image.open(path).convert("L")).unsqueeze(0)
        top = torch.topk(torch.softmax(model(x), 1)[0], 3)
    results.append({
        "image": path.rsplit("/", 1)[-1],
        "predictions": [[labels[i], round(s, 4)]
                        for s, i in zip(top.values.tolist(), top.indices.tolist())],
        "ms": round((time.perf_counter() - start) * 1e3, 2),
    })
"""
    + REPORT
)


def child(code: str, efs: Path, images: list[str], pythonpath: str | None) -> dict:
    env = {"PATH": os.environ.get("PATH", "")}
    args = [sys.executable]
    if pythonpath is not None:  # lambdatorch: no site-packages, only the EFS tree
        env["PYTHONPATH"] = pythonpath
        args.append("-S")
    out = subprocess.run(
        [*args, "-c", code, str(efs), *images], check=True, capture_output=True, text=True, env=env
    )
    return json.loads(out.stdout)


def show(title: str, report: dict) -> None:
    first = report["results"][0]["ms"]
    cold = (report["import_s"] + report["load_s"]) * 1e3 + first
    print(f"\n{title}")
    print(f"  import         {report['import_s'] * 1e3:8.1f} ms")
    print(f"  load model     {report['load_s'] * 1e3:8.1f} ms")
    print(f"  cold start     {cold:8.1f} ms  (import + load + first prediction)")
    print(f"  peak RSS       {report['peak_rss_mb']:8.1f} MB")
    for r in report["results"]:
        best = ", ".join(f"{label} {score:.3f}" for label, score in r["predictions"])
        print(f"  {r['image']:<14} -> {best}   ({r['ms']} ms)")


def main() -> None:
    efs = Path(sys.argv[1]).resolve()
    images = sorted(str(p) for p in (efs / "samples").glob("*.png"))
    ours = child(LAMBDATORCH, efs, images, str(efs / "python"))
    theirs = child(TORCH, efs, images, None)
    show(f"lambdatorch (python -S, PYTHONPATH={efs / 'python'} only)", ours)
    print(
        f"  Python torch imported: {ours['torch_imported']}; "
        f"numpy imported: {ours['numpy_imported']}"
    )
    show("import torch, torchvision + torch.jit.load (the handler people write today)", theirs)
    if ours["torch_imported"]:
        sys.exit("torch was imported: the lean import path is broken")
    agree = all(
        a["predictions"][0][0] == b["predictions"][0][0]
        for a, b in zip(ours["results"], theirs["results"], strict=True)
    )
    print(f"\nTop-1 labels agree: {agree}")


if __name__ == "__main__":
    main()
