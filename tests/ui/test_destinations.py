"""The destinations list both faces share: sources, order, reachability, and the CLI for completion."""

from __future__ import annotations

import json
import os
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
    # probing resolves an alias the way ssh will (ssh -G): db2 -> its HostName and Port, no packet sent
    # here because that HostName is a lab address no lab host has
    assert dm.reach("ssh://db2", ssh_config=cfg) == (
        False, "198.18.7.1: no lab host has this address now (lab addresses are not probed from here)")


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
        assert dm.reach(f"ssh://root@127.0.0.1:{port}")[0] is True
    assert dm.reach(f"ssh://127.0.0.1:{port}")[0] is False  # closed now
    assert dm.reach("netns:ctlab-no-such-namespace-here")[0] is False
    assert dm.reach("local")[0] is True


def test_known_destinations_put_the_given_hosts_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTCONSOLE_STATE_DIR", str(tmp_path / "state"))  # no lab, no journal
    found = dm.known_destinations(["local", "ssh://127.0.0.1:1"], ssh_config=tmp_path / "none")
    assert [d.dest for d in found] == ["ssh://127.0.0.1:1"]
    assert found[0].kind == "host" and found[0].reachable is False


def test_cli_names_for_completion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from ctconsole.cli import main

    monkeypatch.setenv("CTCONSOLE_STATE_DIR", str(tmp_path / "state"))
    # the config our ssh commands read: -F from CTCONSOLE_SSH_OPTS (else the passwd home's, never $HOME's)
    cfg = tmp_path / "ssh_config"
    cfg.write_text("Host node9\n  HostName 127.0.0.1\n  Port 1\n")
    monkeypatch.setenv("CTCONSOLE_SSH_OPTS", f"-F {cfg}")
    monkeypatch.setenv("HOME", str(tmp_path / "elsewhere"))
    assert main(["destinations", "--names"]) == 0
    assert capsys.readouterr().out == "ssh://node9\n"
    assert main(["destinations", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["dest"] == "ssh://node9" and rows[0]["reachable"] is False
    assert rows[0]["why"] == "127.0.0.1:1: connection refused", rows[0]  # ssh -G resolved the alias
    assert main(["destinations"]) == 0
    assert "ssh://node9" in capsys.readouterr().out


def test_a_down_host_is_never_first_even_if_used_last() -> None:
    down = Destination("ssh://gone", "journal", reachable=False, last_used=300.0, why="gone:22: connection refused")
    older = Destination("netns:ctlab-a", "lab", "a", reachable=True, last_used=100.0)
    never = Destination("netns:ctlab-b", "lab", "b", reachable=True)
    unknown = Destination("ssh://cfg", "ssh-config", "cfg", last_used=200.0)
    assert [d.dest for d in dm.ordered([down, never, unknown, older])] == [
        "netns:ctlab-a", "netns:ctlab-b", "ssh://cfg", "ssh://gone"
    ]
    assert "DOWN" in dm.render([down]) and "gone:22: connection refused" in dm.render([down])


def test_probe_says_why_a_host_is_down() -> None:
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        port = srv.getsockname()[1]  # bound, not listening: refused
        assert dm.reach(f"ssh://127.0.0.1:{port}") == (False, f"127.0.0.1:{port}: connection refused")
    assert dm.reach("netns:ctlab-no-such-namespace-here") == (
        False, "no network namespace ctlab-no-such-namespace-here (ip netns list)"
    )
    assert dm.reach("local") == (True, "")


def test_known_destinations_carry_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTCONSOLE_STATE_DIR", str(tmp_path / "state"))
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        up = f"ssh://127.0.0.1:{srv.getsockname()[1]}"
        found = dm.known_destinations(["ssh://127.0.0.1:1", up], ssh_config=tmp_path / "none")
    assert [(d.dest, d.reachable) for d in found] == [(up, True), ("ssh://127.0.0.1:1", False)]
    assert found[1].why == "127.0.0.1:1: connection refused"


async def test_picker_offers_a_reachable_host_first_and_says_why_one_is_down(make_app) -> None:
    """The session used ssh://node2 last, but it does not answer: it comes after the reachable ones, with why."""
    from textual.widgets import OptionList

    from ctconsole.ui.screens.migrate import MigrateScreen
    from tests.ui.test_screens import SIZE, loaded, select, wait_for

    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        app.used_dests = ["ssh://node2", "netns:ctlab-spare"]  # newest first
        await select(pilot, "db")
        await pilot.press("m")
        await wait_for(pilot, lambda: isinstance(app.screen, MigrateScreen) and bool(app.screen.destinations))
        screen = app.screen
        order = [d.dest for d in screen.destinations]
        assert order[0] == "netns:ctlab-spare"  # used this session and up
        assert order[-1] == "ssh://node2" and order.index("netns:ctlab-dst") < order.index("ssh://node2")
        picker = screen.query_one("#dest-list", OptionList)
        last = str(picker.get_option_at_index(len(order) - 1).prompt)
        assert "DOWN" in last and "node2:22: connection refused" in last
        await pilot.press("down")
        assert screen.dest() == "netns:ctlab-spare"


def test_a_destination_migrate_refuses_is_not_offered_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ctconsole.migrate.journal import Journal

    monkeypatch.setenv("CTCONSOLE_STATE_DIR", str(tmp_path / "state"))
    for mid, dest in (("m1", "bogus://x"), ("m2", "ssh://root@198.18.9.2")):
        j = Journal(mid)
        j.write("begin", container="tree:1", dest=dest, strategy="auto")
        j.write("end", result="failed", message="x")
    assert [d.dest for d in dm.journal_destinations()] == ["ssh://root@198.18.9.2"]


def test_the_namespace_ctconsole_runs_in_is_not_offered(tmp_path: Path, needs_root: None) -> None:
    """In a lab host's namespace, that host is where the containers are, not where they can go."""
    import subprocess
    import sys

    name = f"ctc-u-here{os.getpid() % 10000}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        code = (
            "from ctconsole.commands import destinations as dm;"
            f"print(dm.is_here('netns:{name}'), dm.is_here('netns:ctc-u-no-such'), dm.is_here('ssh://h'));"
            f"print([d.dest for d in dm.known_destinations(['netns:{name}', 'ssh://127.0.0.1:1'], probe=False)])"
        )
        env = {**os.environ, "CTCONSOLE_STATE_DIR": str(tmp_path / "state"), "HOME": str(tmp_path)}
        out = subprocess.run(["ip", "netns", "exec", name, sys.executable, "-c", code], capture_output=True,
                             text=True, check=True, env=env).stdout.splitlines()
        assert out == ["True False False", "['ssh://127.0.0.1:1']"]
        assert not dm.is_here(f"netns:{name}")  # from here, it is another host
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_a_host_behind_a_proxy_is_not_probed_directly(tmp_path: Path) -> None:
    """OpenSSH decides how a host is reached (`ssh -G`): behind a ProxyCommand/ProxyJump a direct TCP
    connect tells nothing, so the host is "not probed"; the same host without the proxy is probed."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        cfg = tmp_path / "config"
        cfg.write_text(f"Host viabastion\n  HostName 127.0.0.1\n  Port {port}\n  ProxyJump nobody@192.0.2.7\n"
                       f"Host direct\n  HostName 127.0.0.1\n  Port {port}\n")
        assert dm.reach("ssh://viabastion", ssh_config=cfg) == (None, "reached through a proxy: not probed")
        assert dm.reach("ssh://direct", ssh_config=cfg) == (True, "")
        found = dm.known_destinations(ssh_config=cfg, probe=True)
        by = {d.dest: d for d in found}
        assert by["ssh://viabastion"].reachable is None and by["ssh://direct"].reachable is True


def test_lab_addresses_of_gone_lab_hosts_are_never_probed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A past lab host in the journal (ssh://root@198.18.N.2) is down without a packet: from this
    namespace the lab's network routes to the default gateway, where a stranger may answer."""
    monkeypatch.setenv("CTCONSOLE_STATE_DIR", str(tmp_path / "state"))  # no lab hosts now
    tried: list[tuple[str, int]] = []
    monkeypatch.setattr(dm.socket, "create_connection", lambda target, **kw: tried.append(target))
    ok, why = dm.reach("ssh://root@198.18.77.2", ssh_config=tmp_path / "none")
    assert ok is False and "no lab host has this address" in why
    assert tried == []
