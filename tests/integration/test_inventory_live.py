"""The inventory against real processes we start ourselves (root).

One namespaced "container" (``unshare --pid --net --mount --fork`` + a small
Python init) holds every kind of tie we classify: internal ones (socketpair,
pty pair, /dev/null, eventfd, memfd) and external ones (a UNIX stream and a
named dgram socket connected to listeners we run on the host, a veth to a
bridge we create, a bind mount of a host tmpfs we then hide). Names of links
start with ``ctt``; only the processes started here are killed, by pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ctconsole import inventory
from ctconsole.errors import NotFound
from ctconsole.model import Container

pytestmark = pytest.mark.root

INIT_SRC = r"""
import fcntl, os, socket, subprocess, sys, time
work, stream_path, dgram_path, tmpsrc, bind_dst = sys.argv[1:6]
a, b = socket.socketpair()                              # internal pair
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)   # peer held by a host process
s.connect(stream_path)
d = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)    # named dgram peer outside
d.connect(dgram_path)
null = os.open("/dev/null", os.O_RDWR)
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
tl = socket.socket(); tl.bind(("127.0.0.1", 0)); tl.listen(4)      # TCP inside the netns
tc = socket.create_connection(tl.getsockname()); ts, _ = tl.accept()
ud = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); ud.bind(("127.0.0.1", 0))
master, slave = os.openpty()                            # pty pair inside: not external
efd = os.eventfd(0)
mfd = os.memfd_create("ctt-mem")
lockf = open(os.path.join(work, "locked"), "w")
fcntl.flock(lockf, fcntl.LOCK_EX)
gone = open(os.path.join(work, "gone"), "w"); os.unlink(os.path.join(work, "gone"))
# hide the host tmpfs after binding a directory of it: the bind's source is now outside
subprocess.run(["mount", "--bind", os.path.join(tmpsrc, "data"), bind_dst], check=True)
subprocess.run(["umount", "-l", tmpsrc], check=True)
child = os.fork()
if child == 0:
    time.sleep(3600)
    os._exit(0)
with open(os.path.join(work, "ready"), "w") as f:
    f.write(str(child))
time.sleep(3600)
"""

LISTENER_SRC = r"""
import os, socket, sys, time
stream_path, dgram_path, ready = sys.argv[1:4]
ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); ls.bind(stream_path); ls.listen(8)
ds = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); ds.bind(dgram_path)
open(ready, "w").close()
conns = []
while True:
    c, _ = ls.accept()
    conns.append(c)
