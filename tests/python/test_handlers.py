"""Both Lambda handlers, the same events, the same answers.

The Python handler (``lambdatorch.handler.lambda_handler``) runs in a fresh interpreter whose only
import path is the one holding lambdatorch and torch (no site-packages), and is called directly:
the Python runtime client cannot talk to the local emulator. The native handler (``bootstrap``,
which execs ``lambdatorch-handler``) runs under cargo-lambda's Runtime API emulator and is invoked
over HTTP. Events are the real AWS samples shipped in the ``aws_lambda_events`` crate, carrying
our images; the Function URL event is the HTTP API v2 sample on a ``lambda-url`` domain, which is
the whole difference between the two payloads.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import MODELS, REPO, bomb, image_bytes
from handler_harness import (
    LAMBDA_BIN,
    SITE,
    SOURCES,
    TIMEOUT,
    Handlers,
    http_event,
)

PAYLOAD_LIMIT = 1_000_000
TENSOR_LIMIT = 1000


@pytest.fixture(scope="module")
def models_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("efs") / "models"
    root.mkdir()
    for name in ("tiny", "gray", "tensor"):
        shutil.copytree(MODELS / name, root / name)
    # A symlink out of the root: a valid name, but it must be refused.
    (root / "escape").symlink_to(MODELS / "mobilenet", target_is_directory=True)
    # Broken model directories: each must fail its own requests with ManifestError, not others'.
    broken_model(root, "truncated", lambda m, pt: pt.write_bytes(pt.read_bytes()[:1000]), sha=False)
    broken_model(root, "corrupt", lambda m, pt: pt.write_bytes(b"\x00" * 4096))
    broken_model(root, "outside", lambda m, pt: m.update(file="../tiny/model.pt"))
    return root


def broken_model(root: Path, name: str, damage, sha: bool = True) -> None:
    """A copy of ``tiny`` as ``root/name``, with ``damage(manifest, model_file)`` applied."""
    shutil.copytree(MODELS / "tiny", root / name)
    manifest = json.loads((root / name / "manifest.json").read_text())
    if not sha:
        del manifest["sha256"]
    damage(manifest, root / name / "model.pt")
    (root / name / "manifest.json").write_text(json.dumps(manifest))


def handler_env(models_root: Path) -> dict[str, str]:
    return {
        "PATH": os.environ["PATH"],
        "LAMBDATORCH_MODELS": str(models_root),
        "LAMBDATORCH_DEFAULT_MODEL": "tiny",
        "LAMBDATORCH_PRELOAD": "tiny,gray",
        "LAMBDATORCH_MAX_PAYLOAD_BYTES": str(PAYLOAD_LIMIT),
        "LAMBDATORCH_MAX_TENSOR_ELEMENTS": str(TENSOR_LIMIT),
    }


@pytest.fixture(scope="module")
def handlers(models_root, tmp_path_factory):
    with Handlers(handler_env(models_root), tmp_path_factory.mktemp("logs")) as both:
        yield both


def body(reply: dict[str, Any]) -> dict[str, Any]:
    assert reply["headers"].get("content-type") or reply["multiValueHeaders"].get("content-type")
    return json.loads(reply["body"])


@pytest.mark.parametrize("source", SOURCES)
def test_image_bodies_from_every_source(handlers, tiny, source):
    reply = handlers.both(http_event(source, image_bytes("chelsea.jpg")))
    assert reply["statusCode"] == 200
    answer = body(reply)
    assert answer["model"] == "tiny"
    expected = tiny.predict(image_bytes("chelsea.jpg"))
    assert [p["index"] for p in answer["predictions"]] == [p.index for p in expected]
    assert [p["label"] for p in answer["predictions"]] == [p.label for p in expected]
    assert [p["score"] for p in answer["predictions"]] == pytest.approx([p.score for p in expected])
    assert set(answer["timings_ms"]) == {"decode", "preprocess", "inference", "total"}
    if source == "alb-multi":
        assert reply["multiValueHeaders"]["content-type"] == ["application/json"]
    if source.startswith("alb"):
        assert reply["statusDescription"] == "200 OK"


@pytest.mark.parametrize("source", SOURCES)
def test_json_bodies_query_strings_and_paths(handlers, source):
    image = base64.b64encode(image_bytes("coffee.jpg")).decode()
    request = json.dumps({"images": [image, image], "top_k": 2}).encode()
    answer = body(handlers.both(http_event(source, request, "application/json")))
    assert len(answer["results"]) == 2
    assert all(len(r["predictions"]) == 2 for r in answer["results"])
    by_query = http_event(
        source, image_bytes("chelsea_gray.png"), "image/png", {"model": "gray", "top_k": "1"}
    )
    answer = body(handlers.both(by_query))
    assert answer["model"] == "gray" and len(answer["predictions"]) == 1
    by_path = http_event(
        source, image_bytes("chelsea_gray.png"), "image/png", path="/prod/models/gray"
    )
    assert body(handlers.both(by_path))["model"] == "gray"


def test_direct_invokes(handlers):
    image = base64.b64encode(image_bytes("rocket.jpg")).decode()
    single = handlers.both({"image": image, "top_k": 1})
    assert list(single) == ["model", "predictions", "timings_ms"]
    assert len(single["predictions"]) == 1
    batch = handlers.both({"model": "tiny", "images": [image] * 3})
    assert len(batch["results"]) == 3
    assert batch["results"][0]["predictions"][0] == single["predictions"][0]
    raw = handlers.both({"model": "tensor", "tensor": {"shape": [2, 4], "data": [0.5] * 8}})
    assert raw["output"]["shape"] == [2, 3]
    assert len(raw["output"]["data"]) == 6


BAD_HTTP = [
    ("garbage", b"\x00\x01garbage", {}, 400, "InvalidImage"),
    ("truncated", image_bytes("truncated.jpg"), {}, 400, "InvalidImage"),
    ("text", b"hello", {}, 400, "InvalidImage"),
    ("unknown-model", image_bytes("chelsea.jpg"), {"model": "nope"}, 404, "ModelNotFound"),
    ("dotdot", image_bytes("chelsea.jpg"), {"model": "../tiny"}, 404, "ModelNotFound"),
    ("absolute", image_bytes("chelsea.jpg"), {"model": "/etc"}, 404, "ModelNotFound"),
    ("slash", image_bytes("chelsea.jpg"), {"model": "a/b"}, 404, "ModelNotFound"),
    ("encoded", image_bytes("chelsea.jpg"), {"model": "%2e%2e%2ftiny"}, 404, "ModelNotFound"),
    ("symlink-out", image_bytes("chelsea.jpg"), {"model": "escape"}, 404, "ModelNotFound"),
    ("top-k-word", image_bytes("chelsea.jpg"), {"top_k": "many"}, 400, "InvalidInput"),
    ("top-k-zero", image_bytes("chelsea.jpg"), {"top_k": "0"}, 400, "InvalidInput"),
    ("too-large", b"\xff" * (PAYLOAD_LIMIT + 1), {}, 413, "PayloadTooLarge"),
    ("png-bomb", bomb("png"), {}, 413, "ImageTooLarge"),
    ("jpeg-bomb", bomb("jpeg"), {}, 413, "ImageTooLarge"),
    ("gif-bomb", bomb("gif"), {}, 413, "ImageTooLarge"),
    ("empty-image", b"", {}, 400, "InvalidInput"),
    ("dotdot-plain", image_bytes("chelsea.jpg"), {"model": ".."}, 404, "ModelNotFound"),
    ("encoded-dots", image_bytes("chelsea.jpg"), {"model": "%2e%2e"}, 404, "ModelNotFound"),
    (
        "encoded-slash",
        image_bytes("chelsea.jpg"),
        {"model": "tiny%2f..%2f..%2fetc"},
        404,
        "ModelNotFound",
    ),
    ("truncated-model", image_bytes("chelsea.jpg"), {"model": "truncated"}, 500, "ManifestError"),
    ("corrupt-model", image_bytes("chelsea.jpg"), {"model": "corrupt"}, 500, "ManifestError"),
    ("manifest-outside", image_bytes("chelsea.jpg"), {"model": "outside"}, 500, "ManifestError"),
]


def test_models_in_paths_are_checked(handlers):
    """Names from `/models/<name>` paths: percent-encoding is not decoded into a way out."""
    for path in ["/models/..", "/models/%2e%2e", "/models/..%2ftiny", "/models/%2Fetc"]:
        reply = handlers.both(http_event("apigw-v2", image_bytes("chelsea.jpg"), path=path))
        assert reply["statusCode"] == 404, path
        assert body(reply)["error"]["type"] == "ModelNotFound"


@pytest.mark.parametrize("source", ["apigw-v1", "apigw-v2", "alb"])
@pytest.mark.parametrize(
    ("data", "query", "status", "error"),
    [case[1:] for case in BAD_HTTP],
    ids=[case[0] for case in BAD_HTTP],
)
def test_bad_http_requests(handlers, models_root, source, data, query, status, error):
    reply = handlers.both(http_event(source, data, "image/jpeg", query))
    assert reply["statusCode"] == status
    answer = body(reply)
    assert answer["error"]["type"] == error
    assert str(models_root) not in answer["error"]["message"]
    assert str(REPO) not in answer["error"]["message"]
    assert "/tmp" not in answer["error"]["message"]
    # ...and the next request is served.
    assert handlers.both(http_event(source, image_bytes("chelsea.jpg")))["statusCode"] == 200


BAD_JSON = [
    ("wrong-type", {"image": 5}, "InvalidInput"),
    ("bad-base64", {"image": "not base64!"}, "InvalidInput"),
    ("unknown-field", {"img": "AAAA"}, "InvalidInput"),
    ("no-input", {"model": "tiny"}, "InvalidInput"),
    ("negative-top-k", {"image": "AAAA", "top_k": -3}, "InvalidInput"),
    ("huge-top-k", {"image": "AAAA", "top_k": 10**12}, "InvalidInput"),
    ("top-k-string", {"image": "AAAA", "top_k": "3"}, "InvalidInput"),
    ("top-k-float", {"image": "AAAA", "top_k": 2.5}, "InvalidInput"),
    (
        "top-k-over-classes",
        {"image": base64.b64encode(image_bytes("chelsea.jpg")).decode(), "top_k": 50},
        None,
    ),
    ("event-array", [1, 2], "InvalidInput"),
    ("event-string", "hello", "InvalidInput"),
    ("event-null", None, "InvalidInput"),
    ("images-string", {"images": "AAAA"}, "InvalidInput"),
    ("images-of-numbers", {"images": [1, 2]}, "InvalidInput"),
    ("model-number", {"model": 5, "image": "AAAA"}, "InvalidInput"),
    ("tensor-list", {"model": "tensor", "tensor": [1, 2, 3, 4]}, "InvalidInput"),
    ("bad-base64-padding", {"image": "AAA"}, "InvalidInput"),
    ("bad-base64-url", {"image": "_-_-"}, "InvalidInput"),
    (
        "tensor-infinite",
        {"model": "tensor", "tensor": {"shape": [1, 4], "data": [1e39, 0, 0, 0]}},
        "InvalidInput",
    ),
    (
        "tensor-negative-infinite",
        {"model": "tensor", "tensor": {"shape": [1, 4], "data": [0, -1e39, 0, 0]}},
        "InvalidInput",
    ),
    (
        "tensor-nan-string",
        {"model": "tensor", "tensor": {"shape": [1, 4], "data": ["NaN", 0, 0, 0]}},
        "InvalidInput",
    ),
    (
        "tensor-null",
        {"model": "tensor", "tensor": {"shape": [1, 4], "data": [None, 0, 0, 0]}},
        "InvalidInput",
    ),
    (
        "tensor-negative-shape",
        {"model": "tensor", "tensor": {"shape": [-1, 4], "data": [0] * 4}},
        "InvalidInput",
    ),
    (
        "tensor-shape-overflow",
        {"model": "tensor", "tensor": {"shape": [2**40, 2**40], "data": [0]}},
        "InvalidInput",
    ),
    (
        "tensor-over-element-limit",
        {"model": "tensor", "tensor": {"shape": [251, 4], "data": [0] * 1004}},
        "PayloadTooLarge",
    ),
    (
        "tensor-to-image-model",
        {"model": "tiny", "tensor": {"shape": [1, 4], "data": [0] * 4}},
        "InvalidInput",
    ),
    ("corrupt-model", {"model": "corrupt", "image": "AAAA"}, "ManifestError"),
    ("outside-model", {"model": "outside", "image": "AAAA"}, "ManifestError"),
    ("empty-images", {"images": []}, "InvalidInput"),
    ("over-max-batch", {"images": ["AAAA"] * 5}, "InvalidInput"),
    (
        "tensor-shape",
        {"model": "tensor", "tensor": {"shape": [1, 5], "data": [0] * 5}},
        "InvalidInput",
    ),
    ("image-to-tensor-model", {"model": "tensor", "image": "AAAA"}, "InvalidInput"),
    ("name-too-long", {"model": "a" * 1000, "image": "AAAA"}, "ModelNotFound"),
    ("name-non-ascii", {"model": "modèle", "image": "AAAA"}, "ModelNotFound"),
    ("name-nul", {"model": "tiny\u0000", "image": "AAAA"}, "ModelNotFound"),
    ("name-empty", {"model": "", "image": "AAAA"}, "ModelNotFound"),
]


@pytest.mark.parametrize(
    ("event", "error"), [c[1:] for c in BAD_JSON], ids=[c[0] for c in BAD_JSON]
)
def test_bad_direct_invokes_are_function_errors(handlers, event, error):
    reply = handlers.both(event)
    if error is None:
        assert len(reply["predictions"]) == 10  # top_k beyond the class count: every class
        return
    assert reply["errorType"] == error, reply
    assert reply["errorMessage"]


def test_integers_beyond_64_bits(handlers):
    """Both refuse them; the messages differ: JSON parses 10**30 as a float, Python keeps an int."""
    for event in ({"image": "AAAA", "top_k": 10**30}, {"image": "AAAA", "top_k": -(10**30)}):
        for handler in ("python", "native"):
            assert handlers[handler](event)["errorType"] == "InvalidInput", handler


def test_non_finite_numbers_from_python_callers(handlers):
    """JSON has no NaN (Lambda refuses such payloads), but a Python caller can pass one."""
    for value in (float("nan"), float("inf"), float("-inf")):
        event = {"model": "tensor", "tensor": {"shape": [1, 4], "data": [value, 0.0, 0.0, 0.0]}}
        assert handlers["python"](event)["errorType"] == "InvalidInput"


IMAGE_KINDS = [
    "one_pixel.png",
    "one_by_5000.png",
    "chelsea_rgb16.png",
    "chelsea_palette.png",
    "chelsea_la.png",
    "chelsea_cmyk.jpg",
    "chelsea_progressive.jpg",
    "chelsea.webp",
    "chelsea.bmp",
    "animated.gif",
] + [f"orientation_{i}.jpg" for i in range(1, 9)]


@pytest.mark.parametrize("name", IMAGE_KINDS)
def test_every_image_kind_through_both_handlers(handlers, tiny, name):
    """Odd sizes, bit depths, palettes, alpha, CMYK, animation and EXIF orientations: both
    handlers give the Python API's answer."""
    event = {"image": base64.b64encode(image_bytes(name)).decode(), "top_k": 10}
    answer = handlers.both(event)
    expected = tiny.predict(image_bytes(name), top_k=10)
    assert [p["index"] for p in answer["predictions"]] == [p.index for p in expected]
    assert [p["score"] for p in answer["predictions"]] == pytest.approx(
        [p.score for p in expected], abs=1e-6
    )


