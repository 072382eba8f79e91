"""Local stand-ins for EFS and Lambda, shared by the demo and the benchmark (``demo/``, ``bench/``).

- an EFS tree's ``python/``: ``pip install --target`` of this checkout's wheel, as a user fills the
  real one, with torch linked from the venv instead of installed a second time (PyPI's torch
  2.13.0 is a CUDA build of several GB; ``libtorch_cpu.so`` finds its nvidia-* packages through
  its RPATH, hence the nvidia link too). On AWS you install the CPU-only build instead (README).
- a handler process started as Lambda starts one (its own process group, the environment Lambda
  sets) and stopped with everything it started;
- AWS's sample events, which ship in the ``aws_lambda_events`` crate (``sample_events``).

Imported as ``scripts.local_lambda``: ``python -m bench`` runs from the repository; the demo's
scripts put the repository on ``sys.path`` first.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import TextIO

REPO = Path(__file__).resolve().parents[1]
#: The native handler, as ``make lambda`` builds it.
BOOTSTRAP = REPO / "target" / "lambda" / "bootstrap"

# What Lambda sets and lambda_runtime requires; the Python side gets them too (minus the Runtime
# API), so both size their thread pools alike.
FUNCTION_ENV = {
    "AWS_LAMBDA_FUNCTION_NAME": "_",
    "AWS_LAMBDA_FUNCTION_VERSION": "1",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "2048",
    "AWS_LAMBDA_LOG_STREAM_NAME": "demo",
    "AWS_LAMBDA_LOG_GROUP_NAME": "demo",
}


class StartError(Exception):
    """A process could not be started; the message names it and why."""


def sample_events() -> Path:
    """The directory of AWS's sample events in the ``aws_lambda_events`` crate, a dependency of
    the handler, so cargo already holds its source."""
    try:
        out = subprocess.run(
            ["cargo", "metadata", "--format-version", "1"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
    except (OSError, subprocess.SubprocessError) as err:
        raise StartError(f"`cargo metadata` failed: {err}") from err
    for package in json.loads(out.stdout)["packages"]:
        if package["name"] == "aws_lambda_events":
            return Path(package["manifest_path"]).parent / "src" / "fixtures"
    raise StartError("no aws_lambda_events package in `cargo metadata`")


def run(*args: str | os.PathLike[str], **env: str) -> None:
    print("$", " ".join(str(a) for a in args), flush=True)
    subprocess.run([str(a) for a in args], check=True, env={**os.environ, **env})


def install_python(efs: Path) -> Path:
    """``efs/python``: lambdatorch (the wheel in dist/) and numpy; torch and nvidia linked in."""
    target = efs / "python"
    wheels = sorted((REPO / "dist").glob("lambdatorch-*.whl"))
    if not wheels:
        sys.exit("no wheel in dist/: run `make wheel` first")
    run(
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--upgrade",
        "--target",
        target,
        wheels[-1],
    )
    site = Path(sysconfig.get_paths()["purelib"])
    for package in ("torch", "nvidia"):
        link = target / package
        if not link.exists() and (site / package).exists():
            link.symlink_to(site / package, target_is_directory=True)
    return target


def start(args: list[str], env: dict[str, str], log: TextIO, cwd: Path) -> subprocess.Popen[bytes]:
    # Own process group, so that stopping it also stops anything it started.
    try:
        return subprocess.Popen(
            args,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    except OSError as err:
        raise StartError(f"cannot start {args[0]}: {err}") from err


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue
