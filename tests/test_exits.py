"""Early exits, staged export, split computing and exit policies (SPINN, EENet).

The end-to-end fixture runs ``bisup demo --exits`` once (on the demo session's cached models): exits
trained on the remote CNN, stages exported for nrf52840, policies calibrated, and the test split sent
through a multi-exit virtual device and the serial bridge over a pty.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

from bisup.converters import engine

ROOT = Path(__file__).resolve().parents[1]
KERNELS = engine.KERNELS_DIR


def _residual():
    import keras

    inputs = keras.Input((8, 8, 1))
    a = keras.layers.Conv2D(4, 3, padding="same", name="stem")(inputs)
    b = keras.layers.Conv2D(4, 3, padding="same", name="inner")(a)
    joined = keras.layers.Add(name="join")([a, b])
    x = keras.layers.Flatten(name="flat")(joined)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(x))


@pytest.mark.parametrize(("layer", "message"), [
    ("nope", "the model has no layer 'nope'; its layers are stem, inner, join, flat, logits"),
    ("inner", "layer 'inner' cannot be a cut: a branch (e.g. a skip connection) crosses it"),
    ("logits", "layer 'logits' is the model's last layer"),
])
def test_a_layer_that_cannot_carry_an_exit_is_named(layer, message):
    from bisup.converters import exits

    with pytest.raises(exits.ExitError, match=message.replace("(", r"\(").replace(")", r"\)")):
        exits.attach(_residual(), [layer])


def test_exits_go_in_depth_order_and_the_cut_is_recovered_from_the_graph(tmp_path):
    import keras

    from bisup.converters import exits

    multi = exits.attach(_residual(), ["join", "stem"])
    assert exits.exit_names(multi) == ["exit1", "exit2", "final"]
    multi.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", compile=False)
    assert exits.cuts(loaded) == ["stem", "join"]
    assert exits.tail(loaded, 2).input.shape[1:] == (8, 8, 4)


def test_exits_are_not_added_to_a_model_that_already_has_them():
    from bisup.converters import exits

    multi = exits.attach(_residual(), ["stem"])
    with pytest.raises(exits.ExitError, match="has 2 outputs; give the original single-output model"):
        exits.attach(multi, ["join"])


def test_a_plain_model_is_not_taken_for_a_multi_exit_one():
    from bisup.converters import exits

    with pytest.raises(exits.ExitError, match="is not a multi-exit model made by `bisup exits`"):
        exits.exit_names(_residual())


def test_the_export_tells_a_multi_exit_archive_without_loading_it(tmp_path, monkeypatch):
    """``bisup export`` asks before it converts; answering from config.json saves one model load (seconds)."""
    from bisup.converters import exits, graph
    from bisup.export.exits import is_multi_exit

    exits.attach(_residual(), ["stem"]).save(tmp_path / "multi.keras")
    _residual().save(tmp_path / "plain.keras")
    monkeypatch.setattr(graph, "load_model", lambda path: pytest.fail(f"{path} was loaded"))
    assert is_multi_exit(tmp_path / "multi.keras")
    assert not is_multi_exit(tmp_path / "plain.keras")


@pytest.fixture(scope="module")
def exits_run(demo_run, tmp_path_factory):
    """`bisup demo --exits` once, on the models the demo session trained."""
    from bisup.examples import demo_exits

    _, _, cache = demo_run
    out = tmp_path_factory.mktemp("exits")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BISUP_CACHE", str(cache))
        return demo_exits.run(out)


def _outcomes(out: Path, split: str, thresholds):
    from bisup.calibration import exits as multi_exit
    from bisup.export.exits import open_tails
    from bisup.firmware_bridge.exits_model import StagedModel

    model = StagedModel(out)
    tails = open_tails(out, len(model))
    data = np.load(out / f"{split}.npz")
    o, conf = multi_exit.outcomes(model, tails, data["x"], data["y"])
    return multi_exit.with_remote_rule(o, conf, np.asarray(thresholds)), model, tails


@pytest.mark.slow
def test_the_deployed_device_does_what_calibration_simulated(exits_run):
    """Every test input, sent through the virtual device and the bridge under every policy, is answered exactly
    as the policy applied offline says (label, exit, MACs, bytes): the device's integer rule, the split and the
    lost-answer path are the ones calibration assumed, and the rows (the simulated rule) are what was deployed."""
    deployed = exits_run["deployed"]
    assert deployed["inputs"] == exits_run["sizes"]["test"]
    assert deployed["agreement"] == {name: 1.0 for name in exits_run["policies"]}


@pytest.mark.slow
def test_on_digits_the_learned_policy_keeps_remote_only_accuracy_with_few_remote_calls(exits_run):
    """The default demo's promise (issue 21): within 0.5 pp of remote-only with at most 40% of its remote calls,
    every row with its 95% interval, and the paired margin over the 360 test inputs."""
    rows = {row["name"]: row for row in exits_run["rows"]}
    learned, remote = rows["learned (EENet)"], rows["remote-only"]
    assert remote["accuracy"] - learned["accuracy"] <= 0.005, learned
    assert learned["remote_fraction"] <= 0.4 * remote["remote_fraction"], learned
    for row in rows.values():
        low, high = row["ci95"]["accuracy"]
        assert low <= row["accuracy"] <= high
    assert exits_run["margin"]["inputs"] == exits_run["sizes"]["test"] == 360


@pytest.mark.slow
def test_the_device_budget_holds_on_the_test_split(exits_run):
    budget = exits_run["device_budget_macs"]
    for row in exits_run["rows"]:
        if row["name"] in ("per-exit thresholds", "learned (EENet)"):
            assert row["mean_device_macs"] <= 1.05 * budget, row


@pytest.mark.slow
def test_a_split_relays_the_activation_and_a_raw_relay_the_input(exits_run):
    rows = {row["name"]: row for row in exits_run["rows"]}
    stages = exits_run["stages"]
    split = exits_run["policies"]["per-exit thresholds, split"]["split"]
    assert split >= 1
    assert rows["per-exit thresholds, split"]["bytes_per_relay"] == stages[split - 1]["activation"]["bytes"]
    assert rows["per-exit thresholds"]["bytes_per_relay"] == np.prod(stages[0]["input"]["shape"])


@pytest.mark.slow
def test_stage_models_chain_to_the_whole_graph_in_tflm(exits_run):
    from bisup.converters import exits_stages as stages
    from bisup.converters import tflite_model
    from bisup.converters.runners import TflmRunner
    from bisup.firmware_bridge.exits_model import StagedModel

    out = Path(exits_run["out_dir"])
    model = StagedModel(out)
    run = model.run_all(np.load(out / "test.npz")["x"][:60])
    full = (out / "staged.tflite").read_bytes()
    whole = TflmRunner(full, tflite_model.read(full), 1 << 20).run(run.x_q)
    for index in range(len(model)):
        assert np.array_equal(run.scores[index], whole[stages.output_name("scores", index + 1)])
        assert np.array_equal(run.confidence[index], whole[stages.output_name("confidence", index + 1)][:, 0])


def _chain_harness(stages: int) -> str:
    includes = "\n".join(f'#include "stage{i}_infer.h"' for i in range(1, stages + 1))
    body = []
    for i in range(1, stages + 1):
        m = f"BISUP_STAGE{i}"
        previous = "input" if i == 1 else f"act{i - 1}"
        if i < stages:
            body.append(f"    static int8_t act{i}[{m}_ACTIVATION_BYTES];\n"
                        f"    int8_t s{i}[{m}_CLASSES], c{i}[1];\n"
                        f"    if (bisup_stage{i}_infer({previous}, s{i}, c{i}, act{i})) return 1;\n"
                        f"    fwrite(s{i}, 1, sizeof(s{i}), stdout); fwrite(c{i}, 1, 1, stdout);\n"
                        f"    fwrite(act{i}, 1, sizeof(act{i}), stdout);")
        else:
            body.append(f"    int8_t s{i}[{m}_CLASSES], c{i}[1];\n"
                        f"    if (bisup_stage{i}_infer({previous}, s{i}, c{i})) return 1;\n"
                        f"    fwrite(s{i}, 1, sizeof(s{i}), stdout); fwrite(c{i}, 1, 1, stdout);")
    return f"""#include <stdio.h>
{includes}
void bisup_model_profile_mark(int layer) {{ (void)layer; }}
int main(void) {{
  static int8_t input[BISUP_STAGE1_INPUT_BYTES];
  while (fread(input, 1, sizeof(input), stdin) == sizeof(input)) {{
{chr(10).join(body)}
  }}
  return 0;
}}
"""


@pytest.mark.slow
@pytest.mark.toolchain
def test_generated_stages_in_c_match_tflm_byte_for_byte(exits_run, tmp_path):
    """Each stage's generated C (host gcc, sanitizers on), chained through its activations, against TFLM."""
    from bisup.firmware_bridge.exits_model import StagedModel

    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed (CI installs it)")
    out = Path(exits_run["out_dir"])
    model = StagedModel(out)
    n = len(model)
    (tmp_path / "chain.c").write_text(_chain_harness(n))
    exe = tmp_path / "chain"
    sources = [str(out / f"stage{i}_infer.c") for i in range(1, n + 1)] + [str(out / "stages_arena.c")]
    sources += map(str, engine.kernel_sources())
    subprocess.run(["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-O1", "-fsanitize=address,undefined",
                    "-fno-sanitize-recover=all", f"-I{out}", f"-I{KERNELS}", *sources,
                    str(tmp_path / "chain.c"), "-o", str(exe)], check=True)
    run = model.run_all(np.load(out / "test.npz")["x"])
    expected = []
    for sample in range(len(run.x_q)):
        for index in range(n):
            expected.append(run.scores[index][sample].astype(np.int8).tobytes())
            expected.append(np.int8(run.confidence[index][sample]).tobytes())
            if index < n - 1:
                expected.append(run.activation[index][sample].astype(np.int8).tobytes())
    got = subprocess.run([str(exe)], input=run.x_q.tobytes(), capture_output=True, check=True).stdout
    assert got == b"".join(expected)


