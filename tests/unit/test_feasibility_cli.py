"""`ctconsole check`: exit codes, JSON shape, 80-column human output (no root needed)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ctconsole import cli
from ctconsole.errors import NotFound
from ctconsole.feasibility import Finding, _reconcile
from ctconsole.feasibility import host as _host
from ctconsole.model import Container, Process, Socket
from tests.unit.test_feasibility_checks import FakeProbe, proc, unix

_REAL_PROBE_FOR = _host.probe_for  # captured at import, before the autouse fixture replaces it


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


def test_unverified_exit_3_json(capsys: pytest.CaptureFixture[str]) -> None:
    """Without --trial nothing was verified: 'no-known-blockers', exit 3 (not 0), verified false."""
    rc, out = run(capsys, "plain", "--json")
    d: dict[str, Any] = json.loads(out)
    assert rc == 3 and d["verdict"] == "no-known-blockers" and d["verified"] is False
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


def test_malformed_dest_exit_2(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A DEST that is not local / netns:NAME / ssh://... is bad usage (an unreachable one is exit 1)."""
    from ctconsole.feasibility import host

    monkeypatch.setattr(host, "probe_for", _REAL_PROBE_FOR)
    assert cli.main(["check", "plain", "--to", "ftp://elsewhere"]) == 2
    assert "unknown destination" in capsys.readouterr().err


def test_human_output_names_the_destination(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ctconsole.feasibility import host

    class Remote(FakeProbe):
        name = "netns:lab"

        def summary(self) -> dict[str, Any]:
            return {"dest": "netns:lab", "reachable": True, "version": "4.2.1", "kernel": "6.18.0",
                    "hostname": "lab", "features": {"mem_track": False}, "checks": {}}

    monkeypatch.setattr(host, "probe_for", lambda dest: Remote() if dest and dest != "local" else FakeProbe())
    rc, out = run(capsys, "plain", "--to", "netns:lab")
    assert rc == 3 and "NO KNOWN BLOCKERS (unverified)" in out
    assert "Destination netns:lab (lab): CRIU 4.2.1 on kernel 6.18.0; mem_track=no" in out


def test_trial_error_predicted_by_needs_rule_is_not_a_blocker() -> None:
    static = [Finding("bind-mount-external", "needs-rule", "mount /share", "m", "r", needs=("mnt[/share]",))]
    trial = [
        Finding("trial:bind-mount-external", "blocker", "trial dump", "m", "r", source="trial"),
        Finding("trial:unsupported-fd", "blocker", "trial dump", "m", "r", source="trial"),
    ]
    out = _reconcile(static, trial)
    assert [f.severity for f in out] == ["info", "blocker"]


def test_migrate_malformed_dest_exit_2_before_anything(capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """`migrate --to ftp://x` is bad usage: exit 2 with the accepted forms, before the container is
    looked up, the journal is touched or anything is checked (it used to print the feasibility
    findings and exit 1, as if the container were the problem)."""
    monkeypatch.setenv("CTCONSOLE_STATE_DIR", str(tmp_path / "state"))
    assert cli.main(["migrate", "missing", "--to", "ftp://elsewhere"]) == 2
    err = capsys.readouterr().err
    assert "unknown destination" in err and "ssh://" in err
    assert "no container matches" not in err
    assert not (tmp_path / "state").exists()
