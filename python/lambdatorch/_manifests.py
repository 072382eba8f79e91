"""What ``add-model`` and ``export`` both put in a model directory's manifest: the presets and the
model file's digest.

The standard library only, and no imports from the package: ``scripts/make_fixtures.py`` loads
this file by path to give the test models the same ImageNet preset, before any wheel is installed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

#: Manifest presets for ``add-model --preset`` and ``export --preset``.
PRESETS: dict[str, dict[str, Any]] = {
    "imagenet": {
        "input": {
            "type": "image",
            "size": [224, 224],
            "resize_shorter": 256,
            "crop": "center",
            "interpolation": "bilinear",
            "color": "rgb",
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
            "decode": "exact",
        },
        "output": {"type": "classification", "softmax": True, "top_k": 5},
        "max_batch": 8,
        "threads": "auto",
        "warmup": True,
    },
}


def sha256_of(path: Path) -> str:
    """The hex sha256 of the file at ``path``, read in 1 MiB blocks (models can be GBs)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
