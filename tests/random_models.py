"""Random small full-int8 TFLite models, built as flatbuffers with the schema's object API (no TensorFlow).

Each model is input -> a random sequence of CONV_2D / DEPTHWISE_CONV_2D / MAX_POOL_2D / AVERAGE_POOL_2D /
MUL / ADD / SUB / PAD(V2) / CONCATENATION / QUANTIZE / MEAN / LOGISTIC (random shapes, strides, SAME/VALID padding,
per-channel or per-tensor weights, zero points, fused RELU/RELU6) -> RESHAPE -> FULLY_CONNECTED -> SOFTMAX
("scores") and a random supervisor head ("confidence": REDUCE_MAX, REDUCE_MIN, SUM of squares, LOG_SOFTMAX
+ SUM, or max - min). The quantization rules TFLM enforces hold (softmax and log-softmax output scales,
equal scales where TFLM copies or reduces int8 values), so the tflite-micro interpreter accepts every
model and is the oracle the generated C is compared with.
"""

from __future__ import annotations

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as s

OP = s.BuiltinOperator
INT8, INT32 = s.TensorType.INT8, s.TensorType.INT32


class _Model:
    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.tensors: list = []
        self.buffers: list = [s.BufferT()]
        self.operators: list = []
        self.codes: dict[int, int] = {}

    def tensor(self, shape, scale, zero_point, dtype=INT8, data: np.ndarray | None = None, axis: int = 0) -> int:
        t = s.TensorT()
        t.shape, t.type, t.name = list(shape), dtype, f"t{len(self.tensors)}".encode()
        q = s.QuantizationParametersT()
        scales = np.atleast_1d(np.asarray(scale, dtype=np.float32))
        q.scale, q.zeroPoint = [float(v) for v in scales], [int(zero_point)] * len(scales)
        q.quantizedDimension = axis
        t.quantization = q
        if data is not None:
            buffer = s.BufferT()
            buffer.data = list(np.ascontiguousarray(data).tobytes())
            self.buffers.append(buffer)
            t.buffer = len(self.buffers) - 1
        self.tensors.append(t)
        return len(self.tensors) - 1

    def activation(self, shape) -> int:
        return self.tensor(shape, self.rng.uniform(0.005, 0.2), int(self.rng.integers(-128, 100)))

    def op(self, code: int, inputs, outputs, options_type=0, options=None) -> None:
        if code not in self.codes:
            self.codes[code] = len(self.codes)
        o = s.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = self.codes[code], list(inputs), list(outputs)
        o.builtinOptionsType, o.builtinOptions = options_type, options
        self.operators.append(o)

    def shape(self, index: int) -> list[int]:
        return list(self.tensors[index].shape)

    def scale(self, index: int) -> float:
        return self.tensors[index].quantization.scale[0]

    def weights(self, shape, per_channel_axis: int | None, in_scale: float, channels: int):
        filt = self.rng.integers(-127, 128, size=shape, dtype=np.int8)
        if per_channel_axis is None:
            w_scale = np.float32(self.rng.uniform(0.002, 0.05))
            scales = np.full(channels, w_scale, dtype=np.float32)
            w = self.tensor(shape, w_scale, 0, data=filt)
        else:
            scales = self.rng.uniform(0.002, 0.05, size=channels).astype(np.float32)
            w = self.tensor(shape, scales, 0, data=filt, axis=per_channel_axis)
        bias_scales = (np.float32(in_scale) * scales).astype(np.float32)
        bias_values = self.rng.integers(-3000, 3000, size=channels).astype(np.int32)
        b = self.tensor([channels], bias_scales if per_channel_axis is not None else bias_scales[0], 0, INT32,
                        bias_values)
        return w, b

    def activation_code(self) -> int:
        return int(self.rng.choice([0, 0, 1, 3]))

    def finish(self, inputs: list[int], scores: int, confidence: int) -> bytes:
        model = s.ModelT()
        model.version = 3
        codes = []
        for code, _ in sorted(self.codes.items(), key=lambda kv: kv[1]):
            c = s.OperatorCodeT()
            c.builtinCode, c.deprecatedBuiltinCode, c.version = code, min(code, 127), 1
            codes.append(c)
        model.operatorCodes = codes
        graph = s.SubGraphT()
        graph.tensors, graph.inputs, graph.outputs, graph.operators = self.tensors, inputs, [scores, confidence], \
            self.operators
        model.subgraphs, model.buffers = [graph], self.buffers
        signature = s.SignatureDefT()
        signature.signatureKey, signature.subgraphIndex = b"serving_default", 0
        signature.inputs = [_tensor_map(b"input", inputs[0])]
        signature.outputs = [_tensor_map(b"scores", scores), _tensor_map(b"confidence", confidence)]
        model.signatureDefs = [signature]
        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())


