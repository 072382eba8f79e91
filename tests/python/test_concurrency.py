"""The native handler under Lambda Managed Instances: many requests at once, each answered once.

``bootstrap`` runs with ``AWS_LAMBDA_MAX_CONCURRENCY`` set against a Runtime API that hands out
events to every poller at once (the benchmark's, ``bench/runtime_api.py``: cargo-lambda's emulator
serves one event at a time). Good and bad requests are mixed; every good one must get the answer
the Python API gives alone, every bad one its typed error, and concurrent requests must share
forward passes.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import MODELS, REPO, image_bytes
from fixture_data import FIXTURES
from handler_harness import LAMBDA_BIN, SITE

sys.path.insert(0, str(REPO))
from bench.runtime_api import RuntimeAPI, RuntimeFailure

CONCURRENCY = 16
REQUESTS = 2000
TEXT_MODELS = FIXTURES / "text" / "models"


def serve(tmp_path_factory, models, preload):
    """``bootstrap`` serving ``models`` concurrently, with its Runtime API; stopped after."""
    api = RuntimeAPI()
    log = (tmp_path_factory.mktemp("logs") / "native.log").open("w")
    env = {
        "PATH": os.environ["PATH"],
        "AWS_LAMBDA_RUNTIME_API": api.address,
        "AWS_LAMBDA_MAX_CONCURRENCY": str(CONCURRENCY),
        "AWS_LAMBDA_FUNCTION_NAME": "_",
        "AWS_LAMBDA_FUNCTION_VERSION": "1",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "2048",
        "LAMBDATORCH_MODELS": str(models),
        "LAMBDATORCH_PRELOAD": preload,
        "LAMBDATORCH_BATCH_DELAY_MS": "5",
        "LAMBDATORCH_LIBTORCH": str(SITE / "torch" / "lib"),
    }
    process = subprocess.Popen([str(LAMBDA_BIN / "bootstrap")], env=env, stdout=log, stderr=log)
    yield api, process
    process.terminate()
    process.wait(timeout=10)
    api.close()
    log.close()


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    yield from serve(tmp_path_factory, MODELS, "tiny,tensor-classifier")


@pytest.fixture(scope="module")
def text_runtime(tmp_path_factory):
    yield from serve(tmp_path_factory, TEXT_MODELS, "text-classifier,text-embedder")


def invoke(api, process, event):
    """The reply, or ``{"errorType": ...}`` for a function error."""
    try:
        return api.invoke(json.dumps(event).encode(), lambda: process.poll() is None).json()
    except RuntimeFailure as err:
        message = str(err)
        assert message.startswith("function error: "), message
        return json.loads(message.removeprefix("function error: "))


def test_every_request_is_answered_once_as_alone(lt, runtime):
    api, process = runtime
    tiny, classifier = lt.load(MODELS / "tiny"), lt.load(MODELS / "tensor-classifier")
    photos = ["chelsea.jpg", "coffee.jpg", "astronaut.jpg", "rocket.jpg"]
    b64 = {name: base64.b64encode(image_bytes(name)).decode() for name in photos}
    alone = {name: tiny.predict(image_bytes(name)) for name in photos}
    rows = [[0.1, 0.2, 0.3, 0.4], [1.0, -1.0, 2.0, 0.5], [-3.0, 0.0, 0.0, 1.0]]
    scores = classifier.forward(np.array(rows, np.float32))

    def request(i: int):
        kind = i % 4
        if kind == 0:
            name = photos[i % len(photos)]
            reply = invoke(api, process, {"model": "tiny", "image": b64[name]})
            assert [p["index"] for p in reply["predictions"]] == [p.index for p in alone[name]]
            return reply["batch_size"]
        if kind == 1:
            row = i % len(rows)
            event = {"model": "tensor-classifier", "tensor": {"shape": [1, 4], "data": rows[row]}}
            reply = invoke(api, process, event)
            best = int(np.argmax(scores[row]))
            assert reply["results"][0]["predictions"][0]["index"] == best
            return reply["batch_size"]
        if kind == 2:
            reply = invoke(api, process, {"model": "tiny", "image": "bm90IGFuIGltYWdl"})
            assert reply["errorType"] == "InvalidImage", reply
            return 0
        reply = invoke(
            api, process, {"model": "tiny", "tensor": {"shape": [1, 4], "data": [0] * 4}}
        )
        assert reply["errorType"] == "InvalidInput", reply
        return 0

    lock = threading.Lock()
    sizes: list[int] = []

    def record(i: int) -> None:
        size = request(i)
        with lock:
            sizes.append(size)

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(record, range(REQUESTS)))
    assert len(sizes) == REQUESTS
    assert not api.in_flight, "an invocation was never answered"
    assert api.pending.empty()
    assert max(sizes) > 1, "no two requests shared a forward pass"
    assert process.poll() is None, "the handler died"


def test_texts_of_different_lengths_share_passes_and_answer_as_alone(lt, text_runtime):
    api, process = text_runtime
    classifier = lt.load(TEXT_MODELS / "text-classifier")
    embedder = lt.load(TEXT_MODELS / "text-embedder")
    texts = [
        "A great film.",
        "Awful.",
        "What a long, winding and wonderful story this was!",
        "Café au lait in Zürich, then sushi in 東京 🤖.",
    ]
    alone = {text: classifier.predict(text) for text in texts}
    vectors = embedder.embed(texts)

    def request(i: int) -> int:
        k = i % len(texts)
        if i % 2 == 0:
            reply = invoke(api, process, {"model": "text-classifier", "text": texts[k]})
            got = reply["predictions"]
            assert [p["index"] for p in got] == [p.index for p in alone[texts[k]]]
            np.testing.assert_allclose(
                [p["score"] for p in got], [p.score for p in alone[texts[k]]], atol=1e-5
            )
        else:
            reply = invoke(api, process, {"model": "text-embedder", "text": texts[k]})
            np.testing.assert_allclose(reply["embeddings"][0], vectors[k], atol=1e-5)
        return reply["batch_size"]

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        sizes = list(pool.map(request, range(400)))
    assert len(sizes) == 400
    assert not api.in_flight, "an invocation was never answered"
    assert max(sizes) > 1, "no two text requests shared a forward pass"
    assert process.poll() is None, "the handler died"
