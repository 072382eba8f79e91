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
import copy
import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import MODELS, REPO, bomb, image_bytes

SITE = Path(sysconfig.get_paths()["purelib"])
LAMBDA_BIN = REPO / "target" / "lambda"
PAYLOAD_LIMIT = 1_000_000
TENSOR_LIMIT = 1000
TIMEOUT = 60


def crate_dir(name: str) -> Path:
    out = subprocess.run(
        ["cargo", "metadata", "--format-version", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    package = next(p for p in json.loads(out.stdout)["packages"] if p["name"] == name)
    return Path(package["manifest_path"]).parent


SAMPLES = crate_dir("aws_lambda_events") / "src" / "fixtures"
SAMPLE_FILES = {
    "apigw-v1": "example-apigw-request.json",
    "apigw-v2": "example-apigw-v2-request-no-authorizer.json",
    "function-url": "example-apigw-v2-request-no-authorizer.json",
    "alb": "example-alb-lambda-target-request-headers-only.json",
    "alb-multi": "example-alb-lambda-target-request-multivalue-headers.json",
}
SOURCES = list(SAMPLE_FILES)


def http_event(
    source: str,
    body: bytes,
    content_type: str = "image/jpeg",
    query: dict[str, str] | None = None,
    path: str = "/predict",
) -> dict[str, Any]:
    """The real sample event of ``source`` carrying ``body`` (base64, as AWS sends it)."""
    event = json.loads((SAMPLES / SAMPLE_FILES[source]).read_text())
    query = query or {}
    event["body"] = base64.b64encode(body).decode()
    event["isBase64Encoded"] = True
    if source.startswith("apigw-v2") or source == "function-url":
        event["headers"] = {"content-type": content_type}
        event["rawPath"] = path
        event["rawQueryString"] = "&".join(f"{k}={v}" for k, v in query.items())
        event["queryStringParameters"] = query
        event["requestContext"]["http"]["path"] = path
        if source == "function-url":
            event["requestContext"]["domainName"] = "abcdefg.lambda-url.us-east-1.on.aws"
    elif source == "alb-multi":
        event["multiValueHeaders"] = {"content-type": [content_type]}
        event["multiValueQueryStringParameters"] = {k: [v] for k, v in query.items()}
        event["path"] = path
    elif source == "alb":
        event["headers"] = {"content-type": content_type}
        event["queryStringParameters"] = query
        event["path"] = path
    else:  # API Gateway v1 sends null, not {}, when there is no query string
        event["headers"] = {"Content-Type": content_type}
        event["multiValueHeaders"] = {"Content-Type": [content_type]}
        event["queryStringParameters"] = query or None
        event["multiValueQueryStringParameters"] = {k: [v] for k, v in query.items()} or None
        event["path"] = path
    return event


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


PYTHON_DRIVER = """
import json, sys
from lambdatorch.handler import lambda_handler
import lambdatorch
for line in sys.stdin:
    try:
        reply = lambda_handler(json.loads(line), None)
    except lambdatorch.LambdaTorchError as err:
        reply = {"errorType": type(err).__name__, "errorMessage": str(err)}
    print(json.dumps(reply), flush=True)
"""


class PythonHandler:
    """A fresh interpreter running ``lambda_handler``, one event per line."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log_path = log
        self.log = log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-S", "-c", PYTHON_DRIVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env={**env, "PYTHONPATH": str(SITE)},
        )

    def __call__(self, event: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin and self.process.stdout
        self.process.stdin.write(json.dumps(event) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, "the Python handler died"
        return json.loads(line)

    def close(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        self.process.wait(timeout=TIMEOUT)
        if self.process.stdout:
            self.process.stdout.close()
        self.log.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NativeHandler:
    """``bootstrap`` under cargo-lambda's Runtime API emulator, invoked over HTTP."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.log_path = log
        self.log = log.open("w")
        self.emulator = subprocess.Popen(
            [
                "cargo",
                "lambda",
                "watch",
                "--only-lambda-apis",
                "-A",
                "127.0.0.1",
                "-P",
                str(self.port),
            ],
            cwd=REPO,
            # cargo-lambda is installed in the venv, beside this interpreter.
            env={
                **os.environ,
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            },
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.wait_for_port()
        self.runtime = subprocess.Popen(
            [str(LAMBDA_BIN / "bootstrap")],
            env={
                **env,
                "AWS_LAMBDA_RUNTIME_API": f"http://127.0.0.1:{self.port}/.rt",
                "AWS_LAMBDA_FUNCTION_NAME": "_",
                "AWS_LAMBDA_FUNCTION_VERSION": "1",
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "2048",
                "AWS_LAMBDA_LOG_STREAM_NAME": "test",
                "AWS_LAMBDA_LOG_GROUP_NAME": "test",
                "LAMBDATORCH_LIBTORCH": str(SITE / "torch" / "lib"),
            },
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_for_port(self) -> None:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            assert self.emulator.poll() is None, "the emulator exited"
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError("the Runtime API emulator did not start")

    def __call__(self, event: dict[str, Any]) -> dict[str, Any]:
        assert self.runtime.poll() is None, "the native handler exited"
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/2015-03-31/functions/_/invocations",
            data=json.dumps(event).encode(),
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as err:  # function errors: {"errorType", "errorMessage"}
            with err:
                return json.loads(err.read())

    def close(self) -> None:
        for process in (self.runtime, self.emulator):
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        self.log.close()


@pytest.fixture(scope="module")
def handlers(models_root, tmp_path_factory):
    env = handler_env(models_root)
    logs = tmp_path_factory.mktemp("logs")
    python = PythonHandler(env, logs / "python.log")
    native = NativeHandler(env, logs / "native.log")
    try:
        yield {"python": python, "native": native}
    finally:
        python.close()
        native.close()


def both(handlers, event: dict[str, Any]) -> dict[str, Any]:
    """Both handlers' replies to ``event``; they must agree on everything but the timings."""
    python, native = handlers["python"](event), handlers["native"](event)
    assert comparable(python) == comparable(native), (python, native)
    return python


def comparable(reply: dict[str, Any]) -> Any:
    if "statusCode" in reply:
        reply = {**reply, "body": comparable(json.loads(reply["body"]))}
    reply = copy.deepcopy(reply)
    reply.pop("timings_ms", None)
    return reply


def body(reply: dict[str, Any]) -> dict[str, Any]:
    assert reply["headers"].get("content-type") or reply["multiValueHeaders"].get("content-type")
    return json.loads(reply["body"])


@pytest.mark.parametrize("source", SOURCES)
def test_image_bodies_from_every_source(handlers, tiny, source):
    reply = both(handlers, http_event(source, image_bytes("chelsea.jpg")))
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
    answer = body(both(handlers, http_event(source, request, "application/json")))
    assert len(answer["results"]) == 2
    assert all(len(r["predictions"]) == 2 for r in answer["results"])
    by_query = http_event(
        source, image_bytes("chelsea_gray.png"), "image/png", {"model": "gray", "top_k": "1"}
    )
    answer = body(both(handlers, by_query))
    assert answer["model"] == "gray" and len(answer["predictions"]) == 1
    by_path = http_event(
        source, image_bytes("chelsea_gray.png"), "image/png", path="/prod/models/gray"
    )
    assert body(both(handlers, by_path))["model"] == "gray"


def test_direct_invokes(handlers):
    image = base64.b64encode(image_bytes("rocket.jpg")).decode()
    single = both(handlers, {"image": image, "top_k": 1})
    assert list(single) == ["model", "predictions", "timings_ms"]
    assert len(single["predictions"]) == 1
    batch = both(handlers, {"model": "tiny", "images": [image] * 3})
    assert len(batch["results"]) == 3
    assert batch["results"][0]["predictions"][0] == single["predictions"][0]
    raw = both(handlers, {"model": "tensor", "tensor": {"shape": [2, 4], "data": [0.5] * 8}})
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
        reply = both(handlers, http_event("apigw-v2", image_bytes("chelsea.jpg"), path=path))
        assert reply["statusCode"] == 404, path
        assert body(reply)["error"]["type"] == "ModelNotFound"


@pytest.mark.parametrize("source", ["apigw-v1", "apigw-v2", "alb"])
@pytest.mark.parametrize(
    ("data", "query", "status", "error"),
    [case[1:] for case in BAD_HTTP],
    ids=[case[0] for case in BAD_HTTP],
)
def test_bad_http_requests(handlers, models_root, source, data, query, status, error):
    reply = both(handlers, http_event(source, data, "image/jpeg", query))
    assert reply["statusCode"] == status
    answer = body(reply)
    assert answer["error"]["type"] == error
    assert str(models_root) not in answer["error"]["message"]
    assert str(REPO) not in answer["error"]["message"]
    assert "/tmp" not in answer["error"]["message"]
    # ...and the next request is served.
    assert both(handlers, http_event(source, image_bytes("chelsea.jpg")))["statusCode"] == 200


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
    reply = both(handlers, event)
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
    answer = both(handlers, event)
    expected = tiny.predict(image_bytes(name), top_k=10)
    assert [p["index"] for p in answer["predictions"]] == [p.index for p in expected]
    assert [p["score"] for p in answer["predictions"]] == pytest.approx(
        [p.score for p in expected], abs=1e-6
    )


def test_http_errors_are_logged_with_the_details(handlers):
    """The caller's message names no paths and points to the logs: the logs must have it."""
    event = http_event("apigw-v2", b"not an image", "image/jpeg", {"model": "gray"})
    assert both(handlers, event)["statusCode"] == 400
    for handler in ("python", "native"):
        log = handlers[handler].log_path.read_text()
        failures = [json.loads(line) for line in log.splitlines() if '"request failed"' in line]
        assert failures, f"{handler} logged no failure"
        assert failures[-1]["error_type"] == "InvalidImage"
        assert "unrecognized image format" in failures[-1]["error"]


def test_bad_json_over_http_is_400(handlers):
    event = http_event("apigw-v2", b'{"image": [1, 2]}', "application/json")
    reply = both(handlers, event)
    assert reply["statusCode"] == 400
    assert "`image`" in body(reply)["error"]["message"]
    broken = http_event("apigw-v2", b'{"image": ', "application/json")
    assert both(handlers, broken)["statusCode"] == 400


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
    failure = next(json.loads(line) for line in native.stdout.splitlines() if "preload" in line)
    assert failure["error_type"] == "ModelNotFound" and "nope" in failure["error"]
