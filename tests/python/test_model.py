"""Models: same numbers as Python torch on the same file and tensor, and the Python API's shape."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from conftest import MODELS, image_bytes, model_dir

FORWARD_TOLERANCE = 1e-5


def torch_forward(model_name: str, x: np.ndarray) -> np.ndarray:
    module = torch.jit.load(str(MODELS / model_name / "model.pt"))
    module.eval()
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("name", ["tiny", "mobilenet"])
def test_forward_matches_python_torch(lt, name):
    model = lt.load(MODELS / name)
    x = model.preprocess(image_bytes("astronaut.jpg"))
    ours = model.forward(x)
    theirs = torch_forward(name, x)
    assert ours.dtype == np.float32
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, atol=FORWARD_TOLERANCE, rtol=0)


def test_predictions_are_torch_softmax_top_k(lt):
    model = lt.load(MODELS / "mobilenet")
    x = model.preprocess(image_bytes("coffee.jpg"))
    probabilities = torch.softmax(torch.from_numpy(torch_forward("mobilenet", x)), dim=1)[0]
    top = torch.topk(probabilities, 5)
    predictions = model.predict(image_bytes("coffee.jpg"))
    assert [p.index for p in predictions] == top.indices.tolist()
    assert [p.label for p in predictions] == [f"class {i}" for i in top.indices.tolist()]
    np.testing.assert_allclose([p.score for p in predictions], top.values.numpy(), atol=1e-6)


def test_labels_from_file_top_k_and_prediction_type(lt, tiny):
    predictions = tiny.predict(image_bytes("chelsea.jpg"))
    assert len(predictions) == 3  # manifest top_k
    labels = (MODELS / "tiny" / "labels.txt").read_text().split()
    for p in predictions:
        assert isinstance(p, lt.Prediction)
        assert p.label == labels[p.index]
        assert 0.0 < p.score < 1.0
    assert [p.score for p in predictions] == sorted((p.score for p in predictions), reverse=True)
    assert len(tiny.predict(image_bytes("chelsea.jpg"), top_k=1)) == 1
    assert len(tiny.predict(image_bytes("chelsea.jpg"), top_k=1000)) == 10
    assert lt.Prediction(1, "one", 0.5) == lt.Prediction(1, "one", 0.5)
    assert repr(lt.Prediction(1, "one", 0.5)) == "Prediction(index=1, label='one', score=0.500000)"


def test_no_softmax_gives_raw_scores(lt):
    model = lt.load(MODELS / "gray")
    x = model.preprocess(image_bytes("chelsea_gray.png"))
    raw = torch_forward("gray", x)[0]
    predictions = model.predict(image_bytes("chelsea_gray.png"))
    assert [p.label for p in predictions] == [["a", "b", "c", "d"][i] for i in np.argsort(-raw)]
    np.testing.assert_allclose(
        sorted((p.score for p in predictions), reverse=True), sorted(raw, reverse=True), atol=1e-5
    )


def test_batch_equals_single_predictions(tiny):
    names = ["chelsea.jpg", "coffee.jpg", "rocket.jpg", "astronaut.jpg"]
    batch = tiny.predict_batch([image_bytes(n) for n in names])
    assert len(batch) == 4
    for name, predictions in zip(names, batch, strict=True):
        single = tiny.predict(image_bytes(name))
        assert [p.index for p in predictions] == [p.index for p in single]
        np.testing.assert_allclose(
            [p.score for p in predictions], [p.score for p in single], atol=1e-6
        )


def test_tensor_model_forward(lt):
    model = lt.load(MODELS / "tensor")
    x = np.arange(12, dtype=np.float32).reshape(3, 4) / 10
    np.testing.assert_allclose(model.forward(x), torch_forward("tensor", x), atol=FORWARD_TOLERANCE)
    assert model.manifest["input"] == {"type": "tensor", "shape": [-1, 4], "dtype": "float32"}


def test_load_is_cached_per_process(lt, tiny):
    assert lt.load(MODELS / "tiny") is not tiny  # a new handle...
    again = lt.load(MODELS / "tiny" / "manifest.json")
    assert again.name == "tiny"
    # ...on the same loaded model: the registry holds one per directory.
    assert again.predict(image_bytes("chelsea.jpg")) == tiny.predict(image_bytes("chelsea.jpg"))


def test_arrays_are_handed_over_without_a_copy(tiny):
    """preprocess and forward return arrays that view the Rust buffer (owned by a capsule)."""
    x = tiny.preprocess(image_bytes("chelsea.jpg"))
    y = tiny.forward(x)
    for array in (x, y):
        assert not array.flags.owndata
        assert array.base is not None
        assert array.flags.c_contiguous and array.flags.writeable


def test_manifest_has_defaults_filled_in(tiny):
    manifest = tiny.manifest
    assert manifest["threads"] == "auto"
    assert manifest["warmup"] is True
    assert manifest["input"]["decode"] == "exact"
    assert manifest["output"]["softmax"] is True


def test_threads_share_one_model(tiny):
    """8 threads x 200 predictions on one model give exactly the sequential answers."""
    names = ["chelsea.jpg", "coffee.jpg", "rocket.jpg", "astronaut.jpg", "hubble.jpg"]
    images = [image_bytes(n) for n in names]
    expected = [tiny.predict(im) for im in images]
    results: dict[int, list] = {}
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            results[worker] = [tiny.predict(images[(worker + i) % 5]) for i in range(200)]
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for worker, got in results.items():
        for i, predictions in enumerate(got):
            assert predictions == expected[(worker + i) % 5]


def test_gil_is_released_during_inference(tiny):
    """Another Python thread makes progress while predictions run."""
    image = image_bytes("retina.jpg")
    ticks = 0
    done = threading.Event()

    def count() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1

    counter = threading.Thread(target=count)
    counter.start()
    try:
        before = ticks
        for _ in range(5):
            tiny.predict(image)
        during = ticks - before
    finally:
        done.set()
        counter.join()
    assert during > 1000


def test_warmup_off_and_fixed_threads_load(lt, tmp_path):
    model = lt.load(model_dir(tmp_path, warmup=False, threads=1))
    assert model.manifest["threads"] == 1
    assert len(model.predict(image_bytes("chelsea.jpg"))) == 3


# Each dtype model's numpy input, and what the reference torch module returns for it.
DTYPE_INPUTS = {
    "dtype-int64": np.array([[2**53 + 1, -3, 0, 2**40]], np.int64),
    "dtype-bool": np.array([[True, False, False, True]]),
    "dtype-uint8": np.array([[0, 1, 255, 7]], np.uint8),
    "dtype-float16": np.array([[0.1, 1, -2, 65000]], np.float16),
    "dtype-float64": np.array([[0.1, 1, -2, 1e300]], np.float64),
}


@pytest.mark.parametrize("name", sorted(DTYPE_INPUTS))
def test_forward_keeps_dtypes_in_and_out(lt, name):
    """numpy dtype in, numpy dtype out, and the values Python torch gives: int64 beyond 2**53
    intact, uint8 widened by the model to int32, float16 overflowing to inf as torch's does."""
    x = DTYPE_INPUTS[name]
    ours = lt.load(MODELS / name).forward(x)
    theirs = torch_forward(name, x)
    assert ours.dtype == theirs.dtype
    np.testing.assert_array_equal(ours, theirs)


def test_bfloat16_models_take_and_return_float32(lt):
    """numpy has no bfloat16: float32 in (rounded as torch rounds it), float32 out (exact)."""
    x = np.array([[0.1, 1.0, -2.0, 3.14159]], np.float32)
    ours = lt.load(MODELS / "dtype-bfloat16").forward(x)
    module = torch.jit.load(str(MODELS / "dtype-bfloat16" / "model.pt"))
    theirs = module(torch.from_numpy(x).to(torch.bfloat16)).float().numpy()
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, theirs)


def test_forward_refuses_other_dtypes_naming_both(lt):
    model = lt.load(MODELS / "dtype-int64")
    with pytest.raises(lt.InvalidInput, match=r"dtype int64, got an array of dtype float32"):
        model.forward(np.zeros((1, 4), np.float32))
    with pytest.raises(lt.InvalidInput, match="numpy array of dtype float32"):
        lt.load(MODELS / "tensor").forward(np.zeros((1, 4), np.int64))
