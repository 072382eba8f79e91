"""Preprocessing benchmark (issue 5): JPEG bytes to a 224x224 ImageNet tensor, on one thread.

Every method gets the same JPEG (q90) at 0.3, 3 and 12 MP, and runs side by side in one process:
in each run the methods take turns on each size (the order rotates between runs), and a run's
figure is the median of its iterations. Decode-only floors say how close a pipeline is to the
hardware limit: libjpeg-turbo's full decode (OpenCV) for the exact path, its scaled decode
(Pillow ``draft()`` + ``load()``, at the scale the fast path picks) for the fast path.

Also measured: how far ``decode: "fast"`` lands from ``"exact"`` on every photo and size (tensor
differences in normalized units) and whether both give the same top-1 class.

Run by ``python -m bench`` in a child process with ``OMP_NUM_THREADS=1`` (see ``ENV``):
``python -m bench.preprocess WORK OUT.json [--quick]``.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "RAYON_NUM_THREADS": "1"}
RESIZE, CROP = 256, 224
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
#: Timed calls per run and image size (full run, quick run).
ITERATIONS = {"0.3MP": (60, 5), "3MP": (20, 3), "12MP": (6, 2)}
RUNS = (5, 2)


def fast_scale(width: int, height: int) -> int:
    """The fast path's JPEG scale: the largest of 1/2, 1/4, 1/8 keeping the shorter side >= 256."""
    for scale in (8, 4, 2):
        if min(-(-width // scale), -(-height // scale)) >= RESIZE:
            return scale
    return 1


def methods(work: Path) -> dict[str, Callable[[bytes], Any]]:
    import cv2
    import lambdatorch
    import numpy as np
    import torch
    from PIL import Image
    from torchvision.transforms import v2

    exact = lambdatorch.load(work / "efs" / "models" / "mobilenet")
    fast = lambdatorch.load(work / "efs" / "models" / "mobilenet-fast")
    # After loading: lambdatorch sizes the libtorch thread pool it shares with torch.
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    torchvision = v2.Compose(
        [
            v2.PILToTensor(),
            v2.Resize(RESIZE, antialias=True),
            v2.CenterCrop(CROP),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(MEAN, STD),
        ]
    )
    mean, std = np.array(MEAN, np.float32), np.array(STD, np.float32)

    def drafted(data: bytes) -> Image.Image:
        image = Image.open(io.BytesIO(data))
        w, h = image.size
        scale = fast_scale(w, h)
        image.draft("RGB", (w // scale, h // scale))
        assert image.size == (-(-w // scale), -(-h // scale)), (image.size, scale)
        return image

    def opencv(data: bytes) -> Any:
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        h, w = bgr.shape[:2]
        short = min(h, w)  # torchvision's output size rule, then its center-crop offsets
        size = (RESIZE, RESIZE * w // short) if h == short else (RESIZE * h // short, RESIZE)
        resized = cv2.resize(bgr, size[::-1], interpolation=cv2.INTER_AREA)
        top, left = round((size[0] - CROP) / 2), round((size[1] - CROP) / 2)
        rgb = resized[top : top + CROP, left : left + CROP, ::-1]
        tensor = (rgb.astype(np.float32) * np.float32(1 / 255) - mean) / std
        return np.ascontiguousarray(tensor.transpose(2, 0, 1))[None]

    return {
        "lambdatorch exact": exact.preprocess,
        "lambdatorch fast": fast.preprocess,
        "Pillow + torchvision": lambda d: torchvision(
            Image.open(io.BytesIO(d)).convert("RGB")
        ).unsqueeze(0),
        "Pillow draft + torchvision": lambda d: torchvision(drafted(d).convert("RGB")).unsqueeze(0),
        "OpenCV": opencv,
        "floor: OpenCV decode": lambda d: cv2.imdecode(
            np.frombuffer(d, np.uint8), cv2.IMREAD_COLOR
        ),
        "floor: Pillow draft decode": lambda d: drafted(d).load(),
    }


def time_methods(work: Path, quick: bool) -> dict[str, Any]:
    from PIL import Image

    from .tree import SIZES_MP, Tree

    tree = Tree(work)
    candidates = methods(work)
    images = {size: tree.image(size).read_bytes() for size in SIZES_MP}
    times: dict[str, dict[str, list[float]]] = {s: {m: [] for m in candidates} for s in images}
    runs = RUNS[quick]
    for run in range(runs):
        for size, data in images.items():
            names = list(candidates)
            names = names[run % len(names) :] + names[: run % len(names)]
            for name in names:
                call = candidates[name]
                call(data)  # untimed: first-call allocations and caches
                samples = []
                for _ in range(ITERATIONS[size][quick]):
                    start = time.perf_counter()
                    call(data)
                    samples.append((time.perf_counter() - start) * 1e3)
                times[size][name].append(statistics.median(samples))
    scales = {}
    for size in images:
        with Image.open(tree.image(size)) as image:
            scales[size] = fast_scale(*image.size)
    return {"runs": runs, "times_ms": times, "fast_scale": scales}


def fast_vs_exact(work: Path, quick: bool) -> dict[str, Any]:
    """Tensor differences and top-1 agreement of decode "fast" against "exact" on the photos."""
    import lambdatorch
    import numpy as np

    from .tree import MODELS, SIZES_MP, Tree

    tree = Tree(work)
    photos = tree.photos()[: 2 if quick else None]
    exact = lambdatorch.load(tree.models / MODELS[0])
    fast = lambdatorch.load(tree.models / f"{MODELS[0]}-fast")
    models = [lambdatorch.load(tree.models / name) for name in MODELS]
    diffs: dict[str, list[np.ndarray]] = {size: [] for size in SIZES_MP}
    agree = dict.fromkeys(MODELS, 0)
    for photo in photos:
        for size in SIZES_MP:
            data = tree.image(size, photo).read_bytes()
            x, y = exact.preprocess(data), fast.preprocess(data)
            diffs[size].append(np.abs(x - y))
            for name, model in zip(MODELS, models, strict=True):
                agree[name] += int(model.forward(x).argmax() == model.forward(y).argmax())
    return {
        "images": len(photos) * len(SIZES_MP),
        "photos": photos,
        "max_abs": {s: float(max(d.max() for d in v)) for s, v in diffs.items()},
        "mean_abs": {s: float(np.mean([d.mean() for d in v])) for s, v in diffs.items()},
        "top1_agree": agree,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    result = time_methods(args.work, args.quick) | {
        "fast_vs_exact": fast_vs_exact(args.work, args.quick)
    }
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    sys.exit(main())