def _tensor_map(name: bytes, index: int):
    m = s.TensorMapT()
    m.name, m.tensorIndex = name, index
    return m


def _conv(m: _Model, x: int, depthwise: bool) -> int:
    rng = m.rng
    _, h, w, c = m.shape(x)
    fh, fw = int(rng.integers(1, min(h, 3) + 1)), int(rng.integers(1, min(w, 3) + 1))
    stride, padding = int(rng.integers(1, 3)), int(rng.integers(0, 2))
    dilation = 2 if rng.random() < 0.4 and h >= 2 * fh - 1 and w >= 2 * fw - 1 else 1
    eh, ew = (fh - 1) * dilation + 1, (fw - 1) * dilation + 1  # the effective filter
    if depthwise:
        multiplier = int(rng.integers(1, 3))
        oc = c * multiplier
        wt, b = m.weights([1, fh, fw, oc], 3 if rng.random() < 0.8 else None, m.scale(x), oc)
    else:
        oc = int(rng.integers(1, 9))
        wt, b = m.weights([oc, fh, fw, c], 0 if rng.random() < 0.8 else None, m.scale(x), oc)
    out_h = (h + stride - 1) // stride if padding == s.Padding.SAME else (h - eh + stride) // stride
    out_w = (w + stride - 1) // stride if padding == s.Padding.SAME else (w - ew + stride) // stride
    y = m.activation([1, out_h, out_w, oc])
    if depthwise:
        o = s.DepthwiseConv2DOptionsT()
        o.padding, o.strideW, o.strideH, o.depthMultiplier = padding, stride, stride, multiplier
        o.dilationWFactor = o.dilationHFactor = dilation
        o.fusedActivationFunction = m.activation_code()
        m.op(OP.DEPTHWISE_CONV_2D, [x, wt, b], [y], s.BuiltinOptions.DepthwiseConv2DOptions, o)
    else:
        o = s.Conv2DOptionsT()
        o.padding, o.strideW, o.strideH = padding, stride, stride
        o.dilationWFactor = o.dilationHFactor = dilation
        o.fusedActivationFunction = m.activation_code()
        m.op(OP.CONV_2D, [x, wt, b], [y], s.BuiltinOptions.Conv2DOptions, o)
    return y


def _pool(m: _Model, x: int, code: int = OP.MAX_POOL_2D) -> int:
    _, h, w, c = m.shape(x)
    size = int(m.rng.integers(1, min(h, w, 2) + 1))
    o = s.Pool2DOptionsT()
    o.padding, o.strideW, o.strideH, o.filterWidth, o.filterHeight = int(m.rng.integers(0, 2)), size, size, size, size
    o.fusedActivationFunction = m.activation_code()
    out_h = (h + size - 1) // size if o.padding == s.Padding.SAME else (h - size + size) // size
    out_w = (w + size - 1) // size if o.padding == s.Padding.SAME else (w - size + size) // size
    y = m.tensor([1, out_h, out_w, c], m.scale(x), m.tensors[x].quantization.zeroPoint[0])  # pooling keeps quant
    m.op(code, [x], [y], s.BuiltinOptions.Pool2DOptions, o)
    return y


