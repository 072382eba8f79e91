"""Generate the test fixtures: TorchScript models, their model directories, and images.

Run by ``make fixtures`` (into ``target/fixtures``); nothing it writes is committed. Models get
random weights from a fixed seed; images are real photos from scikit-image's bundled sample data,
re-encoded in the formats and sizes the tests need.

Layout::

    target/fixtures/
      models/<name>/        manifest.json, model.pt, labels.txt (as the EFS tree has them)
      images/*.jpg|png|...  test images
      aoti/<name>.pt2       AOTInductor packages of small models (compiled for AVX2)
      aoti/models/<name>/   the same, unpacked by add-model's code, with manifests (a root of
                            their own, so the TorchScript tests' model lists stay as they are)
      aoti/<name>.npz       inputs and ExportedProgram.module()'s outputs on them
      text/                 text models, their tokenizers and expected outputs (text_fixtures.py)
"""

from __future__ import annotations

import hashlib
import json
import runpy
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from skimage import data as skdata

REPO = Path(__file__).resolve().parents[1]
#: The manifest presets of ``lambdatorch add-model`` and ``export``, read from the source tree (by
#: path: fixtures are made before the wheel is built and installed).
PRESETS = runpy.run_path(str(REPO / "python" / "lambdatorch" / "_manifests.py"))["PRESETS"]
#: add-model's unpacking and digest of AOTInductor packages, read the same way.
AOTI = runpy.run_path(str(REPO / "python" / "lambdatorch" / "_aoti.py"))

#: Real photos shipped inside scikit-image (file name -> loader).
PHOTOS = {
    "astronaut": skdata.astronaut,
    "chelsea": skdata.chelsea,
    "coffee": skdata.coffee,
    "rocket": skdata.rocket,
    "motorcycle": lambda: skdata.stereo_motorcycle()[0],
    "hubble": skdata.hubble_deep_field,
    "retina": skdata.retina,
}


class TinyNet(torch.nn.Module):
    """A small CNN: fast to load and run, enough to check numerics end to end."""

    def __init__(self, channels: int = 3, classes: int = 10) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(channels, 8, 3, stride=2, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, 16, 3, stride=2, padding=1),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
        )
        self.head = torch.nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(x), 1))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_model(
    root: Path, name: str, module: torch.nn.Module, example: torch.Tensor, manifest: dict
) -> Path:
    """Trace ``module``, save it with ``manifest`` (sha256 filled in) under ``root/name``."""
    out = root / name
    out.mkdir(parents=True, exist_ok=True)
    module.eval()
    with torch.no_grad():
        traced = torch.jit.trace(module, example)
    traced.save(str(out / "model.pt"))
    manifest = {"format": "torchscript", "file": "model.pt", **manifest}
    manifest["sha256"] = sha256(out / "model.pt")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def calibrate_batch_norm(module: torch.nn.Module) -> None:
    """Give random-weight batch-norm layers running statistics from random inputs.

    Freshly initialised, MobileNetV3's activations vanish (its logits are ~1e-10, all classes
    tie); with calibrated statistics its outputs spread like a trained model's.
    """
    for layer in module.modules():
        if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
            layer.reset_running_stats()
            layer.momentum = None  # cumulative average
    module.train()
    with torch.no_grad():
        for _ in range(4):
            module(torch.randn(8, 3, 224, 224))
    module.eval()


def make_models(root: Path) -> None:
    torch.manual_seed(0)
    # The ImageNet preset's input without `decode`: the tests check that defaults are filled in.
    image_input = {k: v for k, v in PRESETS["imagenet"]["input"].items() if k != "decode"}
    tiny = write_model(
        root,
        "tiny",
        TinyNet(),
        torch.zeros(1, 3, 224, 224),
        {
            "input": image_input,
            "output": {"type": "classification", "labels": "labels.txt", "top_k": 3},
            "max_batch": 4,
        },
    )
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    (tiny / "labels.txt").write_text("\n".join(names) + "\n")

    mobilenet = torchvision.models.mobilenet_v3_small(weights=None, num_classes=1000)
    calibrate_batch_norm(mobilenet)
    write_model(
        root,
        "mobilenet",
        mobilenet,
        torch.zeros(1, 3, 224, 224),
        {
            "input": image_input,
            "output": {
                "type": "classification",
                "labels": [f"class {i}" for i in range(1000)],
                "top_k": 5,
            },
        },
    )

    write_model(
        root,
        "tensor",
        torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh()),
        torch.zeros(2, 4),
        {
            "input": {"type": "tensor", "shape": [-1, 4], "dtype": "float32"},
            "output": {"type": "raw"},
        },
    )

    write_model(
        root,
        "gray",
        TinyNet(channels=1, classes=4),
        torch.zeros(1, 1, 32, 32),
        {
            "input": {
                "type": "image",
                "size": [32, 32],
                "crop": "none",
                "interpolation": "bicubic",
                "color": "gray",
                "mean": [0.5],
                "std": [0.5],
            },
            "output": {
                "type": "classification",
                "labels": ["a", "b", "c", "d"],
                "softmax": False,
                "top_k": 4,
            },
            "warmup": False,
        },
    )


