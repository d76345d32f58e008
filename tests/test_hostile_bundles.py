"""Bundles from someone else: every archive that tries to write outside its folder, hide a member, or cost
unbounded memory is refused with one line before anything is written or decompressed past its bound.

The archives are made here with zipfile (and, for lying sizes, by patching the central directory as an
attacker would), each with a manifest that matches it: the manifest is unsigned, so its builder writes one.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
from cli_errors import error_line
from click.testing import CliRunner

from bisup.cli import main
from bisup.firmware_bridge.bundle import BundleError, read_archive, sha256_hex

ROOT = Path(__file__).resolve().parents[1]


def _manifest(members: dict[str, bytes]) -> bytes:
    return json.dumps({"format": 2, "toolkit_version": "test", "created": "2026-12-07T00:00:00Z",
                       "model_sha256": sha256_hex(members.get("model.tflite", b"")),
                       "members": {name: {"sha256": sha256_hex(data), "size": len(data)}
                                   for name, data in members.items()}}).encode()


def _archive(path: Path, members: list[tuple[str | zipfile.ZipInfo, bytes]]) -> Path:
    """An archive of ``members`` (in order, duplicates kept) and a manifest that lists them."""
    listed = {(m.filename if isinstance(m, zipfile.ZipInfo) else m): data for m, data in members}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("manifest.json", _manifest(listed))
        for member, data in members:
            archive.writestr(member, data)
    return path


def _refused(path: Path, match: str) -> None:
    """Refused by the reader and by `bisup bundle --verify` (one Error line), and nothing written beside it."""
    before = sorted(p.name for p in path.parent.parent.iterdir())
    with pytest.raises(BundleError, match=match):
        read_archive(path)
    line = error_line(CliRunner().invoke(main, ["bundle", "--verify", str(path)]))
    assert "refused" in line or "modified after it was built" in line or "corrupt" in line, line
    assert sorted(p.name for p in path.parent.parent.iterdir()) == before


@pytest.mark.parametrize("name", ["../../evil.json", "/tmp/bisup-evil.json", "sub/model.tflite", "..\\evil.json",
                                  "model.tflite/", "stage0.tflite", "policy.json.sh"])
def test_a_member_name_that_is_not_a_plain_bundle_name_is_refused(tmp_path, name):
    path = _archive(tmp_path / "evil.bisup", [("model.tflite", b"TFL3"), (name, b"{}")])
    _refused(path, "is not a bisup bundle member")
    assert not Path("/tmp/bisup-evil.json").exists()


def test_a_multi_exit_archive_with_a_climbing_name_writes_nothing_outside(tmp_path):
    """The staged path unpacks members into a temporary folder: the name check comes before any write."""
    from bisup.firmware_bridge.exits_model import staged_folder

    target = tmp_path / "outside.json"
    path = _archive(tmp_path / "staged.bisup", [("stages.json", b"{}"), ("../" * 12 + str(target)[1:], b"{}")])
    with pytest.raises(BundleError, match="is not a bisup bundle member"), staged_folder(path):
        pass
    assert not target.exists()


def test_a_symlink_member_is_refused(tmp_path):
    link = zipfile.ZipInfo("model.tflite")
    link.external_attr = (0o120777 << 16)  # S_IFLNK: the data would be the link's target
    path = _archive(tmp_path / "link.bisup", [(link, b"/etc/passwd")])
    _refused(path, "model.tflite is not a regular file")


def test_a_duplicate_member_is_refused_instead_of_the_last_copy_winning(tmp_path):
    path = _archive(tmp_path / "twice.bisup", [("model.tflite", b"TFL3 honest"), ("thresholds.json", b"{}"),
                                               ("model.tflite", b"TFL3 evil")])
    _refused(path, "holds model.tflite twice")


def test_twenty_thousand_members_are_refused_by_count(tmp_path):
    path = tmp_path / "many.bisup"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("manifest.json", b"{}")
        for i in range(20_000):
            archive.writestr(f"m{i}.json", b"")
    _refused(path, "has 20,001 members")


def _patch_sizes(path: Path, name: str, size: int) -> None:
    """Set ``name``'s uncompressed size in the local header and the central directory, as a forger would."""
    data = bytearray(path.read_bytes())
    encoded = name.encode()
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        start = 0
        while (at := data.find(signature, start)) >= 0:
            name_at = at + (30 if signature == b"PK\x03\x04" else 46)
            if data[name_at:name_at + len(encoded)] == encoded:
                data[at + offset:at + offset + 4] = struct.pack("<I", size)
            start = at + 4
    path.write_bytes(bytes(data))


