"""A minimal Lambda Runtime API, to drive every handler as Lambda does and time it as Lambda bills.

It serves the part of the API that runtimes use (next invocation, response, error, init error), so
the native ``bootstrap`` and the Python runtime loop (``python_runtime.py``) talk to it exactly as
they talk to Lambda. An invocation lasts from the moment its event is handed to the runtime to the
moment the response arrives: Lambda's billed duration, with no client or emulator hop inside it
(cargo-lambda's emulator, used by the tests, would put two more HTTP hops in every measurement).
"""

from __future__ import annotations

import http.server
import json
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

PREFIX = "/2018-06-01/runtime"
POLL_S = 0.05


class RuntimeFailure(Exception):
    """The runtime died, failed its init, or did not answer in time."""


def xray_trace_id() -> str:
    """A fresh trace id in X-Ray's format, as Lambda sends one per invocation (a runtime that
    stores each in its environment grows with them: see the README's "Limits and errors")."""
    root, parent = uuid.uuid4().hex[:24], uuid.uuid4().hex[:16]
    return f"Root=1-{int(time.time()):08x}-{root};Parent={parent};Sampled=0"


@dataclass
class Invocation:
    """One event on its way through the runtime."""

    payload: bytes
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    trace_id: str = field(default_factory=xray_trace_id)
    started: float = 0.0  # perf_counter when the runtime got the event
    finished: float = 0.0  # perf_counter when its answer arrived
    answer: bytes = b""
    failed: bool = False  # the runtime posted a function error
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def seconds(self) -> float:
        return self.finished - self.started

    def json(self) -> Any:
        return json.loads(self.answer)


class RuntimeAPI:
    """The server, on a free local port, in a background thread."""

    def __init__(self) -> None:
        self.pending: queue.Queue[Invocation] = queue.Queue()
        self.in_flight: dict[str, Invocation] = {}
        self.init_error: bytes | None = None
        self.closing = threading.Event()
        self.server = _Server(("127.0.0.1", 0), _handler_for(self))
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        """What AWS_LAMBDA_RUNTIME_API is set to (host:port, as on Lambda)."""
        return f"127.0.0.1:{self.server.server_address[1]}"

    def submit(self, payload: bytes) -> Invocation:
        invocation = Invocation(payload)
        self.pending.put(invocation)
        return invocation

    def wait(
        self, invocation: Invocation, alive: Callable[[], bool], timeout_s: float = 300
    ) -> Invocation:
        """Block until ``invocation`` is answered; fail fast if the runtime dies or fails init."""
        deadline = time.monotonic() + timeout_s
        while not invocation.done.wait(POLL_S):
            if self.init_error is not None:
                raise RuntimeFailure(f"init failed: {self.init_error.decode(errors='replace')}")
            if not alive():
                raise RuntimeFailure("the runtime exited")
            if time.monotonic() > deadline:
                raise RuntimeFailure(f"no answer within {timeout_s:.0f} s")
        if invocation.failed:
            raise RuntimeFailure(f"function error: {invocation.answer.decode(errors='replace')}")
        return invocation

    def invoke(self, payload: bytes, alive: Callable[[], bool]) -> Invocation:
        return self.wait(self.submit(payload), alive)

    def close(self) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A runtime stopped mid-poll is how every session ends: not worth a traceback."""


def _handler_for(api: RuntimeAPI) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as runtimes expect

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            if self.path != f"{PREFIX}/invocation/next":
                return self.reply(404, b"{}")
            while True:  # a long poll, as on Lambda
                try:
                    invocation = api.pending.get(timeout=POLL_S)
                    break
                except queue.Empty:
                    if api.closing.is_set():
                        return None
            api.in_flight[invocation.request_id] = invocation
            invocation.started = time.perf_counter()
            headers = {
                "Lambda-Runtime-Aws-Request-Id": invocation.request_id,
                "Lambda-Runtime-Deadline-Ms": str(int(time.time() * 1000) + 900_000),
                "Lambda-Runtime-Invoked-Function-Arn": "arn:aws:lambda:us-east-1:0:function:_",
                "Lambda-Runtime-Trace-Id": invocation.trace_id,
            }
            return self.reply(200, invocation.payload, headers)

        def do_POST(self) -> None:
            body = self.read_body()
            parts = self.path.removeprefix(PREFIX).strip("/").split("/")
            if parts == ["init", "error"]:
                api.init_error = body
            elif len(parts) == 3 and parts[0] == "invocation" and parts[1] in api.in_flight:
                invocation = api.in_flight.pop(parts[1])
                invocation.finished = time.perf_counter()
                invocation.answer, invocation.failed = body, parts[2] == "error"
                invocation.done.set()
            else:
                return self.reply(404, b"{}")
            return self.reply(202, b'{"status":"OK"}')

        def read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler
