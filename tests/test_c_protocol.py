"""The C device library: golden vectors under ASan/UBSan, 10^5 fuzzed frames, the state machine,
and a Cortex-M4 build whose flash and RAM size the test prints."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bisup.firmware_bridge import golden

pytestmark = pytest.mark.toolchain

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "firmware_bridge" / "c"
HARNESS = ROOT / "tests" / "c" / "proto_harness.c"
FLAGS = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"]
HOST_MAX_BODY = 32768  # the harness carries the golden 96x96x3 INFER (27,666-byte body)


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed (CI installs it)")
    exe = tmp_path_factory.mktemp("c") / "proto_harness"
    subprocess.run(["gcc", *FLAGS, f"-DBISUP_PROTO_MAX_BODY={HOST_MAX_BODY}u", "-g", "-fsanitize=address,undefined",
                    "-fno-sanitize-recover=all", f"-I{LIB}",
                    str(LIB / "bisup_proto.c"), str(LIB / "bisup_app.c"), str(HARNESS), "-o", str(exe)], check=True)
    return exe


def _run(*args) -> str:
    return subprocess.run([str(a) for a in args], check=True, capture_output=True, text=True).stdout


def test_c_decodes_and_reencodes_the_golden_frames(harness):
    lines = {line.split("\t")[0]: line.split("\t")[1:] for line in _run(harness, "vectors", golden.GOLDEN).splitlines()}
    for name, _, expected in golden.vectors():
        got = lines[name]
        assert got[0] == expected, name
        if not expected.startswith("INVALID"):
            assert got[1] == "REENCODE-OK", name


def test_c_survives_100k_fuzzed_frames_and_resyncs(harness):
    out = _run(harness, "fuzz", golden.GOLDEN, 100_000, 12345)
    assert "resync=ok" in out
    counts = dict(re.findall(r"(\w+)=(\d+)", out))
    assert int(counts["iterations"]) == 100_000
    assert int(counts["bad_crc"]) + int(counts["bad_cobs"]) > 10_000  # the mutations really hit


def test_c_state_machine(harness):
    assert _run(harness, "client").strip() == "client ok"


@pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None, reason="arm-none-eabi-gcc not installed")
def test_cortex_m4_build_and_size(tmp_path):
    sizes = []
    for name in ("bisup_proto", "bisup_app"):
        obj = tmp_path / f"{name}.o"
        subprocess.run(["arm-none-eabi-gcc", "-mcpu=cortex-m4", "-mthumb", "-Os", *FLAGS, "-ffunction-sections",
                        "-fdata-sections", f"-I{LIB}", "-c", str(LIB / f"{name}.c"), "-o", str(obj)], check=True)
        sizes.append(list(map(int, _run("arm-none-eabi-size", obj).splitlines()[1].split()[:3])))
    text, data, bss = (sum(column) for column in zip(*sizes, strict=True))
    probe = tmp_path / "probe.c"
    probe.write_text('#include "bisup_proto.h"\nbisup_proto_client probe_client;\n')
    subprocess.run(["arm-none-eabi-gcc", "-mcpu=cortex-m4", "-mthumb", "-Os", "-std=c99", f"-I{LIB}", "-c",
                    str(probe), "-o", str(tmp_path / "probe.o")], check=True)
    client_ram = int(_run("arm-none-eabi-nm", "-S", tmp_path / "probe.o").split()[1], 16)
    print(f"\nbisup_proto on Cortex-M4 -Os: flash {text + data} B, static RAM {data + bss} B, "
          f"one bisup_proto_client {client_ram} B")
    assert 0 < text + data < 4096 and data + bss == 0  # no hidden state: all RAM is the caller's
    assert client_ram < 1400  # one frame buffer (1,035 B at the default 1,024-byte body), not three
