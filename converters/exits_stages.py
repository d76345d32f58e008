"""Staged export: a multi-exit model as a chain of full-int8 stage models.

Stage ``i`` reads the previous stage's int8 activation (stage 1 reads the input) and gives its exit's
``scores`` and ``confidence`` plus, except the last, the ``activation`` at its cut for the next stage.

The whole supervised multi-exit network is converted *once*, and the flatbuffer is then cut into
stage flatbuffers at the cut tensors. Converting each stage on its own would calibrate each
boundary twice (once as an output, once as the next input) and give two quantizations of one
tensor; cutting one graph keeps a single quantization per boundary, so the chain of stages is
bit-exact with the one graph, and the TFLM oracle checks that on every export.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import flatbuffers
import keras
import numpy as np
from ai_edge_litert import schema_py_generated as schema

from bisup.converters import exits, graph, quantize, supervisors, temperature, tflite_model
from bisup.converters.exits import ExitError
from bisup.converters.signature import ACTIVATION, CONFIDENCE, SCORES


def output_name(kind: str, stage: int) -> str:
    """The full graph's output for ``kind`` (scores, confidence, activation) of ``stage`` (1-based)."""
    return f"{kind}{stage}"


def temperatures(multi: keras.Model, calib_x: np.ndarray, kind: str) -> list[float]:
    """One supervisor temperature per exit (see ``bisup.converters.temperature``): early exits are less sure,
    so they usually need less spreading than the final one."""
    out = multi.predict(calib_x, verbose=0, batch_size=256)
    return [temperature.choose(np.asarray(out[name]), kind) for name in exits.exit_names(multi)]


def supervised(multi: keras.Model, supervisor: str, temps: list[float]) -> keras.Model:
    """Every exit with its own supervisor, and the cut activations, as named outputs of one graph."""
    names = exits.exit_names(multi)
    tensors = exits.cut_outputs(multi)
    inner = keras.Model(multi.inputs, {**multi.output, **{f"cut{i}": t for i, t in enumerate(tensors, 1)}})
    inputs = keras.Input(graph.input_shape(multi), name=graph.INPUT)
    out = inner(inputs)
    result = {}
    for stage, (name, temp) in enumerate(zip(names, temps, strict=True), start=1):
        logits = out[name]
        probs = keras.ops.softmax(logits, axis=-1)
        result[output_name(SCORES, stage)] = probs
        result[output_name(CONFIDENCE, stage)] = graph.supervise(supervisors.resolve(supervisor), probs, logits, temp)
        if stage < len(names):
            result[output_name(ACTIVATION, stage)] = out[f"cut{stage}"]
    return keras.Model(inputs, result, name="bisup_staged")


def convert(multi: keras.Model, calib_x: np.ndarray, supervisor: str, temps: list[float]) -> bytes:
    """The supervised multi-exit network as one full-int8 flatbuffer (outputs named per stage)."""
    return quantize.to_int8_tflite(supervised(multi, supervisor, temps), calib_x)


@dataclass
class _Cut:
    """What one stage takes from the full graph: its operators (in order) and its boundary tensors."""

    operators: list[int]
    input: int
    outputs: dict[str, int]


def _producers(g: schema.SubGraphT) -> dict[int, int]:
    return {int(t): position for position, op in enumerate(g.operators) for t in op.outputs}


def _closure(g: schema.SubGraphT, targets: list[int], boundary: int, producers: dict[int, int]) -> set[int]:
    """Operators needed to compute ``targets`` from ``boundary`` (and constants)."""
    needed: set[int] = set()
    stack = [t for t in targets if t != boundary]
    while stack:
        tensor = stack.pop()
        position = producers.get(tensor)
        if position is None or position in needed:
            continue
        needed.add(position)
        stack.extend(int(t) for t in g.operators[position].inputs if t >= 0 and int(t) != boundary)
    return needed


