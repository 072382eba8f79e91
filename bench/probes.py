"""Cold-start probes: what a fresh process would ask of EFS, where every file access is remote.

- metadata calls: the process runs under ``strace -f`` (path-taking calls plus ``getdents64``,
  with ``-y`` so that calls on descriptors name their file); each call is attributed to the file it
  names. Calls outside the EFS tree (the interpreter, the C library) are local on Lambda.
- bytes read: every file of the tree is evicted from the page cache (``posix_fadvise`` DONTNEED),
  the contender starts and answers its first event, then ``mincore`` tells which pages were read
  in (readahead included, as on NFS). Pages another process keeps mapped cannot be evicted; they
  are measured before the start and left out.

Files are put in one of: ``libtorch`` (torch/lib, CPU), ``cuda`` (nvidia/, triton/, cuda/ and the
CUDA parts of torch/lib, absent from the CPU-only build users put on EFS), ``models``, ``python``
(any other file of the tree: Python code, numpy, Pillow, the lambdatorch extension) and ``local``.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

from .contenders import PRELOADED, Contender, event, running
from .tree import Tree

EFS_CATEGORIES = ("libtorch", "cuda", "models", "python")
CUDA_NAME = re.compile(
    r"cuda|nvrtc|cudnn|cublas|cusparse|cufft|curand|nccl|nvjitlink|cupti|nvshmem"
)
CUDA_DIRS = {"nvidia", "triton", "cuda"}
SYSCALLS = "%file,getdents64"
CALL = re.compile(r"^(?:\d+\s+)?(\w+)\((.*)$")
FD_PATH = re.compile(r"^\d+<([^>]*)>")
QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')


def category(path: str, tree: Tree) -> str:
    efs = str(tree.efs)
    path = on_tree(os.path.normpath(path), tree)
    if path != efs and not path.startswith(efs + "/"):
        return "local"
    parts = path[len(efs) + 1 :].split("/")
    if parts[0] == "models":
        return "models"
    if (parts[1:2] and parts[1] in CUDA_DIRS) or (
        ".so" in parts[-1] and CUDA_NAME.search(parts[-1])
    ):
        return "cuda"
    if parts[1:3] == ["torch", "lib"]:
        return "libtorch"
    return "python"


def on_tree(path: str, tree: Tree) -> str:
    """``path`` as it would read on EFS: torch and its CUDA packages are linked into the tree
    from the venv, and code that resolves links (``os.path.realpath``) lands in the venv."""
    for real, linked in _links(tree).items():
        if path == real or path.startswith(real + "/"):
            return linked + path[len(real) :]
    return path


@functools.cache
def _links(tree: Tree) -> dict[str, str]:
    links = (p for p in tree.python.iterdir() if p.is_symlink())
    return {os.path.realpath(p): str(p) for p in links}


# --- metadata calls ------------------------------------------------------------------------------
def metadata_calls(contender: Contender, tree: Tree, work: Path) -> dict[str, Any]:
    """Calls during a cold start, by category, and the distinct EFS paths they name."""
    trace = work / f"{contender.name}.strace"
    wrap = ["strace", "-f", "-qq", "-y", "-e", f"trace={SYSCALLS}", "-o", str(trace)]
    with running(contender, tree, work / f"{contender.name}.strace.log", wrap) as handler:
        handler.cold_start(event(PRELOADED, tree.image("0.3MP").read_bytes()))
    calls: Counter[str] = Counter()
    paths: dict[str, set[str]] = {name: set() for name in EFS_CATEGORIES}
    for line in trace.read_text(errors="replace").splitlines():
        match = CALL.match(line)
        if not match:
            continue  # "<... resumed>" halves, signals, exits
        path = called_path(match.group(2))
        where = category(path, tree) if path else "local"
        calls[where] += 1
        if where != "local":
            paths[where].add(on_tree(os.path.normpath(path), tree))
    trace.unlink()
    return {
        "calls": {name: calls[name] for name in ("local", *EFS_CATEGORIES)},
        "efs_calls": sum(calls[name] for name in EFS_CATEGORIES),
        "efs_paths": sum(len(p) for p in paths.values()),
        "cuda_paths": len(paths["cuda"]),
    }


def called_path(args: str) -> str:
    """The file a call names: its path argument, relative to its descriptor's path if any."""
    quoted = QUOTED.search(args)
    name = quoted.group(1) if quoted else ""
    if name.startswith("/"):
        return name
    at = FD_PATH.match(args)
    if at:
        return os.path.join(at.group(1), name) if name else at.group(1)
    return ""  # relative to the working directory: not on EFS here


# --- bytes read ----------------------------------------------------------------------------------
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
MAP_FAILED = ctypes.c_void_p(-1).value


def resident_bytes(path: str) -> int:
    """Bytes of ``path`` in the page cache (mmap without touching, then mincore)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return 0
        address = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if address in (None, MAP_FAILED):
            return 0
        try:
            pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
            vector = ctypes.create_string_buffer(pages)
            _libc.mincore(address, size, vector)
            raw = vector.raw
            return (pages - raw.count(0)) * mmap.PAGESIZE
        finally:
            _libc.munmap(address, size)
    finally:
        os.close(fd)


def evict(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@functools.cache
def tree_files(tree: Tree) -> dict[str, str]:
    """Every regular file of the EFS tree (links followed, each file once) -> its category."""
    files: dict[str, str] = {}
    for folder, _, names in os.walk(tree.efs, followlinks=True):
        for name in names:
            path = os.path.join(folder, name)
            real = os.path.realpath(path)
            if real not in files and os.path.isfile(real):
                files[real] = category(path, tree)
    return files


def bytes_read(contender: Contender, tree: Tree, work: Path) -> dict[str, Any]:
    """Bytes read from the tree's files by a cold start, by category."""
    files = tree_files(tree)
    for path in files:
        evict(path)
    before = {path: resident_bytes(path) for path in files}
    with running(contender, tree, work / f"{contender.name}.pages.log") as handler:
        handler.cold_start(event(PRELOADED, tree.image("0.3MP").read_bytes()))
        after = {path: resident_bytes(path) for path in files}
    read: Counter[str] = Counter()
    for path, where in files.items():
        read[where] += max(0, after[path] - before[path])
    return {
        "bytes": {name: read[name] for name in EFS_CATEGORIES},
        "efs_bytes": sum(read.values()),
        "unevictable_bytes": sum(before.values()),
    }
