"""Bad input raises the design's exception with a message a user can act on, and the process
stays healthy: the same model answers correctly right after."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from conftest import MODELS, bomb, image_bytes, model_dir


@pytest.fixture
def healthy(tiny):
    """After the test's failures, the shared model still gives the same answer."""
    expected = tiny.predict(image_bytes("chelsea.jpg"))
    yield tiny
    assert tiny.predict(image_bytes("chelsea.jpg")) == expected


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"this is not an image\n", "unrecognized image format"),
        (image_bytes("truncated.jpg"), "truncated"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "cannot"),
        (b"\xff\xd8\xff\xe0" + b"garbage" * 10, "truncated"),
        (b"GIF89a" + b"\x00" * 3, "cannot"),
    ],
    ids=["empty", "text", "truncated-jpeg", "bad-png", "bad-jpeg", "bad-gif"],
)
def test_undecodable_bytes_are_invalid_image(lt, healthy, data, message):
    with pytest.raises(lt.InvalidImage, match=message) as info:
        healthy.predict(data)
    assert isinstance(info.value, lt.InvalidInput)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, lt.LambdaTorchError)


def test_batch_error_names_the_image(lt, healthy):
    with pytest.raises(lt.InvalidImage, match="image 1"):
        healthy.predict_batch([image_bytes("chelsea.jpg"), b"nope"])


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((10, 10, 3), np.float32), "uint8"),
        (np.zeros((10, 10, 2), np.uint8), "1, 3 or 4 channels"),
        (np.zeros((10,), np.uint8), "shape"),
        (np.zeros((1, 10, 10, 3), np.uint8), "shape"),
        (np.zeros((0, 10, 3), np.uint8), "no pixels"),
    ],
    ids=["float", "two-channels", "1d", "4d", "empty"],
)
def test_bad_arrays_are_invalid_input(lt, healthy, array, message):
    with pytest.raises(lt.InvalidInput, match=message):
        healthy.predict(array)


@pytest.mark.parametrize("value", [None, 3, "chelsea.jpg", [1, 2, 3]], ids=str)
def test_wrong_types_are_invalid_input(lt, healthy, value):
    with pytest.raises(lt.InvalidInput, match="expected an encoded image"):
        healthy.predict(value)


@pytest.mark.parametrize("top_k", [0, -1, -(2**63), 1001, 2**63 - 1])
def test_bad_top_k(lt, healthy, top_k):
    with pytest.raises(lt.InvalidInput, match="top_k"):
        healthy.predict(image_bytes("chelsea.jpg"), top_k=top_k)


@pytest.mark.parametrize("top_k", [2**64, "3", 2.5, [3]], ids=str)
def test_top_k_must_be_an_integer(lt, healthy, top_k):
    with pytest.raises(lt.InvalidInput, match="top_k must be an integer"):
        healthy.predict(image_bytes("chelsea.jpg"), top_k=top_k)
    with pytest.raises(lt.InvalidInput, match="top_k must be an integer"):
        healthy.predict_batch([image_bytes("chelsea.jpg")], top_k=top_k)


@pytest.mark.parametrize("kind", ["png", "jpeg", "gif"])
def test_decompression_bombs_are_refused_from_the_header(lt, healthy, kind):
    with pytest.raises(lt.ImageTooLarge, match="60000x60000"):
        healthy.predict(bomb(kind))