def test_http_errors_are_logged_with_the_details(handlers):
    """The caller's message names no paths and points to the logs: the logs must have it."""
    event = http_event("apigw-v2", b"not an image", "image/jpeg", {"model": "gray"})
    assert handlers.both(event)["statusCode"] == 400
    for handler in ("python", "native"):
        log = handlers[handler].log_path.read_text()
        failures = [json.loads(line) for line in log.splitlines() if '"request failed"' in line]
        assert failures, f"{handler} logged no failure"
        assert failures[-1]["error_type"] == "InvalidImage"
        assert "unrecognized image format" in failures[-1]["error"]


def test_both_handlers_log_each_request_alike(handlers):
    """One JSON line per request from the shared core: same fields, same levels, request id."""
    handlers.both({"image": base64.b64encode(image_bytes("chelsea.jpg")).decode()})
    assert handlers.both({"model": "nope", "image": "AAAA"})["errorType"] == "ModelNotFound"
    lines = {}
    for handler in ("python", "native"):
        log = [json.loads(line) for line in handlers[handler].log_path.read_text().splitlines()
               if line.startswith("{") and '"request_id"' in line]  # fmt: skip
        answered = [e for e in log if e.get("message") == "request"]
        failed = [e for e in log if e.get("message") == "request failed"]
        assert answered and failed, f"{handler} logged {log[-3:]}"
        assert all(e["request_id"] for e in answered + failed), handler
        lines[handler] = (answered[-1], failed[-1])
    for i in range(2):
        python, native = lines["python"][i], lines["native"][i]
        assert set(python) == set(native)
        assert python["level"] == native["level"]
    assert lines["python"][0]["level"] == "INFO"
    assert lines["python"][1]["level"] == "WARN"
    assert lines["python"][1]["error_type"] == "ModelNotFound"


