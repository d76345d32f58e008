"""The export on a real digits CNN: artefacts, graph rules, accuracy, arena, caveats, every board."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from bisup.boards import all_boards, load_board
from bisup.converters import arena, coverage, tflite_model
from bisup.converters.artefacts import ExportReport
from bisup.converters.runners import TflmRunner, dequantize
from bisup.converters.signature import CONFIDENCE, SCORES
from bisup.converters.tflm_ops import RESOLVER_METHODS
from bisup.export import single as exporter

pytestmark = pytest.mark.slow

REPORT_KEYS = {"board", "ops", "flash_bytes", "arena_bytes", "arena_recommended_bytes", "float_accuracy",
               "int8_accuracy", "fits", "supervisor", "supervisor_auroc", "tflm_vs_litert_bitexact",
               "int8_float_top1_agreement", "caveats"}


@pytest.mark.parametrize("board", [b.name for b in all_boards()])
def test_every_board_gets_all_artefacts(converted, tmp_path, board):
    report = exporter.write(converted, load_board(board), tmp_path)
    for name in ("model.tflite", "model_data.h", "model_data.cc", "report.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    written = json.loads((tmp_path / "report.json").read_text())
    assert REPORT_KEYS <= set(written) and written["format"] == ExportReport.FORMAT
    assert ExportReport.read(tmp_path / "report.json") == report
    assert report.board == board and report.fits is True
    assert report.flash_bytes == len((tmp_path / "model.tflite").read_bytes())


def test_graph_is_full_int8_with_named_outputs(converted):
    info = tflite_model.read(converted.model)
    assert [t.dtype for t in (*info.inputs, *info.outputs)] == ["int8"] * 3
    assert set(info.output_positions) == {SCORES, CONFIDENCE}
    assert info.output(SCORES).shape == (1, 10) and info.output(CONFIDENCE).shape == (1, 1)
    assert all(op in RESOLVER_METHODS for op in info.ops)
    assert not any(op.startswith("CUSTOM") or op == "TOPK_V2" for op in info.ops)
    softmax_outputs = [info.tensors[op.outputs[0]] for op in info.operators if op.op == "SOFTMAX"]
    assert softmax_outputs and all(t.scale == 1 / 256 and t.zero_point == -128 for t in softmax_outputs)


def test_softmax_quantization_rule_rejects_other_scales(converted):
    info = tflite_model.read(converted.model)
    softmax = next(op for op in info.operators if op.op == "SOFTMAX")
    tensors = list(info.tensors)
    bad = tensors[softmax.outputs[0]]
    tensors[softmax.outputs[0]] = tflite_model.Tensor(bad.index, bad.name, bad.shape, "int8", (1 / 255,), (-128,))
    broken = tflite_model.ModelInfo(info.operators, tuple(tensors), info.inputs, info.outputs, info.output_positions)
    with pytest.raises(exporter.ConversionError, match="TFLM requires 0.00390625 and -128"):
        coverage.check_fixed_quantization(broken)


def test_int8_accuracy_within_half_a_point_of_float(converted):
    m = converted.metrics
    assert m["float_accuracy"] > 0.95
    assert abs(m["float_accuracy"] - m["int8_accuracy"]) <= 0.005
    assert m["tflm_vs_litert_bitexact"]["reference"] >= 0.99


@pytest.mark.parametrize("kind", ["max-softmax", "margin", "entropy", "deepgini"])
def test_supervisor_auroc_survives_int8(digits_example, kind):
    result = exporter.convert(digits_example["model"], digits_example["calib"], kind, digits_example["holdout"])
    auroc = result.metrics
    assert auroc["auroc_float"] > 0.9
    assert abs(auroc["auroc_float"] - auroc["auroc_int8"]) <= 0.01, (kind, auroc)


def test_arena_is_the_true_minimum(converted, tmp_path):
    model = tmp_path / "model.tflite"
    model.write_bytes(converted.model)
    assert arena.probe(model, converted.arena_bytes).ok
    assert not arena.probe(model, int(converted.arena_bytes * 0.9)).ok
    assert not arena.probe(model, converted.arena_bytes - arena.ALIGNMENT).ok
    assert converted.arena_recommended_bytes >= converted.arena_bytes + 1024


def test_tflm_with_reported_arena_reproduces_the_confidence(converted, digits_example):
    info = tflite_model.read(converted.model)
    x = np.load(digits_example["holdout"])["x"][:50]
    from bisup.converters.runners import quantize

    out = TflmRunner(converted.model, info, converted.arena_bytes).run(quantize(x, info.inputs[0]))
    confidence = dequantize(out[CONFIDENCE][:, 0], info.output(CONFIDENCE))
    top = dequantize(out[SCORES], info.output(SCORES)).max(axis=1)
    assert np.all((confidence >= 0) & (confidence <= 1.0))
    assert np.corrcoef(confidence, top)[0, 1] > 0.5  # the confidence tracks the model's own certainty


def test_esp32s3_warns_about_its_fully_connected_caveat(converted):
    s3 = exporter.report(converted, load_board("esp32s3"))
    plain = exporter.report(converted, load_board("esp32"))
    hit = [c for c in s3.caveats if c["id"] == "esp-nn-fc-per-channel-width"]
    assert hit and "output width 10" in hit[0]["detail"]
    assert not [c for c in plain.caveats if c["id"] == "esp-nn-fc-per-channel-width"]


def test_savedmodel_directory_exports_like_the_keras_file(digits_example, converted, tmp_path):
    import keras

    keras.models.load_model(digits_example["model"]).export(tmp_path / "sm", verbose=False)
    result = exporter.convert(tmp_path / "sm", digits_example["calib"], "max-softmax", digits_example["holdout"])
    assert result.info.ops == converted.info.ops
    assert abs(result.metrics["int8_accuracy"] - converted.metrics["int8_accuracy"]) <= 0.005


def test_not_a_savedmodel_directory(tmp_path):
    with pytest.raises(exporter.ConversionError, match="not a SavedModel"):
        exporter.convert(tmp_path, tmp_path / "c.npz")


def _macs_from_the_graph(info: tflite_model.ModelInfo) -> int:
    """MACs counted straight from the flatbuffer's shapes, independently of the C engine's builder."""
    total = 0
    for op in info.operators:
        out = int(np.prod(info.tensors[op.outputs[0]].shape))
        weights = info.tensors[op.inputs[1]].shape if len(op.inputs) > 1 else ()
        if op.op == "CONV_2D":
            total += out * int(np.prod(weights[1:]))
        elif op.op == "DEPTHWISE_CONV_2D":
            total += out * weights[1] * weights[2]
        elif op.op == "FULLY_CONNECTED":
            total += out * weights[1]
    return total


@pytest.fixture(scope="module")
def nrf(converted, tmp_path_factory):
    """The digits export for nrf52840 (Cortex-M4F, 64 MHz): the README's example board."""
    out = tmp_path_factory.mktemp("nrf52840")
    return exporter.write(converted, load_board("nrf52840"), out), out


