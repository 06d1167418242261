"""Live migration with real CRIU to a network-namespace "host" (netns:NAME).

Workloads are processes these tests start (a counter in the host namespaces,
and a busybox "container" in its own pid+net+mnt namespaces with a veth);
namespaces are created here (names ``ctt*``, addresses 198.18.0.0/15) and
removed afterwards. Every test ends with the same check an operator makes:
the counter kept counting without a gap or repeat, and exactly one copy of
the workload runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import assert_continuous, spawn_counter

ROOT = Path(__file__).resolve().parents[2]
CTCONSOLE = [sys.executable, "-m", "ctconsole"]


# -- helpers shared with test_migrate_ssh / test_migrate_faults ----------------------------
def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=30)


@dataclass
class NetnsHost:
    name: str
    host_if: str
    host_addr: str
    ns_addr: str
    bridge: str = ""

    @property
    def dest(self) -> str:
        return f"netns:{self.name}"

    def netns_inode(self) -> int:
        return os.stat(f"/run/netns/{self.name}").st_ino

    def pids(self) -> list[int]:
        out = sh("ip", "netns", "pids", self.name, check=False).stdout
        return [int(p) for p in out.split()]


_SUBNET = [0]


def make_netns_host(bridge: bool = True) -> NetnsHost:
    """A lab-style "host": netns ctt-XXXX, lo up, veth to us on 198.18.N.0/30, optional bridge cttbr0."""
    tag = uuid.uuid4().hex[:6]
    _SUBNET[0] += 1
    n = (os.getpid() * 7 + _SUBNET[0] * 4) % 16000
    a, b = divmod(n * 4, 256)
    base = f"198.19.{a % 256}.{b}"
    host_addr = f"198.19.{a % 256}.{b + 1}"
    ns_addr = f"198.19.{a % 256}.{b + 2}"
    del base
    h = NetnsHost(name=f"ctt-{tag}", host_if=f"ctth{tag}", host_addr=host_addr, ns_addr=ns_addr)
    sh("ip", "netns", "add", h.name)
    sh("ip", "-n", h.name, "link", "set", "lo", "up")
    sh("ip", "link", "add", h.host_if, "type", "veth", "peer", "name", "uplink", "netns", h.name)
    sh("ip", "addr", "add", f"{host_addr}/30", "dev", h.host_if)
    sh("ip", "link", "set", h.host_if, "up")
    sh("ip", "-n", h.name, "addr", "add", f"{ns_addr}/30", "dev", "uplink")
    sh("ip", "-n", h.name, "link", "set", "uplink", "up")
    if bridge:
        h.bridge = "cttbr0"
        sh("ip", "-n", h.name, "link", "add", h.bridge, "type", "bridge")
        sh("ip", "-n", h.name, "link", "set", h.bridge, "up")
    return h


def remove_netns_host(h: NetnsHost) -> None:
    for pid in h.pids():  # only processes our tests put there (restored workloads, agents)
        kill_pid(pid)
    sh("ip", "link", "del", h.host_if, check=False)
    sh("ip", "netns", "del", h.name, check=False)


def kill_pid(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def pids_running(marker: str) -> list[int]:
    """Live (non-zombie) processes whose cmdline contains ``marker`` (our workload's unique path)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmd and state != "Z" and int(d) != os.getpid():
            out.append(int(d))
    return out


def ctenv(tmp: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(CTCONSOLE_STATE_DIR=str(tmp / "state"), CTCONSOLE_RUN_DIR=str(tmp / "run"),
               PYTHONPATH=str(ROOT), **extra)
    env.pop("CTCONSOLE_FAULT", None)
    env.update(extra)
    return env


def run_cli(args: list[str], env: dict[str, str], timeout: float = 180) -> tuple[int, list[dict[str, Any]], str]:
    p = subprocess.run([*CTCONSOLE, *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
    events = []
    for line in p.stdout.splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            events.append(json.loads(line))
    return p.returncode, events, p.stderr


def journal_records(tmp: Path) -> list[dict[str, Any]]:
    out = []
    for f in sorted((tmp / "state" / "journal").glob("*.jsonl")):
        out.extend(json.loads(x) for x in f.read_text().splitlines() if x.strip())
    return out


def wait_journal(tmp: Path, kind: str, key: str = "", value: str = "", timeout: float = 30) -> dict[str, Any]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for r in journal_records(tmp):
            if r.get("kind") == kind and (not key or r.get(key) == value):
                return r
        time.sleep(0.05)
    raise AssertionError(f"journal never showed {kind} {key}={value}")


# -- a busybox container in its own pid+net+mnt namespaces ----------------------------------
@dataclass
class NsContainer:
    launcher: subprocess.Popen[bytes]
    init_pid: int
    rootfs: Path
    host_veth: str
    script: str

    def ticks(self) -> list[int]:
        try:
            return [int(x) for x in (self.rootfs / "ticks").read_text().split()]
        except (FileNotFoundError, ValueError):
            return []

    def wait_ticks(self, n: int, timeout: float = 10) -> None:
        end = time.monotonic() + timeout
        start = len(self.ticks())
        while time.monotonic() < end:
            if len(self.ticks()) >= start + n:
                return
            time.sleep(0.05)
        raise AssertionError(f"container stalled at {len(self.ticks())} ticks")



LOOP = ("mount -t proc proc /proc; umount -l /oldroot; exec </dev/null >/dev/null 2>&1; "
        "n=0; while :; do n=$((n+1)); echo $n >> /ticks; usleep 50000; done")


def make_rootfs(d: Path) -> Path:
    r = d / "rootfs"
    for sub in ("bin", "proc", "dev", "tmp", "etc", "oldroot"):
        (r / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy2(shutil.which("busybox") or "/usr/bin/busybox", r / "bin" / "busybox")
    for app in ("sh", "mount", "umount", "usleep", "setsid", "ip", "echo", "cat", "true", "sleep"):
        (r / "bin" / app).symlink_to("busybox")
    os.mknod(r / "dev" / "null", 0o666 | 0o020000, os.makedev(1, 3))
    return r


def start_ns_container(tmp: Path) -> NsContainer:
    r = make_rootfs(tmp)
    script = f"ctt-loop-{uuid.uuid4().hex[:8]}.sh"
    (r / script).write_text(LOOP + "\n")
    outer = (f"mount --make-rprivate /; mount --bind {r} {r}; cd {r}; "
             f"pivot_root . oldroot; exec /bin/busybox setsid /bin/busybox sh /{script}")
    launcher = subprocess.Popen(
        ["unshare", "--pid", "--net", "--mount", "--uts", "--ipc", "--fork", "sh", "-c", outer],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True,
    )
    end = time.monotonic() + 10
    init = 0
    while time.monotonic() < end and not init:
        try:
            kids = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
            init = int(kids[0]) if kids else 0
        except OSError:
            pass
        time.sleep(0.02)
    assert init, "container init did not start"
    tag = uuid.uuid4().hex[:6]
    host_veth = f"cttv{tag}"
    sh("ip", "link", "add", host_veth, "type", "veth", "peer", "name", "eth0", "netns", str(init))
    sh("ip", "link", "set", host_veth, "up")
    sh("nsenter", "-t", str(init), "-n", "ip", "link", "set", "lo", "up")
    sh("nsenter", "-t", str(init), "-n", "ip", "addr", "add", "198.19.250.2/24", "dev", "eth0")
    sh("nsenter", "-t", str(init), "-n", "ip", "link", "set", "eth0", "up")
    c = NsContainer(launcher, init, r, host_veth, script)
    c.wait_ticks(3)
    return c


def stop_ns_container(c: NsContainer) -> None:
    for pid in pids_running(c.script):
        kill_pid(pid)
    kill_pid(c.launcher.pid)
    c.launcher.wait(timeout=10)
    sh("ip", "link", "del", c.host_veth, check=False)


def container_inits(c: NsContainer) -> list[int]:
    """Live init processes of copies of this container (its unique script, parent not a copy)."""
    pids = set(pids_running(c.script)) - {c.launcher.pid}  # unshare's argv names the script too
    out = []
    for pid in pids:
        try:
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            continue
        if ppid not in pids:
            out.append(pid)
    return out


def veth_rules(tmp: Path, bridge: str, host_name: str) -> Path:
    p = tmp / "rules.toml"
    p.write_text(
        "version = 1\n[[container]]\nmatch = { name = \"*\" }\n[[container.rule]]\nkind = \"veth\"\n"
        f"interface = \"eth0\"\nhost_name = \"{host_name}\"\nbridge = \"{bridge}\"\n"
    )
    return p


# -- fixtures -------------------------------------------------------------------------------
@pytest.fixture
def nshost(needs_root: None) -> Iterator[NetnsHost]:
    h = make_netns_host()
    yield h
    remove_netns_host(h)


@pytest.fixture
def counter(tmp_path: Path, criu_bin: str) -> Iterator[Any]:
    w = spawn_counter(tmp_path, name=f"ctr-{uuid.uuid4().hex[:6]}")
    # a responsive parent (like a container runtime) reaps the source once CRIU kills it;
    # otherwise its pid stays taken by a zombie and cannot be restored on the same kernel
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


# -- tests ----------------------------------------------------------------------------------
def test_stop_copy_counter_to_netns(tmp_path: Path, counter: Any, nshost: NetnsHost) -> None:
    env = ctenv(tmp_path)
    rc, events, err = run_cli(["migrate", f"tree:{counter.pid}", "--to", nshost.dest, "--json"], env)
    assert events and events[-1]["event"] == "done", err
    assert events[-1]["result"] == "migrated", events[-1]
    assert rc == 0
    kinds = [e["event"] for e in events]
    for k in ("phase_changed", "frozen_time", "restore_time", "downtime", "bytes_sent"):
        assert k in kinds, kinds
    phases = [e["phase"] for e in events if e["event"] == "phase_changed"]
    assert phases[:3] == ["begin", "prepare", "perform"] and phases[-2:] == ["finish", "confirm"]
    marker = str(counter.counter_file)
    counter.wait_ticks(5)
    running = pids_running(marker)
    assert len(running) == 1, running
    assert os.stat(f"/proc/{running[0]}/ns/net").st_ino == nshost.netns_inode(), "not inside the destination"
    assert_continuous(counter.ticks())
    # the journal says how it went, and history shows it
    rc, hist, _ = run_cli(["history", "--json"], env)
    assert rc == 0 and hist[-1]["result"] == "migrated"
    assert not list((tmp_path / "state" / "images").glob("*")), "images left on the destination"
    assert not list((tmp_path / "state" / "work").glob("*")), "images left on the source"


def test_stop_copy_ns_container_handover(tmp_path: Path, nsct: NsContainer, nshost: NetnsHost) -> None:
    env = ctenv(tmp_path)
    rules = veth_rules(tmp_path, nshost.bridge, "cttr" + uuid.uuid4().hex[:6])
    rc, events, err = run_cli(["migrate", f"tree:{nsct.init_pid}", "--to", nshost.dest, "--rules", str(rules),
                               "--probe", "ip link show eth0", "--json"], env)
    assert events and events[-1]["result"] == "migrated", (events[-1:], err)
    assert rc == 0
    assert events[-1]["details"]["mode"] == "handover"
    nsct.wait_ticks(5)
    inits = container_inits(nsct)
    assert len(inits) == 1, inits
    assert os.stat(f"/proc/{inits[0]}/ns/pid").st_ino != os.stat(f"/proc/{nsct.init_pid}/ns/pid").st_ino \
        if os.path.exists(f"/proc/{nsct.init_pid}") else True
    # the restored container's veth peer sits on the destination's bridge
    out = sh("ip", "-n", nshost.name, "-o", "link", "show", "master", nshost.bridge).stdout
    assert "cttr" in out, out
    assert_continuous(nsct.ticks())
    assert events[-1]["details"]["downtime"] < 5.0


def test_post_copy_refused_before_freezing_and_auto_picks_stop_copy(
    tmp_path: Path, counter: Any, nshost: NetnsHost
) -> None:
    env = ctenv(tmp_path)
    rc, events, _ = run_cli(["migrate", f"tree:{counter.pid}", "--to", nshost.dest, "--strategy", "post-copy",
                             "--json"], env)
    assert rc != 0 and events[-1]["result"] == "failed"
    assert "post-copy" in events[-1]["message"] and "self-test" in events[-1]["message"]
    assert not any(e.get("phase") == "perform" for e in events), "something was frozen"
    assert pids_running(str(counter.counter_file)) == [counter.pid]
    rc, events, _ = run_cli(["migrate", f"tree:{counter.pid}", "--to", nshost.dest, "--strategy", "pre-copy",
                             "--json"], env)
    assert rc != 0 and "soft-dirty" in events[-1]["message"]
    rc, events, _ = run_cli(["migrate", f"tree:{counter.pid}", "--to", nshost.dest, "--json"], env)
    assert rc == 0 and events[-1]["details"]["strategy"] == "stop-copy"
    counter.wait_ticks(3)
    assert len(pids_running(str(counter.counter_file))) == 1
    assert_continuous(counter.ticks())


def test_agent_hello_inventory_check(tmp_path: Path, counter: Any, nshost: NetnsHost,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The console can show and check a remote host's containers through the agent."""
    from ctconsole.migrate.channel import PROTOCOL_VERSION, AgentChannel, parse_destination
    from ctconsole.proto import agent_pb2

    for k, v in ctenv(tmp_path).items():
        if k.startswith("CTCONSOLE_"):
            monkeypatch.setenv(k, v)
    ch = AgentChannel(parse_destination(nshost.dest))
    ch.start()
    try:
        hello = ch.call("hello", agent_pb2.Hello(protocol=PROTOCOL_VERSION))
        assert hello.criu_version.startswith("4.") and hello.mem_track is False
        assert nshost.ns_addr in hello.addresses
        assert hello.netns_inode == nshost.netns_inode()
        inv = json.loads(ch.call("inventory", agent_pb2.InventoryRequest(), timeout=120).json)
        assert isinstance(inv, list)
        chk = ch.call("check", agent_pb2.CheckRequest(ref=f"tree:{counter.pid}"), timeout=120)
        assert chk.verdict in ("feasible", "needs-rules", "infeasible") and json.loads(chk.json)
    finally:
        ch.close()
