"""The interpreter-free C engine: generated code against the tflite-micro interpreter, byte for byte.

The generated model_infer.c and the kernels are compiled with the host gcc under ASan/UBSan and
-Wall -Wextra -Werror, and with arm-none-eabi-gcc for a Cortex-M4; every input of the digits
holdout split goes through both the C engine and TFLM, and every output byte must match.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from bisup.converters import engine, tflite_model
from bisup.converters.runners import TflmRunner, quantize
from bisup.converters.signature import CONFIDENCE, SCORES

pytestmark = [pytest.mark.slow, pytest.mark.toolchain]

ROOT = Path(__file__).resolve().parents[1]
KERNELS = engine.KERNELS_DIR
HARNESS = ROOT / "tests" / "c" / "engine_harness.c"
WARNINGS = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"]


def build_host(generated_dir: Path) -> Path:
    """The generated model plus the kernels and the stdin/stdout harness, under the sanitizers."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed (CI installs it)")
    exe = generated_dir / "engine_harness"
    subprocess.run(["gcc", *WARNINGS, "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                    f"-I{generated_dir}", f"-I{KERNELS}", str(generated_dir / "model_infer.c"),
                    *map(str, engine.kernel_sources()), str(HARNESS), "-o", str(exe)], check=True)
    return exe


def run_c(exe: Path, x_q: np.ndarray, classes: int) -> tuple[np.ndarray, np.ndarray]:
    out = subprocess.run([str(exe)], input=x_q.tobytes(), capture_output=True, check=True).stdout
    rows = np.frombuffer(out, dtype=np.int8).reshape(len(x_q), classes + 1)
    return rows[:, :classes], rows[:, classes]


def run_tflm(model: bytes, x_q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    info = tflite_model.read(model)
    out = TflmRunner(model, info, 65536).run(x_q)
    return out[SCORES].reshape(len(x_q), -1), out[CONFIDENCE].reshape(len(x_q))


@pytest.fixture(scope="module", params=["max-softmax", "margin", "entropy", "deepgini"])
def supervised(request, digits_example, converted):
    """The digits CNN exported with each supervisor (max-softmax is the session's shared export)."""
    if request.param == "max-softmax":
        return converted.model
    from bisup.export.single import convert

    return convert(digits_example["model"], digits_example["calib"], request.param, digits_example["holdout"]).model


def test_generated_code_is_byte_equal_to_tflm(supervised, digits_example, tmp_path):
    info = tflite_model.read(supervised)
    x = np.load(digits_example["holdout"])["x"]
    x_q = quantize(x, info.inputs[0])
    generated = engine.write(supervised, tmp_path)
    scores, confidence = run_c(build_host(tmp_path), x_q, generated.classes)
    want_scores, want_confidence = run_tflm(supervised, x_q)
    assert len(x_q) == 719
    assert np.array_equal(scores, want_scores), f"{np.mean(np.any(scores != want_scores, axis=1)):.1%} rows differ"
    assert np.array_equal(confidence, want_confidence), f"{np.mean(confidence != want_confidence):.1%} differ"


def test_the_arena_is_the_lower_bound_of_the_schedule(converted):
    """Planned offsets never put two tensors alive at once in the same bytes, and the digits model's
    arena equals the largest set of tensors alive together (640 B; TFLM needs about 3.9 KB)."""
    generated = engine.generate(converted.model)
    plan = generated.plan
    assert plan.arena_bytes <= 1.05 * plan.lower_bound_bytes
    assert plan.arena_bytes <= 0.5 * converted.arena_bytes  # TFLM's measured minimum arena


def test_cortex_m4_build_is_warning_free(converted, tmp_path):
    if shutil.which("arm-none-eabi-gcc") is None:
        pytest.skip("arm-none-eabi-gcc not installed (CI installs it)")
    engine.write(converted.model, tmp_path)
    for source in (tmp_path / "model_infer.c", *engine.kernel_sources()):
        subprocess.run(["arm-none-eabi-gcc", "-mcpu=cortex-m4", "-mthumb", "-O2", *WARNINGS, f"-I{tmp_path}",
                        f"-I{KERNELS}", "-c", str(source), "-o", str(tmp_path / f"{source.stem}.o")], check=True)


def test_an_unsupported_op_is_named_with_its_position(converted):
    """A model the engine cannot run exactly is refused, naming the op and where it is."""
    import ai_edge_litert.schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(converted.model), 0)
    codes = model.operatorCodes
    pool = next(i for i, c in enumerate(codes) if max(c.builtinCode, c.deprecatedBuiltinCode) == 17)
    codes[pool].builtinCode = codes[pool].deprecatedBuiltinCode = schema.BuiltinOperator.TANH
    import flatbuffers

    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    with pytest.raises(engine.EngineError, match=r"op 1 \(TANH\) is not supported by the C engine"):
        engine.generate(bytes(builder.Output()))


