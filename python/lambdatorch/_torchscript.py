"""What a TorchScript archive's ``forward`` takes, read without Python torch.

``add-model --tokenizer`` writes a text model's ``inputs`` (the names of its ``forward`` arguments,
in order) from the archive itself, where ``torch.jit.save`` keeps the module's TorchScript source:
``<archive>/data.pkl`` names the top module's class (its first ``GLOBAL``), and
``<archive>/code/<module path>.py`` holds ``class <Name>(Module): ... def forward(self: ..., a:
Tensor, b: Tensor) -> ...``. The standard library only: it runs where torch is not installed.
"""

from __future__ import annotations

import pickletools
import re
import zipfile
from pathlib import Path

_FORWARD = re.compile(r"\n  def forward\(self: [^,)]+((?:,\s*\w+: [^,)]+)*)\)", re.S)
_ARGUMENT = re.compile(r",\s*(\w+):")


def forward_arguments(path: Path) -> list[str] | None:
    """The names of the archive's ``forward`` arguments after ``self``, in order; ``None`` when
    the archive is not laid out as ``torch.jit.save`` writes it."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            data = next((n for n in names if n.endswith("/data.pkl") and n.count("/") == 1), None)
            if data is None:
                return None
            prefix = data.rsplit("/", 1)[0]
            top = None
            for op, arg, _ in pickletools.genops(archive.read(data)):
                if op.name == "GLOBAL":
                    top = str(arg)
                    break
            if top is None or " " not in top:
                return None
            module, cls = top.split(" ", 1)
            code = f"{prefix}/code/{module.replace('.', '/')}.py"
            if code not in names:
                return None
            source = archive.read(code).decode("utf-8", "replace")
    except (OSError, zipfile.BadZipFile, ValueError):
        return None
    start = source.find(f"class {cls}(")
    if start < 0:
        return None
    end = source.find("\nclass ", start + 1)
    match = _FORWARD.search(source[start : end if end > 0 else len(source)])
    if match is None:
        return None
    return _ARGUMENT.findall(match.group(1))
