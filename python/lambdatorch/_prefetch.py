"""Bring what a cold start reads into the page cache with large parallel reads, ahead of use.

On EFS every read is a network round trip, and a library's pages are read one fault at a time
(the kernel stops reading ahead around faults once a mapping misses often). So before libtorch is
loaded, :func:`start` has the kernel read, in this order:

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
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

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
#: The helper, run as ``python -I -S -c _HELPER STEPS`` (STEPS: :func:`plan` as JSON). Run by
#: path, a file of the tree would be looked up and opened (twice) and its directory listed: each
#: a round trip on EFS. It detaches at once (its parent exits, init reaps it), and opens each
#: file once.
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

Ranges = tuple[tuple[int, int], ...]
Record = dict[str, Any]


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


def prefetch(path: Path, ranges: Iterable[tuple[int, int]] | None = None) -> None:
    """Ask the kernel to read ``ranges`` of ``path`` (default: all of it) into the page cache."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        _advise(fd, ranges)
    finally:
        os.close(fd)


def _advise(fd: int, ranges: Iterable[tuple[int, int]] | None) -> None:
    try:
        for offset, size in ranges if ranges is not None else ((0, os.fstat(fd).st_size),):
            for start in range(offset, offset + size, _CHUNK):
                os.posix_fadvise(fd, start, _CHUNK, os.POSIX_FADV_WILLNEED)
    except OSError:
        pass


def plan(
    lib_dir: Path, libraries: Mapping[Path, Ranges], record: Record | None = None
) -> list[tuple[str, Ranges | None]]:
    """What to prefetch, in order: ``libraries``' given ranges, then their recorded pages, then
    the preloaded models' files (``None``: the whole file)."""
    steps: list[tuple[str, Ranges | None]] = [(str(p), r) for p, r in libraries.items()]
    steps += [(str(p), r) for p, r in recorded(lib_dir, libraries, record).items()]
    steps += [(str(model), None) for model in preloaded_model_files()]
    return steps


def start(
    lib_dir: Path, libraries: Mapping[Path, Ranges], record: Record | None = None
) -> subprocess.Popen[bytes] | None:
    """Start prefetching :func:`plan` in a helper process; reap it with :func:`finish`."""
    steps = plan(lib_dir, libraries, record)
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


def finish(helper: subprocess.Popen[bytes] | None) -> None:
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


def record_pages(
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