@pytest.mark.slow
def test_a_lost_link_finishes_locally_at_the_last_exit(exits_run):
    """The bridge is stopped mid-run: every later relay times out and the device answers with its last
    exit (not the weak exit it stopped at), without hanging.

    The policy is the learned one made to relay every input (no early answer), so the test does not
    depend on how many inputs a freshly trained policy happens to relay."""
    from dataclasses import replace

    from bisup.converters.artefacts import NEVER, Policy
    from bisup.firmware_bridge.exits_device import StagedDevice
    from bisup.firmware_bridge.exits_model import StagedIdentity, relay_for
    from bisup.firmware_bridge.handler import RequestHandler
    from bisup.firmware_bridge.protocol import Source
    from bisup.firmware_bridge.serial_bridge import SerialBridge, pty_pair
    from bisup.firmware_bridge.virtual_device import SerialLink

    out = Path(exits_run["out_dir"])
    learned = Policy.from_json(exits_run["policies"]["learned (EENet)"])
    chosen = replace(learned, thresholds=[NEVER] * len(learned.thresholds), relay=True)
    o, model, tails = _outcomes(out, "test", chosen.remote_thresholds)
    accepted = o.remote_accepted[chosen.split, :100]
    assert accepted.any(), "fixture: the remote supervisor must accept some of the first 100 relays"
    x = np.load(out / "test.npz")["x"]
    relay = relay_for(model, tails, chosen)
    device_port, bridge_path, slave_fd = pty_pair()
    stop = threading.Event()
    bridge = threading.Thread(target=SerialBridge(bridge_path, RequestHandler(relay, StagedIdentity.of(model))).run,
                              args=(stop,), daemon=True)
    bridge.start()
    try:
        # While the bridge lives, a wait long enough for a loaded machine's remote; after, a short one.
        device = StagedDevice(SerialLink(device_port), model, chosen, timeout_s=10.0, retries=1)
        device.hello()
        answers = [device.infer_one(s) for s in model.quantize(x[:100])]
        stop.set()  # the bridge dies; the device's port stays open, and nobody answers on it any more
        bridge.join(timeout=5)
        device.timeout_s = 0.05
        answers += [device.infer_one(s) for s in model.quantize(x[100:160])]
    finally:
        device_port.close()
        os.close(slave_fd)
    last = o.exits - 1
    late = answers[100:]
    assert late and all(a.answer.source is Source.FALLBACK and a.exit_taken == last for a in late)
    for i, a in enumerate(late, 100):
        assert a.answer.label == o.labels[last, i]
        assert a.device_macs == o.cumulative_macs[last]
    assert [a.answer.source is Source.REMOTE for a in answers[:100]] == list(accepted)


