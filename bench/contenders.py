"""The three handlers under test, and how each is started as Lambda would start it.

- ``torch-python``: ``function/torch_handler.py``, the handler people write today;
- ``lambdatorch-python``: ``lambdatorch.handler.lambda_handler``;
- ``lambdatorch-native``: ``target/lambda/bootstrap`` (which execs ``lambdatorch-handler``).

The Python ones run under ``python_runtime.py`` in ``python -S`` (no site-packages: only the EFS
tree and, for torch-python, the function's own directory are on the path); all three poll the same
local Runtime API (``runtime_api.py``) and preload ResNet-18 during init.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from scripts.local_lambda import BOOTSTRAP, FUNCTION_ENV, start, stop

from .runtime_api import Invocation, RuntimeAPI
from .tree import Tree

HERE = Path(__file__).resolve().parent
PRELOADED = "resnet18"


@dataclass(frozen=True)
class Contender:
    name: str
    what: str  # one line for the report

    def command(self) -> list[str]:
        if self.name == "lambdatorch-native":
            return [str(BOOTSTRAP)]
        return [sys.executable, "-S", "-P", str(HERE / "python_runtime.py")]

    def env(self, tree: Tree, runtime_api: str) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "AWS_LAMBDA_RUNTIME_API": runtime_api,
            **FUNCTION_ENV,
        }
        if self.name == "torch-python":
            return {
                **env,
                "_HANDLER": "torch_handler.lambda_handler",
                "PYTHONPATH": f"{HERE / 'function'}{os.pathsep}{tree.python}",
                "MODELS_DIR": str(tree.models),
                "DEFAULT_MODEL": PRELOADED,
            }
        env |= {
            "LAMBDATORCH_MODELS": str(tree.models),
            "LAMBDATORCH_PRELOAD": PRELOADED,
            "LAMBDATORCH_DEFAULT_MODEL": PRELOADED,
        }
        if self.name == "lambdatorch-native":  # it cannot search sys.path: told where, as on Lambda
            return {**env, "LAMBDATORCH_LIBTORCH": str(tree.python / "torch" / "lib")}
        return {
            **env,
            "_HANDLER": "lambdatorch.handler.lambda_handler",
            "PYTHONPATH": str(tree.python),
        }


CONTENDERS = (
    Contender("torch-python", "import torch, torchvision, PIL; torch.jit.load; torchvision v2"),
    Contender("lambdatorch-python", "lambdatorch.handler.lambda_handler (Python runtime)"),
    Contender("lambdatorch-native", "bootstrap (provided.al2023 runtime, Rust)"),
)


def event(model: str, image: bytes, batch: int = 0) -> bytes:
    """A direct invoke: one image, or ``batch`` copies of it."""
    data = base64.b64encode(image).decode()
    body = {"model": model, "images": [data] * batch} if batch else {"model": model, "image": data}
    return json.dumps(body).encode()


class Running:
    """A contender's process, started cold on its first event, serving the rest."""

    def __init__(self, contender: Contender, tree: Tree, log: Path, wrap: list[str]) -> None:
        self.contender, self.tree, self.log, self.wrap = contender, tree, log, wrap
        self.api = RuntimeAPI()
        self.process = None

    def cold_start(self, payload: bytes) -> float:
        """Seconds from starting the process to the first response (the event is waiting)."""
        first = self.api.submit(payload)
        env = self.contender.env(self.tree, self.api.address)
        with self.log.open("w") as log:
            begin = time.perf_counter()
            self.process = start([*self.wrap, *self.contender.command()], env, log, HERE.parent)
            self.api.wait(first, self.alive)
        return first.finished - begin

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def invoke(self, payload: bytes) -> Invocation:
        return self.api.invoke(payload, self.alive)

    def memory_mb(self, field: str) -> float:
        """``VmRSS`` (now) or ``VmHWM`` (peak) of the process, from /proc."""
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        raise KeyError(field)

    def close(self) -> None:
        stop(self.process)
        self.api.close()


@contextmanager
def running(
    contender: Contender, tree: Tree, log: Path, wrap: list[str] | None = None
) -> Iterator[Running]:
    process = Running(contender, tree, log, wrap or [])
    try:
        yield process
    finally:
        process.close()
