"""The export on a real digits CNN: artefacts, graph rules, accuracy, arena, caveats, every board."""

from __future__ import annotations

import json

import numpy as np
import pytest

from boards import all_boards, load_board
from converters import arena, coverage, tflite_model
from converters.artefacts import ExportReport
from converters.runners import TflmRunner, dequantize
from converters.signature import CONFIDENCE, SCORES
from converters.tflm_ops import RESOLVER_METHODS
from toolkit import export as exporter

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
    from converters.runners import quantize

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
