"""What a shared library asks of the dynamic loader, read from its ELF headers (nothing is loaded).

Only what :mod:`._libtorch` needs to load libtorch without the loader's search: the ``DT_NEEDED``
names, the ``DT_RPATH``/``DT_RUNPATH`` directories, and the file ranges the loader maps. 64-bit
little-endian objects only (x86-64, aarch64): anything else raises ``ValueError``, and the caller
falls back to plain loading.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

_DT_NULL, _DT_NEEDED, _DT_STRTAB, _DT_RPATH, _DT_RUNPATH = 0, 1, 5, 15, 29
_PT_LOAD, _PT_DYNAMIC = 1, 2
_PF_X = 1


@dataclass(frozen=True)
class Segment:
    """A ``PT_LOAD`` segment: where it lies in the file, and whether it is code."""

    offset: int
    size: int
    executable: bool


@dataclass(frozen=True)
class Dynamic:
    needed: tuple[str, ...]
    #: ``DT_RPATH`` (searched before ``LD_LIBRARY_PATH``), or ``DT_RUNPATH`` (after it), with
    #: ``$ORIGIN`` expanded.
    search: tuple[Path, ...]
    runpath: bool
    segments: tuple[Segment, ...]
    #: Section name -> (file offset, size), for sections with bytes in the file.
    sections: dict[str, tuple[int, int]]


def read(path: Path) -> Dynamic:
    fd = os.open(path, os.O_RDONLY)
    try:
        return _read(fd, path)
    finally:
        os.close(fd)


def _read(fd: int, path: Path) -> Dynamic:
    header = os.pread(fd, 64, 0)
    if len(header) < 64 or header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
        raise ValueError(f"{path} is not a 64-bit little-endian ELF object")
    phoff, phentsize, phnum = (
        struct.unpack_from("<Q", header, 32)[0],
        *struct.unpack_from("<HH", header, 54),
    )
    table = os.pread(fd, phentsize * phnum, phoff)
    loads: list[tuple[int, int, int, int, bool]] = []  # vaddr, offset, filesz, memsz, exec
    dynamic = None
    for i in range(phnum):
        kind, flags, offset, vaddr, _, filesz, memsz, _ = struct.unpack_from(
            "<IIQQQQQQ", table, i * phentsize
        )
        if kind == _PT_LOAD:
            loads.append((vaddr, offset, filesz, memsz, bool(flags & _PF_X)))
        elif kind == _PT_DYNAMIC:
            dynamic = (offset, filesz)
    if dynamic is None:
        raise ValueError(f"{path} has no dynamic section")
    raw = os.pread(fd, dynamic[1], dynamic[0])
    entries = [struct.unpack_from("<qQ", raw, i) for i in range(0, len(raw) - 15, 16)]
    strtab = next((value for tag, value in entries if tag == _DT_STRTAB), None)
    if strtab is None:
        raise ValueError(f"{path} has no dynamic string table")
    base = next(
        (off + strtab - va for va, off, size, _, _ in loads if va <= strtab < va + size), None
    )
    if base is None:
        raise ValueError(f"{path}: its string table lies outside its segments")

    def string(index: int) -> str:
        data = b""
        while b"\0" not in data:
            chunk = os.pread(fd, 256, base + index + len(data))
            if not chunk:
                break
            data += chunk
        return data.split(b"\0", 1)[0].decode()

    needed: list[str] = []
    rpath = runpath = None
    for tag, value in entries:
        if tag == _DT_NULL:
            break
        if tag == _DT_NEEDED:
            needed.append(string(value))
        elif tag == _DT_RPATH:
            rpath = string(value)
        elif tag == _DT_RUNPATH:
            runpath = string(value)
    origin = str(Path(path).parent)
    dirs = runpath if runpath is not None else rpath
    search = tuple(
        Path(entry.replace("${ORIGIN}", origin).replace("$ORIGIN", origin))
        for entry in (dirs or "").split(":")
        if entry
    )
    segments = tuple(Segment(off, size, x) for _, off, size, _, x in loads)
    return Dynamic(tuple(needed), search, runpath is not None, segments, _sections(fd, header))


_SHT_NOBITS = 8


def _sections(fd: int, header: bytes) -> dict[str, tuple[int, int]]:
    shoff = struct.unpack_from("<Q", header, 40)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", header, 58)
    if not shoff or not shnum or shstrndx >= shnum:
        return {}
    table = os.pread(fd, shentsize * shnum, shoff)
    rows = [struct.unpack_from("<IIQQQQ", table, i * shentsize) for i in range(shnum)]
    _, _, _, _, names_at, names_size = rows[shstrndx]
    names = os.pread(fd, names_size, names_at)
    found: dict[str, tuple[int, int]] = {}
    for name, kind, _, _, offset, size in rows:
        if kind != _SHT_NOBITS and size:
            label = names[name : names.find(b"\0", name)].decode(errors="replace")
            found[label] = (offset, size)
    return found
