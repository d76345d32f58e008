"""Model inspections for known kernel caveats; board profiles say which caveats apply to them.

Each check returns human-readable findings (empty when the model is safe on that point), so the
exporter can warn with the exact layer and number instead of a generic notice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from bisup.converters.artefacts import Caveat
from bisup.converters.tflite_model import ModelInfo


def fc_per_channel_width_not_multiple_of_8(info: ModelInfo) -> list[str]:
    """esp-nn #34: per-channel FULLY_CONNECTED is wrong when the output width is not a multiple of 8."""
    found = []
    for op in info.operators:
        if op.op != "FULLY_CONNECTED":
            continue
        weights = info.tensors[op.inputs[1]]
        width = weights.shape[0] if weights.shape else 0
        if len(weights.scales) > 1 and width % 8:
            found.append(f"FULLY_CONNECTED {weights.name!r} is per-channel with output width {width}")
    return found


def has_conv(info: ModelInfo) -> list[str]:
    convs = [op.op for op in info.operators if op.op in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    return [f"{len(convs)} convolution op(s)"] if convs else []


def has_float_ops(info: ModelInfo) -> list[str]:
    floats = sorted({op.op for op in info.operators if any(info.tensors[i].dtype == "float32" for i in op.outputs)})
    return [f"float ops: {', '.join(floats)}"] if floats else []


CHECKS: dict[str, Callable[[ModelInfo], list[str]]] = {
    fn.__name__: fn for fn in (fc_per_channel_width_not_multiple_of_8, has_conv, has_float_ops)
}


def findings(info: ModelInfo, caveats: Iterable[Caveat]) -> list[dict]:
    """One entry per caveat the model hits, with what in the model hits it."""
    hits = []
    for caveat in caveats:
        details = CHECKS[caveat.check](info)
        if details:
            hits.append(
                {
                    "id": caveat.id,
                    "severity": caveat.severity,
                    "message": caveat.message,
                    "detail": "; ".join(details),
                    "fix": caveat.fix,
                    "source": caveat.source,
                }
            )
    return hits