def test_a_split_for_a_stage_without_a_tail_is_refused_by_name():
    from bisup.firmware_bridge import protocol as p
    from bisup.firmware_bridge.exits_model import StagedIdentity
    from bisup.firmware_bridge.handler import RequestHandler
    from bisup.firmware_bridge.relay import InputQuantization, Relay, RemoteSupervisor, Tail

    class Never:
        name = "never"

        def predict(self, x):
            raise AssertionError("a refused request must not reach the remote")

    quant = InputQuantization(0.1, 0, (4, 4, 2))
    relay = Relay(Never(), RemoteSupervisor("max-softmax", 0.0), InputQuantization(0.1, 0, (8, 8, 1)),
                  {2: Tail(Never(), quant, RemoteSupervisor("max-softmax", 0.0))})
    handler = RequestHandler(relay, StagedIdentity(bytes(32), 64))
    for stage, size, detail in ((1, 32, 0), (2, 31, 32)):
        reply = p.decode(handler.handle("d", p.encode(p.Split(5, stage, 1, 0, bytes(size), boot=9))))
        assert isinstance(reply, p.ErrorMsg) and reply.code is p.ErrorCode.BAD_TENSOR and reply.detail == detail
        assert reply.seq == 5 and reply.boot == 9
    assert handler.counts["error_bad_tensor"] == 2


