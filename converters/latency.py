"""A latency estimate for the generated C engine: MACs x measured instructions per MAC / the board's clock.

Only an estimate, and labelled so wherever it is shown: it assumes one instruction per cycle (real cores have
flash wait states and multi-cycle loads, and the Cortex-M7 issues two instructions per cycle; `bisup hil
--emulate B --cycles` estimates the cycles of one model from its executed instruction mix), and instructions
per MAC depend on the model's shapes and its share of non-MAC work.

The rates are the three MLPerf Tiny classification models together (KWS DS-CNN, VWW MobileNetV1-0.25, IC
ResNet-8: 22,648,064 MACs; ``python bench/mlperf_tiny.py``, README "MLPerf Tiny models"): instructions per
inference summed over the three and divided by their MACs, counted by QEMU with ``-icount shift=0`` on each
emulated core, for firmware built with ``arm-none-eabi-gcc -O2 -mcpu=<core>`` around the generated
``model_infer.c`` and the kernels of that core's instruction set (DSP on the M4, M7 and M33; Helium on the M55).
A small model with few channels (the digits CNN: 4.8 per MAC on the M4) runs at a worse rate than these.
"""

from __future__ import annotations

from dataclasses import dataclass

MLPERF_TINY_MACS = 22_648_064  # KWS 2,656,768 + VWW 7,489,664 + IC 12,501,632


@dataclass(frozen=True)
class Measurement:
    """Instructions for one inference of each MLPerf Tiny model, summed, on an emulated core."""

    machine: str
    core: str
    instructions: int
    macs: int = MLPERF_TINY_MACS

    @property
    def instructions_per_mac(self) -> float:
        return self.instructions / self.macs


# python bench/mlperf_tiny.py (README "MLPerf Tiny models"): KWS + VWW + IC on each emulated core.
_M4 = Measurement("mps2-an386", "Cortex-M4", 43_699_040)
MEASURED: dict[str, Measurement] = {
    "cortex-m4": _M4,
    "cortex-m4f": _M4,  # the kernels are integer-only: the FPU adds no instruction to them
    "cortex-m7": Measurement("mps2-an500", "Cortex-M7", 43_598_160),
    "cortex-m33": Measurement("mps2-an505", "Cortex-M33", 43_345_600),
    "cortex-m55": Measurement("mps3-an547", "Cortex-M55", 10_896_187),
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
        "basis": (f"estimate: {macs:,} MACs x {measured.instructions_per_mac:.2f} instructions/MAC (the MLPerf Tiny "
                  f"models on the emulated {measured.core}, `bisup.hil.model_run` on {measured.machine}), "
                  "1 instruction/cycle"),
    }
