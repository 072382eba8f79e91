"""Package the native handler for Lambda's ``provided.al2023`` runtime.

Checks, before writing anything:

- both binaries need at most GLIBC_2.34, GLIBCXX_3.4.29 and CXXABI_1.3.13 (what Amazon Linux 2023,
  glibc 2.34 and GCC 11's libstdc++, provides), read from ``objdump -T``;
- ``bootstrap`` has no NEEDED entry for libtorch (``libtorch_cpu.so``, ``libc10.so``, ...), read
  from ``readelf -d``: it must start, and report a clear init error, when libtorch is missing. The
  crate ``bootstrap/`` depends on neither the engine nor ``tch``, so this holds by construction;
  the check guards against a dependency creeping in.

Then writes OUT_ZIP with ``bootstrap`` and ``lambdatorch-handler`` at its root, mode 0755, fixed
timestamps and order, so the same binaries always give the same zip.

Usage: python scripts/package_lambda.py BIN_DIR OUT_ZIP   (make lambda-zip)
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

BINARIES = ("bootstrap", "lambdatorch-handler")
# Amazon Linux 2023 (provided.al2023, python3.12+): glibc 2.34, libstdc++ of GCC 11.
LIMITS = {"GLIBC": (2, 34), "GLIBCXX": (3, 4, 29), "CXXABI": (1, 3, 13)}
# Libraries the launcher must not need: it runs before libtorch is known to be there.
LIBTORCH_PREFIXES = ("libtorch", "libc10")
ZIP_TIME = (1980, 1, 1, 0, 0, 0)

# A version in objdump -T's version column: "(GLIBC_2.2.5)" (hidden) or "GLIBC_2.34".
VERSION = re.compile(r"\s\(?(GLIBC|GLIBCXX|CXXABI)_(\d+(?:\.\d+)*)\)?\s")
NEEDED = re.compile(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]")


class PackagingError(Exception):
    """A check failed; the message says which and how to fix it."""


def tool(name: str, *args: str) -> str:
    if shutil.which(name) is None:
        raise PackagingError(
            f"`{name}` not found on PATH: install binutils (apt-get install binutils)"
        )
    out = subprocess.run([name, *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise PackagingError(f"`{name} {' '.join(args)}` failed: {out.stderr.strip()}")
    return out.stdout


def dotted(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


def max_versions(binary: Path) -> dict[str, tuple[int, ...]]:
    """The highest GLIBC / GLIBCXX / CXXABI symbol version the binary needs."""
    found: dict[str, tuple[int, ...]] = {}
    for line in tool("objdump", "-T", str(binary)).splitlines():
        match = VERSION.search(line)
        if match:
            family, version = match[1], tuple(int(p) for p in match[2].split("."))
            found[family] = max(found.get(family, version), version)
    return found


def needed(binary: Path) -> list[str]:
    return NEEDED.findall(tool("readelf", "-d", str(binary)))


def check(binary: Path) -> tuple[dict[str, tuple[int, ...]], list[str]]:
    if not binary.is_file():
        raise PackagingError(f"{binary} does not exist: build it with `make lambda`")
    if binary.read_bytes()[:4] != b"\x7fELF":
        raise PackagingError(f"{binary} is not an ELF executable")
    versions = max_versions(binary)
    if "GLIBC" not in versions:
        raise PackagingError(f"{binary}: objdump -T shows no GLIBC symbol versions; is it dynamic?")
    too_new = [
        f"{family}_{dotted(version)} (at most {family}_{dotted(LIMITS[family])})"
        for family, version in sorted(versions.items())
        if version > LIMITS[family]
    ]
    if too_new:
        raise PackagingError(
            f"{binary} needs {', '.join(too_new)}, newer than Amazon Linux 2023 "
            "(provided.al2023) provides: build on a system with glibc <= 2.34 and GCC 11's "
            "libstdc++ or older, such as Amazon Linux 2023 itself (the "
            "public.ecr.aws/lambda/provided:al2023 image)"
        )
    libs = needed(binary)
    if binary.name == "bootstrap":
        torch = [lib for lib in libs if lib.startswith(LIBTORCH_PREFIXES)]
        if torch:
            raise PackagingError(
                f"{binary} links {', '.join(torch)} (readelf -d NEEDED): the launcher must not "
                "need libtorch, or Lambda's loader fails before it can report a missing or wrong "
                "libtorch on EFS. Keep the engine and tch out of bootstrap/Cargo.toml."
            )
    return versions, libs


def write_zip(bin_dir: Path, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    with zipfile.ZipFile(partial, "w") as archive:
        for name in BINARIES:
            info = zipfile.ZipInfo(name, date_time=ZIP_TIME)
            info.external_attr = (0o755 | stat.S_IFREG) << 16
            info.create_system = 3  # Unix, so that unzip and Lambda honour the mode
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, (bin_dir / name).read_bytes(), compresslevel=9)
    os.replace(partial, out)


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    bin_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    try:
        reports = {name: check(bin_dir / name) for name in BINARIES}
    except PackagingError as err:
        print(f"package_lambda: {err}", file=sys.stderr)
        return 1
    write_zip(bin_dir, out)
    limits = ", ".join(f"{family}_{dotted(v)}" for family, v in LIMITS.items())
    print(f"{out}: {out.stat().st_size / 1e6:.2f} MB (checked against {limits})")
    with zipfile.ZipFile(out) as archive:
        for info in archive.infolist():
            versions, libs = reports[info.filename]
            found = ", ".join(f"{f}_{dotted(v)}" for f, v in sorted(versions.items()))
            print(
                f"  {info.filename:<20} {info.file_size / 1e6:6.2f} MB "
                f"({info.compress_size / 1e6:.2f} MB zipped)  max {found}"
            )
            print(f"  {'':<20} needs {', '.join(libs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
