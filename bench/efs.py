"""An EFS stand-in: a FUSE file system that serves a directory with an NFS client's costs.

    python -m bench.efs SOURCE MOUNTPOINT [--op-ms 1] [--read-ms 1] [--mib-s 100] [--stats FILE]

runs in the foreground until unmounted (``fusermount3 -u MOUNTPOINT``), then writes what it served
to FILE as JSON; :func:`mounted` does all of that around a ``with`` block, so every measured cold
start gets a fresh mount, and with it an empty page cache. Read-only; symbolic links under SOURCE
are followed and show as what they point to (the benchmark's tree links torch from the venv: on
the mount it is an ordinary directory, read through the stand-in like everything else).

What each request costs, with defaults from AWS's documentation:

- every metadata operation (lookup, getattr, readdir, open, statfs) waits ``op_ms`` (1 ms), and
  every read ``read_ms`` (1 ms) before its bytes move: "~1 ms" read latency for General Purpose
  file systems (https://docs.aws.amazon.com/efs/latest/ug/performance.html);
- bytes share one link of ``mib_s`` (100 MiB/s) per mount, in arrival order, while round trips
  overlap: what every file system in Bursting mode can burst to, whatever its size
  (https://docs.aws.amazon.com/efs/latest/ug/performance.html#bursting, and AWS's knowledge centre
  on choosing a throughput mode); Elastic allows up to 1,500 MiB/s per client;
- reads of up to ``read_kib`` (1 MiB), the ``rsize=1048576`` that the EFS mount helper sets
  (https://docs.aws.amazon.com/efs/latest/ug/mount-helper-setting.html), with ``readahead_kib``
  (128 KiB) of readahead: the Linux NFS client's default since 5.4 (kernel commit c128e575,
  "NFS: Optimise the default readahead size");
- attributes, names and failed lookups are cached by the kernel for ``cache_s`` (3 s, NFS's
  ``acregmin``), and file contents for the mount's life (close-to-open on files that never
  change), so a repeated lookup costs nothing, as on NFS.

Where it differs from an NFS client: FUSE sends a large ``read()`` as requests of one readahead
window (128 KiB) where NFS sends up to ``rsize`` at once; those requests overlap (readahead is
asynchronous), so a 20 MB sequential read takes 0.23 s here against 0.20 s of pure transfer. Page
faults on a mapped file are read one readahead window, or one page, at a time on both.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MIB = 2**20
#: Failed lookups kept by name in the statistics (the count is always complete).
FAILED_KEPT = 400
#: Metadata operations kept, in order, in the trace beside the statistics (``STATS.trace``).
TRACE_KEPT = 100_000


@dataclass(frozen=True)
class Settings:
    op_ms: float = 1.0
    read_ms: float = 1.0
    mib_s: float = 100.0
    read_kib: int = 1024
    readahead_kib: int = 128
    cache_s: float = 3.0

    def describe(self) -> str:
        return (
            f"{self.op_ms:g} ms per metadata operation, {self.read_ms:g} ms per read, "
            f"{self.mib_s:g} MiB/s, reads up to {self.read_kib} KiB, "
            f"readahead {self.readahead_kib} KiB"
        )


def unavailable() -> str | None:
    """Why the stand-in cannot run here, or None when it can."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing (no FUSE in this kernel or container)"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is missing (apt-get install fuse3)"
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as err:  # OSError: libfuse3.so.3 itself is missing
        return f"mfusepy cannot load libfuse3 ({err}); pip install mfusepy, apt-get install fuse3"
    return None


# --- the file system ----------------------------------------------------------------------------
class Link:
    """One client's share of the network: round trips overlap, bytes queue in arrival order."""

    def __init__(self, settings: Settings) -> None:
        self.seconds_per_byte = 1 / (settings.mib_s * MIB)
        self.free_at = 0.0
        self.lock = threading.Lock()

    def transfer(self, arrived: float, latency_s: float, nbytes: int) -> None:
        with self.lock:
            start = max(arrived + latency_s, self.free_at)
            self.free_at = start + nbytes * self.seconds_per_byte
            done = self.free_at
        sleep_until(done)


