"""Remap rules through a whole migration (real CRIU, ``ctconsole migrate`` to a ``netns:`` host).

The workload is a busybox "container" in its own pid+net+mnt(+uts+ipc)
namespaces that holds, from before its mount namespace was pivoted:
- fd 7: a UNIX stream socket connected to a host listener A (an external peer);
- fd 8: a host log file opened write-only + append (a file from a mount it cannot see).
Every tick it appends its counter to /ticks (inside its rootfs), writes the
number to fd 7 and a line to fd 8. The rules file (what ``ctconsole rules
suggest`` proposes, with the destinations changed) says: on the destination,
connect the socket to listener B, and open a new log file. After the
migration, B receives the numbers that follow the last one A got, the new log
continues the old one, and the counter has no gap.

The VF test stands a veth in for an SR-IOV VF: ``CTCONSOLE_SYSFS_ROOT`` (tests
only) points the agent's VF scan at a fake sysfs whose ``virtfn1`` netdev is
that veth; the agent moves it into the restored netns as ``data0`` in CRIU's
setup-namespaces notify (the same netlink request moves any link kind).

Only processes started here are killed (by pid); namespaces and links are
created here (``ctt*`` names, 198.18.0.0/15) and removed afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests import lab_fixtures, support_hosts
from tests.support import assert_continuous
from tests.support_hosts import (
    CTCONSOLE,
    ROOT,
    NetnsHost,
    RootfsTicks,
    container_inits,
    copies_of,
    ctenv,
    journal_records,
    kill_pid,
    launch_unshared,
    make_rootfs,
    pids_running,
    run_cli,
    sh,
    start_ns_container,
    stop_ns_container,
)

pytestmark = [pytest.mark.root, pytest.mark.criu]

nshost = support_hosts.nshost  # fixture

LOOP = ("mount -t proc proc /proc; umount -l /oldroot; exec </dev/null >/dev/null 2>&1; "
        "n=0; while :; do n=$((n+1)); echo $n >> /ticks; echo $n >&7; echo line $n >&8; usleep 50000; done")

# runs with the host's filesystem still visible (before pivot_root): connect to A, open the host log
CONNECT = (
    "import os, socket, sys\n"
    "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
    "s.connect(sys.argv[1])\n"
    "os.dup2(s.fileno(), 7)\n"  # dup2 to a new number: inheritable (fd 3 could be the socket itself)
    "s.close()\n"
    "f = os.open(sys.argv[2], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)\n"
    "os.dup2(f, 8)\n"
    "os.close(f)\n"
    "os.execvp(sys.argv[3], sys.argv[3:])\n"
)


class Listener:
    """A host UNIX stream listener that collects every byte of every connection (a thread per listener)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(str(path))
        self.srv.listen(4)
        self.srv.settimeout(0.2)
        self.data: list[bytearray] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        conns: list[tuple[socket.socket, bytearray]] = []
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                c, _ = self.srv.accept()
                c.setblocking(False)
                buf = bytearray()
                self.data.append(buf)
                conns.append((c, buf))
            for c, buf in conns:
                with contextlib.suppress(BlockingIOError, OSError):
                    while chunk := c.recv(65536):
                        buf.extend(chunk)
        for c, _ in conns:
            c.close()

    def numbers(self) -> list[list[int]]:
        """What each connection received, as the counter values written to it."""
        return [[int(x) for x in bytes(b).split()] for b in self.data]

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.srv.close()


@dataclass
class SockContainer(RootfsTicks):
    launcher: subprocess.Popen[bytes]
    init_pid: int
    rootfs: Path
    script: str
    log: Path
    links: list[str] = field(default_factory=list)

    def inits(self) -> list[int]:
        """Live inits of copies of this container (its unique script; the launcher's argv names it too)."""
        return copies_of(self.script, self.launcher.pid)


