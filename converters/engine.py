"""Interpreter-free C for an exported int8 model: ``model_infer.h`` and ``model_infer.c``.

The generated code calls the int8 kernels in ``firmware_bridge/c/bisup_kernels.c`` with parameters
computed here exactly as TFLite Micro computes them when it prepares each op (``QuantizeMultiplier``,
the per-channel path in double, the per-tensor FULLY_CONNECTED path that multiplies the scales in
float32 first, the softmax scaling and its input radius, the activation ranges), so its outputs are
byte-equal to the tflite-micro interpreter's. Weights and biases are ``const`` arrays (flash);
activations live in one static arena whose offsets are planned here from tensor lifetimes, with
RESHAPE in place. No heap, no interpreter, no flatbuffer at run time.

An op, a quantization or a layout the kernels do not implement is an ``EngineError`` naming the op,
its position and the tensor: never generated code that compiles but computes something else.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from bisup.converters.errors import ConversionError
from bisup.converters.signature import ACTIVATION, CONFIDENCE, SCORES
from bisup.converters.tflite_model import read as read_info

ARENA_ALIGNMENT = 4
INT8_MIN, INT8_MAX = -128, 127
_ACTIVATIONS = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6"}
_OPS = {value: name for name, value in vars(schema.BuiltinOperator).items() if not name.startswith("_")}


class EngineError(ConversionError):
    """A model the C engine cannot run exactly; the TFLM export (model_data.cc) still works for it."""


# --- TFLM's parameter arithmetic --------------------------------------------------------------------

def tflm_round(x: float) -> int:
    """std::round: half away from zero."""
    return int(math.floor(abs(x) + 0.5)) * (1 if x >= 0 else -1)


def quantize_multiplier(real: float) -> tuple[int, int]:
    """TFLM's QuantizeMultiplier: a Q0.31 significand and a power-of-two shift (positive: left)."""
    if real == 0.0:
        return 0, 0
    significand, shift = math.frexp(real)
    fixed = tflm_round(significand * (1 << 31))
    if fixed == 1 << 31:
        fixed //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    return fixed, shift


def activation_range(code: int, scale: float, zero_point: int) -> tuple[int, int]:
    """CalculateActivationRangeQuantized for int8: the bound divided in float32, then std::round."""
    def q(x: float) -> int:
        return zero_point + tflm_round(float(np.float32(x) / np.float32(scale)))

    if code == 0:
        return INT8_MIN, INT8_MAX
    if code == 1:
        return max(INT8_MIN, q(0.0)), INT8_MAX
    if code == 3:
        return max(INT8_MIN, q(0.0)), min(INT8_MAX, q(6.0))
    if code == 2:
        return max(INT8_MIN, q(-1.0)), min(INT8_MAX, q(1.0))
    raise ValueError(code)


def input_radius(integer_bits: int, left_shift: int) -> int:
    """CalculateInputRadius: the largest input difference the fixed-point path represents (31 total bits)."""
    return math.floor(((1 << integer_bits) - 1) * (1 << (31 - integer_bits)) * 2.0 ** -left_shift)