def _pad(m: _Model, x: int) -> int:
    shape = m.shape(x)
    pads = np.zeros((4, 2), dtype=np.int32)
    pads[1:3] = m.rng.integers(0, 3, size=(2, 2))
    pads[3] = m.rng.integers(0, 2, size=2)
    paddings = m.tensor([4, 2], 1.0, 0, INT32, pads)
    y = m.tensor([d + int(a + b) for d, (a, b) in zip(shape, pads, strict=True)], m.scale(x),
                 m.tensors[x].quantization.zeroPoint[0])
    if m.rng.random() < 0.3:  # PADV2: an explicit pad value
        value = m.tensor([1], m.scale(x), m.tensors[x].quantization.zeroPoint[0],
                         data=m.rng.integers(-128, 128, size=[1], dtype=np.int8))
        m.op(OP.PADV2, [x, paddings, value], [y], s.BuiltinOptions.PadV2Options, s.PadV2OptionsT())
    else:
        m.op(OP.PAD, [x, paddings], [y], s.BuiltinOptions.PadOptions, s.PadOptionsT())
    return y


def _concat(m: _Model, x: int) -> int:
    shape = m.shape(x)
    axis = int(m.rng.integers(1, 4))
    out = list(shape)
    out[axis] *= 2
    y = m.tensor(out, m.scale(x), m.tensors[x].quantization.zeroPoint[0])
    o = s.ConcatenationOptionsT()
    o.axis, o.fusedActivationFunction = axis, 0
    m.op(OP.CONCATENATION, [x, x], [y], s.BuiltinOptions.ConcatenationOptions, o)
    return y


def _mean(m: _Model, x: int) -> int:
    """Global average pooling: MEAN over height and width, kept as [1, 1, 1, C], requantized."""
    axes = m.tensor([2], 1.0, 0, INT32, np.array([1, 2], dtype=np.int32))
    y = m.activation([1, 1, 1, m.shape(x)[3]])
    reducer = s.ReducerOptionsT()
    reducer.keepDims = True
    m.op(OP.MEAN, [x, axes], [y], s.BuiltinOptions.ReducerOptions, reducer)
    return y


def _logistic(m: _Model, x: int) -> int:
    y = m.tensor(m.shape(x), 1 / 256, -128)
    m.op(OP.LOGISTIC, [x], [y])
    return y


def _requantize(m: _Model, x: int) -> int:
    y = m.activation(m.shape(x))
    m.op(OP.QUANTIZE, [x], [y])
    return y


def _binary(m: _Model, x: int, code: int) -> int:
    shape = m.shape(x)
    const_shape = [1, 1, 1, shape[-1]] if m.rng.random() < 0.5 else [1]
    const = m.tensor(const_shape, m.rng.uniform(0.005, 0.1), int(m.rng.integers(-50, 50)),
                     data=m.rng.integers(-128, 128, size=const_shape, dtype=np.int8))
    y = m.activation(shape)
    options = {OP.MUL: (s.BuiltinOptions.MulOptions, s.MulOptionsT()), OP.ADD: (s.BuiltinOptions.AddOptions,
               s.AddOptionsT()), OP.SUB: (s.BuiltinOptions.SubOptions, s.SubOptionsT())}[code]
    options[1].fusedActivationFunction = m.activation_code()
    operands = [x, const] if m.rng.random() < 0.7 else [const, x]
    m.op(code, operands, [y], *options)
    return y


