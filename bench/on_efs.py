"""Cold starts on the EFS stand-in (``efs.py``): each contender from a fresh mount of the tree.

The contender runs exactly as in its local session (same command, environment and first event),
with the tree's paths pointing into the mount. Measured: the wall time to the first response, and
what the stand-in served meanwhile: metadata operations, failed lookups, reads and bytes.

Before the first run, :func:`record_pages` runs ``lambdatorch doctor --record-pages`` on the tree,
as on the machine that fills EFS: one cold start of lambdatorch and an inference of each model,
then it writes which pages of libtorch that start touched, for later cold starts to prefetch.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .contenders import PRELOADED, Contender, event, running
from .efs import Settings, mounted
from .tree import Tree

#: The stand-in's settings for the benchmark: issue 16's, which are also the defaults.
SETTINGS = Settings()


@dataclass(frozen=True)
class MountedTree(Tree):
    """The tree as the contenders see it through the stand-in (the photos stay local: they are
    the events' payload, not something the function reads)."""

    mount: Path = field(default=Path("/nonexistent"))

    @property
    def efs(self) -> Path:
        return self.mount


def record_pages(tree: Tree, log: Path) -> str:
    """Record the pages a lambdatorch cold start touches with ``lambdatorch doctor
    --record-pages``, as on the machine that fills EFS; returns the record's path."""
    command = [sys.executable, "-m", "lambdatorch", "doctor", "--root", str(tree.efs), "--json"]
    # The tree's other checks may fail (models/.done is no model): only this one matters here.
    done = subprocess.run([*command, "--record-pages"], capture_output=True, text=True)
    log.write_text(done.stdout + done.stderr)
    try:
        checks = {check["check"]: check for check in json.loads(done.stdout)}
    except (ValueError, TypeError, KeyError):
        checks = {}
    if not checks.get("page-record", {}).get("ok"):
        raise RuntimeError(f"lambdatorch doctor --record-pages recorded no pages: see {log}")
    return checks["page-record"]["detail"].removeprefix("wrote ").split(": ", 1)[0]


def cold_start(contender: Contender, tree: Tree, logs: Path) -> dict[str, Any]:
    """One cold start of ``contender`` on a fresh mount of ``tree``."""
    mountpoint = tree.work / "efs-mount"
    log = logs / f"{contender.name}.efs.log"
    payload = event(PRELOADED, tree.image("0.3MP").read_bytes())
    with mounted(tree.efs, mountpoint, SETTINGS, logs / f"{contender.name}.standin.log") as mount:
        on_mount = MountedTree(tree.work, mount.path)
        with running(contender, on_mount, log) as handler:
            seconds = handler.cold_start(payload)
    stats = mount.stats
    return {
        "cold_start_s": seconds,
        "metadata_ops": stats["metadata_ops"],
        "ops": stats["ops"],
        "failed_lookups": stats["failed_lookups"],
        "failed_paths": stats["failed_paths"][:40],
        "reads": stats["reads"],
        "bytes": stats["bytes"],
        "read_sizes_kib": stats["read_sizes_kib"],
    }