def start_sock_container(tmp: Path, listener: Path) -> SockContainer:
    r = make_rootfs(tmp)
    script = f"ctt-rloop-{uuid.uuid4().hex[:8]}.sh"
    (r / script).write_text(LOOP + "\n")
    (tmp / "connect.py").write_text(CONNECT)
    (tmp / "inner.sh").write_text(f"mount --bind {r} {r}; cd {r}; pivot_root . oldroot; "
                                  f"exec /bin/busybox setsid /bin/busybox sh /{script}\n")
    log = tmp / "hostlog" / "app.log"
    log.parent.mkdir()
    outer = (f"mount --make-rprivate /; exec {sys.executable} -S {tmp}/connect.py {listener} {log} "
             f"sh {tmp}/inner.sh")
    launcher, init = launch_unshared(outer)
    c = SockContainer(launcher, init, r, script, log)
    c.wait_ticks(3)
    return c


@pytest.fixture
def listeners(tmp_path: Path, needs_root: None) -> Iterator[tuple[Listener, Listener]]:
    a, b = Listener(tmp_path / "a.sock"), Listener(tmp_path / "b.sock")
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def sockct(tmp_path: Path, criu_bin: str, listeners: tuple[Listener, Listener]) -> Iterator[SockContainer]:
    c = start_sock_container(tmp_path, listeners[0].path)
    yield c
    for pid in c.inits():
        kill_pid(pid)
    for pid in pids_running(c.script):
        kill_pid(pid)
    kill_pid(c.launcher.pid)
    c.launcher.wait(timeout=10)


def suggested_rules(ref: str, env: dict[str, str], replace: dict[str, str], extra: str = "") -> str:
    """``ctconsole rules suggest REF`` with destination paths swapped (what an operator edits)."""
    out = subprocess.run([*CTCONSOLE, "rules", "suggest", ref], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=120, check=True).stdout
    lines = []
    for line in out.splitlines():
        for key, value in replace.items():
            if line.strip().startswith(f"{key} = "):
                line = f'  {key} = "{value}"'
        lines.append(line)
    return "\n".join(lines) + "\n" + extra


def test_unix_and_file_rules_reconnect_on_destination(tmp_path: Path, sockct: SockContainer, nshost: NetnsHost,
                                                     listeners: tuple[Listener, Listener]) -> None:
    a, b = listeners
    env = ctenv(tmp_path)
    new_log = tmp_path / "dest-logs" / "app.log"
    new_log.parent.mkdir()
    rules = tmp_path / "rules.toml"
    rules.write_text(suggested_rules(f"tree:{sockct.init_pid}", env,
                                     {"connect": str(b.path), "destination": str(new_log)}))
    text = rules.read_text()
    assert 'kind = "unix"' in text and 'kind = "file"' in text, text
    # without the rules the container is refused before anything is frozen
    rc, events, _ = run_cli(["migrate", f"tree:{sockct.init_pid}", "--to", nshost.dest, "--json"], env)
    assert rc != 0 and events[-1]["details"]["source"] == "untouched", events[-1]
    assert "needs remap rules" in events[-1]["message"]

    rc, events, err = run_cli(["migrate", f"tree:{sockct.init_pid}", "--to", nshost.dest, "--rules", str(rules),
                               "--json"], env)
    assert events and events[-1]["result"] == "migrated", (events[-1:], err[-3000:])
    assert rc == 0 and events[-1]["details"]["mode"] == "handover"
    opts = next(r for r in journal_records(tmp_path) if r.get("kind") == "options")
    assert sorted(i["how"] for i in opts["inherit"]) == ["connect-unix", "open-file"], opts["inherit"]
    sockct.wait_ticks(10)
    inits = sockct.inits()
    assert len(inits) == 1 and inits[0] != sockct.init_pid, inits
    assert os.stat(f"/proc/{inits[0]}/ns/pid").st_ino != os.stat(f"/proc/{sockct.launcher.pid}/ns/pid").st_ino
    ticks = sockct.ticks()
    assert_continuous(ticks)
    # the socket: A got 1..k before the dump, B (connected by the agent on the destination) gets k+1, k+2, ...
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (len(b.numbers()) == 1 and len(b.numbers()[0]) >= 5):
        time.sleep(0.05)
    got_a, got_b = a.numbers(), b.numbers()
    assert len(got_a) == 1 and len(got_b) == 1, (got_a, got_b)
    assert got_b[0] and got_b[0][0] == got_a[0][-1] + 1, (got_a[0][-3:], got_b[0][:3])
    assert_continuous(got_a[0] + got_b[0])
    # the file: the old log ends where the new one (opened by the agent) starts
    old = [int(ln.split()[1]) for ln in sockct.log.read_text().splitlines()]
    new = [int(ln.split()[1]) for ln in new_log.read_text().splitlines()]
    assert new and new[0] == old[-1] + 1, (old[-3:], new[:3])
    assert_continuous(old + new)
    assert (new_log.stat().st_mode & 0o777) == 0o640  # the original's bits (CRIU checks them)
    assert not list((tmp_path / "state" / "images").glob("*")), "images left on the destination"


