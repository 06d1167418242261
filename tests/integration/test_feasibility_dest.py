"""``ctconsole check --to DEST``: the destination half of the feasibility check, for real.

The destinations are made here: a network namespace (``ctt-fd*``, lo up, a
198.18.x address on its lo only) reached as ``netns:NAME``, and a real OpenSSH
server on 127.0.0.1 with a throwaway host key and user key reached as
``ssh://root@127.0.0.1:PORT``. In both cases ``check`` starts the same agent
``migrate`` would, asks it for CRIU's version and features, ``criu check``,
CPUINFO_CHECK of our cpuinfo.img, free space, and the resources the rules name.
The workload is a counter this test starts; only its pids (and the sshd we
start) are killed, and every namespace made here is deleted.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import spawn_counter
from tests.support_hosts import CTCONSOLE, ROOT, ctenv, free_port, kill_pid, sh, throwaway_sshd


@dataclass
class DestNs:
    name: str

    @property
    def dest(self) -> str:
        return f"netns:{self.name}"

    def pids(self) -> list[int]:
        return [int(p) for p in sh("ip", "netns", "pids", self.name, check=False).stdout.split()]


def check_cli(args: list[str], env: dict[str, str], timeout: float = 120) -> tuple[int, dict[str, Any], str]:
    """Run ``ctconsole check ... --json``; returns (exit status, JSON document or {}, stderr)."""
    p = subprocess.run([*CTCONSOLE, "check", *args, "--json"], capture_output=True, text=True, env=env,
                       timeout=timeout, cwd=ROOT)
    try:
        doc = json.loads(p.stdout)
    except json.JSONDecodeError:
        doc = {}
    return p.returncode, doc, p.stderr


def local_criu_version(criu_bin: str) -> str:
    out = subprocess.run([criu_bin, "--version"], capture_output=True, text=True, check=True).stdout
    return next(ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Version:"))


def by_rule(doc: dict[str, Any], prefix: str) -> list[dict[str, Any]]:
    return [f for f in doc.get("findings", []) if f["rule"].startswith(prefix)]


# -- fixtures -------------------------------------------------------------------------------
@pytest.fixture
def destns(needs_root: None) -> Iterator[DestNs]:
    ns = DestNs(f"ctt-fd{uuid.uuid4().hex[:6]}")
    sh("ip", "netns", "add", ns.name)
    try:
        sh("ip", "-n", ns.name, "link", "set", "lo", "up")
        sh("ip", "-n", ns.name, "addr", "add", f"198.18.{os.getpid() % 200 + 20}.1/32", "dev", "lo")
        yield ns
    finally:
        # anything still in there was started by a check of ours (an agent that failed to exit)
        for pid in ns.pids():
            kill_pid(pid)
        sh("ip", "netns", "del", ns.name, check=False)


@pytest.fixture
def counter(tmp_path: Path, criu_bin: str) -> Iterator[Any]:
    w = spawn_counter(tmp_path, name=f"ctt-fd-{uuid.uuid4().hex[:6]}")
    yield w
    w.kill()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return ctenv(tmp_path)


# -- netns destination ------------------------------------------------------------------------
def test_netns_destination_reports_criu_and_is_feasible(destns: DestNs, counter: Any, env: dict[str, str],
                                                        criu_bin: str) -> None:
    rc, doc, err = check_cli([f"tree:{counter.pid}", "--to", destns.dest], env)
    assert rc == 3 and doc["verdict"] == "no-known-blockers" and not doc["verified"], (doc, err)
    assert doc["dest"] == destns.dest
    d = doc["destination"]
    assert d["dest"] == destns.dest and d["reachable"] is True
    assert d["version"] == local_criu_version(criu_bin) == doc["criu"]["dest_version"]
    assert {"mem_track", "lazy_pages"} <= set(d["features"])
    checks = d["checks"]
    assert checks["criu_check"]["ok"] is True, checks
    assert checks["cpuinfo"]["ok"] is True, checks  # our cpuinfo.img, checked over there
    assert checks["images"]["free"] > 0 and checks["images"]["dir"].startswith(env["CTCONSOLE_STATE_DIR"])
    assert not by_rule(doc, "destination-unreachable")
    assert "Traceback" not in err
    # the agent session was closed: nothing of ours is left running in the namespace
    end = time.monotonic() + 5
    while destns.pids() and time.monotonic() < end:
        time.sleep(0.05)
    assert destns.pids() == []
    counter.wait_ticks(2)  # the check froze nothing


def rules_file(tmp: Path, bridge: str, sock: Path, share: Path) -> Path:
    p = tmp / "rules.toml"
    p.write_text(
        'version = 1\n[[container]]\nmatch = { name = "*" }\n'
        f'[[container.rule]]\nkind = "veth"\ninterface = "eth0"\nhost_name = "cttv{uuid.uuid4().hex[:6]}"\n'
        f'bridge = "{bridge}"\n'
        f'[[container.rule]]\nkind = "unix"\ninode = 424242\nconnect = "{sock}"\n'
        f'[[container.rule]]\nkind = "mount"\nmountpoint = "/data"\npath = "{share}"\n'
    )
    return p


def test_rules_resources_missing_on_destination_then_present(destns: DestNs, counter: Any, env: dict[str, str],
                                                             tmp_path: Path) -> None:
    bridge = f"cttbr{uuid.uuid4().hex[:5]}"
    sock, share = tmp_path / "ctt-daemon.sock", tmp_path / "share"
    rules = rules_file(tmp_path, bridge, sock, share)
    args = [f"tree:{counter.pid}", "--to", destns.dest, "--rules", str(rules)]
    subject = f"destination:{destns.dest}"

    rc, doc, err = check_cli(args, env)
    assert rc == 1 and doc["verdict"] in ("needs-rules", "infeasible"), (doc, err)
    missing = {f["rule"]: f for f in by_rule(doc, "dest-")}
    assert set(missing) == {"dest-bridge", "dest-socket", "dest-path"}, doc["findings"]
    assert all(f["subject"] == subject for f in missing.values())
    assert bridge in missing["dest-bridge"]["message"] and "does not exist" in missing["dest-bridge"]["message"]
    assert str(sock) in missing["dest-socket"]["message"] and str(share) in missing["dest-path"]["message"]
    assert doc["destination"]["checks"]["links"][bridge] == "missing"

    # a link of that name that is not a bridge does not do either
    sh("ip", "-n", destns.name, "link", "add", bridge, "type", "veth", "peer", "name", bridge + "p")
    _rc, doc, _err = check_cli(args, env)
    (f,) = by_rule(doc, "dest-bridge")
    assert "not a bridge" in f["message"]
    sh("ip", "-n", destns.name, "link", "del", bridge)

    # create everything on the destination: the findings go away
    sh("ip", "-n", destns.name, "link", "add", bridge, "type", "bridge")
    share.mkdir()
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(sock))
    srv.listen(1)
    try:
        rc, doc, err = check_cli(args, env)
    finally:
        srv.close()
    assert not by_rule(doc, "dest-"), doc["findings"]
    assert rc == 3 and doc["verdict"] == "no-known-blockers" and not doc["verified"], (doc, err)
    checks = doc["destination"]["checks"]
    assert checks["links"][bridge] == "bridge"
    assert checks["paths"][str(sock)] == "socket" and checks["paths"][str(share)] == "dir"
    # the bridge is only inside the destination namespace, not here
    assert not Path(f"/sys/class/net/{bridge}").exists()


def test_destination_conflicts_found_before_the_freeze(destns: DestNs, env: dict[str, str], tmp_path: Path,
                                                      criu_bin: str) -> None:
    """Issue #11: the veth rule's host name already exists on the destination, and a port the
    host-netns workload listens on is bound there: both are blockers of the check (exit 1), so
    nothing is frozen; once they are gone the check is clean again."""
    tag = uuid.uuid4().hex[:5]
    host_if, ct_if, taken = f"ctth{tag}", f"cttc{tag}", f"cttx{tag}"
    sleeper = subprocess.Popen(["unshare", "--net", "--", "sleep", "600"], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    port = free_port()
    listener = subprocess.Popen(
        ["python3", "-S", "-c", "import socket,time,sys; s=socket.socket(); "
         "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', int(sys.argv[1]))); "
         "s.listen(); time.sleep(600)", str(port)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    squatter = None
    try:
        time.sleep(0.3)
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ct_if, "netns", str(sleeper.pid))
        sh("ip", "link", "set", host_if, "up")
        rules = tmp_path / "rules.toml"
        rules.write_text('version = 1\n[[container]]\nmatch = { name = "*" }\n'
                         f'[[container.rule]]\nkind = "veth"\ninterface = "{ct_if}"\nhost_name = "{taken}"\n')
        args = [f"tree:{sleeper.pid}", "--to", destns.dest, "--rules", str(rules)]
        rc, doc, err = check_cli(args, env)
        assert not by_rule(doc, "dest-veth-name"), (doc, err)
        sh("ip", "-n", destns.name, "link", "add", taken, "type", "veth", "peer", "name", taken + "p")
        rc, doc, err = check_cli(args, env)
        assert rc == 1 and doc["verdict"] == "infeasible", (doc, err)
        (f,) = by_rule(doc, "dest-veth-name")
        assert f["severity"] == "blocker" and taken in f["message"], f
        sh("ip", "-n", destns.name, "link", "del", taken)
        rc, doc, err = check_cli(args, env)
        assert not by_rule(doc, "dest-veth-name") and rc == 3, (doc, err)

        # a listener in the host netns: its port taken in the destination's netns
        largs = [f"tree:{listener.pid}", "--to", destns.dest]
        rc, doc, err = check_cli(largs, env)
        assert not by_rule(doc, "dest-port-busy"), (doc, err)
        squatter = subprocess.Popen(
            ["ip", "netns", "exec", destns.name, "python3", "-S", "-c",
             "import socket,time,sys; s=socket.socket(); s.bind(('0.0.0.0', int(sys.argv[1]))); s.listen(); "
             "time.sleep(600)", str(port)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        end = time.monotonic() + 10
        while time.monotonic() < end:
            if f":{port:04X} 00000000:0000 0A" in sh("ip", "netns", "exec", destns.name, "cat", "/proc/net/tcp").stdout:
                break
            time.sleep(0.05)
        rc, doc, err = check_cli(largs, env)
        assert rc == 1, (doc, err)
        (f,) = by_rule(doc, "dest-port-busy")
        assert str(port) in f["message"] and f["severity"] == "blocker", f
        assert doc["destination"]["checks"]["conflicts"]["busy_ports"] == [["tcp", "0.0.0.0", port]]
    finally:
        for proc in (sleeper, listener, squatter):
            if proc is not None:
                kill_pid(proc.pid)
                proc.wait(timeout=10)
        sh("ip", "link", "del", host_if, check=False)


def test_nonexistent_netns_is_a_clear_infeasible(needs_root: None, counter: Any, env: dict[str, str]) -> None:
    name = f"ctt-none{uuid.uuid4().hex[:6]}"
    rc, doc, err = check_cli([f"tree:{counter.pid}", "--to", f"netns:{name}"], env)
    assert rc == 1 and doc["verdict"] == "infeasible", (doc, err)
    (f,) = by_rule(doc, "destination-unreachable")
    assert f["severity"] == "blocker" and f["subject"] == f"destination:netns:{name}"
    assert f["message"].startswith("destination unreachable:") and name in f["message"]
    assert doc["destination"] == {"dest": f"netns:{name}", "reachable": False, "error": doc["destination"]["error"]}
    assert "Traceback" not in err
    # the human form says so too, without a traceback
    p = subprocess.run([*CTCONSOLE, "check", f"tree:{counter.pid}", "--to", f"netns:{name}"], capture_output=True,
                       text=True, env=env, timeout=60, cwd=ROOT)
    assert p.returncode == 1 and "UNREACHABLE" in p.stdout and "destination unreachable" in p.stdout
    assert "Traceback" not in p.stdout + p.stderr
    assert name not in sh("ip", "netns", "list").stdout  # nothing was created by asking


def test_malformed_destination_is_usage_error(needs_root: None, counter: Any, env: dict[str, str]) -> None:
    p = subprocess.run([*CTCONSOLE, "check", f"tree:{counter.pid}", "--to", "netns:../etc"], capture_output=True,
                       text=True, env=env, timeout=60, cwd=ROOT)
    assert p.returncode == 2 and "bad network namespace name" in p.stderr and "Traceback" not in p.stderr


# -- ssh destination: a real sshd on 127.0.0.1 -------------------------------------------------
@dataclass
class LoopbackSsh:
    port: int
    env: dict[str, str]
    remote_state: Path

    @property
    def dest(self) -> str:
        return f"ssh://root@127.0.0.1:{self.port}"


@pytest.fixture
def sshd_loopback(tmp_path: Path, needs_root: None) -> Iterator[LoopbackSsh]:
    """sshd on 127.0.0.1 (host key, user key, known_hosts all throwaway, in tmp_path)."""
    with throwaway_sshd(tmp_path, "127.0.0.1") as sshd:
        yield LoopbackSsh(sshd.port, sshd.env, sshd.remote_state)


def test_ssh_destination(sshd_loopback: LoopbackSsh, counter: Any, criu_bin: str, tmp_path: Path) -> None:
    rc, doc, err = check_cli([f"tree:{counter.pid}", "--to", sshd_loopback.dest], sshd_loopback.env)
    assert rc == 3 and doc["verdict"] == "no-known-blockers" and not doc["verified"], (doc, err)
    d = doc["destination"]
    assert d["reachable"] is True and d["dest"] == sshd_loopback.dest
    assert d["version"] == local_criu_version(criu_bin)
    assert d["checks"]["criu_check"]["ok"] is True and d["checks"]["cpuinfo"]["ok"] is True
    # the agent really ran through ssh with the remote command's environment
    assert d["checks"]["images"]["dir"] == str(sshd_loopback.remote_state / "images")

    # a rule naming a bridge this "remote" host does not have
    bridge = f"cttbr{uuid.uuid4().hex[:5]}"
    share = tmp_path / "share"
    share.mkdir()
    rules = rules_file(tmp_path, bridge, tmp_path / "nothing.sock", share)
    rc, doc, err = check_cli([f"tree:{counter.pid}", "--to", sshd_loopback.dest, "--rules", str(rules)],
                             sshd_loopback.env)
    assert rc == 1, (doc, err)
    found = {f["rule"]: f for f in by_rule(doc, "dest-")}
    assert set(found) == {"dest-bridge", "dest-socket"}, doc["findings"]
    assert found["dest-bridge"]["subject"] == f"destination:{sshd_loopback.dest}"
    assert bridge in found["dest-bridge"]["message"]


def test_ssh_destination_unreachable(sshd_loopback: LoopbackSsh, counter: Any) -> None:
    dead = f"ssh://root@127.0.0.1:{free_port()}"  # nothing listens there
    rc, doc, err = check_cli([f"tree:{counter.pid}", "--to", dead], sshd_loopback.env)
    assert rc == 1 and doc["verdict"] == "infeasible", (doc, err)
    (f,) = by_rule(doc, "destination-unreachable")
    assert f["subject"] == f"destination:{dead}" and "destination unreachable" in f["message"]
    assert doc["destination"]["reachable"] is False
    assert "Traceback" not in err