def test_a_device_budget_below_the_first_exit_names_the_smallest_feasible_one():
    from bisup.calibration import exits as policy

    o = policy.ExitOutcomes(np.zeros((2, 4), int), np.zeros((2, 4), int), [np.zeros((4, 3))] * 2, np.zeros(4, int),
                            np.zeros((2, 4), int), np.ones((2, 4), bool), [1000, 5000], [64, 256])
    with pytest.raises(policy.PolicyError, match="the smallest feasible budget is 1,000 MACs"):
        policy.search(o, "thresholds", 999, 0.5)


def test_a_single_exit_device_is_told_a_multi_exit_export_is_not_its_kind(tmp_path):
    from bisup.firmware_bridge.bundle import Bundle, BundleError

    (tmp_path / "stages.json").write_text("{}")
    with pytest.raises(BundleError, match="is a multi-exit export"):
        Bundle.load(tmp_path)


def _cli(*args):
    from click.testing import CliRunner

    from bisup.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.slow
def test_exits_export_and_calibrate_from_the_command_line(digits_example, tmp_path):
    """The user's flow on the local digits CNN: exits after its first two layers, stages for a board, a policy."""
    import keras
    from cli_errors import error_line

    layers = [layer.name for layer in keras.models.load_model(digits_example["model"]).layers]
    bad = _cli("exits", digits_example["model"], "--at", "nope", "--train", digits_example["calib"], "--out", tmp_path)
    assert "has no layer 'nope'; its layers are " + ", ".join(layers) in error_line(bad)

    made = _cli("exits", digits_example["model"], "--at", f"{layers[0]},{layers[1]}", "--train",
                digits_example["calib"], "--out", tmp_path / "m", "--epochs", "3", "--json")
    assert made.exit_code == 0, made.stderr
    assert set(json.loads(made.stdout)["train_accuracy"]) == {"exit1", "exit2", "final"}
    assert all((tmp_path / "m" / f"tail{s}.keras").is_file() for s in range(3))

    exported = _cli("export", tmp_path / "m" / "exits.keras", "--calib", digits_example["calib"], "--board",
                    "nrf52840", "--out", tmp_path / "e", "--eval", digits_example["val"], "--json")
    assert exported.exit_code == 0, exported.stderr
    table = json.loads(exported.stdout)
    assert [s["cut"] for s in table["stages"]] == [layers[0], layers[1], None]
    assert table["stages"][0]["activation"]["bytes"] == int(np.prod(table["stages"][1]["input"]["shape"]))
    assert table["shared_arena_bytes"] == max(s["engine_arena_bytes"] for s in table["stages"])
    assert f"int32_t bisup_stages_arena[({table['shared_arena_bytes']} + 3) / 4];" in (
        tmp_path / "e" / "stages_arena.c").read_text()

    first = table["stages"][0]["macs"]
    full = sum(s["macs"] for s in table["stages"])
    too_small = _cli("calibrate", "--local", tmp_path / "e", "--remote", tmp_path / "m", "--data",
                     digits_example["val"], "--max-device-fraction", 0.5 * first / full, "--max-remote-fraction", 0.3,
                     "--out", tmp_path / "e")
    assert f"the smallest feasible budget is {first:,} MACs" in error_line(too_small)

    no_slo = _cli("calibrate", "--local", tmp_path / "e", "--remote", tmp_path / "m", "--data", digits_example["val"],
                  "--max-device-fraction", 0.8, "--max-remote-fraction", 0.3, "--latency-slo-ms", 0, "--out", tmp_path)
    assert "--latency-slo-ms takes a positive p95 objective in ms" in error_line(no_slo)
    calibrated = _cli("calibrate", "--local", tmp_path / "e", "--remote", tmp_path / "m", "--data",
                      digits_example["val"], "--max-device-fraction", 0.8, "--max-remote-fraction", 0.3,
                      "--latency-slo-ms", 200, "--out", tmp_path / "e", "--json")
    assert calibrated.exit_code == 0, calibrated.stderr
    for kind, found in json.loads(calibrated.stdout).items():
        assert found["achieved"]["remote_fraction"] <= 0.3
        assert found["achieved"]["mean_device_macs"] <= 0.8 * full
        assert found["schedule"]["slo_ms"] == 200 and not found["schedule"]["entries"][0]["relay"]
        assert (tmp_path / "e" / ("policy.json" if kind == "learned" else "policy-thresholds.json")).is_file()
    _risk_mode_from_the_command_line(tmp_path / "e", tmp_path / "m", digits_example["val"], tmp_path / "r")


