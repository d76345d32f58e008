"""The firmware templates cannot be built here (no ESP-IDF, no PlatformIO toolchains); what can be
checked is that they agree with the board profiles and with the header `bisup export` generates."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from boards import PROFILE_DIR, load_board
from converters import c_arrays, tflite_model

TEMPLATES = {"esp32s3": PROFILE_DIR / "esp32s3" / "main" / "main.cc",
             "nrf52840": PROFILE_DIR / "nrf52840" / "src" / "main.cpp"}


def test_esp32s3_model_partition_is_where_the_profile_says():
    rows = [line.split(",") for line in (PROFILE_DIR / "esp32s3" / "partitions.csv").read_text().splitlines()
            if line and not line.startswith("#")]
    model = next(r for r in rows if r[0].strip() == "model")
    assert model[1].strip() == "data" and int(model[2], 0) == 0x40
    assert int(model[3], 0) == load_board("esp32s3").model_offset


def test_nrf52840_model_address_is_where_the_profile_says():
    ini = (PROFILE_DIR / "nrf52840" / "platformio.ini").read_text()
    address = int(re.search(r"BISUP_MODEL_ADDRESS=(0x[0-9A-Fa-f]+)", ini).group(1), 16)
    assert address == load_board("nrf52840").model_offset


@pytest.mark.slow
@pytest.mark.parametrize("board", sorted(TEMPLATES))
def test_templates_use_only_what_the_generated_header_declares(board, converted, tmp_path):
    c_arrays.write(converted.model, tflite_model.read(converted.model), tmp_path, converted.arena_recommended_bytes)
    header = (tmp_path / "model_data.h").read_text()
    used = set(re.findall(r"\b(kModelData\w+|ModelData\w+|RegisterModelDataOps)\b", TEMPLATES[board].read_text()))
    assert used, "the template should use the generated constants"
    missing = sorted(name for name in used if not re.search(rf"\b{name}\b", header))
    assert not missing, f"{Path(TEMPLATES[board]).name} uses {missing}, which model_data.h does not declare"
