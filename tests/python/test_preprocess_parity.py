"""Preprocessing matches torchvision's reference pipeline on real photos.

Reference (the design's): PIL decode (EXIF orientation applied) -> PILToTensor ->
Resize(resize_shorter, antialias=True) -> CenterCrop(size) -> ToDtype(float32, scale=True) ->
Normalize(mean, std). Lanczos, which torchvision supports only for PIL images, resizes with PIL.

Tolerance, in normalized units: max abs difference <= 0.036 (two 8-bit levels at std 0.224) and
mean abs difference <= 0.002. Both sides decode JPEGs with libjpeg-turbo, so the pixels going
into the resize are the same; the remaining difference is rounding in the two resampling passes
(torchvision's uint8 kernels and Pillow's, which fast_image_resize follows), at most one level
each. Geometry (output sizes, crop offsets, padding) is torchvision's exactly. Lanczos, which
torchvision only has for PIL images, is compared with Pillow's.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import IMAGES, model_dir
from PIL import Image, ImageOps
from torchvision.transforms import v2

MAX_ABS = 0.036
MAX_MEAN = 0.002

PHOTOS = sorted(
    p.name
    for p in IMAGES.glob("*.jpg")
    if p.stem.split("_")[0]
    in {"astronaut", "chelsea", "coffee", "rocket", "motorcycle", "hubble", "retina"}
    and "cmyk" not in p.stem
)

MODES = {
    "bilinear": v2.InterpolationMode.BILINEAR,
    "bicubic": v2.InterpolationMode.BICUBIC,
    "nearest": v2.InterpolationMode.NEAREST,
    "lanczos3": v2.InterpolationMode.LANCZOS,
}


def reference(path, spec: dict) -> np.ndarray:
    """The torchvision pipeline the design defines, for a manifest ``input`` section."""
    with Image.open(path) as opened:
        image = ImageOps.exif_transpose(opened)
    color = spec.get("color", "rgb")
    image = image.convert("L" if color == "gray" else "RGB")
    mode = MODES[spec.get("interpolation", "bilinear")]
    size = spec["size"]
    if spec.get("crop", "center") == "center":
        resize = v2.Resize(
            spec.get("resize_shorter", max(size)), interpolation=mode, antialias=True
        )
        steps = [resize, v2.CenterCrop(size)]
    else:
        steps = [v2.Resize(size, interpolation=mode, antialias=True)]
    if mode == v2.InterpolationMode.LANCZOS:  # PIL-only in torchvision
        pipeline = v2.Compose([*steps, v2.PILToTensor()])
    else:
        pipeline = v2.Compose([v2.PILToTensor(), *steps])
    tensor = pipeline(image)
    if color == "bgr":
        tensor = tensor.flip(0)
    channels = tensor.shape[0]
    tensor = v2.ToDtype(torch.float32, scale=True)(tensor)
    tensor = v2.Normalize(spec.get("mean", [0.0] * channels), spec.get("std", [1.0] * channels))(
        tensor
    )
    return tensor.unsqueeze(0).numpy()


def assert_close(ours: np.ndarray, theirs: np.ndarray, what: str) -> None:
    assert ours.shape == theirs.shape, what
    assert ours.dtype == np.float32
    diff = np.abs(ours - theirs)
    assert diff.max() <= MAX_ABS, f"{what}: max abs diff {diff.max():.4f} > {MAX_ABS}"
    assert diff.mean() <= MAX_MEAN, f"{what}: mean abs diff {diff.mean():.5f} > {MAX_MEAN}"


def test_photos_of_many_sizes_match_torchvision(lt, tiny):
    assert len(PHOTOS) >= 15
    spec = tiny.manifest["input"]
    for name in PHOTOS:
        ours = tiny.preprocess((IMAGES / name).read_bytes())
        assert_close(ours, reference(IMAGES / name, spec), name)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest", "lanczos3"])
@pytest.mark.parametrize(
    "geometry",
    [
        {"size": [224, 224], "resize_shorter": 256, "crop": "center"},
        {"size": [160, 200], "resize_shorter": 171, "crop": "center"},
        {"size": [96, 128], "crop": "none", "resize_shorter": None},
        {"size": [300, 300], "resize_shorter": 299, "crop": "center"},  # crop > image: padding
    ],
    ids=["imagenet", "rect-crop", "no-crop", "padded"],
)
def test_interpolations_and_geometry(lt, tmp_path, interpolation, geometry):
    """Every filter and geometry, on JPEGs with partial MCU rows and columns at their edges."""
    spec = {**geometry, "interpolation": interpolation}
    model = lt.load(model_dir(tmp_path, input=spec))
    full = model.manifest["input"]
    for name in ["chelsea.jpg", "rocket_237x158.jpg", "rocket_1216x811.jpg", "retina_522x522.jpg"]:
        ours = model.preprocess((IMAGES / name).read_bytes())
        assert_close(ours, reference(IMAGES / name, full), f"{name} {interpolation}")


@pytest.mark.parametrize("color", ["bgr", "gray"])
def test_colors(lt, tmp_path, color):
    spec = {"color": color}
    if color == "gray":
        spec |= {"mean": [0.5], "std": [0.25]}
    model = lt.load(model_dir(tmp_path, base="gray" if color == "gray" else "tiny", input=spec))
    full = model.manifest["input"]
    for name in ["chelsea.jpg", "coffee.jpg", "chelsea_gray.png"]:
        ours = model.preprocess((IMAGES / name).read_bytes())
        assert_close(ours, reference(IMAGES / name, full), f"{name} {color}")


@pytest.mark.parametrize(
    "name",
    [
        "chelsea.png",
        "chelsea_progressive.jpg",
        "chelsea_gray.png",
        "chelsea_gray.jpg",
        "chelsea_rgba.png",
        "chelsea_la.png",
        "chelsea_palette.png",
        "chelsea.webp",
        "chelsea.bmp",
        "chelsea.gif",
        "animated.gif",
        "chelsea_cmyk.jpg",
    ]
    + [f"orientation_{i}.jpg" for i in range(1, 9)],
)
def test_formats_and_orientation(tiny, name):
    ours = tiny.preprocess((IMAGES / name).read_bytes())
    assert_close(ours, reference(IMAGES / name, tiny.manifest["input"]), name)


def test_sixteen_bit_png_is_scaled(tiny):
    ours = tiny.preprocess((IMAGES / "chelsea_rgb16.png").read_bytes())
    assert_close(ours, reference(IMAGES / "chelsea.png", tiny.manifest["input"]), "rgb16")


def test_arrays_match_encoded_images(tiny):
    with Image.open(IMAGES / "chelsea.png") as opened:
        image = opened.convert("RGB")
    rgb = np.asarray(image.convert("RGB"))
    from_bytes = tiny.preprocess((IMAGES / "chelsea.png").read_bytes())
    np.testing.assert_array_equal(tiny.preprocess(rgb), from_bytes)
    rgba = np.asarray(image.convert("RGBA"))
    np.testing.assert_array_equal(tiny.preprocess(rgba), from_bytes)
    gray = np.asarray(image.convert("L"))
    np.testing.assert_array_equal(tiny.preprocess(gray), tiny.preprocess(gray[:, :, None]))
    # Non-contiguous views are fine too.
    flipped = rgb[:, ::-1]
    expected = tiny.preprocess(np.ascontiguousarray(flipped))
    np.testing.assert_array_equal(tiny.preprocess(flipped), expected)
