"""The C model-image reader (``firmware_bridge/c/bisup_image.c``) refuses what ``image.py`` refuses: a
threshold outside -128..128 would make a device trust every answer or none, without a word."""

from __future__ import annotations

import hashlib
import struct

import pytest

from bisup.firmware_bridge.image import HEADER_BYTES, ImageError, ModelImage

pytestmark = pytest.mark.toolchain

BAD_THRESHOLD = 6  # BISUP_IMAGE_BAD_THRESHOLD in bisup_image.h


def _image(threshold: int) -> bytes:
    """An image with any int16 threshold: ModelImage.encode refuses the bad ones, so this packs the header."""
    model = bytes(range(48))
    header = struct.pack("<4sHHIhH32s16x", b"BSUP", 1, HEADER_BYTES, len(model), threshold, 0,
                         hashlib.sha256(model).digest())
    return header + model


@pytest.mark.parametrize("threshold", [-32768, -129, -128, 0, 127, 128, 129, 32767])
def test_the_c_reader_takes_the_thresholds_python_takes(image_reader, tmp_path, threshold):
    path = tmp_path / "model.bin"
    path.write_bytes(_image(threshold))
    out = image_reader(path).split()
    try:
        python_ok = ModelImage.decode(path.read_bytes()).threshold_int8 == threshold
    except ImageError:
        python_ok = False
    assert python_ok == (-128 <= threshold <= 128)
    if python_ok:
        assert out[0] == "status=0" and f"threshold={threshold}" in out
    else:
        assert out == [f"status={BAD_THRESHOLD}"]
