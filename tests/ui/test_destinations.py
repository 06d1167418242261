"""The destinations list both faces share: sources, order, reachability, and the CLI for completion."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from ctconsole.commands import destinations as dm
from ctconsole.commands.destinations import Destination


def test_ssh_config_hosts_without_patterns(tmp_path: Path) -> None:
    cfg = tmp_path / "config"
    cfg.write_text(
        "Host db1 db2\n  HostName 198.18.7.1\n  Port 2222\n\nHost *.internal !x\n  User ops\n"
        "Match host foo\n  Port 1\nHost=web\n  hostname=198.18.7.9\n"
    )
    found = dm.ssh_config_destinations(cfg)
    assert [d.dest for d in found] == ["ssh://db1", "ssh://db2", "ssh://web"]
    assert found[0].note == "198.18.7.1" and found[0].kind == "ssh-config"
    assert dm._ssh_hosts(cfg)["db2"] == ("198.18.7.1", 2222)


def test_merge_keeps_one_per_dest_and_orders_last_used_first() -> None:
    merged = dm.merge(
        [
            [Destination("netns:ctlab-a", "lab", "a")],
            [Destination("netns:ctlab-a", "journal", last_used=50.0, note="last: migrated"),
             Destination("ssh://old", "journal", last_used=10.0)],
            [Destination("ssh://cfg", "ssh-config", "cfg")],
        ]
    )
    a = next(d for d in merged if d.dest == "netns:ctlab-a")
    assert a.kind == "lab" and a.last_used == 50.0 and a.note == "last: migrated"
    assert [d.dest for d in dm.ordered(merged)] == ["netns:ctlab-a", "ssh://old", "ssh://cfg"]


def test_reachability_is_cheap_and_true() -> None:
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        assert dm.reachable(f"ssh://root@127.0.0.1:{port}") is True
    assert dm.reachable(f"ssh://127.0.0.1:{port}") is False  # closed now
    assert dm.reachable("netns:ctlab-no-such-namespace-here") is False
    assert dm.reachable("local") is True


def test_known_destinations_put_the_given_hosts_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTCONSOLE_STATE_DIR", str(tmp_path / "state"))  # no lab, no journal
    found = dm.known_destinations(["local", "ssh://127.0.0.1:1"], ssh_config=tmp_path / "none")
    assert [d.dest for d in found] == ["ssh://127.0.0.1:1"]
    assert found[0].kind == "host" and found[0].reachable is False


def test_cli_names_for_completion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from ctconsole.cli import main

    monkeypatch.setenv("CTCONSOLE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "config").write_text("Host node9\n  HostName 127.0.0.1\n  Port 1\n")
    assert main(["destinations", "--names"]) == 0
    assert capsys.readouterr().out == "ssh://node9\n"
    assert main(["destinations", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["dest"] == "ssh://node9" and rows[0]["reachable"] is False
    assert main(["destinations"]) == 0
    assert "ssh://node9" in capsys.readouterr().out