def test_macs_are_the_graphs_and_the_layers_add_up_to_them(converted, nrf):
    report, _ = nrf
    layers = report.engine["layers"]
    assert report.engine["macs"] == _macs_from_the_graph(converted.info) == sum(layer["macs"] for layer in layers)
    assert report.engine["macs"] > 0 and [layer["op"] for layer in layers if layer["macs"]] == \
        ["CONV_2D", "CONV_2D", "FULLY_CONNECTED"]


def test_layer_parameter_bytes_are_the_keras_weights(digits_example, nrf):
    """int8 weights (1 B) and int32 biases (4 B) of each Conv2D and Dense layer, in order."""
    import keras

    model = keras.models.load_model(digits_example["model"])
    expected = [layer.kernel.shape.num_elements() + 4 * layer.bias.shape.num_elements() for layer in model.layers
                if isinstance(layer, keras.layers.Conv2D | keras.layers.Dense)]
    layers = nrf[0].engine["layers"]
    assert [layer["parameter_bytes"] for layer in layers if layer["op"] in ("CONV_2D", "FULLY_CONNECTED")] == expected


def test_layer_arena_places_lie_inside_the_generated_arena(nrf):
    report, out = nrf
    header = (out / "model_infer.h").read_text()
    arena = int(header.split("#define BISUP_MODEL_ARENA_BYTES ")[1].split()[0])
    assert report.engine["arena_bytes"] == arena and report.engine["generated"] is True
    assert report.engine == json.loads((out / "report.json").read_text())["engine"]
    for layer in report.engine["layers"]:
        assert 0 <= layer["arena_offset"] < layer["arena_end"] <= arena, layer
        assert layer["arena_end"] - layer["arena_offset"] == layer["output_bytes"]
    assert report.engine["arena_bytes"] < report.arena_bytes  # smaller than TFLM's measured minimum


def test_latency_estimate_is_macs_times_the_measured_rate_at_the_board_clock(nrf, converted, tmp_path):
    from bisup.converters import latency

    report, _ = nrf
    estimate = report.engine["latency"]
    rate = latency.MEASURED["cortex-m4f"].instructions_per_mac
    assert estimate["estimate_us"] == pytest.approx(report.engine["macs"] * rate / 64)
    assert estimate["basis"].startswith("estimate: ") and "mps2-an386" in estimate["basis"]
    esp32 = exporter.write(converted, load_board("esp32"), tmp_path).engine["latency"]
    assert esp32["estimate_us"] is None and esp32["reason"].startswith("no estimate for xtensa-lx6")


