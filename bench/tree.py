"""The benchmark's inputs: one EFS-style tree that every contender runs from, and the photos.

    WORK/efs/python/   pip install --target: lambdatorch (this checkout's wheel), numpy,
                       torchvision, Pillow and torch's pure-Python dependencies; torch and its
                       CUDA packages linked from the venv (demo/build_efs.py explains why)
    WORK/efs/models/   ResNet-18 and MobileNetV3-small (torchvision architectures, random
                       weights, torch.jit.trace), added with `lambdatorch add-model`; the
                       `-fast` twins differ only in `input.decode`
    WORK/images/       real photos from scikit-image, re-encoded as JPEG q90 at 0.3, 3 and 12 MP

Everything is rebuilt only when missing or when the wheel changed, so reruns start quickly.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from scripts.local_lambda import REPO, install_python, run

MODELS = ("resnet18", "mobilenet")
FAST = "-fast"  # suffix of the twin whose manifest says decode "fast"
SIZES_MP = {"0.3MP": 0.3, "3MP": 3.0, "12MP": 12.0}
TIMED_PHOTO = "coffee"  # the photo timed at every size; all photos serve the accuracy checks

#: Distributions linked from the venv rather than installed (torch and its CUDA runtime: GBs).
LINKED = {"torch", "triton", "cuda-bindings", "cuda-pathfinder", "cuda-toolkit"}


@dataclass(frozen=True)
class Tree:
    work: Path

    @property
    def efs(self) -> Path:
        return self.work / "efs"

    @property
    def python(self) -> Path:
        return self.efs / "python"

    @property
    def models(self) -> Path:
        return self.efs / "models"

    @property
    def images(self) -> Path:
        return self.work / "images"

    def image(self, size: str, photo: str = TIMED_PHOTO) -> Path:
        return self.images / f"{photo}_{size}.jpg"

    def photos(self) -> list[str]:
        return sorted({p.stem.rsplit("_", 1)[0] for p in self.images.glob("*.jpg")})


def build(work: Path) -> Tree:
    tree = Tree(work.resolve())
    install_packages(tree)
    if not (tree.models / ".done").exists():
        add_models(tree)
    if not (tree.images / ".done").exists():
        make_images(tree)
    return tree


# --- packages ------------------------------------------------------------------------------------
def install_packages(tree: Tree) -> None:
    """All of it the first time; after that only lambdatorch (and numpy), when the wheel changed."""
    wheels = sorted((REPO / "dist").glob("lambdatorch-*.whl"))
    if not wheels:
        sys.exit("bench: no wheel in dist/: run `make develop` first")
    stamp = tree.python / ".wheel-sha256"
    digest = hashlib.sha256(wheels[-1].read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        return
    if stamp.exists():
        install_python(tree.efs)  # pip install --upgrade --target: replaces lambdatorch in place
        stamp.write_text(digest)
        return
    shutil.rmtree(tree.python, ignore_errors=True)
    install_python(tree.efs)  # lambdatorch + numpy; links torch and nvidia
    for dist in importlib.metadata.distributions():
        if is_linked(dist.metadata["Name"]):
            link(dist, tree.python)
    installed = {canonicalize_name(d.metadata["Name"]) for d in _distributions_in(tree.python)}
    rest = [
        f"{name}=={version}"
        for name, version in requirement_closure(["torchvision", "pillow"]).items()
        if name not in installed
    ]
    run(
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "--upgrade",
        "--target",
        tree.python,
        *rest,
    )
    stamp.write_text(digest)


def is_linked(name: str) -> bool:
    name = canonicalize_name(name)
    return name in LINKED or name.startswith("nvidia-")


def link(dist: importlib.metadata.Distribution, target: Path) -> None:
    """Symlink a venv distribution's top-level entries (packages and dist-info) into ``target``."""
    site = Path(str(dist.locate_file("")))
    for top in {f.parts[0] for f in dist.files or [] if f.parts[0] != ".."}:
        if not (target / top).exists() and (site / top).exists():
            (target / top).symlink_to(site / top, target_is_directory=(site / top).is_dir())


def requirement_closure(roots: list[str]) -> dict[str, str]:
    """name -> version in this venv of ``roots`` and their dependencies, minus the linked ones."""
    found: dict[str, str] = {}
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        dist = importlib.metadata.distribution(name)
        if not is_linked(name):
            found[name] = dist.version
        for spec in dist.requires or []:
            requirement = Requirement(spec)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return found


def _distributions_in(path: Path) -> list[importlib.metadata.Distribution]:
    return list(importlib.metadata.distributions(path=[str(path)]))


# --- models --------------------------------------------------------------------------------------
def add_models(tree: Tree) -> None:
    import torch
    import torchvision
    from lambdatorch.cli import PRESETS

    from scripts.make_fixtures import calibrate_batch_norm

    torch.manual_seed(0)
    architectures = {
        "resnet18": torchvision.models.resnet18,
        "mobilenet": torchvision.models.mobilenet_v3_small,
    }
    categories = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    fast_input = {"input": {**PRESETS["imagenet"]["input"], "decode": "fast"}}
    with tempfile.TemporaryDirectory(prefix="lambdatorch-bench-") as tmp:
        work = Path(tmp)
        labels = work / "labels.txt"
        labels.write_text("\n".join(categories) + "\n")
        fast = work / "fast.json"
        fast.write_text(json.dumps(fast_input))
        for name in MODELS:
            module = architectures[name](weights=None)
            calibrate_batch_norm(module)  # random weights, but outputs spread like a trained net's
            with torch.no_grad():
                traced = torch.jit.trace(module, torch.zeros(1, 3, 224, 224))
            traced.save(str(work / f"{name}.pt"))
            for model, extra in ((name, []), (name + FAST, ["--manifest", fast])):
                run(
                    sys.executable,
                    "-m",
                    "lambdatorch",
                    "add-model",
                    model,
                    "--file",
                    work / f"{name}.pt",
                    "--labels",
                    labels,
                    "--preset",
                    "imagenet",
                    *extra,
                    "--root",
                    tree.efs,
                    "--force",
                )
    (tree.models / ".done").touch()


# --- images --------------------------------------------------------------------------------------
def make_images(tree: Tree) -> None:
    from PIL import Image

    from scripts.make_fixtures import PHOTOS

    tree.images.mkdir(parents=True, exist_ok=True)
    for name, load in PHOTOS.items():
        photo = Image.fromarray(load()).convert("RGB")
        w, h = photo.size
        for size, megapixels in SIZES_MP.items():
            scale = (megapixels * 1e6 / (w * h)) ** 0.5
            resized = photo.resize((round(w * scale), round(h * scale)), Image.Resampling.LANCZOS)
            resized.save(tree.image(size, name), quality=90)
    (tree.images / ".done").touch()


def describe(tree: Tree) -> dict[str, str]:
    """Sizes of the timed images, for the report."""
    from PIL import Image

    out = {}
    for size in SIZES_MP:
        path = tree.image(size)
        with Image.open(path) as image:
            w, h = image.size
        out[size] = f"{w}x{h}, {path.stat().st_size / 1e3:.0f} kB"
    return out


if __name__ == "__main__":
    print(build(Path(sys.argv[1])))