def _confidence(m: _Model, logits: int, probs: int, classes: int) -> int:
    axis = m.tensor([1], 1.0, 0, INT32, np.array([-1], dtype=np.int32))
    reducer = s.ReducerOptionsT()
    reducer.keepDims = True
    head = int(m.rng.integers(0, 5))
    if head in (0, 1):  # REDUCE_MAX / REDUCE_MIN of the probabilities (quantization kept)
        y = m.tensor([1, 1], 1 / 256, -128)
        m.op(OP.REDUCE_MAX if head == 0 else OP.REDUCE_MIN, [probs, axis], [y], s.BuiltinOptions.ReducerOptions,
             reducer)
        return y
    if head == 2:  # SUM of squares (DeepGini)
        square = m.activation([1, classes])
        m.op(OP.MUL, [probs, probs], [square], s.BuiltinOptions.MulOptions, s.MulOptionsT())
        y = m.activation([1, 1])
        m.op(OP.SUM, [square, axis], [y], s.BuiltinOptions.ReducerOptions, reducer)
        return y
    if head == 3:  # LOG_SOFTMAX, then SUM (entropy-like)
        log_probs = m.tensor([1, classes], 16 / 256, 127)
        m.op(OP.LOG_SOFTMAX, [logits], [log_probs], s.BuiltinOptions.LogSoftmaxOptions, s.LogSoftmaxOptionsT())
        y = m.activation([1, 1])
        m.op(OP.SUM, [log_probs, axis], [y], s.BuiltinOptions.ReducerOptions, reducer)
        return y
    top, bottom = m.tensor([1, 1], 1 / 256, -128), m.tensor([1, 1], 1 / 256, -128)  # margin: max - min
    m.op(OP.REDUCE_MAX, [probs, axis], [top], s.BuiltinOptions.ReducerOptions, reducer)
    m.op(OP.REDUCE_MIN, [probs, axis], [bottom], s.BuiltinOptions.ReducerOptions, reducer)
    y = m.activation([1, 1])
    m.op(OP.SUB, [top, bottom], [y], s.BuiltinOptions.SubOptions, s.SubOptionsT())
    return y


def random_model(seed: int) -> tuple[bytes, tuple[int, ...]]:
    """A random model and its input shape (batch 1)."""
    m = _Model(np.random.default_rng(seed))
    rng = m.rng
    shape = [1, int(rng.integers(2, 9)), int(rng.integers(2, 9)), int(rng.integers(1, 5))]
    x = inp = m.activation(shape)
    for _ in range(int(rng.integers(1, 5))):
        kind = rng.choice(["conv", "depthwise", "pool", "average", "mul", "add", "sub", "pad", "concat", "quantize",
                           "mean", "logistic"])
        if kind in ("conv", "depthwise"):
            x = _conv(m, x, kind == "depthwise")
        elif kind in ("pool", "average") and min(m.shape(x)[1:3]) >= 2:
            x = _pool(m, x, OP.MAX_POOL_2D if kind == "pool" else OP.AVERAGE_POOL_2D)
        elif kind == "pad":
            x = _pad(m, x)
        elif kind == "concat" and int(np.prod(m.shape(x))) <= 512:
            x = _concat(m, x)
        elif kind == "quantize":
            x = _requantize(m, x)
        elif kind == "mean":
            x = _mean(m, x)
        elif kind == "logistic":
            x = _logistic(m, x)
        elif kind in ("mul", "add", "sub"):
            x = _binary(m, x, {"mul": OP.MUL, "add": OP.ADD, "sub": OP.SUB}[kind])
    return _head(m, inp, x), tuple(shape)


def _head(m: _Model, inp: int, x: int, beta: float | None = None) -> bytes:
    """RESHAPE -> FULLY_CONNECTED -> SOFTMAX ("scores") and a random supervisor head ("confidence"). The
    softmax's beta is drawn unless given (a fixed one draws nothing, so a caller's later draws stay put)."""
    rng = m.rng
    flat = int(np.prod(m.shape(x)))
    new_shape = m.tensor([2], 1.0, 0, INT32, np.array([1, flat], dtype=np.int32))
    flat_x = m.tensor([1, flat], m.scale(x), m.tensors[x].quantization.zeroPoint[0])
    reshape = s.ReshapeOptionsT()
    reshape.newShape = [1, flat]
    m.op(OP.RESHAPE, [x, new_shape], [flat_x], s.BuiltinOptions.ReshapeOptions, reshape)
    classes = int(rng.integers(2, 11))
    wt, b = m.weights([classes, flat], 0 if rng.random() < 0.5 else None, m.scale(flat_x), classes)
    logits = m.activation([1, classes])
    fc = s.FullyConnectedOptionsT()
    fc.fusedActivationFunction = 0
    m.op(OP.FULLY_CONNECTED, [flat_x, wt, b], [logits], s.BuiltinOptions.FullyConnectedOptions, fc)
    probs = m.tensor([1, classes], 1 / 256, -128)
    softmax = s.SoftmaxOptionsT()
    softmax.beta = float(rng.choice([1.0, 1.0, 0.5, 2.0])) if beta is None else beta
    m.op(OP.SOFTMAX, [logits], [probs], s.BuiltinOptions.SoftmaxOptions, softmax)
    confidence = _confidence(m, logits, probs, classes)
    return m.finish([inp], probs, confidence)


