"""Pluggable remotes: real distributions with ``bisup.remotes`` entry points, written to a folder on
``sys.path`` so that ``importlib.metadata`` discovers them as it would an installed plug-in, and
``register_remote`` from embedding code."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from bisup.firmware_bridge import protocol as p
from bisup.firmware_bridge import remote_registry
from bisup.firmware_bridge.handler import RequestHandler
from bisup.firmware_bridge.relay import InputQuantization, Relay, RemoteSupervisor
from bisup.firmware_bridge.remotes import RemoteError, RemoteSpecError, check_remote, open_remote, register_remote
from bisup.service.bridge import open_bridge_remote

ROOT = Path(__file__).resolve().parents[1]

PLUGIN = '''
"""A remote over "myproto": softmax of 10 x the flattened input, so the answer is the largest input."""
import numpy as np

from bisup.firmware_bridge.remote_base import as_probabilities


class SharpRemote:
    def __init__(self, spec, timeout_s):
        self.name, self.timeout_s, self.calls = spec, timeout_s, 0

    def predict(self, x):
        self.calls += 1
        x = np.asarray(x, dtype=np.float64)
        return as_probabilities(10 * x.reshape(len(x), -1))


def open_sharp(spec, timeout_s):
    return SharpRemote(spec, timeout_s)


def open_nothing(spec, timeout_s):
    return {"spec": spec}  # not a RemoteModel


def refuse(spec, timeout_s):
    raise ConnectionRefusedError(111, "Connection refused")  # a server that is not up yet
'''


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A fresh folder on ``sys.path`` to install distributions in, a copy of the registry table to change,
    and no plug-in module left in ``sys.modules`` afterwards."""
    folder = tmp_path / "site-packages"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))  # also invalidates the import system's caches
    monkeypatch.setattr(remote_registry, "_TABLE", dict(remote_registry._TABLE))
    before = set(sys.modules)
    yield folder
    for name in set(sys.modules) - before:
        if name.startswith("bisup_plugin_"):
            del sys.modules[name]


def install(site: Path, dist: str, entry_points: dict[str, str], modules: dict[str, str] | None = None) -> None:
    """What pip leaves in site-packages for a wheel: its modules and a ``.dist-info`` with the entry points."""
    for module, source in (modules or {}).items():
        (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[bisup.remotes]\n" + "".join(f"{name} = {target}\n"
                                                                          for name, target in entry_points.items()))


def test_an_installed_plugin_opens_its_scheme_and_the_bridge_relays_to_it(site):
    install(site, "bisup-myproto", {"myproto": "bisup_plugin_sharp:open_sharp"}, {"bisup_plugin_sharp": PLUGIN})
    remote = open_remote("myproto://models.example/sharp", timeout_s=2.5)
    assert type(remote).__module__ == "bisup_plugin_sharp" and type(remote).__name__ == "SharpRemote"
    assert remote.name == "myproto://models.example/sharp" and remote.timeout_s == 2.5

    relay = Relay(remote, RemoteSupervisor("max-softmax", 0.5), InputQuantization(0.1, 0, (2, 2, 1)))
    bundle = SimpleNamespace(input_elements=4, model_hash=bytes(32))  # all RequestHandler reads of a bundle
    handler = RequestHandler(relay, bundle)
    sure = p.decode(handler.handle("dev", p.encode(p.Infer(1, 3, -40, bytes([0, 0, 50, 0]), boot=1))))
    assert (sure.source, sure.label) == (p.Source.REMOTE, 2)  # the plug-in's answer, not the device's 3
    unsure = p.decode(handler.handle("dev", p.encode(p.Infer(2, 3, -40, bytes(4), boot=1))))
    assert (unsure.source, unsure.label, unsure.rejected) == (p.Source.FALLBACK, 3, True)  # 0.25 each: rejected
    assert remote.calls == 2 and handler.counts["remote"] == handler.counts["fallback-rejected"] == 1


def test_a_plugin_suffix_is_checked_without_importing_it_or_tensorflow(site, tmp_path):
    """A fresh interpreter, as the CLI is: check_remote finds the plug-in by name only."""
    install(site, "bisup-sharpfile", {".sharp": "bisup_plugin_file:open_sharp"}, {"bisup_plugin_file": PLUGIN})
    model = tmp_path / "model.sharp"
    model.write_text("weights")
    script = textwrap.dedent(f"""
        import sys
        from bisup.firmware_bridge.remotes import check_remote, open_remote
        check_remote({str(model)!r})
        print(sorted(m for m in ("bisup_plugin_file", "tensorflow", "keras") if m in sys.modules))
        print(type(open_remote({str(model)!r})).__name__)
    """)
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["[]", "SharpRemote"]


def test_built_in_kinds_win_over_a_plugin_that_claims_them(site, tmp_path):
    install(site, "bisup-greedy", {"oip+http": "bisup_plugin_missing:f", ".keras": "bisup_plugin_missing:f"})
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(RemoteError, match="connection refused"):
        open_remote(f"oip+http://127.0.0.1:{port}/v2/models/m")
    (tmp_path / "model.keras").write_bytes(b"not a zip")
    check_remote(tmp_path / "model.keras")
    assert "bisup_plugin_missing" not in sys.modules


