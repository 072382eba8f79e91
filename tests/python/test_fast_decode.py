"""`decode: "fast"`: JPEGs decoded at a DCT scale (1/2, 1/4, 1/8), then the exact resize.

What a user can rely on: where the scaled size is a whole number of pixels, the result is
Pillow's `draft()` + torchvision's pipeline to within the resampling tolerance of the exact path;
elsewhere the output grid stays the exact path's (the geometry comes from the full size) and only
the pixel values move; images too small for any scale are decoded exactly; bad JPEGs fail the
same way on both paths.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from conftest import IMAGES, model_dir
from PIL import Image
from test_preprocess_parity import assert_close
from torchvision.transforms import v2

# Full-size photos whose sides divide by the scale the fast path picks (shorter side >= 256).
DIVISIBLE = ["motorcycle_1408x950.jpg", "coffee_1140x760.jpg", "hubble.jpg", "astronaut.jpg"]
# Photos whose scaled size rounds up: hubble_1900x1657 -> 1/4 -> 475x414.25.
ROUNDED = ["astronaut_973x973.jpg", "chelsea_857x570.jpg", "hubble_1900x1657.jpg", "retina.jpg"]
# Shorter side under 512: no scale covers 256, so the fast path decodes at full size.
SMALL = ["chelsea.jpg", "coffee.jpg", "rocket_237x158.jpg", "chelsea_cmyk.jpg", "orientation_6.jpg"]


@pytest.fixture(scope="module")
def models(lt, tmp_path_factory):
    root = tmp_path_factory.mktemp("fast")
    exact = lt.load(model_dir(root / "exact", base="mobilenet"))
    fast = lt.load(model_dir(root / "fast", base="mobilenet", input={"decode": "fast"}))
    return exact, fast


def draft_reference(path, spec: dict) -> np.ndarray:
    """Pillow's scaled JPEG decode (`draft`, the largest scale keeping both sides >= the resize
    target), then the torchvision pipeline."""
    shorter = spec["resize_shorter"]
    with Image.open(path) as image:
        image.draft("RGB", (shorter, shorter))
        image = image.convert("RGB")
    pipeline = v2.Compose(
        [
            v2.PILToTensor(),
            v2.Resize(shorter, antialias=True),
            v2.CenterCrop(spec["size"]),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(spec["mean"], spec["std"]),
        ]
    )
    return pipeline(image).unsqueeze(0).numpy()


@pytest.mark.parametrize("name", DIVISIBLE)
def test_fast_matches_pillow_draft_and_torchvision(models, name):
    _, fast = models
    ours = fast.preprocess((IMAGES / name).read_bytes())
    assert_close(ours, draft_reference(IMAGES / name, fast.manifest["input"]), name)


@pytest.mark.parametrize("name", DIVISIBLE + ROUNDED)
def test_fast_stays_close_to_exact(models, name):
    exact, fast = models
    data = (IMAGES / name).read_bytes()
    ours, full = fast.preprocess(data), exact.preprocess(data)
    assert ours.shape == full.shape
    diff = np.abs(ours - full)
    # A scaled decode is a box filter where the exact path has a wider antialiasing filter, so
    # values move (astronaut: 512 px scaled to exactly 256, mean 0.04) but the picture does not:
    # a crop shifted by one pixel would give a mean difference of 0.1 or more on these photos.
    assert 0 < diff.mean() <= 0.05, f"{name}: mean abs diff {diff.mean():.4f}"
    assert np.corrcoef(ours.ravel(), full.ravel())[0, 1] > 0.99


@pytest.mark.parametrize("name", SMALL)
def test_fast_decodes_small_images_exactly(models, name):
    exact, fast = models
    data = (IMAGES / name).read_bytes()
    np.testing.assert_array_equal(fast.preprocess(data), exact.preprocess(data))


def test_fast_keeps_top1_of_exact(models):
    exact, fast = models
    names = DIVISIBLE + ROUNDED
    agree = sum(
        exact.predict(data, top_k=1)[0].index == fast.predict(data, top_k=1)[0].index
        for data in ((IMAGES / n).read_bytes() for n in names)
    )
    assert agree >= len(names) - 1, f"top-1 agreement {agree}/{len(names)}"


def bomb_jpeg() -> bytes:
    """A real JPEG whose SOF0 header is rewritten to declare 60000 x 60000 pixels."""
    data = bytearray((IMAGES / "coffee_1140x760.jpg").read_bytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = (60000).to_bytes(2, "big") * 2
    return bytes(data)


@pytest.mark.parametrize(
    "bad",
    [
        lambda: (IMAGES / "truncated.jpg").read_bytes(),
        lambda: (IMAGES / "coffee_1140x760.jpg").read_bytes()[:5000],
        lambda: b"\xff\xd8\xff" + b"\x00" * 100,
        bomb_jpeg,
    ],
    ids=["truncated", "cut", "garbage-after-soi", "60000x60000"],
)
def test_fast_fails_like_exact(lt, models, bad):
    exact, fast = models
    data = bad()
    with pytest.raises(lt.LambdaTorchError) as exact_err:
        exact.preprocess(data)
    with pytest.raises(lt.LambdaTorchError) as fast_err:
        fast.preprocess(data)
    assert type(fast_err.value) is type(exact_err.value)
    assert str(fast_err.value) == str(exact_err.value)
    # ... and the model still works.
    assert fast.predict((IMAGES / "chelsea.jpg").read_bytes())


def test_damaged_but_complete_jpeg_decodes_like_pillow(models):
    """A scan cut short but closed by an end-of-image marker: libjpeg warns and fills the rest
    with grey, and Pillow returns that image; so do both paths."""
    exact, fast = models
    data = (IMAGES / "coffee_1140x760.jpg").read_bytes()[:20000] + b"\xff\xd9"
    with Image.open(io.BytesIO(data)) as image:
        image.load()
    assert exact.predict(data) and fast.predict(data)