@pytest.mark.parametrize(
    ("name", "color"), [("one_pixel.png", (200, 30, 60)), ("one_by_5000.png", (20, 130, 60))]
)
def test_extreme_aspect_ratios_give_the_right_tensor(tiny, name, color):
    """A solid-colour image preprocesses to that colour, normalized, in every position."""
    x = tiny.preprocess(image_bytes(name))
    mean, std = tiny.manifest["input"]["mean"], tiny.manifest["input"]["std"]
    expected = (np.array(color) / 255 - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(
        x[0], np.broadcast_to(expected[:, None, None], x[0].shape), atol=1e-5
    )
    assert len(tiny.predict(image_bytes(name))) == 3


def test_batch_limits(lt, healthy):
    with pytest.raises(lt.InvalidInput, match="max_batch of 4"):
        healthy.predict_batch([image_bytes("chelsea.jpg")] * 5)
    with pytest.raises(lt.InvalidInput, match="empty"):
        healthy.predict_batch([])


@pytest.mark.parametrize(
    "value",
    [
        np.zeros((1, 3, 224, 224), np.float64),
        np.zeros((1, 3, 224, 224), np.int32),
        np.zeros((1, 3, 224, 224), bool),
        np.zeros((1, 3, 224, 224), object),
        [[0.0] * 4],
        np.float32(1.0),
    ],
    ids=["float64", "int32", "bool", "object", "list", "scalar"],
)
def test_forward_wrong_dtypes(lt, healthy, value):
    with pytest.raises(lt.InvalidInput, match="float32"):
        healthy.forward(value)


@pytest.mark.parametrize(
    ("model", "shape"),
    [
        ("tiny", (1, 5, 224, 224)),
        ("tiny", (1, 3, 224)),
        ("tiny", (0, 3, 224, 224)),
        ("tiny", ()),
        ("tensor", (2, 5)),
        ("tensor", (4,)),
        ("tensor", (0, 4)),
    ],
    ids=str,
)
def test_forward_wrong_shapes(lt, healthy, model, shape):
    with pytest.raises(lt.InvalidInput, match=r"shape|batch is empty"):
        lt.load(MODELS / model).forward(np.zeros(shape, np.float32))


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_forward_refuses_non_finite_numbers(lt, value):
    tensor = lt.load(MODELS / "tensor")
    x = np.zeros((2, 4), np.float32)
    x[1, 2] = value
    with pytest.raises(
        lt.InvalidInput, match=f"holds {'NaN' if np.isnan(value) else value}.* element 6"
    ):
        tensor.forward(x)
    assert np.isfinite(tensor.forward(np.zeros((2, 4), np.float32))).all()


def test_forward_takes_strided_views(lt):
    """Non-contiguous and Fortran-ordered arrays give the same answer as contiguous ones."""
    tensor = lt.load(MODELS / "tensor")
    x = np.arange(24, dtype=np.float32).reshape(6, 4) / 24
    expected = tensor.forward(np.ascontiguousarray(x[::2]))
    np.testing.assert_array_equal(tensor.forward(x[::2]), expected)
    np.testing.assert_array_equal(tensor.forward(np.asfortranarray(x[::2])), expected)


@pytest.mark.parametrize(
    ("variable", "value", "call", "error", "message"),
    [
        ("LAMBDATORCH_MAX_TENSOR_ELEMENTS", "10", "forward", "PayloadTooLarge", "count is 12"),
        ("LAMBDATORCH_MAX_BATCH", "2", "batch", "InvalidInput", "LAMBDATORCH_MAX_BATCH"),
        ("LAMBDATORCH_MAX_TOP_K", "2", "top_k", "InvalidInput", "LAMBDATORCH_MAX_TOP_K"),
    ],
    ids=["tensor-elements", "batch", "top-k"],
)
def test_limits_come_from_the_environment(
    lt, tmp_path, monkeypatch, variable, value, call, error, message
):
    monkeypatch.setenv(variable, value)
    tensor = lt.load(model_dir(tmp_path, "tensor"))
    tiny = lt.load(model_dir(tmp_path, "tiny"))
    image = image_bytes("chelsea.jpg")
    run = {
        "forward": lambda: tensor.forward(np.zeros((3, 4), np.float32)),
        "batch": lambda: tiny.predict_batch([image] * 3),
        "top_k": lambda: tiny.predict(image, top_k=3),
    }[call]
    with pytest.raises(getattr(lt, error), match=message) as info:
        run()
    assert variable in str(info.value)
    assert tensor.forward(np.zeros((2, 4), np.float32)).shape == (2, 3)
    assert len(tiny.predict_batch([image] * 2, top_k=2)) == 2


@pytest.mark.parametrize("value", ["0", "-5", "lots", "1e6"])
def test_bad_limit_values_are_refused(lt, tmp_path, monkeypatch, value):
    monkeypatch.setenv("LAMBDATORCH_MAX_TENSOR_ELEMENTS", value)
    with pytest.raises(lt.InvalidInput, match="LAMBDATORCH_MAX_TENSOR_ELEMENTS must be a positive"):
        lt.load(model_dir(tmp_path, "tensor"))


def test_panics_become_internal_errors(lt, healthy):
    """A panic (a bug) inside the extension raises InternalError (never blamed on the model), not
    PyO3's PanicException (a BaseException), and leaves the process and the model working."""
    from lambdatorch._libtorch import import_core

    for _ in range(3):
        with pytest.raises(lt.InternalError, match=r"internal error.*boom"):
            import_core()._panic_for_tests("boom")


def test_model_kinds_are_checked(lt):
    tensor = lt.load(MODELS / "tensor")
    with pytest.raises(lt.InvalidInput, match="raw output"):
        tensor.predict(image_bytes("chelsea.jpg"))


def test_pixel_limit_is_checked_from_the_header(lt, tmp_path, monkeypatch):
    monkeypatch.setenv("LAMBDATORCH_MAX_IMAGE_PIXELS", "10000")
    model = lt.load(model_dir(tmp_path))
    with pytest.raises(
        lt.ImageTooLarge, match="451x300 = 135300 pixels, over the limit of 10000"
    ) as info:
        model.predict(image_bytes("chelsea.jpg"))
    assert isinstance(info.value, lt.InvalidInput)
    assert "LAMBDATORCH_MAX_IMAGE_PIXELS" in str(info.value)
    with pytest.raises(lt.ImageTooLarge):
        model.predict(np.zeros((200, 200, 3), np.uint8))
    assert model.predict(image_bytes("one_pixel.png"))


def test_missing_model(lt, tmp_path):
    with pytest.raises(lt.ModelNotFound, match="no model") as info:
        lt.load(tmp_path / "nothing-here")
    assert isinstance(info.value, LookupError)


def broken(tmp_path, edit):
    """A copy of the tiny model whose manifest text goes through ``edit``."""
    path = model_dir(tmp_path)
    manifest = path / "manifest.json"
    manifest.write_text(edit(manifest.read_text()))
    return path


@pytest.mark.parametrize(
    ("edit", "field", "hint"),
    [
        (lambda t: t.replace('"resize_shorter"', '"resize_shorte"'), "input", "resize_shorte"),
        (lambda t: t.replace('"top_k": 3', '"top_k": "3"'), "output.top_k", "expected usize"),
        (lambda t: t.replace('"torchscript"', '"onnx"'), "format", "onnx"),
        (lambda t: t.replace('"labels.txt"', '"missing.txt"'), "output.labels", "missing.txt"),
        (lambda t: t.replace('"model.pt"', '"../../etc/passwd"'), "file", "outside"),
        (lambda t: t.replace('"max_batch": 4', '"max_batch": 0'), "max_batch", "1 to 1024"),
        (lambda t: t[:-20], "(syntax)", "EOF"),
        (lambda t: "[]", "(top level)", "expected struct"),
    ],
    ids=["typo", "wrong-type", "format", "labels", "escape", "max-batch", "truncated", "array"],
)
def test_broken_manifests_name_file_and_field(lt, tmp_path, edit, field, hint):
    path = broken(tmp_path, edit)
    with pytest.raises(lt.ManifestError) as info:
        lt.load(path)
    message = str(info.value)
    assert str(path / "manifest.json") in message
    assert f": {field}" in message
    assert hint in message


def test_model_file_checks(lt, tmp_path):
    wrong_digest = model_dir(tmp_path / "a", sha256="0" * 64)
    with pytest.raises(lt.ManifestError, match=r"sha256.*corrupt, truncated or replaced"):
        lt.load(wrong_digest)

    truncated = model_dir(tmp_path / "b", sha256=None)
    data = (truncated / "model.pt").read_bytes()
    (truncated / "model.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(lt.ManifestError, match="not a loadable TorchScript model"):
        lt.load(truncated)

    outside = tmp_path / "c"
    outside.mkdir()
    escaping = model_dir(tmp_path / "d", sha256=None)
    shutil.move(escaping / "model.pt", outside / "model.pt")
    os.symlink(outside / "model.pt", escaping / "model.pt")
    with pytest.raises(lt.ManifestError, match="outside the model directory"):
        lt.load(escaping)


def test_the_error_survives_a_broken_exception_module(lt, healthy, monkeypatch):
    """If the exception class cannot be looked up, the error still reaches the caller: as a
    RuntimeError naming its type, with the failed lookup as its cause."""
    import lambdatorch.errors

    monkeypatch.delattr(lambdatorch.errors, "InvalidImage")
    with pytest.raises(RuntimeError, match=r"^InvalidImage: .*unrecognized image format") as info:
        healthy.predict(b"not an image")
    assert isinstance(info.value.__cause__, AttributeError)
