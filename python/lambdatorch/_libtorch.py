"""Find libtorch and load it, without importing Python torch.

The extension links against ``libtorch_cpu.so`` and ``libc10.so``. Python's import machinery would
leave finding them to the dynamic loader, whose failure is a bare "cannot open shared object
file". Instead we locate them first (``LAMBDATORCH_LIBTORCH``, else the ``torch/lib`` of a ``torch``
package on ``sys.path``, found but never imported), check the version from torch's own files, and
load them with ``RTLD_GLOBAL`` so that ``_core`` binds to them. Every failure is a
``LibTorchError`` that says what was searched, what was found and how to fix it.

On EFS every file-system lookup is a network round trip, and the dynamic loader makes many that
fail: for each library ``libtorch_cpu.so`` needs (``libdl.so.2``, ``libstdc++.so.6``, ...) it tries
every directory of torch's RPATH first (PyPI's build lists five nvidia package directories before
its own). So :func:`load_plan` reads the libraries' ELF headers, lists each RPATH directory once,
and :func:`preload` loads the libraries that live outside the tree by name (found locally) and the
tree's own by path, dependencies first: when ``libtorch_cpu.so`` is loaded, everything it needs is
already there and nothing is searched for. The same libraries are loaded, from the same places, as
the loader would pick.

Reads are round trips too, and the loader's are small: before loading, :mod:`._prefetch` starts
bringing in what the loader and the first inference will read, in large parallel reads.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from . import _prefetch

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


def _error(message: str) -> Exception:
    """A ``LibTorchError``; ``errors`` is imported only when there is one, as every module the
    cold start imports costs round trips on EFS (a lookup of the source, of the cached bytecode,
    and its open)."""
    from .errors import LibTorchError

    return LibTorchError(message)


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


def find() -> tuple[Path, str, _prefetch.Record | None]:
    """The first candidate holding libtorch, with its version and its page record
    (:func:`._prefetch.read_record`, None without one); ``LibTorchError`` if none fits. While the
    record describes these very libraries, the version it was made with stands in for torch's
    files: one file fewer to look up and open on EFS."""
    searched = candidates()
    for lib_dir in searched:
        if not all((lib_dir / name).is_file() for name in LIBRARIES):
            if os.environ.get("LAMBDATORCH_LIBTORCH"):
                missing = [n for n in LIBRARIES if not (lib_dir / n).is_file()]
                raise _error(
                    f"LAMBDATORCH_LIBTORCH={lib_dir} does not hold {', '.join(missing)}. {_FIX}"
                )
            continue
        record = _prefetch.read_record(lib_dir)
        version = _prefetch.recorded_version(lib_dir, LIBRARIES, record) or version_of(lib_dir)
        if version is None:
            raise _error(
                f"found libtorch in {lib_dir} but not its version (no ../version.py or "
                f"../build-version beside it); lambdatorch needs {LIBTORCH_VERSION}. {_FIX}"
            )
        if release(version) != LIBTORCH_VERSION:
            raise _error(
                f"found libtorch {version} in {lib_dir}, but this lambdatorch needs "
                f"{LIBTORCH_VERSION}. {_FIX}"
            )
        return lib_dir, version, record
    shown = ", ".join(str(p) for p in searched) or "(sys.path is empty)"
    raise _error(f"libtorch not found; searched {shown}. {_FIX}")


@dataclass(frozen=True)
class LoadPlan:
    """libtorch's libraries in an order that leaves the dynamic loader nothing to search for."""

    #: Needed libraries found in none of the tree's RPATH directories: the system's, by name.
    system: tuple[str, ...]
    #: The tree's libraries, each after the ones it needs, by path.
    tree: tuple[Path, ...]
    #: For each of the tree's libraries, the file ranges of its ``_prefetch.LINKER_SECTIONS``.
    linker_ranges: dict[Path, _prefetch.Ranges]


class _Unplanned(Exception):
    """A layout the plan does not model; the loader is left to search as usual."""


