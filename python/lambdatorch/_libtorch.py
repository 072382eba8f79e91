"""Find libtorch and load it, without importing Python torch.

The extension links against ``libtorch_cpu.so`` and ``libc10.so``. Python's import machinery would
leave finding them to the dynamic loader, whose failure is a bare "cannot open shared object
file". Instead we locate them first (``LAMBDATORCH_LIBTORCH``, else the ``torch/lib`` of a ``torch``
package on ``sys.path``, found but never imported), check the version from torch's own files, and
load them with ``RTLD_GLOBAL`` so that ``_core`` binds to them. Every failure is a
``LibTorchError`` that says what was searched, what was found and how to fix it.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import re
import sys
from pathlib import Path
from types import ModuleType

from .errors import LibTorchError

#: The libtorch version this build of lambdatorch links against (tch 0.26).
LIBTORCH_VERSION = "2.13.0"

#: Load order matters: libtorch_cpu needs c10's symbols.
LIBRARIES = ("libc10.so", "libtorch_cpu.so")

_FIX = (
    "Install the matching torch next to lambdatorch (on EFS: pip install --target "
    f"/mnt/efs/python torch=={LIBTORCH_VERSION}, CPU build from "
    "https://download.pytorch.org/whl/cpu), or set LAMBDATORCH_LIBTORCH to a libtorch "
    f"{LIBTORCH_VERSION} lib directory."
)

_loaded: Path | None = None


def candidates() -> list[Path]:
    """Directories searched for libtorch, in order."""
    explicit = os.environ.get("LAMBDATORCH_LIBTORCH")
    if explicit:
        return [Path(explicit)]
    return [Path(entry or ".") / "torch" / "lib" for entry in sys.path]


def version_of(lib_dir: Path) -> str | None:
    """The libtorch version of ``lib_dir``, read from torch's files without importing torch.

    ``torch/lib`` sits beside ``torch/version.py``; a standalone libtorch has ``build-version``.
    """
    version_py = lib_dir.parent / "version.py"
    if version_py.is_file():
        match = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", version_py.read_text(), re.M)
        if match:
            return match.group(1)
    build_version = lib_dir.parent / "build-version"
    if build_version.is_file():
        return build_version.read_text().strip() or None
    return None


def release(version: str) -> str:
    """``2.13.0+cpu`` -> ``2.13.0``."""
    return version.split("+", 1)[0]


def find() -> tuple[Path, str]:
    """The first candidate holding libtorch, with its version; ``LibTorchError`` if none fits."""
    searched = candidates()
    for lib_dir in searched:
        if not all((lib_dir / name).is_file() for name in LIBRARIES):
            if os.environ.get("LAMBDATORCH_LIBTORCH"):
                missing = [n for n in LIBRARIES if not (lib_dir / n).is_file()]
                raise LibTorchError(
                    f"LAMBDATORCH_LIBTORCH={lib_dir} does not hold {', '.join(missing)}. {_FIX}"
                )
            continue
        version = version_of(lib_dir)
        if version is None:
            raise LibTorchError(
                f"found libtorch in {lib_dir} but not its version (no ../version.py or "
                f"../build-version beside it); lambdatorch needs {LIBTORCH_VERSION}. {_FIX}"
            )
        if release(version) != LIBTORCH_VERSION:
            raise LibTorchError(
                f"found libtorch {version} in {lib_dir}, but this lambdatorch needs "
                f"{LIBTORCH_VERSION}. {_FIX}"
            )
        return lib_dir, version
    shown = ", ".join(str(p) for p in searched) or "(sys.path is empty)"
    raise LibTorchError(f"libtorch not found; searched {shown}. {_FIX}")


def preload() -> Path:
    """Locate, check and load libtorch once per process; returns its directory."""
    global _loaded
    if _loaded is not None:
        return _loaded
    lib_dir, version = find()
    for name in LIBRARIES:
        try:
            ctypes.CDLL(str(lib_dir / name), mode=ctypes.RTLD_GLOBAL)
        except OSError as err:
            raise LibTorchError(
                f"libtorch {version} in {lib_dir} failed to load {name}: {err}. {_FIX}"
            ) from err
    _loaded = lib_dir
    return lib_dir


def import_core() -> ModuleType:
    """``lambdatorch._core``, imported after libtorch is loaded."""
    lib_dir = preload()
    try:
        return importlib.import_module("lambdatorch._core")
    except ImportError as err:  # e.g. a libtorch whose symbols do not match this build
        raise LibTorchError(
            f"the lambdatorch extension failed to load against libtorch in {lib_dir}: {err}. {_FIX}"
        ) from err
