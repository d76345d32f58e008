"""The firmware templates cannot be built here (no ESP-IDF, no PlatformIO toolchains); what can be
checked is that they agree with the board profiles and with the header `bisup export` generates."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bisup.boards import PROFILE_DIR, load_board
from bisup.converters import c_arrays, tflite_model
from bisup.flashing import esp_partitions

TEMPLATES = {"esp32s3": PROFILE_DIR / "esp32s3" / "main" / "main.cc",
             "nrf52840": PROFILE_DIR / "nrf52840" / "src" / "main.cpp"}


def test_esp32s3_partitions_csv_is_the_one_bisup_flash_writes():
    """The firmware builds with this CSV and `bisup flash` writes the table made from the profile."""
    text = (PROFILE_DIR / "esp32s3" / "partitions.csv").read_text()
    assert text == esp_partitions.to_csv(esp_partitions.for_board(load_board("esp32s3")))
    model = next(line.split(",") for line in text.splitlines() if line.startswith("model"))
    assert int(model[2], 0) == 0x40 and int(model[3], 0) == load_board("esp32s3").model_offset


def test_templates_build_every_c_source_they_include():
    """A header included by a template needs its .c file in that template's build."""
    builds = {"esp32s3": PROFILE_DIR / "esp32s3" / "main" / "CMakeLists.txt",
              "nrf52840": PROFILE_DIR / "nrf52840" / "platformio.ini"}
    for board, template in TEMPLATES.items():
        included = re.findall(r'#include "(bisup_\w+)\.h"', template.read_text())
        assert "bisup_image" in included, board
        build = builds[board].read_text()
        assert all(f"{name}.c" in build for name in included), (board, included)


def test_nrf52840_model_address_is_where_the_profile_says():
    ini = (PROFILE_DIR / "nrf52840" / "platformio.ini").read_text()
    address = int(re.search(r"BISUP_MODEL_ADDRESS=(0x[0-9A-Fa-f]+)", ini).group(1), 16)
    assert address == load_board("nrf52840").model_offset


def test_the_c_engine_builds_compile_the_generated_model_and_the_kernels():
    """With BISUP_ENGINE=C (ESP-IDF) or env nano33ble_engine_c (PlatformIO) the build takes model_infer.c
    and every kernel source (converters/engine/kernels) and defines BISUP_ENGINE_C; the TFLM builds leave them out."""
    cmake = (PROFILE_DIR / "esp32s3" / "main" / "CMakeLists.txt").read_text()
    c_branch = cmake.split('if(BISUP_ENGINE STREQUAL "C")')[1].split("else()")[0]
    assert "model_infer.c" in c_branch and "${BISUP_KERNEL_SOURCES}" in c_branch and "BISUP_ENGINE_C" in c_branch
    assert 'GLOB BISUP_KERNEL_SOURCES "${BISUP_KERNELS}/*.c"' in c_branch and "converters/engine/kernels" in cmake
    assert "model_data.cc" not in c_branch
    ini = (PROFILE_DIR / "nrf52840" / "platformio.ini").read_text()
    engine_c = ini.split("[env:nano33ble_engine_c]")[1]
    assert "-DBISUP_ENGINE_C" in engine_c and "-<model_data.cc>" in engine_c
    assert "+<../../../converters/engine/kernels/*.c>" in engine_c and "-I../../converters/engine/kernels" in engine_c
    assert "-<model_infer.c>" in ini.split("[env:nano33ble]")[1].split("[env:")[0]


@pytest.mark.slow
@pytest.mark.parametrize("board", sorted(TEMPLATES))
def test_templates_use_only_what_the_generated_headers_declare(board, converted, tmp_path):
    """Both engines: every generated name a template uses is declared by model_data.h (TFLM) or
    model_infer.h (the C engine), as bisup export writes them."""
    from bisup.converters import engine

    c_arrays.write(converted.model, tflite_model.read(converted.model), tmp_path, converted.arena_recommended_bytes)
    engine.write(converted.model, tmp_path)
    source = TEMPLATES[board].read_text()
    for header_name, pattern in (("model_data.h", r"\b(kModelData\w+|ModelData\w+|RegisterModelDataOps)\b"),
                                 ("model_infer.h", r"\b(BISUP_MODEL_\w+|bisup_model_infer)\b")):
        header = (tmp_path / header_name).read_text()
        used = set(re.findall(pattern, source)) - {"BISUP_MODEL_ADDRESS"}  # a build flag (platformio.ini)
        assert used, f"the template should use what {header_name} declares"
        missing = sorted(name for name in used if not re.search(rf"\b{name}\b", header))
        assert not missing, f"{Path(TEMPLATES[board]).name} uses {missing}, which {header_name} does not declare"


def test_templates_draw_a_boot_id_from_the_hardware_rng():
    """Protocol v2: a template that left the boot id out (0 on every boot) would let the bridge answer
    a rebooted board from the previous boot's cache."""
    rng = {"esp32s3": "esp_random()", "nrf52840": "boot_id()"}
    for board, template in TEMPLATES.items():
        config = re.search(r"bisup_proto_client_config link = \{([^}]*)\}", template.read_text()).group(1)
        fields = [field.strip() for field in config.split(",")]
        assert len(fields) == 6 and fields[-1] == rng[board], (board, fields)