def test_a_declared_four_gigabyte_member_is_refused_before_decompressing(tmp_path):
    path = _archive(tmp_path / "huge.bisup", [("model.tflite", b"TFL3" * 10)])
    _patch_sizes(path, "model.tflite", 0xFFFF_FFFE)
    _refused(path, "model.tflite declares 4,294,967,294 B")


def _bomb(path: Path, megabytes: int, declared: int | None) -> Path:
    """A model.tflite of ``megabytes`` MB of zeros (about 1 KB compressed per MB); the manifest lists the first
    ``declared`` bytes (and the central directory is patched to say so) or the true size."""
    zeros = bytes(1 << 20)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        size = declared if declared is not None else megabytes << 20
        archive.writestr("manifest.json", json.dumps({
            "format": 2, "toolkit_version": "test", "created": "2026-12-07T00:00:00Z", "model_sha256": "0" * 64,
            "members": {"model.tflite": {"sha256": "0" * 64, "size": size}}}))
        with archive.open("model.tflite", "w", force_zip64=True) as member:
            for _ in range(megabytes):
                member.write(zeros)
    if declared is not None:
        _patch_sizes(path, "model.tflite", declared)
    return path


@pytest.mark.parametrize("declared", [None, 1000])
def test_a_zip_bomb_costs_bounded_memory(tmp_path, declared):
    """300 MB of zeros in a few hundred KB: refused by its declared size, or, when the central directory lies
    about it, after at most its manifest size is decompressed. Peak RSS of a fresh process stays under 200 MB."""
    path = _bomb(tmp_path / "bomb.bisup", 300, declared)
    assert path.stat().st_size < 2_000_000
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across execve, so a child of a big pytest process would report
    # the parent's peak; VmHWM belongs to the new address space.
    script = textwrap.dedent(f"""
        import re, sys
        from bisup.firmware_bridge.bundle import BundleError, read_archive
        try:
            read_archive(__import__("pathlib").Path({str(path)!r}))
        except BundleError as exc:
            print("refused:", exc)
        status = open("/proc/self/status").read()
        print("peak_kb", re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    lines = done.stdout.splitlines()
    assert lines[0].startswith("refused:"), done.stdout + done.stderr
    assert int(lines[-1].split()[1]) < 200_000, lines


def test_a_stage_table_cannot_name_a_file_outside_its_folder(tmp_path):
    """stages.json comes with the bundle; its stage file names are plain names too."""
    from bisup.converters.errors import ConversionError
    from bisup.firmware_bridge.exits_model import StagedModel

    secret = tmp_path / "secret.tflite"
    secret.write_bytes(b"TFL3")
    model = StagedModel.__new__(StagedModel)  # only the file loader is under test
    model.directory = tmp_path / "export"
    with pytest.raises(ConversionError, match="names stage file '../secret.tflite'"):
        model._load("../secret.tflite", sha256_hex(b"TFL3"))


def _keys(tmp_path: Path, name: str) -> tuple[Path, Path]:
    from bisup.export import bundles

    return bundles.keygen(tmp_path / name)


def test_keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites(tmp_path):
    result = CliRunner().invoke(main, ["keygen", str(tmp_path / "release")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "release.key").stat().st_mode & 0o777 == 0o600
    assert b"PUBLIC KEY" in (tmp_path / "release.pub").read_bytes()
    again = CliRunner().invoke(main, ["keygen", str(tmp_path / "release")])
    assert "release.key exists; keys are never overwritten" in error_line(again)


def _signed(tmp_path: Path, key: Path | None, name: str = "signed.bisup") -> Path:
    """A structurally valid archive (its members are not a real model: only the reader is under test)."""
    from bisup.firmware_bridge.bundle import SIGNATURE, sign_manifest

    members = {"model.tflite": b"TFL3 model", "thresholds.json": b"{}"}
    raw = _manifest(members)
    path = tmp_path / name
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("manifest.json", raw)
        if key is not None:
            archive.writestr(SIGNATURE, sign_manifest(raw, key))
        for member, data in members.items():
            archive.writestr(member, data)
    return path


def test_trusted_keys_accept_only_bundles_they_signed(tmp_path):
    from bisup.firmware_bridge.bundle import load_public_key, trusting

    private, public = _keys(tmp_path, "release")
    other, _ = _keys(tmp_path, "other")
    signed, unsigned, foreign = _signed(tmp_path, private), _signed(tmp_path, None, "u.bisup"), \
        _signed(tmp_path, other, "f.bisup")
    read_archive(unsigned)  # without --trust nothing changes
    with trusting([load_public_key(public)]):
        assert read_archive(signed)[1].members.keys() == {"model.tflite", "thresholds.json"}
        with pytest.raises(BundleError, match="is not signed, and --trust requires a signed bundle"):
            read_archive(unsigned)
        with pytest.raises(BundleError, match="signed by none of the trusted keys"):
            read_archive(foreign)
        with pytest.raises(BundleError, match="is a build folder, which cannot be signed"):
            from bisup.firmware_bridge.bundle import Bundle

            Bundle.load(tmp_path)


def test_a_signed_manifest_changed_afterwards_is_refused(tmp_path):
    """Re-listing the members (e.g. a new model with its own hash) invalidates the signature."""
    from bisup.firmware_bridge.bundle import load_public_key, trusting

    private, public = _keys(tmp_path, "release")
    signed = _signed(tmp_path, private)
    forged = tmp_path / "forged.bisup"
    with zipfile.ZipFile(signed) as old, zipfile.ZipFile(forged, "w") as new:
        for info in old.infolist():
            data = old.read(info)
            if info.filename == "manifest.json":
                data = data.replace(b'"created": "2026-12-07T00:00:00Z"', b'"created": "2026-12-08T00:00:00Z"')
            new.writestr(info.filename, data)
    with trusting([load_public_key(public)]), pytest.raises(BundleError, match="signed by none of the trusted"):
        read_archive(forged)


@pytest.mark.parametrize("command", [["bundle", "--verify"], ["flash", "--board", "nrf52840", "--dry-run"],
                                     ["device", "--serial", "loop://", "--data", "DATA", "--bundle"],
                                     ["bridge", "--serial", "loop://", "--remote", "REMOTE", "--bundle"],
                                     ["hil", "--port", "loop://", "--data", "DATA", "--remote", "REMOTE",
                                      "--bundle"]])
def test_every_command_that_reads_a_bundle_refuses_an_unsigned_one_under_trust(tmp_path, command):
    import numpy as np

    _, public = _keys(tmp_path, "release")
    unsigned = _signed(tmp_path, None, "u.bisup")
    np.savez(tmp_path / "data.npz", x=np.zeros((2, 8, 8, 1), np.float32), y=np.zeros(2, np.int64))
    (tmp_path / "remote.keras").write_bytes(b"")
    args = [str(tmp_path / "data.npz") if a == "DATA" else str(tmp_path / "remote.keras") if a == "REMOTE" else a
            for a in command]
    result = CliRunner().invoke(main, [*args, str(unsigned), "--trust", str(public)])
    assert "is not signed, and --trust requires a signed bundle" in error_line(result)
