"""The Python Lambda handler people write today to serve an image classifier from EFS.

torch, torchvision and Pillow come from EFS (``PYTHONPATH=/mnt/efs/python``); the model is the
TorchScript file lambdatorch serves too, loaded during init; images go through torchvision's v2
transforms (the ImageNet preprocessing lambdatorch's ``decode: "exact"`` reproduces), then softmax
and top-k. It answers lambdatorch's direct invokes in the same shape, so the benchmark sends both
the same events, and reports its inference time the way lambdatorch's ``timings_ms`` does: the
forward pass and the output head (softmax, top-k, the predictions with their labels).
"""

import base64
import io
import os
import time

import torch
import torchvision  # noqa: F401  (imported as handlers do; the v2 transforms live in it)
from PIL import Image
from torchvision.transforms import v2

MODELS = os.environ.get("MODELS_DIR", "/mnt/efs/models")
DEFAULT_MODEL = os.environ.get("DEFAULT_MODEL", "resnet18")

TRANSFORM = v2.Compose(
    [
        v2.PILToTensor(),
        v2.Resize(256, antialias=True),
        v2.CenterCrop(224),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ]
)

_models = {}


def get_model(name):
    if name not in _models:
        folder = os.path.join(MODELS, name)
        model = torch.jit.load(os.path.join(folder, "model.pt"))
        model.eval()
        with open(os.path.join(folder, "labels.txt")) as f:
            labels = f.read().splitlines()
        _models[name] = (model, labels)
    return _models[name]


get_model(DEFAULT_MODEL)  # during init, so that requests do not pay for it


def lambda_handler(event, context):
    start = time.perf_counter()
    name = event.get("model", DEFAULT_MODEL)
    model, labels = get_model(name)
    images = event["images"] if "images" in event else [event["image"]]
    batch = torch.stack(
        [TRANSFORM(Image.open(io.BytesIO(base64.b64decode(b))).convert("RGB")) for b in images]
    )
    # Timed as lambdatorch's timings_ms.inference is: the forward pass and the output head.
    with torch.inference_mode():
        before = time.perf_counter()
        scores, indices = model(batch).softmax(dim=1).topk(event.get("top_k", 5))
        results = [
            [{"index": i, "label": labels[i], "score": s} for s, i in zip(row, top, strict=True)]
            for row, top in zip(scores.tolist(), indices.tolist(), strict=True)
        ]
        inference = time.perf_counter() - before
    timings = {"inference": inference * 1e3, "total": (time.perf_counter() - start) * 1e3}
    if "images" in event:
        return {
            "model": name,
            "results": [{"predictions": r} for r in results],
            "timings_ms": timings,
        }
    return {"model": name, "predictions": results[0], "timings_ms": timings}
