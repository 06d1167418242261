"""Live migration over ``ssh://`` to a real OpenSSH server the test starts.

The sshd runs inside a network namespace made here (a stand-in remote host,
reached on its 198.19.x address), with a throwaway host key, a throwaway user
key and a test known_hosts with StrictHostKeyChecking. The console reaches the
agent with the system ssh client; the page server on the far side listens on
127.0.0.1 there and is reached through an SSH forward bound to 127.0.0.1 here.
"""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests import support_hosts
from tests.support import assert_continuous
from tests.support_hosts import NsContainer, SshHost, container_inits, pids_running, run_cli, veth_rules

counter, nsct, sshhost = support_hosts.counter, support_hosts.nsct, support_hosts.sshhost  # fixtures


def test_ssh_counter(sshhost: SshHost, counter: Any) -> None:
    rc, events, err = run_cli(["migrate", f"tree:{counter.pid}", "--to", sshhost.dest, "--json"], sshhost.env)
    assert events and events[-1]["result"] == "migrated", (events[-1:], err)
    assert rc == 0
    counter.wait_ticks(5)
    running = pids_running(str(counter.counter_file))
    assert len(running) == 1
    assert os.stat(f"/proc/{running[0]}/ns/net").st_ino == sshhost.host.netns_inode()
    assert_continuous(counter.ticks())


def test_ssh_container_with_page_server_forward(sshhost: SshHost, nsct: NsContainer, tmp_path: Path) -> None:
    rules = veth_rules(tmp_path, sshhost.host.bridge, "cttr" + uuid.uuid4().hex[:6])
    _rc, events, err = run_cli(["migrate", f"tree:{nsct.init_pid}", "--to", sshhost.dest, "--rules", str(rules),
                               "--json"], sshhost.env)
    assert events and events[-1]["result"] == "migrated", (events[-1].get("message"), err)
    assert events[-1]["details"]["mode"] == "handover"
    assert any("through the SSH connection" in e.get("text", "") for e in events), "pages not sent over ssh"
    nsct.wait_ticks(5)
    assert len(container_inits(nsct)) == 1
    assert_continuous(nsct.ticks())


def test_ssh_reverse_forward_for_post_copy(sshhost: SshHost, monkeypatch: pytest.MonkeyPatch) -> None:
    """Post-copy's lazy-pages daemon on the far side reaches our page server through ssh -R on loopback."""
    from ctconsole.agent.connect import connect

    for k, v in sshhost.env.items():
        if k.startswith("CTCONSOLE_"):
            monkeypatch.setenv(k, v)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(10)
    ch, _hello = connect(sshhost.dest)
    try:
        rport = ch.reverse_forward(srv.getsockname()[1])
        assert rport > 0
        probe = subprocess.Popen(
            ["ip", "netns", "exec", sshhost.host.name, "python3", "-c",
             f"import socket; s=socket.create_connection(('127.0.0.1', {rport}), 5); s.sendall(b'lazy'); s.close()"])
        conn, _ = srv.accept()
        with conn:
            assert conn.recv(4) == b"lazy"
        probe.wait(timeout=10)
    finally:
        ch.close()
        srv.close()
