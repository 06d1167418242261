"""Live migration over ``ssh://`` to a real OpenSSH server the test starts.

The sshd runs inside a network namespace made here (a stand-in remote host,
reached on its 198.19.x address), with a throwaway host key, a throwaway user
key and a test known_hosts with StrictHostKeyChecking. The console reaches the
agent with the system ssh client; memory pages go through the same SSH
connection, unix socket to unix socket (nothing listens on TCP).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
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


def test_ssh_post_copy_pages_use_the_page_channel(sshhost: SshHost, monkeypatch: pytest.MonkeyPatch) -> None:
    """Post-copy's lazy pages go through the agent's SSH master to a root-only unix socket: no TCP port.

    (It used to be an ``ssh -R`` port on the destination's loopback, open to every local user there.)
    """
    from ctconsole.agent.connect import connect
    from ctconsole.migrate import transport
    from ctconsole.proto import agent_pb2

    for k, v in sshhost.env.items():
        if k.startswith("CTCONSOLE_"):
            monkeypatch.setenv(k, v)
    ch, _hello = connect(sshhost.dest)
    try:
        prep = ch.call("prepare", agent_pb2.PrepareRequest(migration_id="pc-" + uuid.uuid4().hex[:6],
                                                            lazy_pages=True), timeout=60)
        assert prep.page_socket.endswith("/s") and not prep.page_server_port
        link = transport.open_page_link(prep.page_socket, transport.mux_for(ch), name="pc")
        try:
            assert link.via == "ssh"
            # the agent refuses the old way (an address to reach a listening lazy page server)
            with pytest.raises(Exception, match="never travel over TCP"):
                ch.call("restore", agent_pb2.RestoreRequest(options_json="{}", lazy=True, lazy_address="127.0.0.1",
                                                            lazy_port=1, timeout=5), timeout=60)
        finally:
            link.close()
    finally:
        ch.close()


def _master(control: Path) -> int:
    """The pid of the SSH connection kept open on ``control`` (0: none)."""
    out = subprocess.run(["ssh", "-o", f"ControlPath={control}", "-O", "check", "x"],
                         capture_output=True, text=True, timeout=10)
    m = re.search(r"pid=(\d+)", out.stderr)
    return int(m.group(1)) if out.returncode == 0 and m else 0


def test_ssh_connection_is_kept_for_the_next_command(sshhost: SshHost, counter: Any) -> None:
    """`check --to` then `migrate` pay the SSH handshake once: the check leaves the connection open in a
    root-only directory and the migration rides that same connection; CTCONSOLE_SSH_PERSIST=0 keeps none."""
    ssh_dir = Path(subprocess.run(
        [sys.executable, "-c", "from ctconsole.agent.channel import parse_destination as p, shared_control_path as c;"
         f"print(c(p({sshhost.dest!r})).parent)"], capture_output=True, text=True, env=sshhost.env, check=True,
    ).stdout.strip())
    off = dict(sshhost.env, CTCONSOLE_SSH_PERSIST="0")
    rc, _events, err = run_cli(["check", f"tree:{counter.pid}", "--to", sshhost.dest, "--json"], off)
    assert rc in (0, 3), err
    assert not ssh_dir.exists() or not list(ssh_dir.iterdir()), "persist off: nothing kept"

    rc, _events, err = run_cli(["check", f"tree:{counter.pid}", "--to", sshhost.dest, "--json"], sshhost.env)
    assert rc in (0, 3), err
    (control,) = list(ssh_dir.iterdir())
    assert (ssh_dir.stat().st_mode & 0o077) == 0 and ssh_dir.stat().st_uid == 0
    first = _master(control)
    assert first > 0, "the check's SSH connection is kept open"
    try:
        rc, events, err = run_cli(["migrate", f"tree:{counter.pid}", "--to", sshhost.dest, "--json"], sshhost.env)
        assert events and events[-1]["result"] == "migrated", (events[-1:], err)
        assert _master(control) == first, "the migration rode the kept connection"
        counter.wait_ticks(3)
        assert_continuous(counter.ticks())
    finally:
        subprocess.run(["ssh", "-o", f"ControlPath={control}", "-O", "exit", "x"], capture_output=True, timeout=10)