def plan(flatbuffer: bytes) -> list[_Cut]:
    """Which operators and tensors make each stage; ExitError if an operator of one stage reads an
    activation of an earlier stage other than the cut (a branch crosses the cut)."""
    info = tflite_model.read(flatbuffer)
    model = schema.ModelT.InitFromPackedBuf(bytearray(flatbuffer), 0)
    g = model.subgraphs[0]
    outputs = {name: int(g.outputs[position]) for name, position in info.output_positions.items()}
    stages = sum(1 for name in outputs if name.startswith(SCORES))
    producers = _producers(g)
    inputs = {int(t) for t in g.inputs}
    boundary, taken, cuts = int(g.inputs[0]), set(), []
    for stage in range(1, stages + 1):
        kinds = (SCORES, CONFIDENCE) + ((ACTIVATION,) if stage < stages else ())
        mine = {kind: outputs[output_name(kind, stage)] for kind in kinds}
        needed = _closure(g, list(mine.values()), boundary, producers) - taken
        made = {int(t) for p in needed for t in g.operators[p].outputs} | {boundary}
        for p in sorted(needed):
            for t in (int(t) for t in g.operators[p].inputs if t >= 0):
                if t not in made and (t in producers or t in inputs):
                    raise ExitError(f"stage {stage} reads tensor {t} ({info.tensors[t].name}) of an earlier stage "
                                    "besides its cut: a branch crosses the cut")
        cuts.append(_Cut(sorted(needed), boundary, mine))
        taken |= needed
        boundary = mine.get(ACTIVATION, boundary)
    return cuts


def _stage_model(model: schema.ModelT, cut: _Cut) -> schema.ModelT:
    """A copy of ``model`` holding only the stage's operators, tensors and buffers, renumbered."""
    g = model.subgraphs[0]
    ops = [g.operators[p] for p in cut.operators]
    tensors = sorted({cut.input} | {int(t) for op in ops for t in list(op.inputs) + list(op.outputs) if t >= 0})
    new_tensor = {old: new for new, old in enumerate(tensors)}
    used_buffers = sorted({0} | {g.tensors[t].buffer for t in tensors}
                          | {m.buffer for m in (model.metadata or [])})
    new_buffer = {old: new for new, old in enumerate(used_buffers)}
    used_codes = sorted({op.opcodeIndex for op in ops})
    new_code = {old: new for new, old in enumerate(used_codes)}

    stage = schema.ModelT()
    stage.version, stage.description = model.version, model.description
    stage.operatorCodes = [copy.deepcopy(model.operatorCodes[c]) for c in used_codes]
    stage.buffers = [copy.deepcopy(model.buffers[b]) for b in used_buffers]
    stage.metadata = [copy.deepcopy(m) for m in (model.metadata or [])]
    for entry in stage.metadata:
        entry.buffer = new_buffer[entry.buffer]
    sub = schema.SubGraphT()
    sub.name = g.name
    sub.tensors = [copy.deepcopy(g.tensors[t]) for t in tensors]
    for tensor in sub.tensors:
        tensor.buffer = new_buffer[tensor.buffer]
    sub.operators = []
    for op in ops:
        twin = copy.deepcopy(op)
        twin.opcodeIndex = new_code[op.opcodeIndex]
        twin.inputs = [new_tensor[int(t)] if t >= 0 else -1 for t in op.inputs]
        twin.outputs = [new_tensor[int(t)] for t in op.outputs]
        sub.operators.append(twin)
    sub.inputs = [new_tensor[cut.input]]
    sub.outputs = [new_tensor[t] for t in cut.outputs.values()]
    stage.subgraphs = [sub]
    stage.signatureDefs = [_signature(sub.inputs[0], dict(zip(cut.outputs, sub.outputs, strict=True)))]
    return stage


def _signature(input_index: int, outputs: dict[str, int]):
    signature = schema.SignatureDefT()
    signature.signatureKey, signature.subgraphIndex = b"serving_default", 0
    entry = schema.TensorMapT()
    entry.name, entry.tensorIndex = graph.INPUT.encode(), input_index
    signature.inputs = [entry]
    signature.outputs = []
    for name, index in outputs.items():
        out = schema.TensorMapT()
        out.name, out.tensorIndex = name.encode(), index
        signature.outputs.append(out)
    return signature


def _pack(model: schema.ModelT) -> bytes:
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def split(flatbuffer: bytes) -> list[bytes]:
    """The stage flatbuffers of a staged model from ``convert``, in depth order."""
    model = schema.ModelT.InitFromPackedBuf(bytearray(flatbuffer), 0)
    return [_pack(_stage_model(model, cut)) for cut in plan(flatbuffer)]