@pytest.mark.parametrize(("real", "expected"), [
    (0.5, (1 << 30, 0)),
    (1.0, (1 << 30, 1)),
    (0.75, (3 << 29, 0)),
    (2.0 ** -40, (0, 0)),  # below 2^-31: flushed to zero, as TFLM does
    (0.999999999999, (1 << 30, 1)),  # rounds up to 2^31: halved, shift + 1
])
def test_quantize_multiplier_follows_tflm(real, expected):
    assert engine.quantize_multiplier(real) == expected


def test_activation_ranges_use_float32_division():
    assert engine.activation_range(0, 0.1, 3) == (-128, 127)
    assert engine.activation_range(1, 0.1, -5) == (-5, 127)
    assert engine.activation_range(3, 0.05, -128) == (-128, -8)  # 6 / 0.05 = 120
    assert engine.tflm_round(2.5) == 3 and engine.tflm_round(-2.5) == -3


RANDOM_MODELS = int(os.environ.get("BISUP_ENGINE_MODELS", "200"))  # more locally: BISUP_ENGINE_MODELS=2000
RANDOM_SEED = int(os.environ.get("BISUP_ENGINE_SEED", "0"))


UBSAN = ["-O1", "-fsanitize=undefined", "-fno-sanitize-recover=all"]


def _compile_kernels(out: Path, pool: ThreadPoolExecutor) -> list[str]:
    """The kernels compiled once under UBSan: every random model links the same objects, so a model costs one
    compile of its own model_infer.c instead of every kernel again."""
    out.mkdir()

    def compile_one(source: Path) -> str:
        obj = out / f"{source.stem}.o"
        subprocess.run(["gcc", *WARNINGS, *UBSAN, f"-I{KERNELS}", "-c", str(source), "-o", str(obj)], check=True)
        return str(obj)

    return list(pool.map(compile_one, engine.kernel_sources()))


def _build_and_run(folder: Path, objects: list[str], x_q: np.ndarray, classes: int) -> tuple[np.ndarray, np.ndarray]:
    exe = folder / "engine_harness"
    subprocess.run(["gcc", *WARNINGS, *UBSAN, f"-I{folder}", f"-I{KERNELS}", str(folder / "model_infer.c"),
                    str(HARNESS), *objects, "-o", str(exe)], check=True)
    return run_c(exe, x_q, classes)


def test_random_models_are_byte_equal_to_tflm(tmp_path):
    """Random op sequences, shapes, strides, padding, per-channel and per-tensor scales, zero points and
    fused activations (tests/random_models.py), each compiled under UBSan and fed random int8 inputs.
    Models are generated and checked against TFLM in order; gcc and the harness run one per core."""
    from collections import Counter

    from random_models import random_model

    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed (CI installs it)")
    seen: Counter[str] = Counter()
    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        objects = _compile_kernels(tmp_path / "kernels", pool)
        jobs = []
        for seed in range(RANDOM_SEED, RANDOM_SEED + RANDOM_MODELS):
            model, shape = random_model(seed)
            folder = tmp_path / str(seed)
            folder.mkdir()
            generated = engine.write(model, folder)
            x_q = np.random.default_rng(seed).integers(-128, 128, size=(8, *shape[1:]), dtype=np.int8)
            jobs.append((seed, model, generated, x_q,
                         pool.submit(_build_and_run, folder, objects, x_q, generated.classes)))
        for seed, model, generated, x_q, job in jobs:
            scores, confidence = job.result()
            want_scores, want_confidence = run_tflm(model, x_q)
            assert np.array_equal(scores, want_scores) and np.array_equal(confidence, want_confidence), (
                f"model seed {seed}: {[step.op for step in generated.steps]}")
            seen.update(step.op for step in generated.steps)
    assert set(seen) == engine.SUPPORTED, f"ops the random models never drew: {engine.SUPPORTED - set(seen)}"


@pytest.mark.parametrize(("change", "message"), [
    ("int16", r"op 0 \(CONV_2D\): tensor 0 \(t0\) is not int8; the C engine runs full-int8 models"),
    ("asymmetric", r"op 0 \(CONV_2D\): weights .* are asymmetric \(zero point != 0\)"),
])
def test_an_unsupported_quantization_is_named(change, message):
    """int16 activations or asymmetric weights: refused with the op and tensor, never compiled into wrong code."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema
    from random_models import random_model

    seed = next(s for s in range(100) if engine.generate(random_model(s)[0]).steps[0].op == "CONV_2D")
    model = schema.ModelT.InitFromPackedBuf(bytearray(random_model(seed)[0]), 0)
    graph = model.subgraphs[0]
    conv = graph.operators[0]
    if change == "int16":
        graph.tensors[conv.inputs[0]].type = schema.TensorType.INT16
    else:
        weights = graph.tensors[conv.inputs[1]].quantization
        weights.zeroPoint = [3] * len(weights.zeroPoint)
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    with pytest.raises(engine.EngineError, match=message):
        engine.generate(bytes(builder.Output()))