def test_bad_json_over_http_is_400(handlers):
    event = http_event("apigw-v2", b'{"image": [1, 2]}', "application/json")
    reply = handlers.both(event)
    assert reply["statusCode"] == 400
    assert "`image`" in body(reply)["error"]["message"]
    broken = http_event("apigw-v2", b'{"image": ', "application/json")
    assert handlers.both(broken)["statusCode"] == 400


def test_native_handler_reports_missing_libtorch(tmp_path):
    """bootstrap checks libtorch before the handler (which links it) can start."""
    out = subprocess.run(
        [str(LAMBDA_BIN / "bootstrap")],
        env={"PATH": os.environ["PATH"], "LAMBDATORCH_LIBTORCH": str(tmp_path / "lib")},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert out.returncode != 0
    report = json.loads(out.stderr.strip().splitlines()[0])
    assert report["errorType"] == "LibTorchError"
    assert str(tmp_path / "lib") in report["errorMessage"]
    assert "2.13.0" in report["errorMessage"]
    assert "cannot open shared object" not in out.stderr


def test_both_handlers_preload_during_init(models_root):
    """A model named by LAMBDATORCH_PRELOAD is loaded at init: a wrong one fails init, clearly."""
    env = {**handler_env(models_root), "LAMBDATORCH_PRELOAD": "tiny,nope"}
    python = subprocess.run(
        [sys.executable, "-S", "-c", "import lambdatorch.handler"],
        env={**env, "PYTHONPATH": str(SITE)},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert python.returncode != 0
    assert "lambdatorch.errors.ModelNotFound" in python.stderr and "nope" in python.stderr
    native = subprocess.run(
        [str(LAMBDA_BIN / "bootstrap")],
        env={**env, "LAMBDATORCH_LIBTORCH": str(SITE / "torch" / "lib")},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert native.returncode != 0
    failure = next(json.loads(line) for line in native.stderr.splitlines() if "preload" in line)
    assert failure["error_type"] == "ModelNotFound" and "nope" in failure["error"]
