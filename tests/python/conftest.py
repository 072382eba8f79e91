"""Shared fixtures: the generated models and images (``make fixtures``), and model factories.

Where the fixtures are, and the image helpers, live in ``fixture_data`` (which scripts use too);
they are re-exported here for the tests, which import them from ``conftest``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from fixture_data import IMAGES, MODELS, REPO, bomb, image_bytes

__all__ = ["IMAGES", "MODELS", "REPO", "bomb", "image_bytes", "lt", "model_dir", "tiny"]


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