def test_an_unknown_scheme_or_suffix_lists_built_in_and_plugged_in_kinds(site, tmp_path):
    install(site, "bisup-myproto", {"myproto": "bisup_plugin_sharp:open_sharp", ".onnx": "bisup_plugin_sharp:x"},
            {"bisup_plugin_sharp": PLUGIN})
    register_remote("embedded", lambda spec, timeout_s: None)
    url = "grpc://host:8081/v2/models/m"
    with pytest.raises(RemoteSpecError) as exc:
        open_remote(url)
    message = str(exc.value)
    assert message.startswith(f"remote {url}: unknown scheme 'grpc'; registered: oip+http, oip+https, "
                              "tfserving+http, tfserving+https, embedded (register_remote), myproto (plug-in "
                              "bisup-myproto 0.1, entry point myproto = bisup_plugin_sharp:open_sharp in group "
                              "bisup.remotes) (like oip+http://host:8080/v2/models/NAME"), message
    assert "\n" not in message

    (tmp_path / "model.pt").write_bytes(b"torch")
    with pytest.raises(RemoteSpecError) as exc:
        check_remote(tmp_path / "model.pt")
    assert str(exc.value).endswith("registered file kinds: .keras, .h5, .tflite, .onnx (plug-in bisup-myproto 0.1, "
                                   "entry point .onnx = bisup_plugin_sharp:x in group bisup.remotes), SavedModel "
                                   "directory"), str(exc.value)
    assert "bisup_plugin_sharp" not in sys.modules  # listed, not imported


def test_a_plugin_that_fails_to_import_is_named_and_the_bridge_does_not_wait_for_it(site):
    install(site, "bisup-broken", {"broken": "bisup_plugin_broken:open_sharp"},
            {"bisup_plugin_broken": "import bisup_no_such_dependency\n"})
    with pytest.raises(RemoteSpecError) as exc:
        open_remote("broken://host/m")
    assert str(exc.value) == ("remote broken://host/m: plug-in bisup-broken 0.1, entry point broken = "
                              "bisup_plugin_broken:open_sharp in group bisup.remotes cannot be imported: "
                              "ModuleNotFoundError: No module named 'bisup_no_such_dependency'")
    with pytest.raises(RemoteSpecError, match="plug-in bisup-broken 0.1"):
        open_bridge_remote("broken://host/m", lambda message: None)


def test_a_plugin_that_returns_no_remote_model_is_named(site):
    install(site, "bisup-hollow", {"hollow": "bisup_plugin_hollow:open_nothing"}, {"bisup_plugin_hollow": PLUGIN})
    with pytest.raises(RemoteSpecError) as exc:
        open_remote("hollow://host/m")
    assert str(exc.value) == ("remote hollow://host/m: plug-in bisup-hollow 0.1, entry point hollow = "
                              "bisup_plugin_hollow:open_nothing in group bisup.remotes returned a dict, which has no "
                              "predict() and no name; a remote factory must return a RemoteModel "
                              "(bisup.firmware_bridge.remote_base)")


def test_a_plugin_server_that_is_down_is_a_remote_error_the_bridge_retries(site):
    install(site, "bisup-late", {"late": "bisup_plugin_late:refuse"}, {"bisup_plugin_late": PLUGIN})
    with pytest.raises(RemoteError) as exc:
        open_remote("late://host/m")
    assert not isinstance(exc.value, RemoteSpecError)
    assert str(exc.value) == ("remote late://host/m: plug-in bisup-late 0.1, entry point late = "
                              "bisup_plugin_late:refuse in group bisup.remotes failed: ConnectionRefusedError: "
                              "[Errno 111] Connection refused")
    warnings: list[str] = []
    deferred = open_bridge_remote("late://host/m", warnings.append)
    assert type(deferred).__name__ == "DeferredRemote" and "answering `fallback` until it responds" in warnings[0]


def test_two_plugins_for_one_scheme_are_refused(site):
    install(site, "bisup-one", {"twice": "bisup_plugin_sharp:open_sharp"}, {"bisup_plugin_sharp": PLUGIN})
    install(site, "bisup-two", {"twice": "bisup_plugin_sharp:open_sharp"})
    with pytest.raises(RemoteSpecError, match=r"scheme twice is offered by several plug-ins \(plug-in bisup-one "
                                              r"0\.1, .*; plug-in bisup-two 0\.1, .*\); uninstall all but one"):
        check_remote("twice://host/m")


def test_register_remote_adds_schemes_suffixes_and_directory_kinds(site, tmp_path):
    opened: list[tuple[str, float]] = []

    def factory(spec: str, timeout_s: float) -> SimpleNamespace:
        opened.append((spec, timeout_s))
        return SimpleNamespace(name=spec, predict=lambda x: np.full((len(x), 2), 0.5))

    register_remote("Embedded+Grpc", factory)
    register_remote(".npz", factory)
    register_remote("weights folder", factory, directory=lambda path: (path / "weights.bin").is_file())
    (tmp_path / "w.npz").write_bytes(b"")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "weights.bin").write_bytes(b"")
    for spec in ("embedded+grpc://host/m", tmp_path / "w.npz", tmp_path / "folder"):
        assert open_remote(spec).predict(np.zeros((3, 4))).shape == (3, 2)
    assert opened == [("embedded+grpc://host/m", 10.0), (str(tmp_path / "w.npz"), 10.0),
                      (str(tmp_path / "folder"), 10.0)]
    with pytest.raises(ValueError, match=r"remote suffix '\.npz' is already registered \(register_remote\)"):
        register_remote(".npz", factory)
    register_remote(".npz", factory, replace=True)
    with pytest.raises(ValueError, match=r"remote scheme 'oip\+http' is already registered"):
        register_remote("oip+http", factory)
    with pytest.raises(ValueError, match="not a URL scheme"):
        register_remote("no spaces", factory)


def test_a_plugin_scheme_matches_whatever_its_case(site):
    install(site, "bisup-cased", {"My+Proto": "bisup_plugin_cased:open_sharp"}, {"bisup_plugin_cased": PLUGIN})
    assert type(open_remote("MY+PROTO://host/m")).__name__ == "SharpRemote"  # urlsplit lowercases the scheme
    assert type(open_remote("my+proto://host/m")).__name__ == "SharpRemote"
