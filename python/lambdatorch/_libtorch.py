"""Find libtorch and load it, without importing Python torch, its pages brought in ahead of use.

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

Reads are round trips too, and a library's pages are read one fault at a time (the kernel stops
reading ahead around faults once a mapping misses often). So before libtorch is loaded,
:func:`start_prefetch` has the kernel read, in this order:

1. each library's ``LINKER_SECTIONS``, which the dynamic loader reads whole to link and relocate;
2. the pages a cold start was recorded touching (:func:`record_pages` writes ``PAGES_FILE``
   beside libtorch, with the load plan, so that a start with a valid record reads no ELF header
   and lists no directory; a stale or missing record is ignored);
3. the model files ``LAMBDATORCH_PRELOAD`` names, needed once libtorch is loaded (for an
   AOTInductor model, the files of its unpacked package: model library, weights, metadata).

The requests (``posix_fadvise(WILLNEED)``) are made by a detached helper process: a thread would
not do, as the interpreter holds the GIL while ``dlopen`` runs, for most of the time there is to
overlap. The helper's program (``_HELPER``) is handed over on its command line, so that starting
it looks up nothing in the tree. Prefetching changes only when bytes arrive, never which bytes
are used: every failure is ignored.

This is one module, not two, because each module a cold start imports costs three round trips
on EFS: a lookup of its source, one of its bytecode, and an open.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

#: The libtorch version this build of lambdatorch links against (tch 0.26).
LIBTORCH_VERSION = "2.13.0"

#: Load order matters: libtorch_cpu needs c10's symbols.
LIBRARIES = ("libc10.so", "libtorch_cpu.so")

#: File ranges, ``(offset, size)``; a page record, as :func:`read_record` returns it.
Ranges = tuple[tuple[int, int], ...]
Record = dict[str, Any]

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


def find() -> tuple[Path, str, Record | None]:
    """The first candidate holding libtorch, with its version and its page record
    (:func:`read_record`, None without one); ``LibTorchError`` if none fits. While the
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
        record = read_record(lib_dir)
        version = recorded_version(lib_dir, LIBRARIES, record) or version_of(lib_dir)
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
    #: For each of the tree's libraries, the file ranges of its ``LINKER_SECTIONS``.
    linker_ranges: dict[Path, Ranges]


class _Unplanned(Exception):
    """A layout the plan does not model; the loader is left to search as usual."""


def load_plan(lib_dir: Path, record: Record | None = None) -> LoadPlan | None:
    """How to load ``LIBRARIES`` from ``lib_dir`` without the loader's search, or None when the
    libraries use something the plan does not model (``DT_RUNPATH``, ``glibc-hwcaps``). Taken
    from ``record`` (:func:`read_record`) while it matches the files, else planned
    from the libraries' ELF headers and directory listings."""
    recorded = recorded_plan(lib_dir, record) if record else None
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
    ranges: dict[Path, Ranges] = {}

    def visit(path: Path) -> None:
        if path in tree:
            return
        info = _elf.read(path)
        if info.runpath:  # searched after LD_LIBRARY_PATH: the environment decides
            raise _Unplanned(path)
        ranges[path] = linker_ranges(info.sections)
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
    helper = start_prefetch(lib_dir, plan.linker_ranges if plan else {}, record)
    try:
        _load(plan, lib_dir, version)
    finally:
        finish_prefetch(helper)
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
    to prefetch (:func:`write_page_record`); call it after a model's first inference. None
    when libtorch is not loaded yet."""
    if _loaded is None:
        return None
    plan = load_plan(_loaded)  # from the files themselves, not from an earlier record
    version = version_of(_loaded)
    if plan is None:
        libraries = [_loaded / name for name in LIBRARIES]
        return write_page_record(_loaded, libraries, version=version)
    return write_page_record(_loaded, plan.tree, plan.system, plan.linker_ranges, version=version)


# --- prefetching ------------------------------------------------------------------------------
#: What the dynamic loader reads whole to link and relocate a library (symbol, version and hash
#: tables, relocations, and the data it relocates). Code and read-only data are faulted in as
#: they run, and only a part of them ever is (about 11% of PyPI's ``libtorch_cpu.so`` code by a
#: first inference).
LINKER_SECTIONS = frozenset(
    {
        ".dynsym",
        ".dynstr",
        ".gnu.hash",
        ".hash",
        ".gnu.version",
        ".gnu.version_r",
        ".gnu.version_d",
        ".rela.dyn",
        ".rela.plt",
        ".relr.dyn",
        ".dynamic",
        ".init_array",
        ".data.rel.ro",
        ".got",
        ".got.plt",
        ".data",
        ".tdata",
    }
)
#: Beside the libraries: which of their pages a cold start touched (see :func:`record_pages`).
PAGES_FILE = ".lambdatorch-pages.json"
_FORMAT = 1
#: Recorded pages closer than this are fetched as one range.
_MERGE_GAP = 32 << 10
#: The kernel reads at most one readahead window per ``WILLNEED`` (``max(io_pages, ra_pages)``:
#: 128 KiB by default on NFS and FUSE), so ranges are asked for in pieces of this size; each
#: becomes its own asynchronous read, and they travel in parallel.
_CHUNK = 128 << 10
_PAGE = os.sysconf("SC_PAGE_SIZE")
#: The helper, run as ``python -I -S -c _HELPER STEPS`` (STEPS: :func:`prefetch_steps` as
#: JSON). Run by path, a file of the tree would be looked up and opened (twice) and its directory
#: listed: each a round trip on EFS. It detaches at once (its parent exits, init reaps it), and
#: opens each file once.
_HELPER = f"""
import json, os, sys
if os.fork() > 0:
    os._exit(0)
