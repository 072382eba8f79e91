"""Soak test: many requests, good and bad mixed, in one long-lived process; memory must not grow.

Run by ``make soak`` (``SOAK_QUICK=1`` for the short CI version). Two parts:

* the Python API in this process: ``predict``, ``predict_batch``, ``forward`` and ``handle`` on
  good input, and every kind of refusal (undecodable and truncated images, a decompression bomb,
  NaN tensors, bad names, bad base64, bad ``top_k``, a panic inside the extension);
* the native handler (``bootstrap`` under cargo-lambda's Runtime API emulator, as the handler
  tests run it), invoked over HTTP with direct and API Gateway events, good and bad.

Resident memory (``VmRSS``) is read after a warmup (10% of the calls, at least 100) and at the
end; growth of 5% or more fails the run. A leak of even a few kilobytes per request shows at these
counts. Both processes run with glibc's mmap threshold fixed at its default (128 KiB): left
adaptive, it rises with each large buffer freed, after which such buffers share the heap and
fragment it, and the resident size climbs in steps of megabytes for thousands of calls
(measured: the native handler from 152 to 161 MB over 1,500 mixed calls; flat at 143 MB with
the threshold fixed). A fixed threshold gives every large buffer its own mapping, returned when
freed, so growth here is a leak.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The soak provokes panics on purpose: one line each in the log, not a symbolized backtrace.
os.environ["RUST_BACKTRACE"] = "0"
REPO = Path(__file__).resolve().parents[1]
# The handler tests' harness, which imports scripts.local_lambda from the repository.
sys.path[:0] = [str(REPO / "tests" / "python"), str(REPO)]

MAX_GROWTH = 0.05
WARMUP_SHARE = 0.1
#: Allocator pools, thread pools and libtorch caches settle within this many calls.
MIN_WARMUP = 100
#: glibc reads its tunables at start, so the soak re-executes itself with this set.
FIXED_MMAP_THRESHOLD = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}


def rss_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


class Run:
    """Calls ``work(i)`` ``count`` times and records memory after warmup and at the end."""

    def __init__(self, name: str, count: int, pid: int | str = "self") -> None:
        self.name, self.count, self.pid = name, count, pid
        self.outcomes: dict[str, int] = {}

    def go(self, work: Callable[[int], str]) -> bool:
        warmup = min(self.count // 2, max(MIN_WARMUP, int(self.count * WARMUP_SHARE)))
        started = time.monotonic()
        peak = 0.0
        for i in range(self.count):
            outcome = work(i)
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
            if i + 1 == warmup:
                baseline = rss_mb(self.pid)
            if i % 50 == 0:
                peak = max(peak, rss_mb(self.pid))
        final = rss_mb(self.pid)
        growth = (final - baseline) / baseline
        seconds = time.monotonic() - started
        answers = self.outcomes.get("ok", 0)
        print(
            f"{self.name}: {self.count} calls in {seconds:.0f} s ({answers} answers, "
            f"{self.count - answers} typed errors); RSS {baseline:.1f} MB after {warmup} warmup "
            f"calls, {final:.1f} MB at the end ({growth:+.2%}), peak {max(peak, final):.1f} MB"
        )
        print(f"  outcomes: {json.dumps(dict(sorted(self.outcomes.items())))}")
        return growth < MAX_GROWTH


def python_api(count: int, models: Path) -> bool:
    import lambdatorch as lt
    import numpy as np
    from fixture_data import bomb, image_bytes
    from lambdatorch._libtorch import import_core

    tiny, tensor = lt.load(models / "tiny"), lt.load(models / "tensor")
    jpeg, png = image_bytes("chelsea.jpg"), image_bytes("coffee.jpg")
    array = np.full((300, 200, 3), 7, np.uint8)
    nan = np.zeros((2, 4), np.float32)
    nan[1, 1] = np.nan
    b64 = base64.b64encode(jpeg).decode()
    expected = tiny.predict(jpeg)

    def good_predict() -> None:
        assert tiny.predict(jpeg) == expected

    calls: list[tuple[Callable[[], Any], type[Exception] | None]] = [
        (good_predict, None),
        (lambda: tiny.predict(array, top_k=2), None),
        (lambda: tiny.predict_batch([jpeg, png, jpeg]), None),
        (lambda: tensor.forward(np.ones((3, 4), np.float32)), None),
        (lambda: lt.handle({"model": "tiny", "image": b64}), None),
        (
            lambda: lt.handle({"model": "tensor", "tensor": {"shape": [1, 4], "data": [1] * 4}}),
            None,
        ),
        (lambda: tiny.predict(image_bytes("truncated.jpg")), lt.InvalidImage),
        (lambda: tiny.predict(b"this is not an image"), lt.InvalidImage),
        (lambda: tiny.predict(bomb("png")), lt.ImageTooLarge),
        (lambda: tiny.predict(bomb("jpeg")), lt.ImageTooLarge),
        (lambda: tensor.forward(nan), lt.InvalidInput),
        (lambda: tiny.predict(jpeg, top_k=0), lt.InvalidInput),
        (lambda: lt.handle({"model": "../tiny", "image": b64}), lt.ModelNotFound),
        (lambda: lt.handle({"model": "tiny", "image": "not base64!"}), lt.InvalidInput),
        (lambda: import_core()._panic_for_tests("soak"), lt.InternalError),
    ]

    def work(i: int) -> str:
        call, error = calls[i % len(calls)]
        if error is None:
            call()
            return "ok"
        try:
            call()
        except error as err:
            return type(err).__name__
        raise AssertionError(f"call {i % len(calls)} did not raise {error.__name__}")

    return Run("python API (one process)", count, "self").go(work)


def native_handler(count: int, models: Path) -> bool:
    from fixture_data import bomb, image_bytes
    from handler_harness import NativeHandler, http_event

    b64 = base64.b64encode(image_bytes("chelsea.jpg")).decode()
    events: list[tuple[dict[str, Any], str]] = [
        ({"image": b64}, "ok"),
        ({"model": "tiny", "images": [b64, b64], "top_k": 2}, "ok"),
        ({"model": "tensor", "tensor": {"shape": [2, 4], "data": [0.5] * 8}}, "ok"),
        (http_event("apigw-v2", image_bytes("coffee.jpg")), "ok"),
        (http_event("alb", image_bytes("chelsea.png"), "image/png"), "ok"),
        ({"image": base64.b64encode(image_bytes("truncated.jpg")).decode()}, "InvalidImage"),
        ({"image": base64.b64encode(bomb("png")).decode()}, "ImageTooLarge"),
        ({"image": "not base64!"}, "InvalidInput"),
        ({"model": "%2e%2e", "image": b64}, "ModelNotFound"),
        (http_event("apigw-v1", b"hello"), "InvalidImage"),
        (http_event("apigw-v2", bomb("jpeg")), "ImageTooLarge"),
    ]
    env = {
        "PATH": os.environ["PATH"],
        "LAMBDATORCH_MODELS": str(models),
        "LAMBDATORCH_DEFAULT_MODEL": "tiny",
        "LAMBDATORCH_PRELOAD": "tiny,tensor",
        **FIXED_MMAP_THRESHOLD,
    }
    log = models.parent / "native.log"
    handler = NativeHandler(env, log)
    try:
        handler({"image": b64})  # the runtime is ready once an invoke answers

        def work(i: int) -> str:
            event, expected = events[i % len(events)]
            reply = handler(event)
            if "statusCode" in reply:
                answer = json.loads(reply["body"])
                outcome = answer["error"]["type"] if "error" in answer else "ok"
            else:
                outcome = reply.get("errorType", "ok")
            assert outcome == expected, (i % len(events), reply)
            return outcome

        return Run("native handler (one process)", count, handler.runtime.pid).go(work)
    except BaseException:
        print(log.read_text()[-3000:], file=sys.stderr)
        raise
    finally:
        handler.close()


def main() -> int:
    if any(os.environ.get(key) != value for key, value in FIXED_MMAP_THRESHOLD.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], os.environ | FIXED_MMAP_THRESHOLD)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 + 300 calls (CI)")
    args = parser.parse_args()
    python_calls, native_calls = (1000, 300) if args.quick else (5000, 1000)
    with tempfile.TemporaryDirectory(prefix="lambdatorch-soak-") as tmp:
        from fixture_data import MODELS

        models = Path(tmp) / "models"
        for name in ("tiny", "tensor"):
            shutil.copytree(MODELS / name, models / name)
        os.environ["LAMBDATORCH_MODELS"] = str(models)
        ok = python_api(python_calls, models)
        ok = native_handler(native_calls, models) and ok
    print(f"soak: resident memory growth after warmup {'<' if ok else '>='} {MAX_GROWTH:.0%}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
