"""The generated C arrays compile for the host and for Cortex-M4, byte-exact and 16-byte aligned.

TFLM's C++ sources cannot be installed here, so the test generates a stand-in for
``micro_mutable_op_resolver.h`` from the same op table: it records each ``Add*`` call and refuses
registrations beyond ``N`` exactly as the real class does. That is the only mocked part.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from bisup.converters import c_arrays, tflite_model
from bisup.converters.tflm_ops import RESOLVER_METHODS

pytestmark = [pytest.mark.slow, pytest.mark.toolchain]

MAIN = r"""
#include <cstdio>
#include <cstdint>
#include "model_data.h"
int main(int, char** argv) {
  std::printf("MOD16 %u\n", (unsigned)(reinterpret_cast<std::uintptr_t>(g_model_data) % 16));
  std::FILE* out = std::fopen(argv[1], "wb");
  std::fwrite(g_model_data, 1, g_model_data_len, out);
  std::fclose(out);
  ModelDataOpResolver resolver;
  std::printf("STATUS %d\n", (int)RegisterModelDataOps(resolver));
  for (unsigned i = 0; i < resolver.count; ++i) std::printf("OP %s\n", resolver.names[i]);
  std::printf("CAPACITY %u\n", kModelDataOpCount);
  return 0;
}
"""


def _stub_header() -> str:
    methods = "\n".join(
        f'  TfLiteStatus {m}() {{ return Record("{op}"); }}' for op, m in sorted(RESOLVER_METHODS.items())
    )
    return f"""#pragma once
typedef enum {{ kTfLiteOk = 0, kTfLiteError = 1 }} TfLiteStatus;
namespace tflite {{
template <unsigned int tOpCount>
class MicroMutableOpResolver {{
 public:
  const char* names[tOpCount > 0 ? tOpCount : 1];
  unsigned int count = 0;
{methods}
 private:
  TfLiteStatus Record(const char* name) {{
    if (count >= tOpCount) return kTfLiteError;  // the real resolver refuses past N, too
    names[count++] = name;
    return kTfLiteOk;
  }}
}};
}}  // namespace tflite
"""


@pytest.fixture(scope="module")
def sources(converted, tmp_path_factory):
    root = tmp_path_factory.mktemp("c")
    info = tflite_model.read(converted.model)
    c_arrays.write(converted.model, info, root, converted.arena_recommended_bytes)
    stub = root / "stub" / "tensorflow" / "lite" / "micro"
    stub.mkdir(parents=True)
    (stub / "micro_mutable_op_resolver.h").write_text(_stub_header())
    (root / "main.cc").write_text(MAIN)
    return root, info


def test_header_declares_what_firmware_needs(sources, converted):
    root, info = sources
    header = (root / "model_data.h").read_text()
    assert f"kModelDataOpCount = {len(info.ops)};" in header
    assert "tflite::MicroMutableOpResolver<kModelDataOpCount>" in header
    assert f"kModelDataArenaBytes = {converted.arena_recommended_bytes};" in header
    assert f"kModelDataScoresOutput = {info.output_positions['scores']};" in header
    source = (root / "model_data.cc").read_text()
    assert "alignas(16) const unsigned char g_model_data[]" in source
    assert f"g_model_data_len = {len(converted.model)};" in source


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not installed (CI installs it)")
def test_host_build_is_byte_exact_aligned_and_registers_exactly_the_ops(sources, converted):
    root, info = sources
    exe = root / "probe"
    subprocess.run(["g++", "-std=c++17", "-Wall", "-Wextra", "-Werror", f"-I{root}", f"-I{root / 'stub'}",
                    str(root / "main.cc"), str(root / "model_data.cc"), "-o", str(exe)], check=True)
    dump = root / "dump.bin"
    out = subprocess.run([str(exe), str(dump)], check=True, capture_output=True, text=True).stdout
    assert "MOD16 0" in out
    assert dump.read_bytes() == converted.model
    assert "STATUS 0" in out
    assert re.findall(r"^OP (\w+)$", out, re.M) == info.ops
    assert f"CAPACITY {len(info.ops)}" in out


@pytest.mark.skipif(shutil.which("arm-none-eabi-g++") is None, reason="arm-none-eabi-g++ not installed")
def test_cortex_m4_build_is_byte_exact_and_aligned(sources, converted):
    root, _ = sources
    obj = root / "model_data_m4.o"
    subprocess.run(["arm-none-eabi-g++", "-mcpu=cortex-m4", "-mthumb", "-Os", "-std=c++17", "-fdata-sections",
                    "-Wall", "-Werror", f"-I{root}", f"-I{root / 'stub'}", "-c", str(root / "model_data.cc"),
                    "-o", str(obj)], check=True)
    blob = root / "m4.bin"
    subprocess.run(["arm-none-eabi-objcopy", "-O", "binary", "--only-section=.rodata.g_model_data", str(obj),
                    str(blob)], check=True)
    assert blob.read_bytes() == converted.model
    sections = subprocess.run(["arm-none-eabi-readelf", "-S", "-W", str(obj)], check=True, capture_output=True,
                              text=True).stdout
    line = next(row for row in sections.splitlines() if re.search(r"\]\s+\.rodata\.g_model_data\s", row))
    assert line.split()[-1] == "16", line  # the section's alignment column
