"""Each operator lowered to one kernel call, a ``Step``: its C parameter definitions and the call.

The generated code calls the int8 kernels in ``engine/kernels/`` (C) with parameters
computed here exactly as TFLite Micro computes them when it prepares each op (``QuantizeMultiplier``,
the per-channel path in double, the per-tensor FULLY_CONNECTED path that multiplies the scales in
float32 first, the softmax scaling and its input radius, the activation ranges), so its outputs are
byte-equal to the tflite-micro interpreter's. Weights and biases become ``const`` arrays (flash).

An op, a quantization or a layout the kernels do not implement is an ``EngineError`` naming the op,
its position and the tensor: never generated code that compiles but computes something else.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from bisup.converters.engine.arithmetic import (
    activation_range,
    input_radius,
    quantize_multiplier,
    same_or_valid,
    tflm_round,
)
from bisup.converters.engine.c_text import c_array, dsp_3x3_blocks, reduce_shape, shape4, shape_c, struct, wrap32
from bisup.converters.engine.subgraph import EngineError, Graph


@dataclass
class Step:
    """One kernel call: its C parameter definitions, the call, and the activations it touches."""

    op: str
    inputs: list[int]
    outputs: list[int]
    definitions: list[str] = field(default_factory=list)
    call: str = ""  # with $tensor placeholders that the arena plan fills in
    alias: bool = False  # RESHAPE: the output is the input, in place
    # Inputs the output may overwrite if they die here: the kernel reads each element before writing it.
    in_place: tuple[int, ...] = ()
    macs: int = 0
    parameters: int = 0
    parameter_bytes: int = 0  # the op's weights, biases and constant operands as stored in the model


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
        if not self.g.scales(w):
            raise EngineError(f"{where}: weights {w} ({self.g.name(w)}) are not quantized")
        q = self.g.tensor(w).quantization
        if q.zeroPoint is not None and any(int(z) != 0 for z in q.zeroPoint):
            raise EngineError(f"{where}: weights {w} are asymmetric (zero point != 0); TFLM's int8 kernels need "
                              "symmetric weights: convert with the default int8 recipe")
        pairs = self.multipliers(x, w, y, float32_product, channels)
        defs = [c_array("int32_t", f"{name}_multiplier", [m for m, _ in pairs]),
                c_array("int32_t", f"{name}_shift", [s for _, s in pairs])]
        if bias is not None:
            defs.append(c_array("int32_t", f"{name}_bias", self.g.data(bias)))
        return defs, len(self.g.scales(w)) > 1

    def multipliers(self, x: int, w: int, y: int, float32_product: bool = False,
                    channels: int = 1) -> list[tuple[int, int]]:
        """(multiplier, shift) per output channel (``requant``'s)."""
        filter_scales, in_scale, out_scale = self.g.scales(w), self.g.scale(x), self.g.scale(y)
        reals = []
        for s in filter_scales:
            if float32_product:  # GetQuantizedConvolutionMultipler: the product in float32, then double
                reals.append(float(np.float32(in_scale) * np.float32(s)) / float(np.float32(out_scale)))
            else:
                reals.append(float(np.float32(in_scale)) * float(np.float32(s)) / float(np.float32(out_scale)))
        if len(reals) == 1:
            reals = reals * channels
        return [quantize_multiplier(r) for r in reals]

    def weights(self, name: str, w: int, where: str, spare: int = 0) -> str:
        """The int8 weights as a C array, followed by ``spare`` zero bytes."""
        data = self.g.data(w)
        if data is None or data.dtype != np.int8:
            raise EngineError(f"{where}: weights {w} ({self.g.name(w)}) must be constant int8 (got "
                              f"{'an activation' if data is None else data.dtype})")
        return c_array("int8_t", f"{name}_filter", np.concatenate([data.ravel(), np.zeros(spare, np.int8)]))

    def build(self, position: int, op: schema.OperatorT) -> Step:
        kind = self.g.op_name(op)
        handler = LOWERINGS.get(kind)
        if handler is None:
            raise EngineError(f"{self.where(position, kind)} is not supported by the C engine (supported: "
                              f"{', '.join(sorted(SUPPORTED))}); use the TFLM export (model_data.cc) for this model")
        ins, outs = [int(i) for i in op.inputs], [int(i) for i in op.outputs]
        where = self.where(position, kind)
        for index in [ins[0], *outs]:
            self.int8(index, where)
        step = handler(self, f"op{position}", op, ins, outs, where)
        step.op = kind  # the flatbuffer's name (PADV2 shares PAD's kernel)
        step.parameter_bytes = self.constant_bytes(ins) if kind in _WEIGHTED else 0
        return step

    def constant_bytes(self, ins: list[int]) -> int:
        """Bytes of the constant inputs (int8 weights, int32 biases), as the flatbuffer stores them."""
        constants = (self.g.data(t) for t in ins if t >= 0)
        return sum(c.nbytes for c in constants if c is not None)

    def _conv_2d(self, name: str, op: schema.OperatorT, ins: list[int], outs: list[int], where: str) -> Step:
        x, w, y = ins[0], ins[1], outs[0]
        bias = ins[2] if len(ins) > 2 and ins[2] >= 0 else None
        o = op.builtinOptions
        n, h, wd, c = shape4(self.g.shape(x), where)
        oc, fh, fw, ic = self.g.shape(w)
        if ic != c:
            raise EngineError(f"{where}: grouped convolution ({c} input channels, filter depth {ic}) is not supported")
        out_h, pad_h = same_or_valid(o.padding, o.strideH, o.dilationHFactor, h, fh)
        out_w, pad_w = same_or_valid(o.padding, o.strideW, o.dilationWFactor, wd, fw)
        defs, _ = self.requant(name, x, w, y, bias, where, channels=oc)
        lo, hi = activation_range(o.fusedActivationFunction, self.g.scale(y), self.g.zero_point(y))
        sums = self.g.data(w).reshape(oc, -1).astype(np.int64).sum(axis=1)
        defs.append(c_array("int32_t", f"{name}_filter_sums", sums))
        # bias - zero_point * sum(w), wrapped to int32 as TFLM's int32 accumulator wraps (exact modulo 2^32)
        folded = (self.g.data(bias).astype(np.int64) if bias is not None else np.zeros(oc, np.int64)) + \
            -self.g.zero_point(x) * sums
        defs.append(c_array("int32_t", f"{name}_folded_bias", (folded + (1 << 31)) % (1 << 32) - (1 << 31)))
        params = struct("bisup_kernel_conv_params", name, input=shape_c(self.g.shape(x), where),
                        output=shape_c(self.g.shape(y), where), filter_height=fh, filter_width=fw,
                        stride_height=o.strideH, stride_width=o.strideW, dilation_height=o.dilationHFactor,
                        dilation_width=o.dilationWFactor, pad_height=pad_h, pad_width=pad_w,
                        input_offset=-self.g.zero_point(x), output_offset=self.g.zero_point(y), activation_min=lo,
                        activation_max=hi, filter=f"{name}_filter",
                        bias=f"{name}_bias" if bias is not None else "NULL", multiplier=f"{name}_multiplier",
                        shift=f"{name}_shift", filter_sums=f"{name}_filter_sums",
                        folded_bias=f"{name}_folded_bias")
        if (out_h, out_w) != self.g.shape(y)[1:3]:
            raise EngineError(f"{where}: output shape {self.g.shape(y)} does not follow from the padding")
        # 3 spare bytes: the DSP kernel's last word of a row of k % 4 != 0 weights may run past the last row
        return Step("CONV_2D", [x], [y], [self.weights(name, w, where, spare=3), *defs, params],
                    f"bisup_kernel_conv2d(&{name}, ${x}, ${y});", macs=n * out_h * out_w * oc * fh * fw * ic,
                    parameters=oc * fh * fw * ic + (oc if bias is not None else 0))

    def _depthwise_conv_2d(self, name: str, op: schema.OperatorT, ins: list[int], outs: list[int], where: str) -> Step:
        x, w, y = ins[0], ins[1], outs[0]
        bias = ins[2] if len(ins) > 2 and ins[2] >= 0 else None
        o = op.builtinOptions
        n, h, wd, c = shape4(self.g.shape(x), where)
        _, fh, fw, oc = self.g.shape(w)
        out_h, pad_h = same_or_valid(o.padding, o.strideH, o.dilationHFactor, h, fh)
        out_w, pad_w = same_or_valid(o.padding, o.strideW, o.dilationWFactor, wd, fw)
        defs, _ = self.requant(name, x, w, y, bias, where, channels=oc)
        lo, hi = activation_range(o.fusedActivationFunction, self.g.scale(y), self.g.zero_point(y))
        # bias + input_offset x sum(taps), per channel, wrapped to int32 as the kernels' uint32 sums wrap
        sums = self.g.data(w).reshape(-1, oc).astype(np.int64).sum(axis=0)
        folded = (self.g.data(bias).astype(np.int64) if bias is not None else 0) - self.g.zero_point(x) * sums
        defs.append(c_array("int32_t", f"{name}_interior_bias", wrap32(folded)))
        pairs = "NULL"
        multipliers = self.multipliers(x, w, y, channels=oc)
        # the DSP 3 x 3 path's requantization (its short form) holds: right shifts, |2 x sum| < 2^31
        bias_max = int(np.abs(self.g.data(bias).astype(np.int64)).max(initial=0)) if bias is not None else 0
        short = all(-31 <= s <= -1 and m != -(1 << 31) for m, s in multipliers) and bias_max + 255 * 128 * 9 < 1 << 30
        if oc == c and c >= 4 and (fh, fw) == (3, 3) and short:  # the DSP kernel's blocks, defined where it runs
            words = dsp_3x3_blocks(self.g.data(w).reshape(9, oc), folded, multipliers)
            defs.append(f"#if BISUP_KERNEL_DW_PAIRS_USED\n{c_array('int32_t', f'{name}_filter_pairs', words)}"
                        "\n#endif")
            pairs = f"BISUP_KERNEL_DW_PAIRS({name}_filter_pairs)"
        params = struct("bisup_kernel_depthwise_params", name, input=shape_c(self.g.shape(x), where),
                        output=shape_c(self.g.shape(y), where), filter_height=fh, filter_width=fw,
                        depth_multiplier=oc // c, stride_height=o.strideH, stride_width=o.strideW,
                        dilation_height=o.dilationHFactor, dilation_width=o.dilationWFactor, pad_height=pad_h,
                        pad_width=pad_w, input_offset=-self.g.zero_point(x), output_offset=self.g.zero_point(y),
                        activation_min=lo, activation_max=hi, filter=f"{name}_filter",
                        bias=f"{name}_bias" if bias is not None else "NULL", multiplier=f"{name}_multiplier",
                        shift=f"{name}_shift", interior_bias=f"{name}_interior_bias", filter_pairs=pairs)
        return Step("DEPTHWISE_CONV_2D", [x], [y], [self.weights(name, w, where), *defs, params],
                    f"bisup_kernel_depthwise_conv2d(&{name}, ${x}, ${y});", macs=n * out_h * out_w * oc * fh * fw,
                    parameters=fh * fw * oc + (oc if bias is not None else 0))

    def _fully_connected(self, name: str, op: schema.OperatorT, ins: list[int], outs: list[int], where: str) -> Step:
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
        defs.append(c_array("int32_t", f"{name}_bias", folded))
        lo, hi = activation_range(o.fusedActivationFunction if o else 0, self.g.scale(y), self.g.zero_point(y))
        params = struct("bisup_kernel_fully_connected_params", name, batches=batches, input_depth=in_depth,
                        output_depth=out_depth, output_offset=self.g.zero_point(y), activation_min=lo,
                        activation_max=hi, filter=f"{name}_filter", bias=f"{name}_bias",
                        multiplier=f"{name}_multiplier", shift=f"{name}_shift", per_channel=int(per_channel))
        return Step("FULLY_CONNECTED", [x], [y], [self.weights(name, w, where), *defs, params],
                    f"bisup_kernel_fully_connected(&{name}, ${x}, ${y});", macs=batches * out_depth * in_depth,
                    parameters=out_depth * in_depth + (out_depth if bias is not None else 0))

    def _max_pool_2d(self, name: str, op: schema.OperatorT, ins: list[int], outs: list[int], where: str) -> Step:
        x, y = ins[0], outs[0]
        o = op.builtinOptions
        _, h, wd, _ = shape4(self.g.shape(x), where)
        _, pad_h = same_or_valid(o.padding, o.strideH, 1, h, o.filterHeight)
        _, pad_w = same_or_valid(o.padding, o.strideW, 1, wd, o.filterWidth)
        lo, hi = activation_range(o.fusedActivationFunction, self.g.scale(y), self.g.zero_point(y))
        params = struct("bisup_kernel_pool_params", name, input=shape_c(self.g.shape(x), where),
                        output=shape_c(self.g.shape(y), where), filter_height=o.filterHeight,
                        filter_width=o.filterWidth, stride_height=o.strideH, stride_width=o.strideW,
                        pad_height=pad_h, pad_width=pad_w, activation_min=lo, activation_max=hi)
        return Step("MAX_POOL_2D", [x], [y], [params], f"bisup_kernel_max_pool(&{name}, ${x}, ${y});")

    def _same_quantization(self, x: int, y: int, where: str, kind: str) -> None:
        if self.g.scale(x) != self.g.scale(y) or self.g.zero_point(x) != self.g.zero_point(y):
            raise EngineError(f"{where}: input {x} and output {y} are quantized differently; TFLM's int8 {kind} "
                              "needs them equal")

    def _average_pool_2d(self, name: str, op: schema.OperatorT, ins: list[int], outs: list[int], where: str) -> Step:
        self._same_quantization(ins[0], outs[0], where, "AVERAGE_POOL_2D")
        step = self._max_pool_2d(name, op, ins, outs, where)
        step.call = step.call.replace("bisup_kernel_max_pool", "bisup_kernel_average_pool")
        return step

    def _pad(self, name: str, op: schema.OperatorT, ins: list[int], outs: list[int], where: str) -> Step:
        x, y = ins[0], outs[0]
        self._same_quantization(x, y, where, "PAD")
        paddings = np.asarray(self.g.data(ins[1])).reshape(-1, 2)
        before = [0] * (4 - len(paddings)) + [int(b) for b in paddings[:, 0]]
        value = self.g.zero_point(y)
        if len(ins) > 2 and ins[2] >= 0:  # PADV2: an explicit constant
            value = int(np.asarray(self.g.data(ins[2])).ravel()[0])
        params = struct("bisup_kernel_pad_params", name, input=shape_c(self.g.shape(x), where),
                        output=shape_c(self.g.shape(y), where), before_batches=before[0], before_height=before[1],
                        before_width=before[2], before_depth=before[3], value=value)
        return Step("PAD", [x], [y], [params], f"bisup_kernel_pad(&{name}, ${x}, ${y});")

    def _concatenation(self, name: str, op: schema.OperatorT, ins: list[int], outs: list[int], where: str) -> Step:
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
            defs.append(struct("bisup_kernel_concat_params", f"{name}_{k}", outer=outer, inner=inner,
                               output_inner=output_inner, offset=offset))
            calls.append(f"bisup_kernel_concat(&{name}_{k}, ${x}, ${y});")
            offset += inner
        return Step("CONCATENATION", list(ins), [y], defs, " ".join(calls))

    def _quantize(self, name: str, op: schema.OperatorT, ins: list[int], outs: list[int], where: str) -> Step:
        x, y = ins[0], outs[0]
        multiplier, shift = self.rescale(x, y)
        params = struct("bisup_kernel_requantize_params", name, count=int(np.prod(self.g.shape(x))),
                        input_zero_point=self.g.zero_point(x), output_zero_point=self.g.zero_point(y),
                        multiplier=multiplier, shift=shift)
        return Step("QUANTIZE", [x], [y], [params], f"bisup_kernel_requantize(&{name}, ${x}, ${y});", in_place=(x,))

    def _reshape(self, name: str, op: schema.OperatorT, ins: list[int], outs: list[int], where: str) -> Step:
        return Step("RESHAPE", [ins[0]], [outs[0]], alias=True)

    def _mul(self, name: str, op: schema.OperatorT, ins: list[int], outs: list[int], where: str) -> Step:
        a, b, y = ins[0], ins[1], outs[0]
        real = (float(np.float32(self.g.scale(a))) * float(np.float32(self.g.scale(b)))
                / float(np.float32(self.g.scale(y))))
        multiplier, shift = quantize_multiplier(real)
        o = op.builtinOptions
        lo, hi = activation_range(o.fusedActivationFunction if o else 0, self.g.scale(y), self.g.zero_point(y))
        defs, operands = self._binary_operands(name, a, b, y, where)
        params = struct("bisup_kernel_mul_params", name, input1=shape_c(self.g.shape(a), where),
                        input2=shape_c(self.g.shape(b), where), output=shape_c(self.g.shape(y), where),
                        input1_offset=-self.g.zero_point(a), input2_offset=-self.g.zero_point(b),
                        output_offset=self.g.zero_point(y), activation_min=lo, activation_max=hi,
                        multiplier=multiplier, shift=shift)
        activations = [t for t in (a, b) if self.g.data(t) is None]
        return Step("MUL", activations, [y], [*defs, params],
                    f"bisup_kernel_mul(&{name}, {operands[0]}, {operands[1]}, ${y});", in_place=tuple(activations))

    def _binary_operands(self, name: str, a: int, b: int, y: int, where: str) -> tuple[list[str], list[str]]:
        """Constant operands as arrays, activations as $tensor placeholders; shapes must broadcast."""
        self.int8(b, where)
        out4 = shape4(self.g.shape(y), where)
        defs, operands = [], []
        for operand in (a, b):
            shape = shape4(self.g.shape(operand), where)
            if any(s not in (1, d) for s, d in zip(shape, out4, strict=True)):
                raise EngineError(f"{where}: operand {operand} of shape {self.g.shape(operand)} does not broadcast "
                                  f"to {self.g.shape(y)}")
            constant = self.g.data(operand)
            if constant is not None:
                defs.append(c_array("int8_t", f"{name}_const{operand}", constant))
                operands.append(f"{name}_const{operand}")
            else:
                operands.append(f"${operand}")
        return defs, operands

    def _add_or_sub(self, kind: str, name: str, op: schema.OperatorT, ins: list[int], outs: list[int],
                    where: str) -> Step:
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
        (m1, s1), (m2, s2), (mo, so) = pairs
        params = struct("bisup_kernel_add_params", name, input1=shape_c(self.g.shape(a), where),
                        input2=shape_c(self.g.shape(b), where), output=shape_c(self.g.shape(y), where),
                        input1_offset=-self.g.zero_point(a), input2_offset=-self.g.zero_point(b),
                        output_offset=self.g.zero_point(y), activation_min=lo, activation_max=hi, left_shift=20,
                        input1_multiplier=m1, input1_shift=s1, input2_multiplier=m2, input2_shift=s2,
                        output_multiplier=mo, output_shift=so)
        activations = [t for t in (a, b) if self.g.data(t) is None]
        return Step(kind, activations, [y], [*defs, params],
                    f"bisup_kernel_{kind.lower()}(&{name}, {operands[0]}, {operands[1]}, ${y});",
                    in_place=tuple(activations))

    def _add(self, name: str, op: schema.OperatorT, ins: list[int], outs: list[int], where: str) -> Step:
        return self._add_or_sub("ADD", name, op, ins, outs, where)

    def _sub(self, name: str, op: schema.OperatorT, ins: list[int], outs: list[int], where: str) -> Step:
        return self._add_or_sub("SUB", name, op, ins, outs, where)

    def _sum(self, name: str, op: schema.OperatorT, ins: list[int], outs: list[int], where: str) -> Step:
        x, y = ins[0], outs[0]
        outer, reduced, inner = self._axes(x, ins[1], where)
        multiplier, shift = self.rescale(x, y)
        params = struct("bisup_kernel_sum_params", name, shape=reduce_shape(outer, reduced, inner),
                        input_zero_point=self.g.zero_point(x), output_zero_point=self.g.zero_point(y),
                        multiplier=multiplier, shift=shift)
        return Step("SUM", [x], [y], [params], f"bisup_kernel_sum(&{name}, ${x}, ${y});")

    def _mean(self, name: str, op: schema.OperatorT, ins: list[int], outs: list[int], where: str) -> Step:
        """TFLM's int8 MEAN is its SUM with the multiplier divided by the element count (QuantizedMeanOrSum)."""
        x, y = ins[0], outs[0]
        outer, reduced, inner = self._axes(x, ins[1], where)
        multiplier, shift = self.rescale(x, y)
        extra = min(reduced.bit_length() - 1, 32, 31 + shift)
        multiplier, shift = (multiplier << extra) // reduced, shift - extra
        params = struct("bisup_kernel_sum_params", name, shape=reduce_shape(outer, reduced, inner),
                        input_zero_point=self.g.zero_point(x), output_zero_point=self.g.zero_point(y),
                        multiplier=multiplier, shift=shift)
        return Step("MEAN", [x], [y], [params], f"bisup_kernel_sum(&{name}, ${x}, ${y});")

    def _logistic(self, name: str, op: schema.OperatorT, ins: list[int], outs: list[int], where: str) -> Step:
        x, y = ins[0], outs[0]
        if self.g.zero_point(y) != -128 or self.g.scale(y) != np.float32(1 / 256):
            raise EngineError(f"{where}: int8 LOGISTIC output must have zero point -128 and scale 1/256 (TFLM's rule)")
        real = float(np.float32(self.g.scale(x))) * float(1 << 27)
        significand, left_shift = math.frexp(real)
        multiplier = tflm_round(significand * (1 << 31))
        multiplier = (multiplier + (1 << 31)) % (1 << 32) - (1 << 31)  # TFLM casts to int32 without the fix-up
        radius = input_radius(4, left_shift)
        params = struct("bisup_kernel_logistic_params", name, count=int(np.prod(self.g.shape(x))),
                        input_zero_point=self.g.zero_point(x), input_range_radius=radius,
                        input_multiplier=multiplier, input_left_shift=left_shift)
        return Step("LOGISTIC", [x], [y], [params], f"bisup_kernel_logistic(&{name}, ${x}, ${y});", in_place=(x,))

    def _axes(self, x: int, axes_tensor: int, where: str) -> tuple[int, int, int]:
        """(outer, reduced, inner) for a reduction over contiguous axes."""
        shape = self.g.shape(x)
        axes = sorted({int(a) % len(shape) for a in np.asarray(self.g.data(axes_tensor)).ravel()})
        if axes != list(range(axes[0], axes[-1] + 1)):
            raise EngineError(f"{where}: reduction over non-contiguous axes {axes} is not supported")
        return (int(np.prod(shape[: axes[0]])), int(np.prod([shape[a] for a in axes])),
                int(np.prod(shape[axes[-1] + 1 :])))

    def _softmax(self, name: str, op: schema.OperatorT, ins: list[int], outs: list[int], where: str) -> Step:
        x, y = ins[0], outs[0]
        if self.g.zero_point(y) != -128 or self.g.scale(y) != np.float32(1 / 256):
            raise EngineError(f"{where}: int8 SOFTMAX output must have zero point -128 and scale 1/256 (TFLM's rule)")
        multiplier, left_shift, radius = self.softmax_scaling(x, float(np.float32(op.builtinOptions.beta)), where)
        shape = self.g.shape(x)
        depth = shape[-1]
        params = struct("bisup_kernel_softmax_params", name, outer=int(np.prod(shape)) // depth, depth=depth,
                        input_multiplier=multiplier, input_left_shift=left_shift, diff_min=-radius)
        return Step("SOFTMAX", [x], [y], [params], f"bisup_kernel_softmax(&{name}, ${x}, ${y});")

    def _log_softmax(self, name: str, op: schema.OperatorT, ins: list[int], outs: list[int], where: str) -> Step:
        x, y = ins[0], outs[0]
        if self.g.zero_point(y) != 127 or self.g.scale(y) != np.float32(16 / 256):
            raise EngineError(f"{where}: int8 LOG_SOFTMAX output must have zero point 127 and scale 16/256 "
                              "(TFLM's rule)")
        multiplier, left_shift, radius = self.softmax_scaling(x, 1.0, where)
        reverse, reverse_shift = quantize_multiplier((1 << (31 - left_shift)) / float(multiplier))
        if reverse_shift > 0:
            raise EngineError(f"{where}: log-softmax input scale {self.g.scale(x)} is outside TFLM's int8 range")
        shape = self.g.shape(x)
        params = struct("bisup_kernel_log_softmax_params", name, outer=int(np.prod(shape)) // shape[-1],
                        depth=shape[-1], input_multiplier=multiplier, input_left_shift=left_shift,
                        reverse_scaling_divisor=reverse, reverse_scaling_left_shift=reverse_shift, diff_min=-radius)
        return Step("LOG_SOFTMAX", [x], [y], [params], f"bisup_kernel_log_softmax(&{name}, ${x}, ${y});")

    def _reduce(self, kind: str, name: str, ins: list[int], outs: list[int], where: str) -> Step:
        x, y = ins[0], outs[0]
        if self.g.scale(x) != self.g.scale(y) or self.g.zero_point(x) != self.g.zero_point(y):
            raise EngineError(f"{where}: input and output quantization differ; TFLM's int8 {kind} requires equal")
        outer, reduced, inner = self._axes(x, ins[1], where)
        params = f"static const bisup_kernel_reduce_params {name} = {reduce_shape(outer, reduced, inner)};"
        return Step(kind, [x], [y], [params], f"bisup_kernel_{kind.lower()}(&{name}, ${x}, ${y});")

    def _reduce_max(self, name: str, op: schema.OperatorT, ins: list[int], outs: list[int], where: str) -> Step:
        return self._reduce("REDUCE_MAX", name, ins, outs, where)

    def _reduce_min(self, name: str, op: schema.OperatorT, ins: list[int], outs: list[int], where: str) -> Step:
        return self._reduce("REDUCE_MIN", name, ins, outs, where)


# Ops whose constant inputs are parameters; the others' (PAD's paddings, MEAN's axes) only describe shapes.
_WEIGHTED = {"ADD", "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "MUL", "SUB"}
# The one table of what the engine runs: each op's lowering (a _Builder method); the supported-op list, the
# error message for any other op and the random-model test's coverage check all derive from it.
LOWERINGS: dict[str, Callable[..., Step]] = {
    "ADD": _Builder._add, "AVERAGE_POOL_2D": _Builder._average_pool_2d, "CONCATENATION": _Builder._concatenation,
    "CONV_2D": _Builder._conv_2d, "DEPTHWISE_CONV_2D": _Builder._depthwise_conv_2d,
    "FULLY_CONNECTED": _Builder._fully_connected, "LOGISTIC": _Builder._logistic, "LOG_SOFTMAX": _Builder._log_softmax,
    "MAX_POOL_2D": _Builder._max_pool_2d, "MEAN": _Builder._mean, "MUL": _Builder._mul, "PAD": _Builder._pad,
    "PADV2": _Builder._pad, "QUANTIZE": _Builder._quantize, "REDUCE_MAX": _Builder._reduce_max,
    "REDUCE_MIN": _Builder._reduce_min, "RESHAPE": _Builder._reshape, "SOFTMAX": _Builder._softmax,
    "SUB": _Builder._sub, "SUM": _Builder._sum,
}
SUPPORTED = frozenset(LOWERINGS)