def same_or_valid(padding: int, stride: int, dilation: int, size: int, filter_size: int) -> tuple[int, int]:
    """ComputePaddingHeightWidth for one axis: (output size, padding before)."""
    effective = (filter_size - 1) * dilation + 1
    out = (size + stride - 1) // stride if padding == schema.Padding.SAME else (size - effective + stride) // stride
    pad = max(0, ((out - 1) * stride + effective - size) // 2) if padding == schema.Padding.SAME else 0
    return out, pad


# --- the graph --------------------------------------------------------------------------------------

@dataclass
class Graph:
    """The flatbuffer's one subgraph with its constant buffers."""

    model: object
    graph: object

    @classmethod
    def parse(cls, flatbuffer: bytes) -> Graph:
        read_info(flatbuffer)  # the same checks and errors as every other reader
        model = schema.ModelT.InitFromPackedBuf(bytearray(flatbuffer), 0)
        return cls(model, model.subgraphs[0])

    def tensor(self, index: int):
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

    def op_name(self, op) -> str:
        code = self.model.operatorCodes[op.opcodeIndex]
        return _OPS.get(max(code.builtinCode, code.deprecatedBuiltinCode), "UNKNOWN")


# --- one emitted op ---------------------------------------------------------------------------------

@dataclass
class Step:
    """One kernel call: its C parameter definitions, the call, and the activations it touches."""

    op: str
    inputs: list[int]
    outputs: list[int]
    definitions: list[str] = field(default_factory=list)
    call: str = ""  # with $tensor placeholders that the arena plan fills in
    alias: bool = False  # RESHAPE: the output is the input, in place
    macs: int = 0
    parameters: int = 0
    parameter_bytes: int = 0  # the op's weights, biases and constant operands as stored in the model


def _c_array(ctype: str, name: str, values) -> str:
    flat = [int(v) for v in np.asarray(values).ravel()]
    rows = [", ".join(str(v) for v in flat[i : i + 20]) for i in range(0, len(flat), 20)]
    body = ",\n  ".join(rows)
    return f"static const {ctype} {name}[{max(len(flat), 1)}] = {{\n  {body}\n}};"


def _shape4(shape: tuple[int, ...], where: str) -> tuple[int, int, int, int]:
    if len(shape) > 4:
        raise EngineError(f"{where}: tensors of rank {len(shape)} are not supported (at most 4)")
    padded = (1,) * (4 - len(shape)) + tuple(shape)
    return tuple(int(d) for d in padded)  # type: ignore[return-value]


def _shape_c(shape: tuple[int, ...], where: str) -> str:
    return "{" + ", ".join(str(d) for d in _shape4(shape, where)) + "}"


class _Builder:
    """Turns each operator into a Step, checking everything the kernels assume."""

    def __init__(self, graph: Graph):
        self.g = graph

    def where(self, position: int, op: str) -> str:
        return f"op {position} ({op})"

    def rescale(self, x: int, y: int) -> tuple[int, int]:
        """The multiplier from x's scale to y's, in double from the float32 scales (TFLM's Prepare)."""
        return quantize_multiplier(float(np.float32(self.g.scale(x))) / float(np.float32(self.g.scale(y))))

    def softmax_scaling(self, x: int, beta: float, where: str) -> tuple[int, int, int]:
        """PreprocessSoftmaxScaling with 5 integer bits, and the input radius: multiplier, left shift, radius."""
        real = min(beta * float(np.float32(self.g.scale(x))) * (1 << 26), (1 << 31) - 1.0)
        multiplier, left_shift = quantize_multiplier(real)
        if left_shift < 0:
            raise EngineError(f"{where}: input scale {self.g.scale(x)} is too small for TFLM's int8 path")
        return multiplier, left_shift, input_radius(5, left_shift)

    def int8(self, index: int, where: str) -> None:
        if self.g.tensor(index).type != schema.TensorType.INT8:
            raise EngineError(f"{where}: tensor {index} ({self.g.name(index)}) is not int8; the C engine runs "
                              "full-int8 models (int16 activations are not supported)")

    def requant(self, name: str, x: int, w: int, y: int, bias: int | None, where: str,
                float32_product: bool = False, channels: int = 1) -> tuple[list[str], bool]:
        """Per-channel (or per-tensor) multipliers and shifts, as TFLM's Prepare computes them. Convolutions
        get one per output channel even for per-tensor weights, as TFLM fills its per-channel arrays."""
        filter_scales, in_scale, out_scale = self.g.scales(w), self.g.scale(x), self.g.scale(y)
        if not filter_scales:
            raise EngineError(f"{where}: weights {w} ({self.g.name(w)}) are not quantized")
        q = self.g.tensor(w).quantization
        if q.zeroPoint is not None and any(int(z) != 0 for z in q.zeroPoint):
            raise EngineError(f"{where}: weights {w} are asymmetric (zero point != 0); TFLM's int8 kernels need "
                              "symmetric weights: convert with the default int8 recipe")
        reals = []
        for s in filter_scales:
            if float32_product:  # GetQuantizedConvolutionMultipler: the product in float32, then double
                reals.append(float(np.float32(in_scale) * np.float32(s)) / float(np.float32(out_scale)))
            else:
                reals.append(float(np.float32(in_scale)) * float(np.float32(s)) / float(np.float32(out_scale)))
        if len(reals) == 1:
            reals = reals * channels
        pairs = [quantize_multiplier(r) for r in reals]
        defs = [_c_array("int32_t", f"{name}_multiplier", [m for m, _ in pairs]),
                _c_array("int32_t", f"{name}_shift", [s for _, s in pairs])]
        if bias is not None:
            defs.append(_c_array("int32_t", f"{name}_bias", self.g.data(bias)))
        return defs, len(filter_scales) > 1

    def weights(self, name: str, w: int, where: str) -> str:
        data = self.g.data(w)
        if data is None or data.dtype != np.int8:
            raise EngineError(f"{where}: weights {w} ({self.g.name(w)}) must be constant int8 (got "
                              f"{'an activation' if data is None else data.dtype})")
        return _c_array("int8_t", f"{name}_filter", data)

    def build(self, position: int, op) -> Step:
        kind = self.g.op_name(op)
        handler = getattr(self, f"_{kind.lower()}", None)
        if handler is None:
            raise EngineError(f"{self.where(position, kind)} is not supported by the C engine (supported: "
                              f"{', '.join(sorted(SUPPORTED))}); use the TFLM export (model_data.cc) for this model")
        ins, outs = [int(i) for i in op.inputs], [int(i) for i in op.outputs]
        where = self.where(position, kind)
        for index in [ins[0], *outs]:
            self.int8(index, where)
        step = handler(f"op{position}", op, ins, outs, where)
        step.op = kind  # the flatbuffer's name (PADV2 shares PAD's kernel)
        step.parameter_bytes = self.constant_bytes(ins) if kind in _WEIGHTED else 0
        return step

    def constant_bytes(self, ins: list[int]) -> int:
        """Bytes of the constant inputs (int8 weights, int32 biases), as the flatbuffer stores them."""
        constants = (self.g.data(t) for t in ins if t >= 0)
        return sum(c.nbytes for c in constants if c is not None)

    def _conv_2d(self, name: str, op, ins: list[int], outs: list[int], where: str) -> Step:
        x, w, y = ins[0], ins[1], outs[0]
        bias = ins[2] if len(ins) > 2 and ins[2] >= 0 else None
        o = op.builtinOptions
        n, h, wd, c = _shape4(self.g.shape(x), where)
        oc, fh, fw, ic = self.g.shape(w)
        if ic != c:
            raise EngineError(f"{where}: grouped convolution ({c} input channels, filter depth {ic}) is not supported")
        out_h, pad_h = same_or_valid(o.padding, o.strideH, o.dilationHFactor, h, fh)
        out_w, pad_w = same_or_valid(o.padding, o.strideW, o.dilationWFactor, wd, fw)
        defs, _ = self.requant(name, x, w, y, bias, where, channels=oc)
        lo, hi = activation_range(o.fusedActivationFunction, self.g.scale(y), self.g.zero_point(y))
        sums = self.g.data(w).reshape(oc, -1).astype(np.int64).sum(axis=1)
        defs.append(_c_array("int32_t", f"{name}_filter_sums", sums))
        params = (f"static const bisup_kernel_conv_params {name} = {{{_shape_c(self.g.shape(x), where)}, "
                  f"{_shape_c(self.g.shape(y), where)}, {fh}, {fw}, {o.strideH}, {o.strideW}, {o.dilationHFactor}, "
                  f"{o.dilationWFactor}, {pad_h}, {pad_w}, {-self.g.zero_point(x)}, {self.g.zero_point(y)}, {lo}, "
                  f"{hi}, {name}_filter, {f'{name}_bias' if bias is not None else 'NULL'}, {name}_multiplier, "
                  f"{name}_shift, {name}_filter_sums}};")
        if (out_h, out_w) != self.g.shape(y)[1:3]:
            raise EngineError(f"{where}: output shape {self.g.shape(y)} does not follow from the padding")
        return Step("CONV_2D", [x], [y], [self.weights(name, w, where), *defs, params],
                    f"bisup_kernel_conv2d(&{name}, ${x}, ${y});", macs=n * out_h * out_w * oc * fh * fw * ic,
                    parameters=oc * fh * fw * ic + (oc if bias is not None else 0))

    def _depthwise_conv_2d(self, name: str, op, ins: list[int], outs: list[int], where: str) -> Step:
        x, w, y = ins[0], ins[1], outs[0]
        bias = ins[2] if len(ins) > 2 and ins[2] >= 0 else None
        o = op.builtinOptions
        n, h, wd, c = _shape4(self.g.shape(x), where)
        _, fh, fw, oc = self.g.shape(w)
        out_h, pad_h = same_or_valid(o.padding, o.strideH, o.dilationHFactor, h, fh)
        out_w, pad_w = same_or_valid(o.padding, o.strideW, o.dilationWFactor, wd, fw)
        defs, _ = self.requant(name, x, w, y, bias, where, channels=oc)
        lo, hi = activation_range(o.fusedActivationFunction, self.g.scale(y), self.g.zero_point(y))
        params = (f"static const bisup_kernel_depthwise_params {name} = {{{_shape_c(self.g.shape(x), where)}, "
                  f"{_shape_c(self.g.shape(y), where)}, {fh}, {fw}, {oc // c}, {o.strideH}, {o.strideW}, "
                  f"{o.dilationHFactor}, {o.dilationWFactor}, {pad_h}, {pad_w}, {-self.g.zero_point(x)}, "
                  f"{self.g.zero_point(y)}, {lo}, {hi}, {name}_filter, "
                  f"{f'{name}_bias' if bias is not None else 'NULL'}, {name}_multiplier, {name}_shift}};")
        return Step("DEPTHWISE_CONV_2D", [x], [y], [self.weights(name, w, where), *defs, params],
                    f"bisup_kernel_depthwise_conv2d(&{name}, ${x}, ${y});", macs=n * out_h * out_w * oc * fh * fw,
                    parameters=fh * fw * oc + (oc if bias is not None else 0))

    def _fully_connected(self, name: str, op, ins: list[int], outs: list[int], where: str) -> Step:
        x, w, y = ins[0], ins[1], outs[0]
        bias = ins[2] if len(ins) > 2 and ins[2] >= 0 else None
        o = op.builtinOptions
        if o is not None and o.weightsFormat != 0:
            raise EngineError(f"{where}: shuffled weights are not supported")
        out_depth, in_depth = self.g.shape(w)
        batches = int(np.prod(self.g.shape(x))) // in_depth
        per_channel = len(self.g.scales(w)) > 1
        defs, _ = self.requant(name, x, w, y, None, where, float32_product=not per_channel)
        # bias + input_offset * sum(weights): TFLM's sum(w * (x + offset)) + bias, as the same integer
        folded = (self.g.data(bias).astype(np.int64) if bias is not None else np.zeros(out_depth, np.int64)) + \
            -self.g.zero_point(x) * self.g.data(w).astype(np.int64).sum(axis=1)
        if np.abs(folded).max(initial=0) >= 1 << 31:
            raise EngineError(f"{where}: the folded bias overflows int32 (weights too large for this input offset)")
        defs.append(_c_array("int32_t", f"{name}_bias", folded))
        lo, hi = activation_range(o.fusedActivationFunction if o else 0, self.g.scale(y), self.g.zero_point(y))
        params = (f"static const bisup_kernel_fully_connected_params {name} = {{{batches}, {in_depth}, {out_depth}, "
                  f"{self.g.zero_point(y)}, {lo}, {hi}, {name}_filter, {name}_bias, {name}_multiplier, "
                  f"{name}_shift, {int(per_channel)}}};")
        return Step("FULLY_CONNECTED", [x], [y], [self.weights(name, w, where), *defs, params],
                    f"bisup_kernel_fully_connected(&{name}, ${x}, ${y});", macs=batches * out_depth * in_depth,
                    parameters=out_depth * in_depth + (out_depth if bias is not None else 0))

    def _max_pool_2d(self, name: str, op, ins: list[int], outs: list[int], where: str) -> Step:
        x, y = ins[0], outs[0]
        o = op.builtinOptions
        _, h, wd, _ = _shape4(self.g.shape(x), where)
        _, pad_h = same_or_valid(o.padding, o.strideH, 1, h, o.filterHeight)
        _, pad_w = same_or_valid(o.padding, o.strideW, 1, wd, o.filterWidth)
        lo, hi = activation_range(o.fusedActivationFunction, self.g.scale(y), self.g.zero_point(y))
        params = (f"static const bisup_kernel_pool_params {name} = {{{_shape_c(self.g.shape(x), where)}, "
                  f"{_shape_c(self.g.shape(y), where)}, {o.filterHeight}, {o.filterWidth}, {o.strideH}, "
                  f"{o.strideW}, {pad_h}, {pad_w}, {lo}, {hi}}};")
        return Step("MAX_POOL_2D", [x], [y], [params], f"bisup_kernel_max_pool(&{name}, ${x}, ${y});")

    def _same_quantization(self, x: int, y: int, where: str, kind: str) -> None:
        if self.g.scale(x) != self.g.scale(y) or self.g.zero_point(x) != self.g.zero_point(y):
            raise EngineError(f"{where}: input {x} and output {y} are quantized differently; TFLM's int8 {kind} "
                              "needs them equal")

    def _average_pool_2d(self, name: str, op, ins: list[int], outs: list[int], where: str) -> Step:
        self._same_quantization(ins[0], outs[0], where, "AVERAGE_POOL_2D")
        step = self._max_pool_2d(name, op, ins, outs, where)
        step.call = step.call.replace("bisup_kernel_max_pool", "bisup_kernel_average_pool")
        return step

    def _pad(self, name: str, op, ins: list[int], outs: list[int], where: str) -> Step:
        x, y = ins[0], outs[0]
        self._same_quantization(x, y, where, "PAD")
        paddings = np.asarray(self.g.data(ins[1])).reshape(-1, 2)
        before = [0] * (4 - len(paddings)) + [int(b) for b in paddings[:, 0]]
        value = self.g.zero_point(y)
        if len(ins) > 2 and ins[2] >= 0:  # PADV2: an explicit constant
            value = int(np.asarray(self.g.data(ins[2])).ravel()[0])
        params = (f"static const bisup_kernel_pad_params {name} = {{{_shape_c(self.g.shape(x), where)}, "
                  f"{_shape_c(self.g.shape(y), where)}, {', '.join(map(str, before))}, {value}}};")
        return Step("PAD", [x], [y], [params], f"bisup_kernel_pad(&{name}, ${x}, ${y});")

    _padv2 = _pad

    def _concatenation(self, name: str, op, ins: list[int], outs: list[int], where: str) -> Step:
        y = outs[0]
        shape = self.g.shape(y)
        axis = op.builtinOptions.axis % len(shape)
        if op.builtinOptions.fusedActivationFunction != 0:
            raise EngineError(f"{where}: a fused activation on CONCATENATION is not supported")
        outer, output_inner, offset, defs, calls = int(np.prod(shape[:axis])), int(np.prod(shape[axis:])), 0, [], []
        for k, x in enumerate(ins):
            self.int8(x, where)
            self._same_quantization(x, y, where, "CONCATENATION")
            if self.g.data(x) is not None:
                raise EngineError(f"{where}: constant input {x} to CONCATENATION is not supported")
            inner = int(np.prod(self.g.shape(x)[axis:]))
            defs.append(f"static const bisup_kernel_concat_params {name}_{k} = "
                        f"{{{outer}, {inner}, {output_inner}, {offset}}};")
            calls.append(f"bisup_kernel_concat(&{name}_{k}, ${x}, ${y});")
            offset += inner
        return Step("CONCATENATION", list(ins), [y], defs, " ".join(calls))

    def _quantize(self, name: str, op, ins: list[int], outs: list[int], where: str) -> Step:
        x, y = ins[0], outs[0]
        multiplier, shift = self.rescale(x, y)
        params = (f"static const bisup_kernel_requantize_params {name} = {{{int(np.prod(self.g.shape(x)))}, "
                  f"{self.g.zero_point(x)}, {self.g.zero_point(y)}, {multiplier}, {shift}}};")
        return Step("QUANTIZE", [x], [y], [params], f"bisup_kernel_requantize(&{name}, ${x}, ${y});")

    def _reshape(self, name: str, op, ins: list[int], outs: list[int], where: str) -> Step:
        return Step("RESHAPE", [ins[0]], [outs[0]], alias=True)

    def _mul(self, name: str, op, ins: list[int], outs: list[int], where: str) -> Step:
        a, b, y = ins[0], ins[1], outs[0]
        real = (float(np.float32(self.g.scale(a))) * float(np.float32(self.g.scale(b)))
                / float(np.float32(self.g.scale(y))))
        multiplier, shift = quantize_multiplier(real)
        o = op.builtinOptions
        lo, hi = activation_range(o.fusedActivationFunction if o else 0, self.g.scale(y), self.g.zero_point(y))
        defs, operands = self._binary_operands(name, a, b, y, where)
        params = (f"static const bisup_kernel_mul_params {name} = {{{_shape_c(self.g.shape(a), where)}, "
                  f"{_shape_c(self.g.shape(b), where)}, {_shape_c(self.g.shape(y), where)}, "
                  f"{-self.g.zero_point(a)}, {-self.g.zero_point(b)}, {self.g.zero_point(y)}, {lo}, {hi}, "
                  f"{multiplier}, {shift}}};")
        activations = [t for t in (a, b) if self.g.data(t) is None]
        return Step("MUL", activations, [y], [*defs, params],
                    f"bisup_kernel_mul(&{name}, {operands[0]}, {operands[1]}, ${y});")

    def _binary_operands(self, name: str, a: int, b: int, y: int, where: str) -> tuple[list[str], list[str]]:
        """Constant operands as arrays, activations as $tensor placeholders; shapes must broadcast."""
        self.int8(b, where)
        out4 = _shape4(self.g.shape(y), where)
        defs, operands = [], []
        for operand in (a, b):
            shape = _shape4(self.g.shape(operand), where)
            if any(s not in (1, d) for s, d in zip(shape, out4, strict=True)):
                raise EngineError(f"{where}: operand {operand} of shape {self.g.shape(operand)} does not broadcast "
                                  f"to {self.g.shape(y)}")
            constant = self.g.data(operand)
            if constant is not None:
                defs.append(_c_array("int8_t", f"{name}_const{operand}", constant))
                operands.append(f"{name}_const{operand}")
            else:
                operands.append(f"${operand}")
        return defs, operands

    def _add_or_sub(self, kind: str, name: str, op, ins: list[int], outs: list[int], where: str) -> Step:
        """TFLM's int8 ADD (multipliers from doubles) and SUB (from float32 arithmetic), 20-bit headroom."""
        a, b, y = ins[0], ins[1], outs[0]
        defs, operands = self._binary_operands(name, a, b, y, where)
        sa, sb, so = (np.float32(self.g.scale(t)) for t in (a, b, y))
        if kind == "ADD":
            twice = 2 * float(max(sa, sb))
            reals = [float(sa) / twice, float(sb) / twice, twice / ((1 << 20) * float(so))]
        else:
            twice32 = np.float32(2) * max(sa, sb)
            reals = [float(sa / twice32), float(sb / twice32), float(twice32 / (np.float32(1 << 20) * so))]
        pairs = [quantize_multiplier(r) for r in reals]
        if any(shift > 0 for _, shift in pairs):
            raise EngineError(f"{where}: scales give a multiplier above one; TFLM refuses this {kind}")
        o = op.builtinOptions
        lo, hi = activation_range(o.fusedActivationFunction if o else 0, self.g.scale(y), self.g.zero_point(y))
        multipliers = ", ".join(f"{m}, {s}" for m, s in pairs)
        params = (f"static const bisup_kernel_add_params {name} = {{{_shape_c(self.g.shape(a), where)}, "
                  f"{_shape_c(self.g.shape(b), where)}, {_shape_c(self.g.shape(y), where)}, "
                  f"{-self.g.zero_point(a)}, {-self.g.zero_point(b)}, {self.g.zero_point(y)}, {lo}, {hi}, 20, "
                  f"{multipliers}}};")
        activations = [t for t in (a, b) if self.g.data(t) is None]
        return Step(kind, activations, [y], [*defs, params],
                    f"bisup_kernel_{kind.lower()}(&{name}, {operands[0]}, {operands[1]}, ${y});")

    def _add(self, name: str, op, ins: list[int], outs: list[int], where: str) -> Step:
        return self._add_or_sub("ADD", name, op, ins, outs, where)

    def _sub(self, name: str, op, ins: list[int], outs: list[int], where: str) -> Step:
        return self._add_or_sub("SUB", name, op, ins, outs, where)

    def _sum(self, name: str, op, ins: list[int], outs: list[int], where: str) -> Step:
        x, y = ins[0], outs[0]
        outer, reduced, inner = self._axes(x, ins[1], where)
        multiplier, shift = self.rescale(x, y)
        params = (f"static const bisup_kernel_sum_params {name} = {{{{{outer}, {reduced}, {inner}}}, "
                  f"{self.g.zero_point(x)}, {self.g.zero_point(y)}, {multiplier}, {shift}}};")
        return Step("SUM", [x], [y], [params], f"bisup_kernel_sum(&{name}, ${x}, ${y});")

    def _mean(self, name: str, op, ins: list[int], outs: list[int], where: str) -> Step:
        """TFLM's int8 MEAN is its SUM with the multiplier divided by the element count (QuantizedMeanOrSum)."""
        x, y = ins[0], outs[0]
        outer, reduced, inner = self._axes(x, ins[1], where)
        multiplier, shift = self.rescale(x, y)
        extra = min(reduced.bit_length() - 1, 32, 31 + shift)
        multiplier, shift = (multiplier << extra) // reduced, shift - extra
        params = (f"static const bisup_kernel_sum_params {name} = {{{{{outer}, {reduced}, {inner}}}, "
                  f"{self.g.zero_point(x)}, {self.g.zero_point(y)}, {multiplier}, {shift}}};")
        return Step("MEAN", [x], [y], [params], f"bisup_kernel_sum(&{name}, ${x}, ${y});")

    def _logistic(self, name: str, op, ins: list[int], outs: list[int], where: str) -> Step:
        x, y = ins[0], outs[0]
        if self.g.zero_point(y) != -128 or self.g.scale(y) != np.float32(1 / 256):
            raise EngineError(f"{where}: int8 LOGISTIC output must have zero point -128 and scale 1/256 (TFLM's rule)")
        real = float(np.float32(self.g.scale(x))) * float(1 << 27)
        significand, left_shift = math.frexp(real)
        multiplier = tflm_round(significand * (1 << 31))
        multiplier = (multiplier + (1 << 31)) % (1 << 32) - (1 << 31)  # TFLM casts to int32 without the fix-up
        radius = input_radius(4, left_shift)
        params = (f"static const bisup_kernel_logistic_params {name} = {{{int(np.prod(self.g.shape(x)))}, "
                  f"{self.g.zero_point(x)}, {radius}, {multiplier}, {left_shift}}};")
        return Step("LOGISTIC", [x], [y], [params], f"bisup_kernel_logistic(&{name}, ${x}, ${y});")

    def _axes(self, x: int, axes_tensor: int, where: str) -> tuple[int, int, int]:
        """(outer, reduced, inner) for a reduction over contiguous axes."""
        shape = self.g.shape(x)
        axes = sorted({int(a) % len(shape) for a in np.asarray(self.g.data(axes_tensor)).ravel()})
        if axes != list(range(axes[0], axes[-1] + 1)):
            raise EngineError(f"{where}: reduction over non-contiguous axes {axes} is not supported")
        return (int(np.prod(shape[: axes[0]])), int(np.prod([shape[a] for a in axes])),
                int(np.prod(shape[axes[-1] + 1 :])))

    def _softmax(self, name: str, op, ins: list[int], outs: list[int], where: str) -> Step:
        x, y = ins[0], outs[0]
        if self.g.zero_point(y) != -128 or self.g.scale(y) != np.float32(1 / 256):
            raise EngineError(f"{where}: int8 SOFTMAX output must have zero point -128 and scale 1/256 (TFLM's rule)")
        multiplier, left_shift, radius = self.softmax_scaling(x, float(np.float32(op.builtinOptions.beta)), where)
        shape = self.g.shape(x)
        depth = shape[-1]
        params = (f"static const bisup_kernel_softmax_params {name} = {{{int(np.prod(shape)) // depth}, {depth}, "
                  f"{multiplier}, {left_shift}, {-radius}}};")
        return Step("SOFTMAX", [x], [y], [params], f"bisup_kernel_softmax(&{name}, ${x}, ${y});")

    def _log_softmax(self, name: str, op, ins: list[int], outs: list[int], where: str) -> Step:
        x, y = ins[0], outs[0]
        if self.g.zero_point(y) != 127 or self.g.scale(y) != np.float32(16 / 256):
            raise EngineError(f"{where}: int8 LOG_SOFTMAX output must have zero point 127 and scale 16/256 "
                              "(TFLM's rule)")
        multiplier, left_shift, radius = self.softmax_scaling(x, 1.0, where)
        reverse, reverse_shift = quantize_multiplier((1 << (31 - left_shift)) / float(multiplier))
        if reverse_shift > 0:
            raise EngineError(f"{where}: log-softmax input scale {self.g.scale(x)} is outside TFLM's int8 range")
        shape = self.g.shape(x)
        params = (f"static const bisup_kernel_log_softmax_params {name} = "
                  f"{{{int(np.prod(shape)) // shape[-1]}, {shape[-1]}, {multiplier}, {left_shift}, {reverse}, "
                  f"{reverse_shift}, {-radius}}};")
        return Step("LOG_SOFTMAX", [x], [y], [params], f"bisup_kernel_log_softmax(&{name}, ${x}, ${y});")

    def _reduce(self, kind: str, name: str, ins: list[int], outs: list[int], where: str) -> Step:
        x, y = ins[0], outs[0]
        if self.g.scale(x) != self.g.scale(y) or self.g.zero_point(x) != self.g.zero_point(y):
            raise EngineError(f"{where}: input and output quantization differ; TFLM's int8 {kind} requires equal")
        outer, reduced, inner = self._axes(x, ins[1], where)
        params = f"static const bisup_kernel_reduce_params {name} = {{{outer}, {reduced}, {inner}}};"
        return Step(kind, [x], [y], [params], f"bisup_kernel_{kind.lower()}(&{name}, ${x}, ${y});")

    def _reduce_max(self, name: str, op, ins: list[int], outs: list[int], where: str) -> Step:
        return self._reduce("REDUCE_MAX", name, ins, outs, where)

    def _reduce_min(self, name: str, op, ins: list[int], outs: list[int], where: str) -> Step:
        return self._reduce("REDUCE_MIN", name, ins, outs, where)


# Ops whose constant inputs are parameters; the others' (PAD's paddings, MEAN's axes) only describe shapes.
_WEIGHTED = {"ADD", "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "MUL", "SUB"}
SUPPORTED = {"ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED",
             "LOGISTIC", "LOG_SOFTMAX", "MAX_POOL_2D", "MEAN", "MUL", "PAD", "PADV2", "QUANTIZE", "REDUCE_MAX",
             "REDUCE_MIN", "RESHAPE", "SOFTMAX", "SUB", "SUM"}


# --- the arena plan ---------------------------------------------------------------------------------

@dataclass
class Plan:
    """Where each activation lives, and how good that is against the schedule's lower bound."""

    offsets: dict[int, int]  # tensor -> byte offset (aliases share their root's)
    arena_bytes: int
    live_bytes: list[int]  # bytes live at each point: before the first op, during each op, after the last

    @property
    def lower_bound_bytes(self) -> int:
        """The largest set of tensors live at once: no plan for this schedule can use less."""
        return max(self.live_bytes)

    @property
    def ratio(self) -> float:
        return self.arena_bytes / self.lower_bound_bytes


def _align(n: int) -> int:
    return (n + ARENA_ALIGNMENT - 1) // ARENA_ALIGNMENT * ARENA_ALIGNMENT


def plan_arena(steps: list[Step], sizes: dict[int, int], graph_inputs: list[int], graph_outputs: list[int]) -> Plan:
    """Greedy by size (TFLM's GreedyMemoryPlanner idea): each buffer takes the lowest offset that no
    buffer alive at the same time occupies. RESHAPE outputs share their input's buffer."""
    root: dict[int, int] = {}
    for step in steps:
        if step.alias:
            root[step.outputs[0]] = root.get(step.inputs[0], step.inputs[0])
    find = lambda t: root.get(t, t)  # noqa: E731
    first: dict[int, int] = {find(t): -1 for t in graph_inputs}
    last: dict[int, int] = {}
    for position, step in enumerate(steps):
        for t in step.outputs:
            first.setdefault(find(t), position)
        for t in step.inputs + step.outputs:
            last[find(t)] = max(last.get(find(t), position), position)
    for t in graph_outputs:
        last[find(t)] = len(steps)
    buffers = sorted(first, key=lambda t: (-sizes[t], t))
    placed: list[tuple[int, int, int]] = []  # (offset, size, root)
    offsets: dict[int, int] = {}
    for t in buffers:
        size, offset = _align(sizes[t]), 0
        overlapping = sorted((o, s) for o, s, u in placed if first[u] <= last[t] and first[t] <= last[u])
        for o, s in overlapping:
            if offset + size <= o:
                break
            offset = max(offset, o + s)
        placed.append((offset, size, t))
        offsets[t] = offset
    arena = max((o + s for o, s, _ in placed), default=0)
    live = [sum(sizes[t] for t in first if first[t] <= p <= last[t]) for p in range(-1, len(steps) + 1)]
    return Plan({t: offsets[find(t)] for t in set(sizes) if find(t) in offsets}, arena, live)


# --- the generated files ----------------------------------------------------------------------------

@dataclass
class Generated:
    header: str
    source: str
    plan: Plan
    steps: list[Step]
    input_bytes: int
    classes: int
    sizes: dict[int, int]
    name: str = "model"


def _check_fits(plan: Plan, steps: list[Step], arena_limit: int | None) -> None:
    """A planned arena larger than the board allows is an error naming the op where memory peaks."""
    if arena_limit is None or plan.arena_bytes <= arena_limit:
        return
    peak = max(range(len(steps)), key=lambda p: plan.live_bytes[p + 1])
    raise EngineError(f"the planned arena of {plan.arena_bytes:,} B exceeds the {arena_limit:,} B the board leaves "
                      f"for it; memory peaks at op {peak} ({steps[peak].op}) with {plan.live_bytes[peak + 1]:,} B "
                      "live: use a board with more RAM, or shrink that layer (fewer channels, a stride, pooling)")


def generate(flatbuffer: bytes, arena_limit: int | None = None, name: str = "model",
             shared_arena: str | None = None) -> Generated:
    """``{name}_infer.h`` and ``{name}_infer.c`` for the exported model; EngineError if it cannot, or if its
    arena would exceed ``arena_limit`` bytes. A stage of a multi-exit model (``name`` ``stage1`` ...) also
    has an ``activation`` output, which its function copies out for the next stage or the cloud.
    ``shared_arena`` names an ``int32_t`` array defined elsewhere (at least ``{NAME}_ARENA_BYTES``) that
    this model uses instead of its own: stages run one after another, so they can share one arena."""
    info = read_info(flatbuffer)
    missing = {SCORES, CONFIDENCE} - set(info.output_positions)
    if missing:
        raise EngineError(f"the model has no {' or '.join(sorted(missing))} output; export it with bisup export")
    g = Graph.parse(flatbuffer)
    builder = _Builder(g)
    steps = [builder.build(position, op) for position, op in enumerate(g.graph.operators)]
    inputs = [int(i) for i in g.graph.inputs]
    outputs = {kind: info.output(kind).index for kind in (SCORES, CONFIDENCE, ACTIVATION)
               if kind in info.output_positions}
    sizes = {t: int(np.prod(g.shape(t))) for step in steps for t in step.inputs + step.outputs}
    sizes.update({t: int(np.prod(g.shape(t))) for t in inputs})
    plan = plan_arena(steps, sizes, inputs, list(outputs.values()))
    _check_fits(plan, steps, arena_limit)
    names = Names(name)
    header = _header(info, flatbuffer, plan, steps, sizes, outputs, names)
    source = _source(steps, plan, inputs[0], outputs, sizes, names, shared_arena)
    return Generated(header, source, plan, steps, sizes[inputs[0]], sizes[outputs[SCORES]], sizes, name)


@dataclass(frozen=True)
class Names:
    """The C names of one generated model: ``model`` for a single-exit export, ``stage1`` ... for stages."""

    name: str

    @property
    def macro(self) -> str:
        return f"BISUP_{self.name.upper()}"

    @property
    def function(self) -> str:
        return f"bisup_{self.name}_infer"

    @property
    def stem(self) -> str:
        return f"{self.name}_infer"


def _parameters(outputs: dict[str, int]) -> str:
    return ", ".join(f"int8_t *{kind}" for kind in outputs)


def _header(info, flatbuffer: bytes, plan: Plan, steps: list[Step], sizes: dict[int, int], outputs: dict[str, int],
            names: Names) -> str:
    inp, m = info.inputs[0], names.macro
    activation = ""
    if ACTIVATION in outputs:
        out = info.output(ACTIVATION)
        activation = (f"#define {m}_ACTIVATION_BYTES {sizes[outputs[ACTIVATION]]}\n"
                      f"#define {m}_ACTIVATION_SCALE {float(np.float32(out.scale))!r}f\n"
                      f"#define {m}_ACTIVATION_ZERO_POINT {out.zero_point}\n")
        what = (f" activation receives {m}_ACTIVATION_BYTES int8 values: the cut, the\n"
                " * next stage's input (and what is relayed when this stage splits).")
    else:
        what = ""
    return f"""/* Generated by bisup export (converters/engine.py): the model as plain C, no interpreter. */
#ifndef {m}_INFER_H_
#define {m}_INFER_H_

#include <stdint.h>

#define {m}_INPUT_BYTES {sizes[int(inp.index)]}
#define {m}_CLASSES {sizes[outputs[SCORES]]}
#define {m}_ARENA_BYTES {plan.arena_bytes}
#define {m}_LAYERS {sum(1 for step in steps if step.call)} /* kernel calls: BISUP_MODEL_PROFILE after each */
#define {m}_INPUT_SCALE {float(np.float32(inp.scale))!r}f
#define {m}_INPUT_ZERO_POINT {inp.zero_point}
{activation}/* SHA-256 of the .tflite this code was generated from: firmware compares it with the flashed image's. */
#define {m}_SHA256 {{{", ".join(f"0x{b:02x}" for b in hashlib.sha256(flatbuffer).digest())}}}

#ifdef __cplusplus
extern "C" {{
#endif

/* One inference: input is {m}_INPUT_BYTES int8 values (q = round(x / scale) + zero point);
 * scores receives {m}_CLASSES int8 class scores, confidence the int8 supervisor output.{what}
 * Returns 0. Not reentrant: the activations live in one static arena. */
int {names.function}(const int8_t *input, {_parameters(outputs)});

/* Compiled with -DBISUP_MODEL_PROFILE_MARKS, the generated code calls this after each of the {m}_LAYERS
 * kernel calls (layer 0 first); the firmware defines it, e.g. to read a cycle counter. */
void bisup_model_profile_mark(int layer);

#ifdef __cplusplus
}}
#endif

#endif /* {m}_INFER_H_ */
"""


def _source(steps: list[Step], plan: Plan, inp: int, outputs: dict[str, int], sizes: dict[int, int],
            names: Names, shared_arena: str | None = None) -> str:
    definitions = "\n\n".join(d for step in steps for d in step.definitions)
    where = {t: f"arena + {o}" for t, o in plan.offsets.items()}
    fill = lambda call: re.sub(r"\$(\d+)", lambda m: where[int(m.group(1))], call)  # noqa: E731
    calls = "\n".join(f"  {fill(step.call)}\n  BISUP_MODEL_PROFILE({layer});"
                      for layer, step in enumerate(s for s in steps if s.call))
    copies = "\n".join(f"  memcpy({kind}, {where[t]}, {sizes[t]});" for kind, t in outputs.items())
    arena_name = shared_arena or "arena_words"
    arena = (f"extern int32_t {shared_arena}[]; /* shared by the stages: at least {names.macro}_ARENA_BYTES */"
             if shared_arena else
             f"static int32_t arena_words[({names.macro}_ARENA_BYTES + 3) / 4]; /* int32 for 4-byte alignment */")
    return f"""/* Generated by bisup export (converters/engine.py). Weights are const (flash); activations share
 * one static arena of {names.macro}_ARENA_BYTES bytes, planned from tensor lifetimes. */
#include <stddef.h>
#include <string.h>

#include "bisup_kernels.h"
#include "{names.stem}.h"

#ifdef BISUP_MODEL_PROFILE_MARKS /* the firmware times each layer in bisup_model_profile_mark */
#define BISUP_MODEL_PROFILE(layer) bisup_model_profile_mark(layer)
#else
#define BISUP_MODEL_PROFILE(layer) ((void)0)
#endif

{definitions}

{arena}

int {names.function}(const int8_t *input, {_parameters(outputs)}) {{
  int8_t *arena = (int8_t *){arena_name};
  memcpy({where[inp]}, input, {sizes[inp]});
{calls}
{copies}
  return 0;
}}
"""


KERNELS_DIR = Path(__file__).resolve().parents[1] / "firmware_bridge" / "c"  # bisup.firmware_bridge, source or wheel
_CPUS = {"cortex-m0plus": "cortex-m0plus", "cortex-m4": "cortex-m4", "cortex-m4f": "cortex-m4",
         "cortex-m7": "cortex-m7", "cortex-m33": "cortex-m33"}
# TFLM's interpreter code cannot be built here; its own documentation gives the size of the core runtime.
TFLM_RUNTIME_BYTES = 16 * 1024
TFLM_RUNTIME_SOURCE = ("TensorFlow Lite for Microcontrollers overview: 'The core runtime just fits in 16 KB on an Arm "
                       "Cortex M3' (op kernels not included)")


def measure_flash(out_dir: str | Path, arch: str, stems: tuple[str, ...] = ("model_infer",)) -> dict:
    """Flash of the generated model plus the kernels, from arm-none-eabi-size of objects compiled for the
    board's core (-Os, unused functions dropped at link time are still counted: an upper bound)."""
    import shutil
    import subprocess
    import tempfile

    cpu = _CPUS.get(arch, "cortex-m4")
    measured_for = cpu if arch in _CPUS else f"cortex-m4 (no {arch} toolchain here)"
    if shutil.which("arm-none-eabi-gcc") is None:
        return {"flash_bytes": None, "flash_measured_for": "not measured: install gcc-arm-none-eabi"}
    total = 0
    with tempfile.TemporaryDirectory() as work:
        for source in (*(Path(out_dir) / f"{stem}.c" for stem in stems), KERNELS_DIR / "bisup_kernels.c"):
            obj = Path(work) / f"{source.stem}.o"
            subprocess.run(["arm-none-eabi-gcc", f"-mcpu={cpu}", "-mthumb", "-Os", "-std=c99", "-ffunction-sections",
                            "-fdata-sections", f"-I{out_dir}", f"-I{KERNELS_DIR}", "-c", str(source), "-o", str(obj)],
                           check=True, capture_output=True)
            text, data = subprocess.run(["arm-none-eabi-size", str(obj)], check=True, capture_output=True,
                                        text=True).stdout.splitlines()[1].split()[:2]
            total += int(text) + int(data)
    return {"flash_bytes": total, "flash_measured_for": measured_for}


def summary(generated: Generated, tflm_arena_bytes: int, model_bytes: int) -> dict:
    """The export report's engine section: memory against the lower bound and against TFLM, per op."""
    plan = generated.plan
    return {
        "generated": True,
        "arena_bytes": plan.arena_bytes,
        "arena_lower_bound_bytes": plan.lower_bound_bytes,
        "arena_vs_lower_bound": plan.ratio,
        "tflm_arena_bytes": tflm_arena_bytes,
        "arena_vs_tflm": plan.arena_bytes / tflm_arena_bytes,
        **tflm_flash(model_bytes),
        "macs": total_macs(generated),
        "layers": layers(generated),
    }


def tflm_flash(model_bytes: int) -> dict:
    """TFLM's flash for comparison: the flatbuffer plus the documented size of its core runtime."""
    return {"tflm_flash_bytes": model_bytes + TFLM_RUNTIME_BYTES,
            "tflm_flash_source": f"the flatbuffer ({model_bytes:,} B) plus {TFLM_RUNTIME_SOURCE}"}


def total_macs(generated: Generated) -> int:
    """Multiply-accumulates of one inference: the sum over the layers (only CONV, DEPTHWISE and FC have any)."""
    return sum(step.macs for step in generated.steps)


def layers(generated: Generated) -> list[dict]:
    """One entry per kernel call (the BISUP_MODEL_LAYERS the profile marks count; RESHAPE moves nothing):
    op, MACs, parameters (count and bytes), output bytes and where the output sits in the arena
    (``arena_offset`` up to ``arena_end``, exclusive)."""
    entries = []
    for step in (s for s in generated.steps if s.call):
        output_bytes = sum(generated.sizes[t] for t in step.outputs)
        offset = generated.plan.offsets.get(step.outputs[0])
        entries.append({"op": step.op, "macs": step.macs, "parameters": step.parameters,
                        "parameter_bytes": step.parameter_bytes, "output_bytes": output_bytes,
                        "arena_offset": offset, "arena_end": None if offset is None else offset + output_bytes})
    return entries


def write(flatbuffer: bytes, out_dir: str | Path, arena_limit: int | None = None, name: str = "model",
          shared_arena: str | None = None) -> Generated:
    """Write ``{name}_infer.h`` and ``{name}_infer.c`` into ``out_dir``."""
    generated = generate(flatbuffer, arena_limit, name, shared_arena)
    out = Path(out_dir)
    (out / f"{Names(name).stem}.h").write_text(generated.header)
    (out / f"{Names(name).stem}.c").write_text(generated.source)
    return generated