def _risk_mode_from_the_command_line(export, tails, val, out):
    """An error no policy meets names the smallest the data supports; that one is certified and recorded."""
    import re

    from cli_errors import error_line

    def risk(*options):
        return _cli("calibrate", "--local", export, "--remote", tails, "--data", val, "--delta", 0.2, "--out", out,
                    *options)

    both = risk("--max-local-error", 0.05, "--max-device-fraction", 0.5)
    assert "drop --max-device-fraction" in error_line(both)
    refused = error_line(risk("--max-local-error", 0.0001))
    smallest = re.search(r"the smallest the data supports is (\d+\.\d)%", refused)
    assert smallest, refused
    certified = risk("--max-local-error", float(smallest.group(1)) / 100, "--json")
    assert certified.exit_code == 0, certified.stderr
    found = json.loads(certified.stdout)["certified"]
    assert found["guarantee"]["max_local_error"] == float(smallest.group(1)) / 100
    assert found["guarantee"]["delta"] == 0.2
    assert "more often than the full network's" in found["guarantee"]["statement"]
    assert found["achieved"]["early_loss"] <= found["guarantee"]["max_local_error"]
    assert json.loads((out / "policy.json").read_text())["guarantee"] == found["guarantee"]
    assert "certified <=" in risk("--max-local-error", float(smallest.group(1)) / 100).stdout


@pytest.mark.slow
def test_a_tail_served_by_kserve_answers_split_requests(exits_run, tmp_path):
    """Split computing against a real model server: the stage's tail (a plain .keras file that `bisup exits`
    wrote) behind KServe's Open Inference Protocol V2, answering SPLIT requests through the bridge's handler
    exactly as the in-process tail does."""
    from test_net_remotes import MODEL, _free_port, _kserve

    from bisup.converters.artefacts import Policy
    from bisup.firmware_bridge import protocol as p
    from bisup.firmware_bridge.exits_model import StagedIdentity, relay_for
    from bisup.firmware_bridge.handler import RequestHandler
    from bisup.firmware_bridge.remotes import open_remote

    out = Path(exits_run["out_dir"])
    chosen = Policy.from_json(exits_run["policies"]["learned (EENet)"])
    _, model, tails = _outcomes(out, "val", chosen.remote_thresholds)
    run = model.run_all(np.load(out / "test.npz")["x"][:20])
    split = 2
    local = RequestHandler(relay_for(model, tails, chosen), StagedIdentity.of(model))
    with _kserve(out / f"tail{split}.keras", _free_port(), tmp_path / "kserve.log") as address:
        served = dict(tails) | {split: open_remote(f"oip+http://{address}/v2/models/{MODEL}")}
        remote = RequestHandler(relay_for(model, served, chosen), StagedIdentity.of(model))
        for seq, activation in enumerate(run.activation[split - 1], start=1):
            body = p.encode(p.Split(seq, split, 0, 0, activation.astype(np.int8).tobytes(), boot=3))
            expected, got = p.decode(local.handle("d", body)), p.decode(remote.handle("d", body))
            assert isinstance(got, p.AnswerMsg) and got.source is not p.Source.FALLBACK or got.rejected
            assert (got.label, got.source, got.rejected) == (expected.label, expected.source, expected.rejected)


