"""Live migration over ``ssh://`` to a real OpenSSH server the test starts.

The sshd runs inside a network namespace made here (a stand-in remote host,
reached on its 198.19.x address), with a throwaway host key, a throwaway user
key and a test known_hosts with StrictHostKeyChecking. The console reaches the
agent with the system ssh client; the page server on the far side listens on
127.0.0.1 there and is reached through an SSH forward bound to 127.0.0.1 here.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_migrate_netns import (
    NetnsHost,
    NsContainer,
    container_inits,
    ctenv,
    kill_pid,
    make_netns_host,
    pids_running,
    remove_netns_host,
    run_cli,
    start_ns_container,
    stop_ns_container,
    veth_rules,
)
from tests.support import assert_continuous, spawn_counter

SSHD = "/usr/sbin/sshd"
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class SshHost:
    host: NetnsHost
    port: int
    env: dict[str, str]

    @property
    def dest(self) -> str:
        return f"ssh://root@{self.host.ns_addr}:{self.port}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def sshhost(tmp_path: Path, needs_root: None) -> Iterator[SshHost]:
    if not os.path.exists(SSHD) or not shutil.which("ssh"):
        pytest.skip("OpenSSH server/client not installed")
    h = make_netns_host()
    d = tmp_path / "ssh"
    d.mkdir(mode=0o700)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "hostkey")], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "userkey")], check=True)
    (d / "authorized_keys").write_text((d / "userkey.pub").read_text())
    port = _free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress {h.ns_addr}\nHostKey {d / 'hostkey'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        f"PidFile {d / 'sshd.pid'}\nAllowTcpForwarding yes\nGatewayPorts no\nPermitTunnel no\nX11Forwarding no\n"
    )
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
    with open(d / "sshd.log", "wb") as log:
        sshd = subprocess.Popen(["ip", "netns", "exec", h.name, SSHD, "-D", "-e", "-f", str(d / "sshd_config")],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                                start_new_session=True)
    hostkey = (d / "hostkey.pub").read_text().split()
    (d / "known_hosts").write_text(f"[{h.ns_addr}]:{port} {hostkey[0]} {hostkey[1]}\n")
    end = time.monotonic() + 10
    while time.monotonic() < end:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex((h.ns_addr, port)) == 0:
                break
        time.sleep(0.05)
    state, run = tmp_path / "remote-state", tmp_path / "remote-run"
    remote_cmd = (f"env CTCONSOLE_STATE_DIR={state} CTCONSOLE_RUN_DIR={run} PYTHONPATH={ROOT} "
                  f"{ROOT / '.venv/bin/ctconsole'}")
    ssh_opts = (f"-F /dev/null -i {d / 'userkey'} -o IdentitiesOnly=yes -o StrictHostKeyChecking=yes "
                f"-o UserKnownHostsFile={d / 'known_hosts'}")
    env = ctenv(tmp_path, CTCONSOLE_REMOTE_CMD=remote_cmd, CTCONSOLE_SSH_OPTS=ssh_opts)
    yield SshHost(h, port, env)
    os.killpg(sshd.pid, 9)
    sshd.wait()
    remove_netns_host(h)


@pytest.fixture
def counter(tmp_path: Path, criu_bin: str) -> Iterator[Any]:
    w = spawn_counter(tmp_path, name=f"ctr-{uuid.uuid4().hex[:6]}")
    threading.Thread(target=w.proc.wait, daemon=True).start()
    yield w
    for pid in pids_running(str(w.counter_file)):
        kill_pid(pid)
    w.kill()


@pytest.fixture
def nsct(tmp_path: Path, criu_bin: str) -> Iterator[NsContainer]:
    c = start_ns_container(tmp_path)
    yield c
    for pid in container_inits(c):
        kill_pid(pid)
    stop_ns_container(c)


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
    assert events and events[-1]["result"] == "migrated", (events[-1:], err)
    assert events[-1]["details"]["mode"] == "handover"
    assert any("forwarded from 127.0.0.1" in e.get("text", "") for e in events), "page server not forwarded"
    nsct.wait_ticks(5)
    assert len(container_inits(nsct)) == 1
    assert_continuous(nsct.ticks())


def test_ssh_reverse_forward_for_post_copy(sshhost: SshHost, monkeypatch: pytest.MonkeyPatch) -> None:
    """Post-copy's lazy-pages daemon on the far side reaches our page server through ssh -R on loopback."""
    from ctconsole.migrate.channel import PROTOCOL_VERSION, AgentChannel, parse_destination
    from ctconsole.proto import agent_pb2

    for k, v in sshhost.env.items():
        if k.startswith("CTCONSOLE_"):
            monkeypatch.setenv(k, v)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(10)
    ch = AgentChannel(parse_destination(sshhost.dest))
    ch.start()
    try:
        ch.call("hello", agent_pb2.Hello(protocol=PROTOCOL_VERSION))
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
