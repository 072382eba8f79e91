"""AOTInductor packages (``.pt2``): unpack one safely into a model directory, and digest it.

A ``.pt2`` written by ``torch._inductor.aoti_compile_and_package`` is a zip archive whose entries
all sit under one top directory (``<prefix>/data/aotinductor/model/*.wrapper.so``, the kernel
metadata, the generated sources, ``<prefix>/archive_format`` ...). ``add-model`` unpacks it into
the model directory so that nothing is extracted at cold start: libtorch loads the unpacked
directory in place. The archive is hostile input: absolute paths, ``..``, symlinks and other
special entries, duplicate names, entries outside the prefix, oversized entries and compression
bombs are refused, and nothing is written outside the destination.

The standard library only, and no imports from the package: ``scripts/make_fixtures.py`` loads
this file by path, before any wheel is installed. Errors are :class:`PackageError`, which the
command line reports as a ``ManifestError``.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import zipfile
from pathlib import Path, PurePosixPath

#: Where the model library and its metadata sit under a package's top directory.
MODEL_SUBDIR = "data/aotinductor/model"
#: The largest entry (the model library holds the weights: ResNet-50 is ~100 MB).
MAX_ENTRY_BYTES = 4 << 30
#: The largest package, unpacked.
MAX_TOTAL_BYTES = 8 << 30
#: More entries than any package has.
MAX_ENTRIES = 10_000
#: Compressed entries may expand this many times at most (packages are written uncompressed).
MAX_RATIO = 200
#: Entries smaller than this are not held to ``MAX_RATIO`` (tiny files compress well).
RATIO_FLOOR_BYTES = 1 << 20


class PackageError(ValueError):
    """The archive is not a package lambdatorch can unpack safely; the message says why."""


def is_package(path: Path) -> bool:
    """Whether ``path`` is a zip archive (a ``.pt2`` package, as opposed to TorchScript's zip,
    which holds no ``data/aotinductor/``)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(f"/{MODEL_SUBDIR}/" in name for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _checked_entries(archive: zipfile.ZipFile, what: str) -> tuple[str, list[zipfile.ZipInfo]]:
    """The package's prefix and its file entries, after every check that needs no extraction."""
    infos = archive.infolist()
    if not infos:
        raise PackageError(f"{what} is an empty archive, not an AOTInductor package")
    if len(infos) > MAX_ENTRIES:
        raise PackageError(f"{what} has {len(infos)} entries, over the limit of {MAX_ENTRIES}")
    prefix: str | None = None
    seen: set[str] = set()
    files: list[zipfile.ZipInfo] = []
    total = 0
    for info in infos:
        name = info.filename
        if "\\" in name or "\x00" in name or name.startswith("/") or not name.strip("/"):
            raise PackageError(f"{what}: entry {name!r} is not a relative path")
        parts = PurePosixPath(name).parts
        if any(part in ("..", ".") for part in parts) or ":" in parts[0]:
            raise PackageError(f"{what}: entry {name!r} leaves the package (.. or a drive)")
        mode = info.external_attr >> 16
        kind = stat.S_IFMT(mode)
        if stat.S_ISLNK(mode) or (kind and not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)):
            raise PackageError(f"{what}: entry {name!r} is a symlink or special file")
        if prefix is None:
            prefix = parts[0]
        if parts[0] != prefix:
            raise PackageError(
                f"{what}: entry {name!r} is outside the package's directory {prefix!r}"
            )
        key = name.rstrip("/")
        if key in seen:
            raise PackageError(f"{what}: entry {name!r} appears twice")
        seen.add(key)
        if info.is_dir():
            continue
        if len(parts) < 2:
            raise PackageError(f"{what}: entry {name!r} is outside the package's directory")
        if info.file_size > MAX_ENTRY_BYTES:
            raise PackageError(
                f"{what}: entry {name!r} is {info.file_size} bytes, over the limit of "
                f"{MAX_ENTRY_BYTES}"
            )
        if info.file_size > RATIO_FLOOR_BYTES and info.file_size > MAX_RATIO * max(
            info.compress_size, 1
        ):
            raise PackageError(
                f"{what}: entry {name!r} expands {info.file_size} bytes from "
                f"{info.compress_size} (a compression bomb?)"
            )
        total += info.file_size
        if total > MAX_TOTAL_BYTES:
            raise PackageError(
                f"{what} unpacks to more than {MAX_TOTAL_BYTES} bytes, over the limit"
            )
        files.append(info)
    assert prefix is not None
    libraries = [
        f
        for f in files
        if f.filename.startswith(f"{prefix}/{MODEL_SUBDIR}/") and f.filename.endswith(".so")
    ]
    if len(libraries) != 1:
        hint = (
            " (a torch.export.save archive? compile it with "
            "torch._inductor.aoti_compile_and_package, or lambdatorch export --format aoti)"
            if not libraries
            else ""
        )
        raise PackageError(
            f"{what} is not a CPU AOTInductor package: expected one model library in "
            f"{prefix}/{MODEL_SUBDIR}/, found {len(libraries)}{hint}"
        )
    return prefix, files