def test_table_shows_memory_side_by_side_macs_estimate_and_layers(nrf):
    from bisup.cli.tables import export_table

    report, _ = nrf
    table = export_table(report)
    engine = report.engine
    assert re.search(rf"\n  MACs +{engine['macs']:,} per inference\n", table)
    lines = table.splitlines()
    c_engine = next(line for line in lines if line.startswith("  C engine "))
    tflm = next(line for line in lines if re.match(r"  TFLM +[0-9]", line))
    assert f"{engine['arena_bytes']:,} B" in c_engine and f"{engine['flash_bytes']:,} B" in c_engine
    assert f"{report.arena_bytes:,} B" in tflm and f"{engine['tflm_flash_bytes']:,} B" in tflm
    assert "latency (estimate)" in table and "an estimate, not a measurement" in table
    for k, layer in enumerate(engine["layers"]):
        row = next(line for line in lines if line.startswith(f"  {k:>3} {layer['op']} "))
        assert row.split()[-1] == f"{layer['arena_offset']:,}..{layer['arena_end']:,}"
        assert row.split()[2:5] == [f"{layer['macs']:,}", f"{layer['parameter_bytes']:,}", f"{layer['output_bytes']:,}"]
    assert "layer (C engine)" not in export_table(report, layers=False)


def test_export_says_what_it_does_before_each_long_step(converted, tmp_path):
    said: list[str] = []
    exporter.write(converted, load_board("nrf52840"), tmp_path, progress=said.append)
    assert [message.split()[0] for message in said] == ["writing", "generating", "compiling"]
    assert "arm-none-eabi-gcc" in said[-1]


def test_the_latency_estimate_scales_with_macs_and_clock_and_names_what_is_measured():
    """MACs x the measured rate / MHz: twice the MACs take twice as long, twice the clock half; Helium's rate
    (the M55) is below the DSP kernels' (the M4); an arch without a measurement gets the reason, not a guess."""
    from bisup.converters import latency

    m4 = latency.estimate(latency.MLPERF_TINY_MACS, "cortex-m4", 120)
    assert latency.estimate(2 * latency.MLPERF_TINY_MACS, "cortex-m4", 120)["estimate_us"] == \
        pytest.approx(2 * m4["estimate_us"])
    assert latency.estimate(latency.MLPERF_TINY_MACS, "cortex-m4", 240)["estimate_us"] == \
        pytest.approx(m4["estimate_us"] / 2)
    assert latency.MEASURED["cortex-m55"].instructions_per_mac < latency.MEASURED["cortex-m4"].instructions_per_mac
    assert "MLPerf Tiny" in m4["basis"] and "1 instruction/cycle" in m4["basis"]
    assert latency.estimate(25_600, "cortex-m0plus", 133) == {
        "estimate_us": None, "reason": "no estimate for cortex-m0plus: no instructions-per-MAC measurement "
                                       "(measured: cortex-m33, cortex-m4, cortex-m4f, cortex-m55, cortex-m7)"}


def test_the_lean_savedmodel_converts_to_the_bytes_exportarchive_gave(digits_example, converted, monkeypatch):
    """quantize saves only the serving function and its variables (Keras's ExportArchive re-traced every layer,
    half the conversion's time); the int8 flatbuffer must stay byte for byte what the archive gave."""
    import keras

    from bisup.converters import graph, quantize, supervisors
    from bisup.converters.quiet import capture_fd

    def through_the_archive(model: keras.Model, directory: str) -> None:
        import tensorflow as tf

        archive = keras.export.ExportArchive()
        archive.track(model)
        spec = tf.TensorSpec((1, *model.inputs[0].shape[1:]), tf.float32, name=graph.INPUT)
        archive.add_endpoint("serving_default", lambda x: model(x, training=False), input_signature=[spec])
        with capture_fd(2):
            archive.write_out(directory, verbose=False)

    calib = np.load(digits_example["calib"])["x"]
    supervised = graph.attach_supervisor(graph.load_model(digits_example["model"]), supervisors.resolve("margin"),
                                         calib[:32], converted.temperature)
    lean = quantize.to_int8_tflite(supervised, calib)
    monkeypatch.setattr(quantize, "_export_saved_model", through_the_archive)
    assert quantize.to_int8_tflite(supervised, calib) == lean
