"""``ctconsole rules ...``: exit codes, output, never a traceback, never rewriting the file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ctconsole.cli import main
from ctconsole.model import Container, External, NetIface

GOOD = 'version = 1\n[[container]]\nmatch = { name = "web-*" }\n[[container.rule]]\nkind = "veth"\n' \
       'interface = "eth0"\nhost_name = "vweb0"\n'


def test_validate_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "r.toml"
    f.write_text(GOOD)
    assert main(["rules", "validate", str(f)]) == 0
    assert capsys.readouterr().out.strip() == "ok"


def test_validate_lists_all_problems_and_never_writes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "r.toml"
    f.write_text(GOOD + '[[container.rule]]\nkind = "vet"\n[[container.rule]]\nkind = "veth"\n'
                 'interface = "eth0"\nhost_name = "x y"\n')
    before = (f.read_bytes(), f.stat().st_mtime_ns)
    assert main(["rules", "validate", str(f)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{f}:9: container[0] (name='web-*') rule #2 (vet): unknown rule kind 'vet' (known: " \
        "veth, netdev, unix, tty, mount, device, lsm, cgroup, tcp, file)"
    assert any(line.startswith(f"{f}:10:") and "overlaps rule #1" in line for line in out)
    assert any(line.startswith(f"{f}:13:") and "whitespace" in line for line in out)
    assert (f.read_bytes(), f.stat().st_mtime_ns) == before
    assert os.listdir(tmp_path) == ["r.toml"]


def test_validate_malformed_and_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "r.toml"
    f.write_text("version = 1\n[[container]\n")
    assert main(["rules", "validate", str(f)]) == 1
    assert capsys.readouterr().out.startswith(f"{f}:2: malformed TOML")
    assert main(["rules", "validate", str(tmp_path / "none.toml")]) == 1
    assert "file does not exist" in capsys.readouterr().out


def test_validate_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "r.toml"
    f.write_text('version = 1\n[defaults]\ntcp = "sometimes"\n')
    assert main(["rules", "validate", "--json", str(f)]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and doc["problems"][0]["line"] == 3


def _fake_inventory(monkeypatch: pytest.MonkeyPatch, container: Container) -> None:
    """Fake the host's containers (the inventory's resolve), nothing else."""
    from ctconsole import inventory

    monkeypatch.setattr(inventory, "resolve", lambda ref: container)


C = Container(id="1", name="web-1", runtime="lxc", init_pid=10,
              interfaces=(NetIface(name="eth0", kind="veth", ifindex=2, external=External("r", "veth")),))


def test_compile_json(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_inventory(monkeypatch, C)
    f = tmp_path / "r.toml"
    f.write_text(GOOD)
    assert main(["rules", "compile", str(f), "--container", "web-1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["restore"]["external"] == ["veth[eth0]:vweb0"]
    assert doc["inherit_fd"] == [] and doc["dump"] == {}
    assert main(["rules", "compile", str(f), "--container", "web-1", "--to", "ssh://b"]) == 0
    assert "veth[eth0]:vweb0" in capsys.readouterr().out


def test_compile_broken_file_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_inventory(monkeypatch, C)
    f = tmp_path / "r.toml"
    f.write_text("version = 1\n[defaults]\ntcp = 3\n")
    assert main(["rules", "compile", str(f), "--container", "web-1"]) == 2
    assert "tcp mode 3" in capsys.readouterr().err


def test_suggest_stdout_and_output(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_inventory(monkeypatch, C)
    assert main(["rules", "suggest", "web-1"]) == 0
    assert 'kind = "veth"' in capsys.readouterr().out
    out = tmp_path / "draft.toml"
    assert main(["rules", "suggest", "web-1", "-o", str(out)]) == 0
    assert 'interface = "eth0"' in out.read_text()
    assert main(["rules", "suggest", "web-1", "-o", str(out)]) == 2  # refuses to overwrite