opened = {{}}
for path, ranges in json.loads(sys.argv[1]):
    try:
        if path not in opened:
            opened[path] = os.open(path, os.O_RDONLY)
        fd = opened[path]
        for offset, size in ranges if ranges is not None else [(0, os.fstat(fd).st_size)]:
            for start in range(offset, offset + size, {_CHUNK}):
                os.posix_fadvise(fd, start, {_CHUNK}, os.POSIX_FADV_WILLNEED)
    except OSError:
        pass
os._exit(0)
"""
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def merged(ranges: Iterable[tuple[int, int]], gap: int = _MERGE_GAP) -> Ranges:
    """``(offset, size)`` ranges sorted, with those at most ``gap`` apart joined."""
    out: list[tuple[int, int]] = []
    for offset, size in sorted(ranges):
        if out and offset - (out[-1][0] + out[-1][1]) <= gap:
            start = out[-1][0]
            out[-1] = (start, max(out[-1][0] + out[-1][1], offset + size) - start)
        else:
            out.append((offset, size))
    return tuple(out)


def linker_ranges(sections: Mapping[str, tuple[int, int]]) -> Ranges:
    """The file ranges of a library's ``LINKER_SECTIONS``, given its sections."""
    return merged((s for name, s in sections.items() if name in LINKER_SECTIONS), 1 << 20)


def prefetch_steps(
    lib_dir: Path, libraries: Mapping[Path, Ranges], record: Record | None = None
) -> list[tuple[str, Ranges | None]]:
    """What to prefetch, in order: ``libraries``' given ranges, then their recorded pages, then
    the preloaded models' files (``None``: the whole file)."""
    steps: list[tuple[str, Ranges | None]] = [(str(p), r) for p, r in libraries.items()]
    steps += [(str(p), r) for p, r in recorded(lib_dir, libraries, record).items()]
    steps += [(str(model), None) for model in preloaded_model_files()]
    return steps


def start_prefetch(
    lib_dir: Path, libraries: Mapping[Path, Ranges], record: Record | None = None
) -> subprocess.Popen[bytes] | None:
    """Start prefetching :func:`prefetch_steps` in a helper process; reap it with
    :func:`finish_prefetch`."""
    steps = prefetch_steps(lib_dir, libraries, record)
    if not steps:
        return None
    try:
        return subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _HELPER, json.dumps(steps)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    except OSError:
        return None


