"""The generated fixtures (``make fixtures``): where they are, their images, and decompression bombs
made from them.

Shared by the tests (through ``conftest``) and ``scripts/soak.py``; it imports nothing from pytest,
so a script can use it without pulling in the tests' configuration.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(os.environ.get("LAMBDATORCH_FIXTURES", REPO / "target" / "fixtures"))
MODELS = FIXTURES / "models"
IMAGES = FIXTURES / "images"

if not (FIXTURES / ".done").exists() and not MODELS.exists():
    raise RuntimeError(f"no fixtures in {FIXTURES}: run `make fixtures` (or `make test`)")


def image_bytes(name: str) -> bytes:
    return (IMAGES / name).read_bytes()


def bomb(kind: str, side: int = 60_000) -> bytes:
    """A real image whose header declares ``side`` x ``side`` pixels: a decompression bomb.

    Only the header changes, so the file stays well-formed (a JPEG keeps its end marker, a PNG its
    checksums) and the size must be refused from the header, before any pixel is decoded.
    """
    if kind == "png":
        data = bytearray(image_bytes("one_pixel.png"))
        # IHDR is the first chunk: length (4), type (4), width (4), height (4), ..., CRC (4).
        data[16:24] = struct.pack(">II", side, side)
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
        return bytes(data)
    if kind == "jpeg":
        data = bytearray(image_bytes("chelsea.jpg"))
        sof = data.index(b"\xff\xc0")  # baseline frame header: marker, length, precision, H, W
        data[sof + 5 : sof + 9] = struct.pack(">HH", side, side)
        return bytes(data)
    if kind == "gif":
        data = bytearray(image_bytes("chelsea.gif"))
        side = min(side, 0xFFFF)
        data[6:10] = struct.pack("<HH", side, side)  # logical screen
        frame = gif_first_frame(data)  # image descriptor: ",", left, top, width, height
        data[frame + 5 : frame + 9] = struct.pack("<HH", side, side)
        return bytes(data)
    raise ValueError(kind)


def gif_first_frame(data: bytes) -> int:
    """Offset of a GIF's first image descriptor: after the global palette and any extensions."""
    flags = data[10]
    at = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    while data[at] == 0x21:  # extension: introducer, label, then sub-blocks until a 0 length
        at += 2
        while data[at]:
            at += data[at] + 1
        at += 1
    assert data[at] == 0x2C, "no image descriptor"
    return at
