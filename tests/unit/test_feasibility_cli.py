"""`ctconsole check`: exit codes, JSON shape, 80-column human output (no root needed)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ctconsole import cli
from ctconsole.errors import NotFound
from ctconsole.feasibility import Finding, _reconcile
from ctconsole.model import Container, Process, Socket
from tests.unit.test_feasibility_rules import FakeProbe, proc, unix


def _container(ref: str) -> Container:
    if ref == "missing":
        raise NotFound("no container matches 'missing'")
    socks: tuple[Socket, ...] = (unix(10, 99),) if ref == "ext" else ()
    p: Process = proc(pid=0)
    return Container(id=ref, name=ref, runtime="tree", init_pid=0, processes=(p,), sockets=socks)


@pytest.fixture(autouse=True)
def fake_host(monkeypatch: pytest.MonkeyPatch) -> None:
    from ctconsole import inventory
    from ctconsole.feasibility import host

    monkeypatch.setattr(inventory, "resolve", _container)
    monkeypatch.setattr(host, "probe_for", lambda dest: FakeProbe())


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    rc = cli.main(["check", *args])
    return rc, capsys.readouterr().out


def test_feasible_exit_0_json(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = run(capsys, "plain", "--json")
    d: dict[str, Any] = json.loads(out)
    assert rc == 0 and d["verdict"] == "feasible"
    assert set(d) >= {"verdict", "findings", "criu", "options"}
    assert set(d["options"]) == {"dump", "restore"} and d["criu"]["version"] == "4.2.1"
    assert all(set(f) >= {"rule", "severity", "subject", "message", "remedy"} for f in d["findings"])


def test_needs_rules_exit_1_human(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = run(capsys, "ext")
    assert rc == 1
    assert "NEEDS RULES" in out and "NEEDS A RULE" in out and "unix[10]" in out
    assert max(len(line) for line in out.splitlines()) <= 80


def test_unknown_ref_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", "missing"]) == 2


def test_unknown_dest_exit_2(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from ctconsole.feasibility import host

    monkeypatch.setattr(
        host, "probe_for", host.probe_for.__wrapped__ if hasattr(host.probe_for, "__wrapped__") else _real_probe_for
    )
    assert cli.main(["check", "plain", "--to", "ssh://elsewhere"]) == 2


def _real_probe_for(dest: str | None) -> Any:
    from ctconsole.feasibility.host import LocalProbe

    if dest in (None, "", "local"):
        return LocalProbe()
    from ctconsole.errors import UsageError

    raise UsageError(f"destination {dest!r} is not supported by the checker yet")


def test_trial_error_predicted_by_needs_rule_is_not_a_blocker() -> None:
    static = [Finding("bind-mount-external", "needs-rule", "mount /share", "m", "r", needs=("mnt[/share]",))]
    trial = [
        Finding("trial:bind-mount-external", "blocker", "trial dump", "m", "r", source="trial"),
        Finding("trial:unsupported-fd", "blocker", "trial dump", "m", "r", source="trial"),
    ]
    out = _reconcile(static, trial)
    assert [f.severity for f in out] == ["info", "blocker"]
