"""Read a ``.tflite`` flatbuffer: ops, tensors, quantization, and outputs by signature name.

The converter may reorder outputs against the Keras model (TF #33303, #47927), so the position
of ``scores`` and ``confidence`` in the subgraph's output list is read from the signature, never
assumed. TFLM indexes outputs by that position, so the C header exports it as a constant.
"""

from __future__ import annotations

from dataclasses import dataclass

from ai_edge_litert import schema_py_generated as schema

from bisup.converters.errors import ConversionError

_OP_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
_TYPE_NAMES = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}


@dataclass(frozen=True)
class Tensor:
    """One tensor's shape, dtype and quantization (one scale per channel when per-channel)."""

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: str
    scales: tuple[float, ...]
    zero_points: tuple[int, ...]

    @property
    def scale(self) -> float:
        return self.scales[0] if self.scales else 0.0

    @property
    def zero_point(self) -> int:
        return self.zero_points[0] if self.zero_points else 0


@dataclass(frozen=True)
class Operator:
    """One node: its builtin op name and the tensor indices it reads and writes."""

    op: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


@dataclass(frozen=True)
class ModelInfo:
    """What the exporter and the checks need to know about a flatbuffer."""

    operators: tuple[Operator, ...]
    tensors: tuple[Tensor, ...]
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    output_positions: dict[str, int]

    @property
    def ops(self) -> list[str]:
        """Distinct op names in first-use order."""
        return list(dict.fromkeys(op.op for op in self.operators))

    def output(self, name: str) -> Tensor:
        """An output tensor by its signature name."""
        return self.outputs[self.output_positions[name]]


def _opcode_name(code: schema.OperatorCodeT) -> str:
    # Schema rule: the real code is the larger of the deprecated byte and the 32-bit field.
    value = max(code.builtinCode, code.deprecatedBuiltinCode)
    if value == schema.BuiltinOperator.CUSTOM:
        return f"CUSTOM:{(code.customCode or b'').decode(errors='replace')}"
    return _OP_NAMES.get(value, f"UNKNOWN_{value}")


def _tensor(index: int, raw: schema.TensorT) -> Tensor:
    q = raw.quantization
    scales = tuple(float(s) for s in (q.scale if q is not None and q.scale is not None else ()))
    zps = tuple(int(z) for z in (q.zeroPoint if q is not None and q.zeroPoint is not None else ()))
    shape = tuple(int(d) for d in raw.shape) if raw.shape is not None else ()
    return Tensor(index, (raw.name or b"").decode(), shape, _TYPE_NAMES.get(raw.type, str(raw.type)), scales, zps)


def _unpack(data: bytes):
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ConversionError("not a TFLite model: the flatbuffer identifier 'TFL3' is missing")
    try:
        return schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    except Exception as exc:  # a damaged flatbuffer fails deep inside the generated reader
        raise ConversionError(f"TFLite model is corrupt: {type(exc).__name__}") from exc


def read(data: bytes) -> ModelInfo:
    """Parse ``data``; raise ConversionError for a corrupt or multi-subgraph model."""
    model = _unpack(data)
    if not model.subgraphs or len(model.subgraphs) != 1:
        raise ConversionError("bisup exports single-subgraph models (no control flow)")
    graph = model.subgraphs[0]
    tensors = tuple(_tensor(i, t) for i, t in enumerate(graph.tensors))
    names = [_opcode_name(c) for c in model.operatorCodes]
    operators = tuple(
        Operator(names[op.opcodeIndex], tuple(int(i) for i in op.inputs), tuple(int(i) for i in op.outputs))
        for op in graph.operators
    )
    outputs = tuple(tensors[i] for i in graph.outputs)
    positions: dict[str, int] = {}
    for signature in model.signatureDefs or []:
        for entry in signature.outputs:
            positions[entry.name.decode()] = list(graph.outputs).index(entry.tensorIndex)
    return ModelInfo(operators, tensors, tuple(tensors[i] for i in graph.inputs), outputs, positions)
