"""Shared fixtures: the generated models and images (``make fixtures``), and model factories."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(os.environ.get("LAMBDATORCH_FIXTURES", REPO / "target" / "fixtures"))
MODELS = FIXTURES / "models"
IMAGES = FIXTURES / "images"

if not (FIXTURES / ".done").exists() and not MODELS.exists():
    raise RuntimeError(f"no fixtures in {FIXTURES}: run `make fixtures` (or `make test`)")


def image_bytes(name: str) -> bytes:
    return (IMAGES / name).read_bytes()


def model_dir(tmp_path: Path, base: str = "tiny", name: str | None = None, **changes: Any) -> Path:
    """A copy of fixture model ``base`` whose manifest has ``changes`` applied.

    A dict value updates that section of the manifest; ``None`` deletes a key (at either level).
    """
    src = MODELS / base
    dest = tmp_path / (name or base)
    shutil.copytree(src, dest)
    manifest = json.loads((src / "manifest.json").read_text())
    for key, value in changes.items():
        if value is None:
            manifest.pop(key, None)
        elif isinstance(value, dict) and isinstance(manifest.get(key), dict):
            merged = {**manifest[key], **value}
            manifest[key] = {k: v for k, v in merged.items() if v is not None}
        else:
            manifest[key] = value
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


@pytest.fixture(scope="session")
def lt():
    import lambdatorch

    return lambdatorch


@pytest.fixture(scope="session")
def tiny(lt):
    return lt.load(MODELS / "tiny")