"""


@dataclass
class Lab:
    work: Path
    init_pid: int
    child_pid: int
    unshare: subprocess.Popen[bytes]
    listener: subprocess.Popen[bytes]
    veth_host: str
    veth_inside: str
    bridge: str
    bind_dst: str


def _wait_file(path: Path, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists():
            return
        time.sleep(0.02)
    raise AssertionError(f"{path} did not appear")


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def _nspid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return int(line.split()[-1])
    return 0


def _ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], check=check, capture_output=True)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, needs_root: None) -> Iterator[Lab]:
    work = tmp_path_factory.mktemp("inv")
    stream_path, dgram_path = str(work / "host.sock"), str(work / "host.dgram")
    tmpsrc = work / "hosttmp"
    tmpsrc.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "ctt-src", str(tmpsrc)], check=True)
    (tmpsrc / "data").mkdir()
    bind_dst = work / "bound"
    bind_dst.mkdir()
    (work / "listener.py").write_text(LISTENER_SRC)
    (work / "init.py").write_text(INIT_SRC)
    listener = subprocess.Popen(
        [sys.executable, "-S", str(work / "listener.py"), stream_path, dgram_path, str(work / "lready")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    tag = f"{os.getpid() % 10000}"
    veth_host, veth_inside, bridge = f"ctt{tag}h", f"ctt{tag}c", f"ctt{tag}br"
    unshare = None
    try:
        _wait_file(work / "lready")
        unshare = subprocess.Popen(
            [
                "unshare",
                "--pid",
                "--net",
                "--mount",
                "--fork",
                "--kill-child",
                sys.executable,
                "-S",
                str(work / "init.py"),
                str(work),
                stream_path,
                dgram_path,
                str(tmpsrc),
                str(bind_dst),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
        _wait_file(work / "ready")
        child_pid_ns = int((work / "ready").read_text())
        # host pids of the init (child of unshare) and of its child
        init_pid = int(Path(f"/proc/{unshare.pid}/task/{unshare.pid}/children").read_text().split()[0])
        kids = Path(f"/proc/{init_pid}/task/{init_pid}/children").read_text().split()
        child_pid = next(int(k) for k in kids if _nspid(int(k)) == child_pid_ns)
        _ip("link", "add", bridge, "type", "bridge")
        _ip("link", "add", veth_host, "type", "veth", "peer", "name", veth_inside, "netns", str(init_pid))
        _ip("link", "set", veth_host, "master", bridge)
        _ip("link", "set", veth_host, "up")
        yield Lab(work, init_pid, child_pid, unshare, listener, veth_host, veth_inside, bridge, str(bind_dst))
    finally:
        if unshare is not None:
            _kill(unshare)
        _kill(listener)
        _ip("link", "del", veth_host, check=False)
        _ip("link", "del", bridge, check=False)
        subprocess.run(["umount", "-l", str(tmpsrc)], capture_output=True)


@pytest.fixture(scope="module")
def shown(lab: Lab) -> Container:
    return inventory.resolve(f"pid:{lab.init_pid}")


def test_discovered_as_namespaces_container(lab: Lab, shown: Container) -> None:
    assert shown.init_pid == lab.init_pid
    assert shown.runtime == "namespaces"
    assert {"pid", "net", "mnt"} <= set(shown.own_namespaces)
    pids = {p.pid for p in shown.processes}
    assert pids == {lab.init_pid, lab.child_pid}
    init = next(p for p in shown.processes if p.pid == lab.init_pid)
    assert init.nspid == 1
    assert shown.controller_pid == lab.unshare.pid
    listed = {c.init_pid: c for c in inventory.scan()}
    assert listed[lab.init_pid].id == shown.id


def test_socketpair_inside_is_not_external(shown: Container) -> None:
    pairs = [s for s in shown.sockets if s.family == "unix" and s.type == "stream" and not s.path and s.peer_inode]
    internal = [s for s in pairs if s.external is None]
    assert len(internal) >= 2
    inodes = {s.inode for s in internal}
    assert any(s.peer_inode in inodes for s in internal)


def test_stream_to_host_listener_is_external(lab: Lab, shown: Container) -> None:
    ext = [s for s in shown.sockets if s.family == "unix" and s.type == "stream" and s.external]
    assert len(ext) == 1, ext
    s = ext[0]
    assert s.peer_path == str(lab.work / "host.sock")
    assert s.peer_holder.endswith(f"[{lab.listener.pid}]")
    assert "stream" in s.external.reason and "named peer" in s.external.reason
    assert f"unix[{s.inode}]" in s.external.remedy and "`unix`" in s.external.remedy


def test_named_dgram_peer_needs_ext_unix_sk(lab: Lab, shown: Container) -> None:
    ext = [s for s in shown.sockets if s.family == "unix" and s.type == "dgram" and s.external]
    assert len(ext) == 1, ext
    assert ext[0].peer_path == str(lab.work / "host.dgram")
    assert "datagram" in ext[0].external.reason
    assert "ext_unix_sk" in ext[0].external.remedy


def test_tcp_inside_its_own_netns_is_internal(shown: Container) -> None:
    tcp = [s for s in shown.sockets if s.family == "inet" and s.protocol == "tcp"]
    states = sorted(s.state for s in tcp)
    assert states == ["ESTABLISHED", "ESTABLISHED", "LISTEN"], tcp
    assert all(s.external is None for s in tcp)  # both ends of the connection are inside
    udp = [s for s in shown.sockets if s.protocol == "udp"]
    assert udp and udp[0].state == "UNCONN" and udp[0].external is None


def test_dev_null_and_internal_pty_are_not_external(shown: Container) -> None:
    null = [d for d in shown.devices if d.path == "/dev/null"]
    assert null and null[0].supported and null[0].external is None
    pts = [t for t in shown.ttys if t.kind == "pts"]
    assert pts and all(t.external is None for t in pts)
    assert pts[0].master_holder  # the init holds the master itself
    masters = [t for t in shown.ttys if t.kind == "ptmx"]
    assert [m.index for m in masters] == [pts[0].index]  # paired by tty-index


def test_special_fds_and_files(lab: Lab, shown: Container) -> None:
    kinds = {f.kind for f in shown.fds}
    assert {"eventfd", "memfd"} <= kinds
    assert all(f.external is None for f in shown.fds if f.kind in ("eventfd", "memfd"))
    locked = [f for f in shown.files if f.path.endswith("/locked")]
    assert locked and locked[0].locked
    gone = [f for f in shown.files if f.path.endswith("/gone")]
    assert gone and gone[0].deleted and gone[0].nlink == 0


def test_veth_to_host_bridge_is_external(lab: Lab, shown: Container) -> None:
    ifs = {i.name: i for i in shown.interfaces}
    assert "lo" in ifs and ifs["lo"].external is None
    v = ifs[lab.veth_inside]
    assert v.kind == "veth"
    assert v.peer_ifname == lab.veth_host and v.peer_netns == "host" and v.bridge == lab.bridge
    assert v.external is not None
    assert f"veth[{lab.veth_inside}]:{lab.veth_host}@{lab.bridge}" in v.external.remedy


def test_bind_mount_from_outside_is_external(lab: Lab, shown: Container) -> None:
    m = next(m for m in shown.mounts if m.mountpoint == lab.bind_dst)
    assert m.fstype == "tmpfs" and m.root == "/data"
    assert m.external is not None and f"mnt[{lab.bind_dst}]" in m.external.remedy
    root = next(m for m in shown.mounts if m.mountpoint == "/")
    assert root.external is None


def test_tree_outside_means_outside_the_subtree(lab: Lab) -> None:
    c = inventory.resolve(f"tree:{lab.child_pid}")
    assert c.runtime == "tree" and [p.pid for p in c.processes] == [lab.child_pid]
    # the forked child inherited the init's fds: the socketpair's other end is held by
    # the init too, which is outside this subtree... but the child holds both ends itself
    pair = [s for s in c.sockets if s.family == "unix" and not s.path and s.peer_inode and s.type == "stream"]
    assert pair


def test_unknown_refs_raise_not_found(lab: Lab) -> None:
    with pytest.raises(NotFound):
        inventory.resolve("no-such-container-ctt")
    with pytest.raises(NotFound):
        inventory.resolve(f"pid:{os.getpid()}")  # pytest itself is not in a container
    with pytest.raises(NotFound):
        inventory.resolve("tree:999999999")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ctconsole", *args], capture_output=True, text=True, timeout=60)


def test_cli_list_and_show_json(lab: Lab) -> None:
    r = _cli("list", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    mine = next(c for c in data if c["init_pid"] == lab.init_pid)
    for key in ("id", "name", "runtime", "init_pid", "processes", "sockets", "ttys", "devices", "interfaces", "mounts"):
        assert key in mine
    for cat in ("sockets", "ttys", "devices", "interfaces", "mounts", "fds", "files", "processes"):
        for item in mine[cat]:
            assert isinstance(item["external"], bool)
            if item["external"]:
                assert item["reason"] and item["remedy"]
    r = _cli("show", f"pid:{lab.init_pid}", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["init_pid"] == lab.init_pid


def test_cli_human_output_fits_80_columns(lab: Lab) -> None:
    for args in (("list",), ("show", f"pid:{lab.init_pid}")):
        r = _cli(*args)
        assert r.returncode == 0, r.stderr
        assert all(len(line) <= 80 for line in r.stdout.splitlines()), r.stdout
    assert "Ties to the outside" in _cli("show", f"pid:{lab.init_pid}").stdout


def test_cli_unknown_ref_exits_2_without_traceback(lab: Lab) -> None:
    r = _cli("show", "no-such-container-ctt")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "no container matches" in r.stderr


def test_container_vanishing_is_a_clear_error(tmp_path: Path, needs_root: None) -> None:
    p = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--kill-child", "sleep", "60"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        end = time.monotonic() + 5
        init = 0
        while not init and time.monotonic() < end:
            kids = Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()
            init = int(kids[0]) if kids else 0
            time.sleep(0.02)
        c = inventory.resolve(f"pid:{init}")
    finally:
        _kill(p)
    with pytest.raises(NotFound, match=r"gone|exited"):
        inventory.detail(c)