def load_plan(lib_dir: Path, record: _prefetch.Record | None = None) -> LoadPlan | None:
    """How to load ``LIBRARIES`` from ``lib_dir`` without the loader's search, or None when the
    libraries use something the plan does not model (``DT_RUNPATH``, ``glibc-hwcaps``). Taken
    from ``record`` (:func:`._prefetch.read_record`) while it matches the files, else planned
    from the libraries' ELF headers and directory listings."""
    recorded = _prefetch.recorded_plan(lib_dir, record) if record else None
    if recorded is not None:
        return LoadPlan(*recorded)
    from . import _elf  # only here: a start with a valid record never reads an ELF header

    listings: dict[Path, frozenset[str]] = {}

    def names_in(folder: Path) -> frozenset[str]:
        if folder not in listings:
            try:
                listings[folder] = frozenset(os.listdir(folder))
            except OSError:
                listings[folder] = frozenset()
            if "glibc-hwcaps" in listings[folder]:
                raise _Unplanned(folder)
        return listings[folder]

    system: dict[str, None] = {}
    tree: dict[Path, None] = {}
    ranges: dict[Path, _prefetch.Ranges] = {}

    def visit(path: Path) -> None:
        if path in tree:
            return
        info = _elf.read(path)
        if info.runpath:  # searched after LD_LIBRARY_PATH: the environment decides
            raise _Unplanned(path)
        ranges[path] = _prefetch.linker_ranges(info.sections)
        tree[path] = None  # placeholder against cycles; moved to the end below
        for name in info.needed:
            folder = next((d for d in info.search if name in names_in(d)), None)
            if folder is None:
                system.setdefault(name)
            else:
                visit(folder / name)
        del tree[path]
        tree[path] = None

    try:
        for name in LIBRARIES:
            visit(lib_dir / name)
    except (_Unplanned, OSError, ValueError):
        return None
    return LoadPlan(tuple(system), tuple(tree), ranges)


def preload() -> Path:
    """Locate, check and load libtorch once per process; returns its directory."""
    global _loaded
    if _loaded is not None:
        return _loaded
    lib_dir, version, record = find()
    plan = load_plan(lib_dir, record)
    helper = _prefetch.start(lib_dir, plan.linker_ranges if plan else {}, record)
    try:
        _load(plan, lib_dir, version)
    finally:
        _prefetch.finish(helper)
    _loaded = lib_dir
    return lib_dir


def _load(plan: LoadPlan | None, lib_dir: Path, version: str) -> None:
    if plan is not None:
        for soname in plan.system:
            try:
                ctypes.CDLL(soname, mode=ctypes.RTLD_GLOBAL)
            except OSError:
                pass  # then the loader searches for it as usual, and reports it if missing
    for path in plan.tree if plan else [lib_dir / name for name in LIBRARIES]:
        try:
            ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
        except OSError as err:
            raise _error(
                f"libtorch {version} in {lib_dir} failed to load {path.name}: {err}. {_FIX}"
            ) from err


def import_core() -> ModuleType:
    """``lambdatorch._core``, imported after libtorch is loaded."""
    lib_dir = preload()
    try:
        return importlib.import_module("lambdatorch._core")
    except ImportError as err:  # e.g. a libtorch whose symbols do not match this build
        raise _error(
            f"the lambdatorch extension failed to load against libtorch in {lib_dir}: {err}. {_FIX}"
        ) from err


def record_pages() -> Path | None:
    """Record which pages of libtorch's libraries this process has touched, for later cold starts
    to prefetch (:func:`._prefetch.record_pages`); call it after a model's first inference. None
    when libtorch is not loaded yet."""
    if _loaded is None:
        return None
    plan = load_plan(_loaded)  # from the files themselves, not from an earlier record
    version = version_of(_loaded)
    if plan is None:
        libraries = [_loaded / name for name in LIBRARIES]
        return _prefetch.record_pages(_loaded, libraries, version=version)
    return _prefetch.record_pages(
        _loaded, plan.tree, plan.system, plan.linker_ranges, version=version
    )