def unpack(archive_path: Path, dest: Path) -> None:
    """Unpacks the package at ``archive_path`` into the directory ``dest`` (which must not
    exist; its parent must): ``dest`` becomes the package's top directory."""
    what = archive_path.name
    try:
        archive = zipfile.ZipFile(archive_path)
    except (OSError, zipfile.BadZipFile) as err:
        raise PackageError(f"{what} is not a readable .pt2 package (a zip archive): {err}") from err
    with archive:
        prefix, files = _checked_entries(archive, what)
        dest.mkdir()
        root = dest.resolve()
        for info in files:
            relative = PurePosixPath(info.filename).relative_to(prefix)
            target = root.joinpath(*relative.parts)
            written = 0
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                # Each directory was made here, below `root`, from checked names: nothing
                # resolves elsewhere. O_EXCL and O_NOFOLLOW make sure of it at the last step.
                if not target.parent.resolve().is_relative_to(root):
                    raise PackageError(f"{what}: entry {info.filename!r} leaves the package")
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                mode = 0o755 if info.filename.endswith(".so") else 0o644
                fd = os.open(target, flags, mode)
                with os.fdopen(fd, "wb") as out, archive.open(info) as entry:
                    while block := entry.read(1 << 20):
                        written += len(block)
                        if written > info.file_size:
                            raise PackageError(
                                f"{what}: entry {info.filename!r} holds more than its declared "
                                f"{info.file_size} bytes"
                            )
                        out.write(block)
            except (zipfile.BadZipFile, EOFError, OSError) as err:
                raise PackageError(
                    f"{what}: entry {info.filename!r} is corrupt or truncated: {err}"
                ) from err


def cpu_isa(package_dir: Path) -> str:
    """``AOTI_CPU_ISA`` of an unpacked package's kernel metadata (``"AVX2"``)."""
    found: set[str] = set()
    for meta in sorted((package_dir / MODEL_SUBDIR).glob("*_metadata.json")):
        try:
            value = json.loads(meta.read_text()).get("AOTI_CPU_ISA")
        except (OSError, ValueError) as err:
            raise PackageError(f"{meta.name} is not readable JSON: {err}") from err
        if isinstance(value, str):
            found.add(value)
    if len(found) != 1:
        raise PackageError(
            f"expected one AOTI_CPU_ISA in the package's metadata, found {sorted(found)}"
        )
    return found.pop()


def tree_sha256(root: Path) -> str:
    """The digest an ``aoti`` manifest's ``sha256`` gives for a package directory (as the Rust
    core computes it): the sha256 of one line ``<sha256 of the file>  <relative path>\\n`` per
    regular file, sorted by path, as ``sha256sum`` prints them."""
    lines = []
    for path in sorted(_files(root, root), key=lambda p: p[0].encode()):
        name, file = path
        digest = hashlib.sha256()
        with file.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        lines.append(f"{digest.hexdigest()}  {name}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _files(root: Path, top: Path) -> list[tuple[str, Path]]:
    found = []
    for entry in os.scandir(top):
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            found.extend(_files(root, path))
        elif entry.is_file(follow_symlinks=False):
            found.append((path.relative_to(root).as_posix(), path))
        else:
            raise PackageError(f"{path} is a symlink or special file; a package holds files only")
    return found
