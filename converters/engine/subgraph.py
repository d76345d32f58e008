"""The engine's error, and the flatbuffer's one subgraph as the lowering reads it (shapes, quantization,
constant buffers, op names)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from bisup.converters.errors import ConversionError
from bisup.converters.tflite_model import read as read_info

_OPS = {value: name for name, value in vars(schema.BuiltinOperator).items() if not name.startswith("_")}


class EngineError(ConversionError):
    """A model the C engine cannot run exactly; the TFLM export (model_data.cc) still works for it."""


@dataclass
class Graph:
    """The flatbuffer's one subgraph with its constant buffers."""

    model: schema.ModelT
    graph: schema.SubGraphT

    @classmethod
    def parse(cls, flatbuffer: bytes) -> Graph:
        read_info(flatbuffer)  # the same checks and errors as every other reader
        model = schema.ModelT.InitFromPackedBuf(bytearray(flatbuffer), 0)
        return cls(model, model.subgraphs[0])

    def tensor(self, index: int) -> schema.TensorT:
        return self.graph.tensors[index]

    def data(self, index: int) -> np.ndarray | None:
        """A constant tensor's values, or None for an activation."""
        raw = self.model.buffers[self.tensor(index).buffer].data
        if raw is None or len(raw) == 0:
            return None
        dtype = {schema.TensorType.INT8: np.int8, schema.TensorType.INT32: np.int32}.get(self.tensor(index).type)
        if dtype is None:
            raise EngineError(f"constant tensor {index} ({self.name(index)}) has type "
                              f"{self.tensor(index).type}; the C engine takes int8 weights and int32 biases")
        return np.frombuffer(bytes(np.asarray(raw, dtype=np.uint8)), dtype=dtype).reshape(self.shape(index))

    def shape(self, index: int) -> tuple[int, ...]:
        return tuple(int(d) for d in self.tensor(index).shape)

    def name(self, index: int) -> str:
        return (self.tensor(index).name or b"").decode()

    def scales(self, index: int) -> list[float]:
        q = self.tensor(index).quantization
        return [float(s) for s in (q.scale if q is not None and q.scale is not None else [])]

    def scale(self, index: int) -> float:
        scales = self.scales(index)
        if not scales:
            raise EngineError(f"tensor {index} ({self.name(index)}) is not quantized; export it full-int8")
        return scales[0]

    def zero_point(self, index: int) -> int:
        q = self.tensor(index).quantization
        return int(q.zeroPoint[0]) if q is not None and q.zeroPoint is not None and len(q.zeroPoint) else 0

    def op_name(self, op: schema.OperatorT) -> str:
        code = self.model.operatorCodes[op.opcodeIndex]
        return _OPS.get(max(code.builtinCode, code.deprecatedBuiltinCode), "UNKNOWN")
