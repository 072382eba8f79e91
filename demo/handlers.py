"""Send the same Lambda events to both handlers and compare their answers.

Native: `target/lambda/bootstrap` (built by `make lambda`) polls cargo-lambda's Runtime API
emulator, as it polls Lambda's on `provided.al2023`; the events are invoked through the emulator.
Python: `lambdatorch.handler.lambda_handler`, called in a fresh interpreter with no site-packages
and only EFS/python on its path, as a Python Lambda with `PYTHONPATH=/mnt/efs/python` runs it.

The events: (a) an API Gateway HTTP API (v2) request, AWS's own sample from the `aws_lambda_events`
crate, POSTing a PNG to /models/digits; (b) a direct invoke {"model": "digits", "image": base64}.
Both handlers share one Rust core, so their `predictions` must be identical.

Usage: python demo/handlers.py EFS_DIR   (after demo/build_efs.py EFS_DIR and `make lambda`)
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for scripts/
from scripts.local_lambda import (
    BOOTSTRAP,
    FUNCTION_ENV,
    REPO,
    StartError,
    sample_events,
    start,
    stop,
)

FIXTURE = "example-apigw-v2-request-no-authorizer.json"
MODEL = "digits"
TIMEOUT_S = 60.0
HOST = "127.0.0.1"

PYTHON_HANDLER = r"""
import json, sys, time
t0 = time.perf_counter()
from lambdatorch.handler import lambda_handler
init_ms = (time.perf_counter() - t0) * 1e3
with open(sys.argv[1]) as f:
    events = json.load(f)
answers = []
for event in events:
    start = time.perf_counter()
    try:
        answer = {"response": lambda_handler(event, None)}
    except Exception as err:  # what Lambda would report as the function error
        answer = {"error": {"errorType": type(err).__name__, "errorMessage": str(err)}}
    answer["ms"] = (time.perf_counter() - start) * 1e3
    answers.append(answer)
torch_imported = "torch" in sys.modules
print(json.dumps({"init_ms": init_ms, "answers": answers, "torch_imported": torch_imported}))
"""


class DemoError(Exception):
    """The demo cannot go on; the message says why."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 15) -> str:
    text = path.read_text(errors="replace").splitlines() if path.exists() else []
    return "\n".join("    " + line for line in text[-lines:])


# --- events --------------------------------------------------------------------------------------
def fixture_path() -> Path:
    path = sample_events() / FIXTURE
    if not path.is_file():
        raise DemoError(f"no {FIXTURE} among AWS's sample events in {path.parent}")
    return path


def http_api_event(sample: Path, png: bytes) -> dict[str, Any]:
    """AWS's sample HTTP API request, turned into a POST of a PNG to /models/<MODEL>."""
    event = json.loads(sample.read_text())
    path = f"/models/{MODEL}"
    event["rawPath"] = path
    event["requestContext"]["http"].update(method="POST", path=path)
    event["headers"].update({"content-type": "image/png", "content-length": str(len(png))})
    event["body"] = base64.b64encode(png).decode()
    event["isBase64Encoded"] = True
    return event


