"""The model image a board keeps in flash: a 64-byte bisup header, then the TFLite flatbuffer.

The header carries what the firmware must not have compiled in, so that a new model is a flash
write and not a rebuild: the model length, the local int8 threshold, and the model's SHA-256 (the
hash a device reports in HELLO, which the bridge and the HIL runner compare with the bundle).
The C reader is ``c/bisup_image.h``; both follow the layout below (little-endian)::

    0   4   magic "BSUP"
    4   2   format version (1)
    6   2   header size (64); the model starts here, 16-byte aligned
    8   4   model size in bytes
    12  2   local threshold, int8 units, as int16 (128: never trust the local answer)
    14  2   reserved, 0
    16  32  SHA-256 of the model
    48  16  reserved, 0

On ESP32 boards the image travels inside an ESP firmware-image container (see ``bisup.flashing.flash``);
the C reader accepts both.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from bisup.converters.errors import BisupError

MAGIC = b"BSUP"
VERSION = 1
HEADER_BYTES = 64
_HEADER = struct.Struct("<4sHHIhH32s16x")


class ImageError(BisupError, ValueError):
    """Bytes that are not a valid bisup model image; the message says what is wrong."""


@dataclass(frozen=True)
class ModelImage:
    """A model and the local threshold the firmware compares its int8 confidence with."""

    model: bytes
    threshold_int8: int

    def __post_init__(self) -> None:
        if not -128 <= self.threshold_int8 <= 128:
            raise ImageError(f"threshold_int8 {self.threshold_int8} is outside -128..128")

    @property
    def model_hash(self) -> bytes:
        return hashlib.sha256(self.model).digest()

    def encode(self) -> bytes:
        header = _HEADER.pack(MAGIC, VERSION, HEADER_BYTES, len(self.model), self.threshold_int8, 0,
                              self.model_hash)
        return header + self.model

    @classmethod
    def decode(cls, data: bytes) -> ModelImage:
        """Parse and verify an image (trailing flash padding is allowed)."""
        if len(data) < HEADER_BYTES:
            raise ImageError(f"{len(data)} bytes is shorter than the {HEADER_BYTES}-byte header")
        magic, version, header_bytes, size, threshold, _, digest = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise ImageError(f"magic {magic!r} is not {MAGIC!r}; this is not a bisup model image")
        if version != VERSION or header_bytes != HEADER_BYTES:
            raise ImageError(f"image format {version} (header {header_bytes} B); this bisup reads {VERSION}")
        model = bytes(data[HEADER_BYTES:HEADER_BYTES + size])
        if len(model) != size:
            raise ImageError(f"the header promises a {size}-byte model but only {len(model)} bytes follow")
        if hashlib.sha256(model).digest() != digest:
            raise ImageError("the model does not match the SHA-256 in the header; the image is corrupt")
        return cls(model, threshold)