def _depthwise(m: _Model, x: int, fh: int, fw: int, stride: int, padding: int, multiplier: int,
               dilation: int) -> int:
    _, h, w, c = m.shape(x)
    eh, ew = (fh - 1) * dilation + 1, (fw - 1) * dilation + 1
    oc = c * multiplier
    wt, b = m.weights([1, fh, fw, oc], 3 if m.rng.random() < 0.8 else None, m.scale(x), oc)
    out_h = (h + stride - 1) // stride if padding == s.Padding.SAME else (h - eh + stride) // stride
    out_w = (w + stride - 1) // stride if padding == s.Padding.SAME else (w - ew + stride) // stride
    # an output scale the sums fill (about 40 steps per standard deviation), so few outputs saturate
    w_scale = float(np.mean(m.tensors[wt].quantization.scale))
    y_scale = 74 * 73 * np.sqrt(fh * fw) * m.scale(x) * w_scale / 40 * m.rng.uniform(0.7, 1.4)
    y = m.tensor([1, out_h, out_w, oc], y_scale, int(m.rng.integers(-20, 20)))
    o = s.DepthwiseConv2DOptionsT()
    o.padding, o.strideW, o.strideH, o.depthMultiplier = padding, stride, stride, multiplier
    o.dilationWFactor = o.dilationHFactor = dilation
    o.fusedActivationFunction = int(m.rng.choice([0, 0, 1]))  # no RELU6: these scales are not RELU6's
    m.op(OP.DEPTHWISE_CONV_2D, [x, wt, b], [y], s.BuiltinOptions.DepthwiseConv2DOptions, o)
    return y


def _same_shape_binary(m: _Model, a: int, b: int, code: int) -> int:
    """ADD / SUB / MUL of two activations of one shape (no broadcast), as a residual connection is; the output
    scale is one the results fill."""
    sa, sb = m.scale(a), m.scale(b)
    y_scale = (sa * sb * 60 if code == OP.MUL else sa + sb) * m.rng.uniform(0.6, 1.2)
    y = m.tensor(m.shape(a), y_scale, int(m.rng.integers(-20, 20)))
    kind = {OP.MUL: (s.BuiltinOptions.MulOptions, s.MulOptionsT()), OP.ADD: (s.BuiltinOptions.AddOptions,
            s.AddOptionsT()), OP.SUB: (s.BuiltinOptions.SubOptions, s.SubOptionsT())}[code]
    kind[1].fusedActivationFunction = int(m.rng.choice([0, 0, 1]))
    m.op(code, [a, b], [y], *kind)
    return y