@pytest.mark.slow
@pytest.mark.toolchain
def test_the_emulated_board_runs_the_stages_and_decides_as_the_policy_offline(exits_run):
    """`bisup hil` on a multi-exit export: QEMU's Cortex-M4 runs every stage as generated C and the learned
    integer exit rule in C, relays INFER or SPLIT to the tails, and must take the same exit and give the same
    label as the policy applied offline to the host's TFLM outcomes, input by input."""
    from click.testing import CliRunner

    from bisup.cli import main

    if shutil.which("qemu-system-arm") is None or shutil.which("arm-none-eabi-gcc") is None:
        pytest.skip("qemu-system-arm and gcc-arm-none-eabi are not installed (CI installs them)")
    out = Path(exits_run["out_dir"])
    data = np.load(out / "test.npz")
    subset = out / "hil.npz"
    np.savez(subset, x=data["x"][:80], y=data["y"][:80])
    result = CliRunner().invoke(main, ["hil", "--emulate", "mps2-an386", "--bundle", str(out), "--remote", str(out),
                                       "--data", str(subset), "--json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["agreement_with_offline_policy"] == {"label": 1.0, "exit": 1.0}
    assert sum(report["exit_histogram"].values()) == 80
    assert report["stages"][0]["runs"] == 80 and report["stages"][0]["instructions_p50"] > report["stages"][0]["macs"]


def _scheduled_board_run(exits_run, monkeypatch, static_relays: bool, bandwidths_bps: list[float]):
    """The learned policy's stages on the emulated board under a hand-made schedule: one cell, which relays every
    input at the policy's depth, on a grid whose bandwidth axis is ``bandwidths_bps`` (everything else wide
    open); the safe entry answers locally at the last exit. The compiled-in static policy is the other of the
    two, so the report says which one the board ran. Returns the report and the STATS the board sent."""
    from dataclasses import replace

    from bisup.converters.artefacts import NEVER, Policy
    from bisup.export.exits import open_tails
    from bisup.firmware_bridge import protocol as p
    from bisup.firmware_bridge.exits_model import StagedModel
    from bisup.firmware_bridge.handler import RequestHandler
    from bisup.firmware_bridge.schedule_table import Entry, LatencyModel, ScheduleTable
    from bisup.hil import exits as hil_exits

    if shutil.which("qemu-system-arm") is None or shutil.which("arm-none-eabi-gcc") is None:
        pytest.skip("qemu-system-arm and gcc-arm-none-eabi are not installed (CI installs them)")
    stats = []

    class Recording(RequestHandler):
        def handle(self, device, body):
            if body[1:2] == bytes([p.MsgType.STATS]):
                stats.append(p.decode(body))
            return super().handle(device, body)

    monkeypatch.setattr(hil_exits, "RequestHandler", Recording)
    out = Path(exits_run["out_dir"])
    model = StagedModel(out)
    learned = Policy.from_json(exits_run["policies"]["learned (EENet)"])
    relay_all = replace(learned, thresholds=[NEVER] * len(learned.thresholds), relay=True)
    local = replace(learned, depth=len(model), thresholds=[NEVER] * len(model), relay=False, split=0)
    entries = [Entry(e.depth, list(e.thresholds), e.relay, e.split) for e in (local, relay_all)]
    table = ScheduleTable(1e3, bandwidths_bps, [60.0], [0.99], [7], entries, [1], 0, LatencyModel(1e8))
    static = relay_all if static_relays else local
    data = np.load(out / "test.npz")
    report = hil_exits.run(model, replace(static, schedule=table.to_json()), data["x"][:40], data["y"][:40],
                           open_tails(out, len(model)))
    return report.data, stats


@pytest.mark.slow
@pytest.mark.toolchain
def test_a_scheduled_policy_on_the_emulated_board_relays_as_its_measured_link_allows(exits_run, monkeypatch):
    """In range (any link the board can measure), the table's relaying entry decides, not the local-only policy
    compiled in beside it; the 16-byte STATS say no input was off the grid."""
    report, stats = _scheduled_board_run(exits_run, monkeypatch, static_relays=False, bandwidths_bps=[1.0])
    assert report["complete"] and report["remote_fraction"] == 1.0
    assert [(s.inferences, s.out_of_range) for s in stats] == [(32, 0)]


@pytest.mark.slow
@pytest.mark.toolchain
def test_a_scheduled_board_off_the_grid_answers_locally_and_counts_it(exits_run, monkeypatch):
    """A grid faster than any link (2 Gbps and up): every input gets the safe entry, none is relayed although
    the compiled-in policy relays them all, and STATS count each one as off the calibrated range."""
    report, stats = _scheduled_board_run(exits_run, monkeypatch, static_relays=True, bandwidths_bps=[2e9])
    assert report["complete"] and report["remote_fraction"] == 0.0
    assert report["exit_histogram"]["remote"] == 0
    assert [(s.inferences, s.relayed, s.out_of_range) for s in stats] == [(32, 0, 32)]


@pytest.mark.slow
def test_bisup_bridge_and_bisup_device_serve_a_multi_exit_export(exits_run):
    """What `bisup bridge --bundle STAGES --remote EXITS` and `bisup device --bundle STAGES` run, over a pty:
    the same figures as the demo's learned-policy row."""
    from bisup.export import bundles
    from bisup.firmware_bridge.ptylink import PtyServer
    from bisup.firmware_bridge.serial_bridge import SerialBridge
    from bisup.service import bridge as serve
    from bisup.service import device

    out = Path(exits_run["out_dir"])
    archive = out / "digits-exits.bisup"
    bundles.build(out, archive)
    handler, guarded = serve.make_handler(archive, str(out), serve.RemoteOptions(), None, lambda message: None)
    server, stop = PtyServer(), threading.Event()
    bridge = threading.Thread(target=SerialBridge("pty", handler, 921600, opener=server.open).run, args=(stop,),
                              daemon=True)
    bridge.start()
    try:
        # the device waits 10 s for each answer: on a loaded machine a remote answer slower than the default
        # 500 ms would send the device on to its last exit, which is right but not the demo's row
        summary = device.run(archive, out / "test.npz", server.device_path, None, "cli-staged", 10_000, 3, 10.0,
                             lambda message: None)
    finally:
        stop.set()
        bridge.join(timeout=5)
        guarded.close()
        server.close()
    row = next(r for r in exits_run["rows"] if r["name"] == "learned (EENet)")
    assert summary["accuracy"] == pytest.approx(row["accuracy"])
    assert summary["mean_device_macs"] == pytest.approx(row["mean_device_macs"])
    assert summary["exits"]["remote"] + summary["rejected"] == summary["requests"]
    assert handler.counts["remote"] == summary["exits"]["remote"]


@pytest.mark.parametrize("joint", [False, True])
def test_frozen_training_leaves_the_backbone_and_joint_training_moves_it(joint):
    """--joint fine-tunes the backbone with the EENet loss; the default trains the heads alone."""
    from bisup.converters import exits

    rng = np.random.default_rng(0)
    x, y = rng.random((64, 8, 8, 1), dtype=np.float32), rng.integers(0, 3, 64)
    multi = exits.attach(_residual(), ["stem"])
    before = {layer.name: [w.copy() for w in layer.get_weights()] for layer in multi.layers if layer.get_weights()}
    exits.train(multi, x, y, epochs=1, joint=joint)
    after = {name: multi.get_layer(name).get_weights() for name in before}
    moved = {name for name, weights in before.items()
             if any(not np.array_equal(a, b) for a, b in zip(weights, after[name], strict=True))}
    assert "bisup_exit1_dense" in moved
    assert ({"stem", "inner", "logits"} <= moved) if joint else not (moved & {"stem", "inner", "logits"})


@pytest.mark.slow
def test_a_multi_exit_bundle_carries_every_stage_and_the_policy_and_is_verified(exits_run, tmp_path):
    import zipfile

    from bisup.export import bundles
    from bisup.firmware_bridge.bundle import Bundle, BundleError

    out = Path(exits_run["out_dir"])
    archive = tmp_path / "exits.bisup"
    manifest = bundles.build(out, archive)
    assert set(manifest.members) == {"stages.json", "policy.json", "labels.json"} | {
        f"stage{i}.tflite" for i in range(1, len(exits_run["stages"]) + 1)}
    assert bundles.verify(archive).model_sha256 == manifest.model_sha256
    with pytest.raises(BundleError, match="is a multi-exit bundle"):
        Bundle.load(archive)
    tampered = tmp_path / "tampered.bisup"
    with zipfile.ZipFile(archive) as source, zipfile.ZipFile(tampered, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            target.writestr(info, data[:-1] + bytes([data[-1] ^ 1]) if info.filename == "stage2.tflite" else data)
    with pytest.raises(BundleError, match="stage2.tflite has SHA-256"):
        bundles.verify(tampered)


@pytest.mark.slow
def test_a_scheduled_device_relays_over_a_live_bridge_and_reports_its_range(exits_run):
    """A policy with a run-time schedule (`bisup calibrate --latency-slo-ms`) on the virtual device over the serial
    bridge: it PINGs, measures its relays, picks relaying entries on the fast local link, and its STATS carry the
    out-of-range counter."""
    import time
    from dataclasses import replace

    from bisup.calibration import schedule
    from bisup.converters.artefacts import Policy
    from bisup.firmware_bridge.exits_device import StagedDevice
    from bisup.firmware_bridge.exits_model import StagedIdentity, relay_for
    from bisup.firmware_bridge.handler import RequestHandler
    from bisup.firmware_bridge.schedule_table import LatencyModel
    from bisup.firmware_bridge.serial_bridge import bridge_over_pty
    from bisup.firmware_bridge.virtual_device import SerialLink

    out = Path(exits_run["out_dir"])
    learned = Policy.from_json(exits_run["policies"]["learned (EENet)"])
    val, model, tails = _outcomes(out, "val", learned.remote_thresholds)
    grid = schedule.Grid((1e3, 1e5, 1e7), (0.05, 0.5, 2.0), (0.0, 0.05), (0, 7))
    table = schedule.build(val, learned, 5000.0, LatencyModel(16e6), grid)  # a loaded test machine's remote is slow
    scheduled = replace(learned, schedule=table.to_json())
    x = np.load(out / "test.npz")["x"]
    handler = RequestHandler(relay_for(model, tails, scheduled), StagedIdentity.of(model))
    with bridge_over_pty(handler) as port:
        device = StagedDevice(SerialLink(port), model, scheduled, timeout_s=10.0, retries=1)
        device.hello()
        answers = [device.infer_one(s) for s in model.quantize(x[:40])]
        device.send_stats()
        for _ in range(100):  # the bridge reads the STATS on its own thread
            if handler.counts["stats"]:
                break
            time.sleep(0.02)
    assert device.scheduler.stats.out_of_range == 0 and any(a.exit_taken < 0 for a in answers)
    assert handler.counts["stats"] >= 1 and not any(name.startswith("error") for name in handler.counts)


@pytest.mark.slow
def test_the_demo_over_an_emulated_link_records_each_input_per_phase(exits_run, tmp_path):
    """`bisup demo --exits --link`'s part on an 8 s schedule at 5x, every input relayed: the first relay, on the
    fast phase, answers within a second; a relay caught by the outage waits out its resends (4 s, longer than the
    outage) and continues locally; relays on the slow phase cost at least its round trip; link.png and link.json
    are written and the per-phase rows count the inputs."""
    from dataclasses import replace

    from bisup.converters.artefacts import NEVER, Policy
    from bisup.examples import demo_link
    from bisup.export.exits import open_tails
    from bisup.firmware_bridge.exits_model import StagedModel
    from bisup.firmware_bridge.link_schedule import LinkSchedule

    out = Path(exits_run["out_dir"])
    learned = Policy.from_json(exits_run["policies"]["learned (EENet)"])
    chosen = replace(learned, thresholds=[NEVER] * len(learned.thresholds), relay=True)
    schedule = LinkSchedule.parse("0s 2Mbps 20ms 0%\n1s outage\n6s 20kbps 150ms 0%\n8s end")
    model = StagedModel(out)
    x = np.load(out / "test.npz")["x"][:20]
    result = demo_link.run(demo_link.LinkRun(schedule, 5.0, 400.0), model, open_tails(out, len(model)),
                           {demo_link.POLICY: chosen}, x, tmp_path)
    steps = json.loads((tmp_path / "link.json").read_text())["inputs"]
    assert len(steps) == 20 and (tmp_path / "link.png").read_bytes()[:4] == b"\x89PNG"
    assert steps[0]["phase"] == 0 and steps[0]["action"].startswith("relay") and steps[0]["latency_ms"] < 1000
    timeout_ms = demo_link.DEVICE_TIMEOUT_S * 1e3
    assert any(s["action"] == "local after relay" and s["latency_ms"] >= 3 * timeout_ms for s in steps
               if s["t_s"] < 6.0)
    slow = [s for s in steps if s["phase"] == 2 and s["action"].startswith("relay")]
    assert slow and all(s["latency_ms"] >= 0.9 * 150 for s in slow)
    rows = result["phases"]
    assert [r["inputs"] for r in rows] == [sum(s["phase"] == i for s in steps) for i in range(3)]
    assert all(0.0 <= r["met_objective"] <= 1.0 for r in rows if r["inputs"])


@pytest.mark.slow
def test_the_run_time_schedule_stops_relaying_when_the_link_slows(exits_run, tmp_path):
    """`bisup demo --exits --link --latency-slo-ms`'s adaptive run on a 2 Mbps link that drops to 2 kbps with a
    600 ms round trip (at 5x): the static policy keeps relaying its 512-byte cut there and misses the objective;
    the same policy with a run-time schedule learns the slow link from its PINGs (in link time) and answers
    locally, at most one relay after the change."""
    from bisup.converters.artefacts import Policy
    from bisup.examples import demo_link
    from bisup.firmware_bridge.link_schedule import LinkSchedule

    out = Path(exits_run["out_dir"])
    chosen = Policy.from_json(exits_run["policies"][demo_link.POLICY])
    val, model, tails = _outcomes(out, "val", chosen.remote_thresholds)
    test = np.load(out / "test.npz")
    schedule = LinkSchedule.parse("0s 2Mbps 20ms 0%\n3s 2kbps 600ms 0%\n12s end")
    result = demo_link.run(demo_link.LinkRun(schedule, 5.0, 100.0), model, tails, {demo_link.POLICY: chosen},
                           test["x"][:60], tmp_path, y=test["y"][:60], calibration=val, board="nrf52840")
    static, adaptive = result["phases"][1], result["adaptive"]["phases"][1]
    assert static["latency_p95_ms"] > 100.0 and (tmp_path / demo_link.ADAPTIVE_PLOT).is_file()
    relays = sum(count for action, count in adaptive["actions"].items() if action.startswith("relay"))
    assert relays <= 1 and adaptive["latency_p95_ms"] <= 100.0, adaptive
    assert adaptive["accuracy"] is not None and adaptive["inputs"] > 0
