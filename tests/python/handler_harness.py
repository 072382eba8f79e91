"""Local stand-ins for calling the native handler the way Lambda does, and real AWS sample events.

``NativeHandler`` runs ``bootstrap`` (which execs ``lambdatorch-handler``) under cargo-lambda's
Runtime API emulator and invokes it over HTTP; ``PythonHandler`` runs ``lambda_handler`` in a
fresh interpreter; ``Handlers`` is the two side by side, asked the same events. ``http_event`` is
the real AWS sample event of a source (the samples ship in the ``aws_lambda_events`` crate)
carrying our body. Shared by the tests of both handlers and ``scripts/soak.py``; it imports
nothing from pytest.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from fixture_data import REPO

from scripts.local_lambda import sample_events

SITE = Path(sysconfig.get_paths()["purelib"])
LAMBDA_BIN = REPO / "target" / "lambda"
TIMEOUT = 60


SAMPLES = sample_events()
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


PYTHON_DRIVER = """
import json, sys, types
from lambdatorch.handler import lambda_handler
import lambdatorch
for n, line in enumerate(sys.stdin):
    context = types.SimpleNamespace(aws_request_id=f"python-{n}")
    try:
        reply = lambda_handler(json.loads(line), context)
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


def comparable(reply: dict[str, Any]) -> Any:
    """A reply without what may differ between the handlers and between runs: the timings."""
    if "statusCode" in reply:
        reply = {**reply, "body": comparable(json.loads(reply["body"]))}
    reply = copy.deepcopy(reply)
    reply.pop("timings_ms", None)
    return reply


class Handlers(dict):
    """Both handlers on the same environment, by name (``"python"``, ``"native"``), their logs
    in ``logs``; a context manager that closes them."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        super().__init__(python=PythonHandler(env, logs / "python.log"))
        try:
            self["native"] = NativeHandler(env, logs / "native.log")
        except BaseException:
            self["python"].close()
            raise

    def both(self, event: dict[str, Any]) -> dict[str, Any]:
        """Both handlers' reply to ``event``, which must agree on everything but the timings."""
        python, native = self["python"](event), self["native"](event)
        assert comparable(python) == comparable(native), (python, native)
        return python

    def __enter__(self) -> Handlers:
        return self

    def __exit__(self, *_: object) -> None:
        for handler in self.values():
            handler.close()
