"""The console with ``--host``: a netns destination's containers come from its agent.

Why a netns: it is the lab's stand-in for another machine and is reached the
way ``ctconsole migrate`` reaches it (``ip netns exec NAME ctconsole agent``).
It shares this host's pid namespace and filesystem, so its inventory equals
the local one; what is asserted is that the remote table is filled *through
the agent channel*, that the channel is reused across refreshes, and that an
unreachable host is reported without breaking the console.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator

import pytest
from textual.widgets import DataTable, OptionList, Static

from ctconsole.ui.app import create_app
from ctconsole.ui.backend import RealBackend
from tests import support_hosts
from tests.ui.pilot_wait import until

SIZE = (80, 24)
sshhost = support_hosts.sshhost  # a real sshd in a netns, with throwaway keys (as the ssh migration tests use)


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root (ip netns)")
    name = f"ctt-ui{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    yield name
    subprocess.run(["ip", "netns", "del", name], check=False)


async def test_remote_host_lists_through_the_agent(netns: str) -> None:
    host = f"netns:{netns}"
    backend = RealBackend()
    app = create_app(backend, hosts=[host], refresh_interval=0, remember=False)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await until(pilot, lambda: getattr(screen, "scans", 0) >= 1, 60, "the local scan")
        hosts = screen.query_one("#hosts", OptionList)
        assert hosts.option_count == 2
        assert "local" in str(hosts.get_option_at_index(0).prompt)
        assert netns in str(hosts.get_option_at_index(1).prompt)
        local_ids = set(screen.containers)
        await pilot.press("h")  # next host: the netns one
        assert screen.host == host
        await until(pilot, lambda: bool(screen.containers), 90, "the remote inventory")
        remote = backend.remote(host)
        assert remote.connects == 1 and remote.requests >= 1  # the inventory request (hello is not counted)
        table = screen.query_one("#containers", DataTable)
        assert table.row_count == len(screen.containers)
        # same /proc: the same containers, seen by the agent (other tests may start or stop some meanwhile)
        assert not local_ids or set(screen.containers) & local_ids
        assert host in str(screen.query_one("#containers-status", Static).render())
        # a refresh reuses the open channel
        before = remote.requests
        await pilot.press("r")
        await until(pilot, lambda: remote.requests > before, 60, "the rescan")
        assert remote.connects == 1
        if screen.containers:
            # detail of a remote container comes from the agent's full inventory
            await pilot.press("enter")
            await until(pilot, lambda: type(app.screen).__name__ == "DetailScreen", 10, "the detail")
            assert host in app.screen.sub_title
            await pilot.press("m")  # migrating FROM a remote host is refused, with a reason
            await pilot.pause(0.1)
            assert type(app.screen).__name__ == "DetailScreen"
            assert any("Only for local" in str(n.title) for n in app._notifications)
            await pilot.press("escape")
            # a check runs on that host, through the agent, and its badge is that host's
            await pilot.press("c")
            await until(pilot, lambda: getattr(app.screen, "report", None) is not None, 120, "the remote report")
            report = app.screen.report
            assert report.verdict in ("feasible", "no-known-blockers", "needs-rules", "infeasible"), report.verdict
            assert str(app.screen.sub_title).startswith(f"on {host} · ")
            cid = app.screen.container.id
            assert f"{host} {cid}" in app.reports and cid not in app.reports
            await pilot.press("escape")
        # the channel dies (agent killed): the next refresh reconnects
        assert remote._ch is not None
        remote._ch.kill()
        await pilot.press("r")
        await until(pilot, lambda: remote.connects == 2 or bool(screen._last_error), 60, "a reconnect or an error")
        await until(pilot, lambda: remote.connects == 2, 60, "the reconnect")
    assert app._exception is None
    assert remote._ch is None  # closed on exit


async def test_unreachable_host_is_an_error_not_a_crash(netns: str) -> None:
    del netns  # root is what matters here; the nope namespace does not exist
    host = "netns:ctt-nope"
    app = create_app(RealBackend(), hosts=[host], refresh_interval=0.2, remember=False)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await until(pilot, lambda: getattr(screen, "scans", 0) >= 1, 60, "the local scan")
        await pilot.press("h")
        await until(pilot, lambda: bool(screen._last_error), 60, "the error")
        assert "ctt-nope" in screen._last_error
        status = str(screen.query_one("#containers-status", Static).render())
        assert "ctt-nope" in status and "✗" in status and "retrying" in status, status
        await pilot.pause(2.0)  # ~10 more failed attempts: still one panel, not a stack of them
        assert [type(s).__name__ for s in app.screen_stack].count("ErrorScreen") <= 1
        if type(app.screen).__name__ == "ErrorScreen":
            body = str(app.screen.query_one("#error-body", Static).render())
            assert "ip netns list" in body or "ctt-nope" in body, body
            await pilot.press("escape")
        hosts = screen.query_one("#hosts", OptionList)
        assert "unreachable" in str(hosts.get_option_at_index(1).prompt)
        # the console keeps working: back to local, which lists
        await pilot.press("h")
        assert screen.host == "local"
        await until(pilot, lambda: bool(screen.containers) or screen.scans >= 2, 60, "the local rescan")
    assert app._exception is None


async def test_ssh_host_one_session(sshhost: support_hosts.SshHost, monkeypatch: pytest.MonkeyPatch) -> None:
    """ssh:// is what --host is for: the inventory comes over one ssh session, reused by refreshes."""
    for key in ("CTCONSOLE_REMOTE_CMD", "CTCONSOLE_SSH_OPTS"):
        monkeypatch.setenv(key, sshhost.env[key])
    host = sshhost.dest
    backend = RealBackend()
    app = create_app(backend, hosts=[host], refresh_interval=0, remember=False)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await until(pilot, lambda: getattr(screen, "scans", 0) >= 1, 60, "the local scan")
        await pilot.press("h")
        await until(pilot, lambda: bool(screen.containers) or bool(screen._last_error), 90, "the remote inventory")
        assert not screen._last_error, screen._last_error
        remote = backend.remote(host)
        assert remote.connects == 1 and remote.dest.kind == "ssh"
        await pilot.press("r")
        await until(pilot, lambda: remote.requests >= 2, 60, "the rescan over the same ssh session")
        assert remote.connects == 1
    assert remote._ch is None