def kernel_path_model(seed: int, wide: bool = False) -> tuple[bytes, tuple[int, ...]]:
    """A model aimed at the kernels' specialised paths, which random_model rarely reaches: a depthwise layer with
    many channels (3 x 3 mostly; strides 1 and 2, odd sizes, SAME and VALID, channel counts not a multiple of 4,
    multipliers above 1, dilation), a residual ADD / SUB / MUL of equal shapes, then pooling (a 2 x 2 max pool, a
    global average pool over the whole map, or MEAN) or none; the last tensor is the output, every byte of it.
    ``wide``: a 3 x 3 depthwise on rows of 77-170 pixels, wider than the DSP 3 x 3 path's slots hold at once (78
    output pixels at stride 1, 39 at stride 2), so that it runs tile by tile; seeds 0-7 take each stride (1, 2),
    padding (SAME, VALID) and width parity (even, odd: SAME at stride 2 pads the left only on odd widths) once."""
    m = _Model(np.random.default_rng((20_000 if wide else 10_000) + seed))
    rng = m.rng
    if wide:
        width = int(rng.integers(77, 171)) & ~1 | (seed >> 2 & 1)
        shape = [1, int(rng.integers(3, 6)), width, int(rng.choice([4, 8, 12, 17]))]
    else:
        shape = [1, int(rng.integers(1, 12)), int(rng.integers(1, 12)), int(rng.choice([1, 3, 4, 5, 8, 12, 17, 32]))]
    x = inp = m.activation(shape)
    _, h, w, c = shape
    fh, fw = (3, 3) if wide or rng.random() < 0.7 else (int(rng.integers(1, 6)), int(rng.integers(1, 6)))
    fh, fw = min(fh, h), min(fw, w)
    stride, padding = int(rng.integers(1, 3)), int(rng.integers(0, 2))
    if wide:
        stride, padding = 1 + seed % 2, seed >> 1 & 1
    multiplier = 1 if wide or rng.random() < 0.75 else int(rng.integers(2, 4))
    dilation = 2 if not wide and rng.random() < 0.15 and h >= 2 * fh - 1 and w >= 2 * fw - 1 else 1
    y = _depthwise(m, x, fh, fw, stride, padding, multiplier, dilation)
    if m.shape(y) == m.shape(x) and rng.random() < 0.7:  # a residual connection
        y = _same_shape_binary(m, x, y, int(rng.choice([OP.ADD, OP.SUB, OP.MUL])))
    elif rng.random() < 0.5:  # y + y or y x y (y - y would be constant)
        y = _same_shape_binary(m, y, y, int(rng.choice([OP.ADD, OP.MUL])))
    _, h, w, _ = m.shape(y)
    tail = rng.integers(0, 6)  # 3 and above: no pooling
    if tail == 0 and min(h, w) >= 2:
        y = _pool(m, y, OP.MAX_POOL_2D)
    elif tail == 1:  # global average pooling as AVERAGE_POOL_2D over the whole map
        o = s.Pool2DOptionsT()
        o.padding, o.strideW, o.strideH, o.filterWidth, o.filterHeight = s.Padding.VALID, w, h, w, h
        o.fusedActivationFunction = m.activation_code()
        pooled = m.tensor([1, 1, 1, m.shape(y)[3]], m.scale(y), m.tensors[y].quantization.zeroPoint[0])
        m.op(OP.AVERAGE_POOL_2D, [y], [pooled], s.BuiltinOptions.Pool2DOptions, o)
        y = pooled
    elif tail == 2:  # MEAN over height and width, to a scale its averages fill
        axes = m.tensor([2], 1.0, 0, INT32, np.array([1, 2], dtype=np.int32))
        mean = m.tensor([1, 1, 1, m.shape(y)[3]], m.scale(y) / 4, int(rng.integers(-20, 20)))
        reducer = s.ReducerOptionsT()
        reducer.keepDims = True
        m.op(OP.MEAN, [y, axes], [mean], s.BuiltinOptions.ReducerOptions, reducer)
        y = mean
    return _raw_head(m, inp, y), tuple(shape)


def _raw_head(m: _Model, inp: int, x: int) -> bytes:
    """x itself as "scores" (flattened: every byte the kernels wrote is compared, none washed out by a softmax)
    and its maximum as "confidence"."""
    flat = int(np.prod(m.shape(x)))
    new_shape = m.tensor([2], 1.0, 0, INT32, np.array([1, flat], dtype=np.int32))
    scores = m.tensor([1, flat], m.scale(x), m.tensors[x].quantization.zeroPoint[0])
    reshape = s.ReshapeOptionsT()
    reshape.newShape = [1, flat]
    m.op(OP.RESHAPE, [x, new_shape], [scores], s.BuiltinOptions.ReshapeOptions, reshape)
    axis = m.tensor([1], 1.0, 0, INT32, np.array([-1], dtype=np.int32))
    reducer = s.ReducerOptionsT()
    reducer.keepDims = True
    confidence = m.tensor([1, 1], m.scale(x), m.tensors[x].quantization.zeroPoint[0])
    m.op(OP.REDUCE_MAX, [scores, axis], [confidence], s.BuiltinOptions.ReducerOptions, reducer)
    return m.finish([inp], scores, confidence)