def exif_with_orientation(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def make_images(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    photos = {name: Image.fromarray(load()).convert("RGB") for name, load in PHOTOS.items()}
    # Real photos at several sizes and aspect ratios, JPEG q90 as phones and browsers send them.
    for name, photo in photos.items():
        photo.save(out / f"{name}.jpg", quality=90)
        w, h = photo.size
        for scale in (0.37, 1.9):
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            photo.resize(size, Image.Resampling.LANCZOS).save(
                out / f"{name}_{size[0]}x{size[1]}.jpg", quality=90
            )
    astronaut = photos["astronaut"]
    chelsea = photos["chelsea"]
    chelsea.save(out / "chelsea.png")
    chelsea.save(out / "chelsea_progressive.jpg", quality=90, progressive=True)
    chelsea.convert("CMYK").save(out / "chelsea_cmyk.jpg", quality=95)
    chelsea.convert("L").save(out / "chelsea_gray.png")
    chelsea.convert("L").save(out / "chelsea_gray.jpg", quality=90)
    chelsea.convert("RGBA").save(out / "chelsea_rgba.png")
    chelsea.convert("LA").save(out / "chelsea_la.png")
    chelsea.convert("P", palette=Image.Palette.ADAPTIVE, colors=256).save(
        out / "chelsea_palette.png"
    )
    chelsea.save(out / "chelsea.webp", lossless=True)
    chelsea.save(out / "chelsea.bmp")
    chelsea.save(out / "chelsea.gif")
    rgb16 = (np.asarray(chelsea).astype(np.uint16) * 257).astype(">u2")
    write_png16(out / "chelsea_rgb16.png", rgb16)
    frames = [astronaut.resize((64, 64)), chelsea.resize((64, 64))]
    frames[0].save(out / "animated.gif", save_all=True, append_images=frames[1:], duration=100)
    # EXIF orientations 1-8 on a non-square photo: the decoder must turn them upright.
    small = chelsea.resize((90, 60))
    for orientation in range(1, 9):
        small.save(
            out / f"orientation_{orientation}.jpg",
            quality=95,
            exif=exif_with_orientation(orientation),
        )
    Image.new("RGB", (1, 1), (200, 30, 60)).save(out / "one_pixel.png")
    Image.new("RGB", (1, 5000), (20, 130, 60)).save(out / "one_by_5000.png")
    data = (out / "chelsea.jpg").read_bytes()
    (out / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (out / "empty.jpg").write_bytes(b"")
    (out / "text.txt").write_bytes(b"this is not an image\n")


def write_png16(path: Path, rgb16: np.ndarray) -> None:
    """PIL cannot write 16-bit RGB PNGs; write one by hand with zlib (tests only)."""
    import struct
    import zlib

    h, w, _ = rgb16.shape
    raw = b"".join(b"\x00" + rgb16[y].tobytes() for y in range(h))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
    path.write_bytes(png + chunk(b"IEND", b""))


class Elementwise(torch.nn.Module):
    """``x -> op(x)``: a model whose input and output dtypes are the point of the test."""

    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.op == "affine":  # int64 in, int64 out: exact beyond 2**24 (and 2**53)
            return x * 2 + 1
        if self.op == "not":  # bool in, bool out
            return torch.logical_not(x)
        if self.op == "widen":  # uint8 in, int32 out
            return x.to(torch.int32) * 3
        return x * 2 + 0.5  # floats keep their dtype


#: Tensor models of every dtype the manifest allows: name -> (dtype, op).
DTYPE_MODELS = {
    "dtype-int64": ("int64", "affine"),
    "dtype-bool": ("bool", "not"),
    "dtype-uint8": ("uint8", "widen"),
    "dtype-float16": ("float16", "float"),
    "dtype-bfloat16": ("bfloat16", "float"),
    "dtype-float64": ("float64", "float"),
}


def make_dtype_models(root: Path) -> None:
    """One tiny elementwise model per tensor dtype, and a tensor classifier."""
    for name, (dtype, op) in DTYPE_MODELS.items():
        example = torch.zeros(2, 4, dtype=getattr(torch, dtype))
        write_model(
            root,
            name,
            Elementwise(op),
            example,
            {"input": {"type": "tensor", "shape": [-1, 4], "dtype": dtype}},
        )
    write_model(
        root,
        "tensor-classifier",
        torch.nn.Linear(4, 3),
        torch.zeros(2, 4),
        {
            "input": {"type": "tensor", "shape": [-1, 4]},
            "output": {"type": "classification", "labels": ["low", "mid", "high"], "top_k": 2},
        },
    )


class MLP(torch.nn.Module):
    """A small MLP over 4 features, for tensor-input AOTInductor packages."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def write_aoti(
    out: Path,
    name: str,
    module: torch.nn.Module,
    example: torch.Tensor,
    manifest: dict,
    inputs: list[torch.Tensor],
    dynamic: bool = True,
    link_libtorch: bool = True,
) -> None:
    """Export ``module`` with the standard calls (torch.export with a dynamic batch dimension,
    AOTInductor with freezing, AVX2; with ``link_libtorch=False`` as lambdatorch export does,
    a model library that does not need libtorch.so), write ``out/name.pt2``, unpack it into
    ``out/models/name/package`` with a manifest, and save ``inputs`` with the exported program's
    outputs on them in ``out/name.npz``."""
    import os

    module.eval()
    shapes = ({0: torch.export.Dim("batch", min=1, max=1024)},) if dynamic else None
    program = torch.export.export(module, (example,), dynamic_shapes=shapes)
    os.environ["ATEN_CPU_CAPABILITY"] = "avx2"
    archive = out / f"{name}.pt2"
    with torch.no_grad():
        torch._inductor.aoti_compile_and_package(
            program,
            package_path=str(archive),
            inductor_configs={
                "freezing": True,
                "aot_inductor.link_libtorch": link_libtorch,
                # Trust the CPU's flags for AVX2 instead of Inductor's build-and-dlopen probe,
                # which can fail on a busy machine and then compiles scalar code for the process.
                "cpp.vec_isa_ok": True,
            },
        )
    del os.environ["ATEN_CPU_CAPABILITY"]
    model = out / "models" / name
    model.mkdir(parents=True)
    AOTI["unpack"](archive, model / "package")
    head = {
        "format": "aoti",
        "file": "package",
        "cpu_isa": AOTI["cpu_isa"](model / "package"),
        "sha256": AOTI["tree_sha256"](model / "package"),
    }
    (model / "manifest.json").write_text(json.dumps({**head, **manifest}, indent=2) + "\n")
    reference = {}
    with torch.no_grad():
        for i, x in enumerate(inputs):
            reference[f"input{i}"] = x.numpy()
            reference[f"output{i}"] = program.module()(x).numpy()
    np.savez(out / f"{name}.npz", **reference)


def make_aoti_models(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    image_input = {k: v for k, v in PRESETS["imagenet"]["input"].items() if k != "decode"}
    write_aoti(
        out,
        "aoti_tiny",
        TinyNet(),
        torch.randn(2, 3, 224, 224),
        {
            "input": image_input,
            "output": {
                "type": "classification",
                "labels": [
                    "zero",
                    "one",
                    "two",
                    "three",
                    "four",
                    "five",
                    "six",
                    "seven",
                    "eight",
                    "nine",
                ],
                "top_k": 3,
            },
            "max_batch": 4,
        },
        [torch.randn(1, 3, 224, 224), torch.randn(3, 3, 224, 224)],
        link_libtorch=False,
    )
    write_aoti(
        out,
        "aoti_mlp",
        MLP(),
        torch.randn(2, 4),
        {
            "input": {"type": "tensor", "shape": [-1, 4], "dtype": "float32"},
            "output": {"type": "raw"},
        },
        [torch.randn(1, 4), torch.randn(5, 4)],
    )
    write_aoti(
        out,
        "aoti_static",
        MLP(),
        torch.randn(2, 4),
        {
            "input": {"type": "tensor", "shape": [-1, 4], "dtype": "float32"},
            "output": {"type": "raw"},
            "max_batch": 2,
        },
        [torch.randn(2, 4)],
        dynamic=False,
    )


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "target/fixtures")
    if out.exists():
        shutil.rmtree(out)
    make_models(out / "models")
    make_dtype_models(out / "models")
    make_images(out / "images")
    make_aoti_models(out / "aoti")
    # The script's own directory is on sys.path only when it runs as a script; the benchmark
    # imports this module as scripts.make_fixtures.
    from text_fixtures import make_text_models

    make_text_models(out / "text")
    print(f"fixtures written to {out}")


if __name__ == "__main__":
    main()