def finish_prefetch(helper: subprocess.Popen[bytes] | None) -> None:
    """Reap the helper's first process (it forks the worker and exits at once)."""
    if helper is not None:
        try:
            helper.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def _identity(path: Path) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def read_record(lib_dir: Path) -> Record | None:
    """``lib_dir/PAGES_FILE``, parsed, or None (missing, unreadable or of another format)."""
    try:
        record = json.loads((lib_dir / PAGES_FILE).read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format") != _FORMAT:
        return None
    return record


def _entry(lib_dir: Path, path: Path, record: Record) -> dict[str, Any] | None:
    """The record's entry for ``path`` if it still describes the file."""
    try:
        entry = record["libraries"].get(os.path.relpath(path, lib_dir))
        return entry if entry and entry["file"] == _identity(path) else None
    except (OSError, KeyError, TypeError, AttributeError):
        return None


def recorded(
    lib_dir: Path, libraries: Iterable[Path], record: Record | None = None
) -> dict[Path, Ranges]:
    """The recorded ranges of each of ``libraries`` whose record still matches the file."""
    if record is None:
        record = read_record(lib_dir)
    if not record:
        return {}
    found = {}
    for path in libraries:
        entry = _entry(lib_dir, path, record)
        if entry:
            try:
                found[path] = tuple((int(o), int(n)) for o, n in entry["ranges"])
            except (KeyError, TypeError, ValueError):
                continue
    return found


def recorded_version(lib_dir: Path, names: Iterable[str], record: Record | None) -> str | None:
    """The libtorch version ``record`` was made with, if each library of ``names`` in
    ``lib_dir`` is still the file recorded (then torch's own files need not be read for it)."""
    version = record.get("version") if record else None
    if not isinstance(version, str) or record is None:
        return None
    return version if all(_entry(lib_dir, lib_dir / name, record) for name in names) else None


def recorded_plan(
    lib_dir: Path, record: Record
) -> tuple[tuple[str, ...], tuple[Path, ...], dict[Path, Ranges]] | None:
    """The load plan the record holds (system names, the tree's libraries in load order, their
    linker ranges), if every one of those libraries is still the file recorded: then nothing has
    to be read or listed to plan, which on EFS saves a round trip per library and directory."""
    try:
        system = tuple(str(name) for name in record["plan"]["system"])
        tree = tuple(lib_dir / name for name in record["plan"]["tree"])
        linker = {}
        for path in tree:
            entry = _entry(lib_dir, path, record)
            if entry is None:
                return None
            linker[path] = tuple((int(o), int(n)) for o, n in entry["linker"])
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    return (system, tree, linker) if tree else None


def write_page_record(
    lib_dir: Path,
    libraries: Iterable[Path],
    system: Iterable[str] = (),
    linker: Mapping[Path, Ranges] | None = None,
    version: str | None = None,
) -> Path:
    """Write ``lib_dir/PAGES_FILE``: which pages of each of ``libraries`` (the load plan's tree,
    in load order; ``system`` and ``linker`` the rest of the plan; ``version`` libtorch's, as
    torch's files give it) this process has touched (mapped, from ``/proc/self/pagemap``;
    whatever is in the page cache is not counted). Call it
    after a model's first inference, on the tree the function will use; later cold starts
    prefetch those pages, and take the plan from it. Returns the file written."""
    libraries = list(libraries)
    wanted = {os.path.realpath(p): os.path.relpath(p, lib_dir) for p in libraries}
    pages: dict[str, set[int]] = {name: set() for name in wanted.values()}
    with open("/proc/self/maps") as maps, open("/proc/self/pagemap", "rb") as pagemap:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) < 6 or fields[5].strip() not in wanted:
                continue
            name = wanted[fields[5].strip()]
            begin, end = (int(x, 16) for x in fields[0].split("-"))
            offset = int(fields[2], 16)
            count = (end - begin) // _PAGE
            pagemap.seek(begin // _PAGE * 8)
            entries = pagemap.read(count * 8)
            for i in range(len(entries) // 8):
                if entries[i * 8 + 7] & 0x80:  # bit 63: present
                    pages[name].add(offset // _PAGE + i)
    libraries_out = {}
    for path in libraries:
        real, name = os.path.realpath(path), os.path.relpath(path, lib_dir)
        ranges = merged(((p * _PAGE, _PAGE) for p in pages[name]), _MERGE_GAP)
        libraries_out[name] = {
            "file": _identity(Path(real)),
            "ranges": [list(r) for r in ranges],
            "linker": [list(r) for r in (linker or {}).get(path, ())],
        }
    plan = {"system": list(system), "tree": [os.path.relpath(p, lib_dir) for p in libraries]}
    out = lib_dir / PAGES_FILE
    partial = out.with_name(out.name + f".{os.getpid()}.partial")
    record: Record = {"format": _FORMAT, "plan": plan, "libraries": libraries_out}
    if version is not None:
        record["version"] = version
    partial.write_text(json.dumps(record) + "\n")
    os.replace(partial, out)
    return out


def preloaded_model_files() -> list[Path]:
    """The model files ``LAMBDATORCH_PRELOAD`` names, from ``LAMBDATORCH_MODELS``."""
    return model_files(
        Path(os.environ.get("LAMBDATORCH_MODELS") or "/mnt/efs/models"),
        os.environ.get("LAMBDATORCH_PRELOAD", ""),
    )


def model_files(root: Path, names: str) -> list[Path]:
    """The files each model of the comma list ``names`` loads: its manifest's ``file``, or, where
    that is a directory (an unpacked AOTInductor package), every regular file below it, the model
    libraries (``.so``) first; symlinks are not followed. Best effort: anything odd is left for
    the model's own loading to report."""
    files = []
    for name in names.split(","):
        name = name.strip()
        if not _MODEL_NAME.match(name):
            continue
        try:
            manifest = json.loads((root / name / "manifest.json").read_bytes())
            file = root / name / manifest["file"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if file.is_dir() and not file.is_symlink():
            files += sorted(_package_files(file), key=lambda p: (p.suffix != ".so", str(p)))
        elif file.is_file():
            files.append(file)
    return files


def _package_files(top: Path, limit: int = 10_000) -> list[Path]:
    """Regular files below ``top`` (at most ``limit``: a package holds a few dozen)."""
    found: list[Path] = []
    pending = [top]
    while pending and len(found) < limit:
        try:
            entries = list(os.scandir(pending.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    found.append(Path(entry.path))
            except OSError:
                continue
    return found[:limit]