# -- VF pool: a veth stands in for the VF ---------------------------------------------------------------
VF_RULES = """version = 1
[[container]]
match = {{ name = "*" }}
  [[container.rule]]
  kind = "netdev"
  interface = "data0"
  vf_pool = {{ pf = "{pf}", vfs = [0, 1] }}
"""


def fake_sysfs(root: Path, pf: str, vfs: dict[int, tuple[str, bool]]) -> Path:
    """sysfs as vf.list_vfs reads it: class/net/PF/device/virtfnN/net/NETDEV and class/net/NETDEV/flags."""
    for index, (netdev, up) in vfs.items():
        (root / "class/net" / pf / "device" / f"virtfn{index}" / "net" / netdev).mkdir(parents=True)
        (root / "class/net" / netdev).mkdir(parents=True, exist_ok=True)
        (root / "class/net" / netdev / "flags").write_text("0x1003\n" if up else "0x1002\n")
    return root


@pytest.fixture
def plainct(tmp_path: Path, criu_bin: str) -> Iterator[Any]:
    """The ns container of the netns migration tests without its veth (only lo in its netns)."""
    c = start_ns_container(tmp_path)
    sh("ip", "link", "del", c.host_veth, check=False)
    yield c
    for pid in container_inits(c):
        kill_pid(pid)
    stop_ns_container(c)


def test_vf_pool_moves_a_free_link_into_the_restored_netns(tmp_path: Path, plainct: Any,
                                                           nshost: NetnsHost) -> None:
    tag = uuid.uuid4().hex[:5]
    busy, free = f"cttvb{tag}", f"cttvf{tag}"
    sh("ip", "-n", nshost.name, "link", "add", free, "type", "veth", "peer", "name", f"{free}p")
    pf = f"cttpf{tag}"
    # VF 0 is up (in use), VF 1 is down: the agent must take VF 1
    sysfs = fake_sysfs(tmp_path / "sys", pf, {0: (busy, True), 1: (free, False)})
    rules = tmp_path / "vf.toml"
    rules.write_text(VF_RULES.format(pf=pf))
    env = ctenv(tmp_path, CTCONSOLE_SYSFS_ROOT=str(sysfs))
    rc, events, err = run_cli(["migrate", f"tree:{plainct.init_pid}", "--to", nshost.dest, "--rules", str(rules),
                               "--probe", "link:data0", "--json"], env)
    assert events and events[-1]["result"] == "migrated", (events[-1:], err[-3000:])
    assert rc == 0
    opts = next(r for r in journal_records(tmp_path) if r.get("kind") == "options")
    assert opts["setup_ns"] == [{"action": "move-vf", "interface": "data0", "pf": pf, "vfs": [0, 1],
                                 "any_vf": False}]
    inits = container_inits(plainct)
    assert len(inits) == 1, inits
    inside = json.loads(sh("nsenter", "-t", str(inits[0]), "-n", "ip", "-j", "link", "show").stdout)
    assert "data0" in [ln["ifname"] for ln in inside], inside
    left = [ln["ifname"] for ln in json.loads(sh("ip", "-n", nshost.name, "-j", "link", "show").stdout)]
    assert free not in left and f"{free}p" in left, left
    plainct.wait_ticks(5)
    assert_continuous(plainct.ticks())