def sleep_until(deadline: float) -> None:
    left = deadline - time.perf_counter()
    if left > 0:
        time.sleep(left)


def make_operations(source: Path, settings: Settings) -> Any:
    """The mfusepy ``Operations`` of a stand-in serving ``source`` (imported here: the rest of
    the benchmark runs where libfuse is missing)."""
    import mfusepy

    class EFS(mfusepy.Operations):
        use_ns = True
        # mfusepy takes any attribute named like a FUSE operation (link, lock, ...) for one:
        # everything else here starts with an underscore.

        def __init__(self) -> None:
            self._root = str(source)
            self._link = Link(settings)
            self._op_s = settings.op_ms / 1e3
            self._read_s = settings.read_ms / 1e3
            self._stats: Counter[str] = Counter()
            self._failed: list[str] = []
            self._trace: list[str] = []
            self._mutex = threading.Lock()

        def _count(self, key: str, amount: int = 1) -> None:
            with self._mutex:
                self._stats[key] += amount

        def _metadata(self, kind: str, path: str) -> None:
            with self._mutex:
                self._stats[kind] += 1
                if len(self._trace) < TRACE_KEPT:
                    self._trace.append(f"{kind} {path}")
            sleep_until(time.perf_counter() + self._op_s)

        def init_with_config(self, conn: Any, config: Any) -> None:
            if conn is not None:
                conn.max_read = settings.read_kib * 1024  # as the mount option says
                conn.max_readahead = settings.readahead_kib * 1024
                conn.max_background = 64  # NFS keeps many reads in flight; FUSE's default is 12
                conn.congestion_threshold = 48
            if config is not None:
                config.kernel_cache = 1
                config.entry_timeout = config.attr_timeout = settings.cache_s
                config.negative_timeout = settings.cache_s

        def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
            self._metadata("getattr", path)
            try:
                st = os.stat(self._root + path)  # links followed
            except OSError as err:
                if err.errno == errno.ENOENT:
                    with self._mutex:
                        self._stats["failed_lookups"] += 1
                        if len(self._failed) < FAILED_KEPT:
                            self._failed.append(path)
                raise mfusepy.FuseOSError(err.errno or errno.EIO) from err
            keys = ("st_mode", "st_nlink", "st_size", "st_uid", "st_gid", "st_ino")
            attrs = {key: getattr(st, key) for key in keys}
            attrs["st_mode"] &= ~0o222  # read-only
            for when in ("st_atime", "st_mtime", "st_ctime"):
                attrs[when] = getattr(st, when + "_ns")
            return attrs

        def readdir(self, path: str, fh: int) -> list[str]:
            self._metadata("readdir", path)
            return [".", "..", *os.listdir(self._root + path)]

        def open(self, path: str, flags: int) -> int:
            self._metadata("open", path)
            if flags & (os.O_WRONLY | os.O_RDWR):
                raise mfusepy.FuseOSError(errno.EROFS)
            return os.open(self._root + path, os.O_RDONLY)

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            arrived = time.perf_counter()
            data = os.pread(fh, size, offset)
            with self._mutex:
                self._stats["reads"] += 1
                self._stats["bytes"] += len(data)
                self._stats[f"read_kib_{-(-len(data) // 1024)}"] += 1
            self._link.transfer(arrived, self._read_s, len(data))
            return data

        def release(self, path: str, fh: int) -> int:
            os.close(fh)
            return 0

        def statfs(self, path: str) -> dict[str, int]:
            self._metadata("statfs", path)
            st = os.statvfs(self._root + path)
            names = ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files")
            return {name: getattr(st, name) for name in names} | {"f_namemax": 255}

        def report(self) -> dict[str, Any]:
            with self._mutex:
                stats = dict(self._stats)
                failed = list(self._failed)
            sizes = {k: v for k, v in stats.items() if k.startswith("read_kib_")}
            metadata = sum(stats.get(k, 0) for k in ("getattr", "readdir", "open", "statfs"))
            return {
                "settings": asdict(settings),
                "metadata_ops": metadata,
                "ops": {k: stats.get(k, 0) for k in ("getattr", "readdir", "open", "statfs")},
                "failed_lookups": stats.get("failed_lookups", 0),
                "failed_paths": failed,
                "reads": stats.get("reads", 0),
                "bytes": stats.get("bytes", 0),
                "read_sizes_kib": {int(k[9:]): v for k, v in sorted(sizes.items())},
                "trace": list(self._trace),
            }

    return EFS()


