"""A latency estimate for the generated C engine: MACs x measured instructions per MAC / the board's clock.

Only an estimate, and labelled so wherever it is shown: it assumes one instruction per cycle (real cores
have flash wait states, and the Cortex-M7 issues two instructions per cycle), and instructions per MAC
were measured on one model, whose share of non-MAC work (pooling, softmax) another model does not share.

The figures are ``bisup hil --emulate <machine>`` on the digits example (README, "bisup hil --emulate
mps2-an386"): QEMU with ``-icount shift=0`` counts executed instructions exactly (to the SysTick's
resolution of 40 instructions), for firmware built with ``arm-none-eabi-gcc -O2 -mcpu=<core>`` around the
generated ``model_infer.c`` and the kernels (``engine.kernel_sources()``). Reproduce them with ``bisup digits
build/``, ``bisup export``, ``bisup calibrate``, ``bisup bundle`` (README walk-through) and ``bisup hil
--emulate mps2-an386
--bundle build/digits.bisup --data build/test.npz --remote build/remote.keras --json``: its
``device_inference`` holds ``instructions_p50`` and ``macs``. A re-run on a freshly trained digits model gave
317,720 (Cortex-M4), 318,640 (M7) and 318,300 (M33) instructions, within 0.2 % of the figures below.
"""

from __future__ import annotations

from dataclasses import dataclass

DIGITS_MACS = 25_600  # the digits CNN: CONV_2D 4,608 + CONV_2D 18,432 + FULLY_CONNECTED 2,560


@dataclass(frozen=True)
class Measurement:
    """Instructions for one inference of the digits model (median over 360 test digits) on an emulated core."""

    machine: str
    core: str
    instructions: int
    macs: int = DIGITS_MACS

    @property
    def instructions_per_mac(self) -> float:
        return self.instructions / self.macs


# README "bisup hil --emulate mps2-an386": 317,280 (Cortex-M4), 318,120 (M7, mps2-an500), 317,850 (M33, mps2-an505).
_M4 = Measurement("mps2-an386", "Cortex-M4", 317_280)
MEASURED: dict[str, Measurement] = {
    "cortex-m4": _M4,
    "cortex-m4f": _M4,  # the kernels are integer-only: the FPU adds no instruction to them
    "cortex-m7": Measurement("mps2-an500", "Cortex-M7", 318_120),
    "cortex-m33": Measurement("mps2-an505", "Cortex-M33", 317_850),
}


def estimate(macs: int, arch: str, cpu_mhz: float) -> dict:
    """The C engine's latency at ``cpu_mhz`` for a model of ``macs``, or why there is none for ``arch``."""
    measured = MEASURED.get(arch)
    if measured is None:
        return {"estimate_us": None, "reason": f"no estimate for {arch}: no instructions-per-MAC measurement "
                                               f"(measured: {', '.join(sorted(MEASURED))})"}
    return {
        "estimate_us": macs * measured.instructions_per_mac / cpu_mhz,
        "instructions_per_mac": round(measured.instructions_per_mac, 2),
        "cpu_mhz": cpu_mhz,
        "basis": (f"estimate: {macs:,} MACs x {measured.instructions_per_mac:.1f} instructions/MAC (digits model on "
                  f"the emulated {measured.core}, `bisup hil --emulate {measured.machine}`), 1 instruction/cycle"),
    }