def test_vf_pool_without_a_free_vf_keeps_the_source(tmp_path: Path, plainct: Any, nshost: NetnsHost) -> None:
    """No free VF at restore: the setup-namespaces handler fails, CRIU aborts the restore, the source resumes."""
    pf = f"cttpf{uuid.uuid4().hex[:5]}"
    sysfs = fake_sysfs(tmp_path / "sys", pf, {0: ("cttvbusy0", True)})
    rules = tmp_path / "vf.toml"
    rules.write_text(VF_RULES.format(pf=pf))
    env = ctenv(tmp_path, CTCONSOLE_SYSFS_ROOT=str(sysfs))
    rc, events, err = run_cli(["migrate", f"tree:{plainct.init_pid}", "--to", nshost.dest, "--rules", str(rules),
                               "--json"], env)
    assert rc != 0 and events, err
    done = events[-1]
    assert done["result"] == "rolled-back" and done["details"]["source"] == "running", done
    assert any("no free VF" in e for e in [done["message"], *done["details"]["errors"]]), done
    plainct.wait_ticks(5)
    assert container_inits(plainct) == [plainct.init_pid]
    assert_continuous(plainct.ticks())
    assert not nshost.pids(), nshost.pids()


# -- the lab: ctlab-ns and its host daemon -------------------------------------------------------------------
lab = lab_fixtures.lab  # the session fixture


@pytest.fixture
def labhost(lab: Any) -> Iterator[Any]:
    from ctconsole.lab import hosts

    h = hosts.add("ctmigr")
    yield h
    lab_fixtures.fresh("ctlab-ns")  # back on the real host before the host netns goes
    hosts.delete("ctmigr")


def _hostd_events(log: Path) -> list[str]:
    return [ln.split(" ", 1)[1] for ln in log.read_text(errors="replace").splitlines() if " " in ln]


def test_lab_ns_unix_socket_reconnected_to_the_lab_daemon(tmp_path: Path, labhost: Any) -> None:
    """``rules suggest`` output as is: the agent connects a new socket to the lab daemon for fd 3."""
    from ctconsole.lab import status

    c = lab_fixtures.fresh("ctlab-ns")
    lab_fixtures.wait_ticks(c, 3)
    hostd_sock = Path(c.unix_socket)
    hostd_log = Path(status().root) / "hostd.log"
    env = ctenv(tmp_path)
    rules = tmp_path / "rules.toml"
    rules.write_text(suggested_rules("ctlab-ns", env, {}))
    assert f'connect = "{hostd_sock}"' in rules.read_text()
    before = _hostd_events(hostd_log)
    rc, events, err = run_cli(["migrate", "ctlab-ns", "--to", f"netns:{labhost.netns}", "--rules", str(rules),
                               "--json"], env)
    assert events and events[-1]["result"] == "migrated", (events[-1:], err[-2000:])
    assert rc == 0
    c2 = lab_fixtures.container("ctlab-ns")
    lab_fixtures.wait_ticks(c2, 5)
    lab_fixtures.assert_continuous(lab_fixtures.read_counter(c2))
    # the daemon saw exactly one new connection (the agent's, now the restored container's fd 3) ...
    new = [e for e in _hostd_events(hostd_log)[len(before):] if e.startswith("connection fd")]
    assert len(new) == 1, _hostd_events(hostd_log)[len(before):]
    fd = new[0].split()[-1]
    assert f"closed fd {fd}" not in _hostd_events(hostd_log)[len(before):]
    # ... and the restored container's fd 3 is that connection: its peer is a socket bound to the daemon's path
    assert c2.init is not None
    link = os.readlink(f"/proc/{c2.init.pid}/fd/3")
    assert link.startswith("socket:["), link
    inode = link[8:-1]
    # the agent connected it from the destination's netns; the kernel creates the daemon's accepted end in
    # the connecting socket's netns (unix_stream_connect), so both ends are listed there
    there = _unix_table(labhost.netns)
    assert inode in there, (inode, there)
    peer = there[inode][1]
    assert there.get(peer, ("", ""))[0] == str(hostd_sock), (peer, there.get(peer))


def _unix_table(netns: str) -> dict[str, tuple[str, str]]:
    """inode -> (bound path or "*", peer inode) of the established unix stream sockets in ``netns``."""
    argv = [*(["ip", "netns", "exec", netns] if netns else []), "ss", "-xnH", "state", "established"]
    out: dict[str, tuple[str, str]] = {}
    for line in sh(*argv).stdout.splitlines():
        f = line.split()
        if len(f) >= 7 and f[0] == "u_str":
            out[f[4]] = (f[3], f[6])
    return out