def serve(source: Path, mountpoint: Path, settings: Settings, stats: Path | None) -> None:
    """Mount and serve until unmounted; then write the statistics."""
    import mfusepy

    operations = make_operations(source, settings)
    mfusepy.FUSE(
        operations,
        str(mountpoint),
        foreground=True,
        ro=True,
        fsname="efs-standin",
        max_read=settings.read_kib * 1024,
    )
    if stats is not None:
        report = operations.report()
        stats.with_suffix(".trace").write_text("\n".join(report.pop("trace")) + "\n")
        stats.write_text(json.dumps(report, indent=1) + "\n")


# --- mounting from the benchmark ----------------------------------------------------------------
@dataclass
class Mount:
    """A mounted stand-in; ``stats`` is filled in when it is unmounted."""

    source: Path
    path: Path
    settings: Settings
    stats: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def mounted(source: Path, mountpoint: Path, settings: Settings, log: Path) -> Iterator[Mount]:
    """``source`` served at ``mountpoint`` for the ``with`` block: a fresh mount, nothing cached."""
    reason = unavailable()
    if reason:
        raise RuntimeError(f"the EFS stand-in cannot run: {reason}")
    if os.path.ismount(mountpoint):  # left over by a run that was killed
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)
    mountpoint.mkdir(parents=True, exist_ok=True)
    stats = log.with_suffix(".stats.json")
    stats.unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        "bench.efs",
        str(source),
        str(mountpoint),
        "--stats",
        str(stats),
    ]
    for name, value in asdict(settings).items():
        command += [f"--{name.replace('_', '-')}", str(value)]
    with log.open("w") as out:
        server = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, cwd=Path(__file__).parents[1]
        )
    mount = Mount(source, mountpoint, settings)
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mountpoint):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the EFS stand-in did not mount {mountpoint}: see {log}")
            time.sleep(0.02)
        set_readahead(mountpoint, settings.readahead_kib)
        yield mount
    finally:
        unmount(mountpoint, server)
        if stats.exists():
            mount.stats = json.loads(stats.read_text())


def set_readahead(mountpoint: Path, kib: int) -> None:
    """The mount's readahead window, as ``/sys/class/bdi/<dev>/read_ahead_kb`` sets it for NFS."""
    device = os.stat(mountpoint).st_dev
    bdi = Path(f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb")
    with contextlib.suppress(OSError):
        bdi.write_text(str(kib))


def unmount(mountpoint: Path, server: subprocess.Popen[bytes]) -> None:
    for attempt in range(50):
        if not os.path.ismount(mountpoint):
            break
        lazy = ["-z"] if attempt == 49 else []
        done = subprocess.run(
            ["fusermount3", "-u", *lazy, str(mountpoint)], capture_output=True, check=False
        )
        if done.returncode == 0:
            break
        time.sleep(0.1)  # a process of the cold start may still be closing its files
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("mountpoint", type=Path)
    parser.add_argument("--stats", type=Path)
    defaults = Settings()
    for name, value in asdict(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args()
    settings = Settings(**{name: getattr(args, name) for name in asdict(defaults)})
    reason = unavailable()
    if reason:
        print(f"bench.efs: {reason}", file=sys.stderr)
        return 1
    serve(args.source.resolve(), args.mountpoint, settings, args.stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