# --- native handler ------------------------------------------------------------------------------
def wait_for_port(port: int, emulator: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        if emulator.poll() is not None:
            raise DemoError(f"the emulator exited ({emulator.returncode}):\n{tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
            return
        time.sleep(0.2)
    raise DemoError(f"the emulator did not listen on {HOST}:{port} within {TIMEOUT_S:.0f} s")


def log_records(log: Path) -> list[dict[str, Any]]:
    records = []
    for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                records.append(record)
    return records


def wait_until_ready(handler: subprocess.Popen[bytes], log: Path) -> float:
    """Init time the handler logged once libtorch and the preloaded model were in."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        for record in log_records(log):
            if record.get("message") == "ready":
                return float(record.get("init_ms", float("nan")))
        if handler.poll() is not None:
            raise DemoError(f"bootstrap exited ({handler.returncode}) during init:\n{tail(log)}")
        time.sleep(0.1)
    raise DemoError(f"bootstrap was not ready within {TIMEOUT_S:.0f} s:\n{tail(log)}")


def invoke(port: int, event: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://{HOST}:{port}/2015-03-31/functions/_/invocations",
        data=json.dumps(event).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    start_time = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as reply:
            answer: dict[str, Any] = {"response": json.loads(reply.read())}
    except urllib.error.HTTPError as err:  # a function error: the body names its errorType
        body = err.read().decode(errors="replace")
        try:
            answer = {"error": json.loads(body)}
        except ValueError:
            answer = {"error": {"errorType": f"HTTP {err.code}", "errorMessage": body}}
    except (urllib.error.URLError, TimeoutError) as err:
        raise DemoError(f"invoking through the emulator failed: {err}") from err
    answer["ms"] = (time.perf_counter() - start_time) * 1e3
    return answer


def run_native(efs: Path, events: list[dict[str, Any]], work: Path) -> dict[str, Any]:
    if not os.access(BOOTSTRAP, os.X_OK):
        raise DemoError(f"{BOOTSTRAP} is missing: run `make lambda` first")
    port = free_port()
    path = os.pathsep.join([str(REPO / ".venv" / "bin"), os.environ.get("PATH", "")])
    emulator_log, handler_log = work / "emulator.log", work / "bootstrap.log"
    emulator = handler = None
    try:
        with emulator_log.open("w") as log:
            emulator = start(
                ["cargo", "lambda", "watch", "--only-lambda-apis", "-A", HOST, "-P", str(port)],
                {**os.environ, "PATH": path},
                log,
                REPO,
            )
        wait_for_port(port, emulator, emulator_log)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "AWS_LAMBDA_RUNTIME_API": f"http://{HOST}:{port}/.rt",
            **FUNCTION_ENV,
            **lambdatorch_env(efs),
        }
        with handler_log.open("w") as log:
            handler = start([str(BOOTSTRAP)], env, log, REPO)
        init_ms = wait_until_ready(handler, handler_log)
        answers = [invoke(port, event) for event in events]
        requests = [r for r in log_records(handler_log) if r.get("message") == "request"]
        for answer, record in zip(answers, requests, strict=False):
            answer["source"] = record.get("source")
        return {"port": port, "init_ms": init_ms, "answers": answers}
    finally:
        stop(handler)
        stop(emulator)


# --- Python handler ------------------------------------------------------------------------------
def lambdatorch_env(efs: Path) -> dict[str, str]:
    return {
        "LAMBDATORCH_LIBTORCH": str(efs / "python" / "torch" / "lib"),
        "LAMBDATORCH_MODELS": str(efs / "models"),
        "LAMBDATORCH_PRELOAD": MODEL,
    }


def run_python(efs: Path, events: list[dict[str, Any]], work: Path) -> dict[str, Any]:
    events_file = work / "events.json"
    events_file.write_text(json.dumps(events))
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(efs / "python"),
        **FUNCTION_ENV,
        **lambdatorch_env(efs),
    }
    try:
        out = subprocess.run(
            [sys.executable, "-S", "-c", PYTHON_HANDLER, str(events_file)],
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as err:
        raise DemoError(f"the Python handler did not finish within {TIMEOUT_S:.0f} s") from err
    if out.returncode != 0:
        raise DemoError(f"the Python handler failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout)


# --- report --------------------------------------------------------------------------------------
def body_of(answer: dict[str, Any]) -> tuple[int | None, dict[str, Any]]:
    """(HTTP status or None, the response body) of either handler's answer."""
    if "error" in answer:
        return None, {"error": answer["error"]}
    response = answer["response"]
    if isinstance(response, dict) and "statusCode" in response:
        return response["statusCode"], json.loads(response.get("body") or "{}")
    return None, response


def score(value: float) -> str:
    return f"{value:.5f}" if value >= 1e-3 else f"{value:.1e}"


def describe(name: str, answer: dict[str, Any], source: str) -> list[str]:
    status, body = body_of(answer)
    lines = [f"  {name:<7} {source:<15} status {status if status is not None else '-':<4}"]
    if "error" in body:
        error = body["error"]
        kind = error.get("type") or error.get("errorType")
        message = error.get("message") or error.get("errorMessage")
        lines[0] += f" ERROR {kind}: {message}"
        return lines
    top = ", ".join(f"{p['label']} {score(p['score'])}" for p in body.get("predictions", []))
    timings = body.get("timings_ms", {})
    stages = " / ".join(f"{timings.get(k, float('nan')):.2f}" for k in TIMING_KEYS)
    lines[0] += f" top: {top}"
    lines.append(
        f"  {'':<7} {'':<15} timings_ms {'/'.join(TIMING_KEYS)}: {stages}; "
        f"call {answer['ms']:.1f} ms"
    )
    return lines


TIMING_KEYS = ("decode", "preprocess", "inference", "total")


def report(efs: Path, titles: list[str], native: dict[str, Any], python: dict[str, Any]) -> bool:
    print(
        f"native: {BOOTSTRAP.relative_to(REPO)} under cargo-lambda's Runtime API emulator "
        f"({HOST}:{native['port']}); init (libtorch + preload {MODEL}) {native['init_ms']:.0f} ms"
    )
    print(
        f"python: lambdatorch.handler.lambda_handler in python -S, PYTHONPATH={efs / 'python'} "
        f"only; import (libtorch + preload {MODEL}) {python['init_ms']:.0f} ms; "
        f"Python torch imported: {python['torch_imported']}"
    )
    print("  (call: native = HTTP invoke through the emulator; python = the function call)")
    all_same = not python["torch_imported"]
    for title, ours, theirs in zip(titles, native["answers"], python["answers"], strict=True):
        print(f"\n{title}")
        proxy = "proxy response" if "statusCode" in theirs.get("response", {}) else "plain response"
        for line in describe("native", ours, ours.get("source") or "?"):
            print(line)
        for line in describe("python", theirs, proxy):
            print(line)
        a, b = body_of(ours)[1], body_of(theirs)[1]
        same = "predictions" in a and json.dumps(a["predictions"]) == json.dumps(
            b.get("predictions")
        )
        same = same and body_of(ours)[0] == body_of(theirs)[0]
        all_same = all_same and same
        print(f"  predictions identical: {same}")
    return all_same


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    efs = Path(sys.argv[1]).resolve()
    samples = sorted((efs / "samples").glob("*.png"))
    if not samples or not (efs / "models" / MODEL).is_dir():
        print(f"{efs} has no samples or model: run demo/build_efs.py {efs} first", file=sys.stderr)
        return 1
    http_png, direct_png = samples[0], samples[-1]
    try:
        fixture = fixture_path()
        events = [
            http_api_event(fixture, http_png.read_bytes()),
            {"model": MODEL, "image": base64.b64encode(direct_png.read_bytes()).decode()},
        ]
        titles = [
            f"(a) API Gateway HTTP API v2 ({fixture.name}): POST /models/{MODEL}, "
            f"content-type image/png, {http_png.name}",
            f'(b) direct invoke {{"model": "{MODEL}", "image": <base64 of {direct_png.name}>}}',
        ]
        with tempfile.TemporaryDirectory(prefix="lambdatorch-demo-") as tmp:
            native = run_native(efs, copy.deepcopy(events), Path(tmp))
            python = run_python(efs, events, Path(tmp))
    except (DemoError, StartError) as err:
        print(f"handlers demo: {err}", file=sys.stderr)
        return 1
    same = report(efs, titles, native, python)
    print(f"\nBoth handlers agree on every event: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
