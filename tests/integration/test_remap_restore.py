"""Real restores with remapped options: the compiled rules must do what docs/remap.md says.

veth: a process in its own netns holds ``eth0`` whose peer sits in a "source
host" netns on bridge A. We dump it, then restore it with CRIU running in a
"destination host" netns using the options ``compile_rules`` produced for a
``veth`` rule naming a new host-side name and bridge B, and check the new host
end exists, is enslaved to B and up, and the container reaches B's address.

mount: a busybox container (own pid+mnt+net ns, pivot_root) has ``/data``
bind-mounted from host directory A. Dumped with the compiled ``mnt[/data]:KEY``
external and restored with ``mnt[KEY]:B``, the restored container sees B's
files at ``/data``.

Everything runs in namespaces and directories these tests create; addresses
are from 198.18.0.0/15; only processes started here are killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctconsole.model import Container, External, Mount, NetIface
from ctconsole.remap.compile import compile_rules
from ctconsole.remap.parse import parse_text
from tests.support import wait_gone

pytestmark = pytest.mark.criu

TAG = f"{os.getpid() % 100000:05d}"


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=check)


def wait_for(pred: object, timeout: float = 10.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def client_in_netns(criu_bin: str, netns: str, tmp: Path) -> object:
    """A CriuClient whose ``criu swrk`` runs inside ``netns`` (CRIU creates veth host ends in its own netns)."""
    from ctconsole.criu.client import CriuClient

    wrapper = tmp / f"criu-in-{netns}"
    wrapper.write_text(f"#!/bin/sh\nexec nsenter --net=/run/netns/{netns} -- {criu_bin} \"$@\"\n")
    wrapper.chmod(0o755)
    return CriuClient(criu=str(wrapper), timeout=60)


def compiled(rules_text: str, container: Container) -> object:
    rs, problems = parse_text(textwrap.dedent(rules_text), "test.toml")
    assert problems == []
    return compile_rules(rs, container, "netns:dest")


@contextlib.contextmanager
def criu_log_on_failure() -> Iterator[None]:
    """Put CRIU's own error lines into the assertion message (the log file is gone with tmp_path)."""
    from ctconsole.criu.client import CriuError

    try:
        yield
    except CriuError as exc:
        raise AssertionError(f"{exc.message}\n" + "\n".join(exc.log_errors + exc.explanations)) from exc


def ping(nsx: list[str], addr: str) -> bool:
    """One ICMP echo from inside a netns (iputils ping is not installed here; busybox's is)."""
    tool = ["ping"] if shutil.which("ping") else ["busybox", "ping"]
    return sh(*nsx, *tool, "-c1", "-W1", addr, check=False).returncode == 0


def kill_tree(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


# ------------------------------------------------------------------------------------------- veth


@pytest.fixture
def two_hosts(needs_root: None) -> Iterator[tuple[str, str]]:
    """Two netns "hosts", each with a bridge: src (198.18.77.1/24) and dst (198.18.77.1/24 too)."""
    src, dst = f"ctc-rsrc-{TAG}", f"ctc-rdst-{TAG}"
    for ns in (src, dst):
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "-n", src, "link", "add", "zbra", "type", "bridge")
    sh("ip", "-n", dst, "link", "add", "zbrb", "type", "bridge")
    for ns, br in ((src, "zbra"), (dst, "zbrb")):
        sh("ip", "-n", ns, "addr", "add", "198.18.77.1/24", "dev", br)
        sh("ip", "-n", ns, "link", "set", br, "up")
    try:
        yield src, dst
    finally:
        for ns in (src, dst):
            sh("ip", "netns", "del", ns, check=False)


def test_veth_remap_to_new_bridge(criu_bin: str, two_hosts: tuple[str, str], tmp_path: Path) -> None:
    src, dst = two_hosts
    # the "container": a sleeping python in its own netns, session leader, stdio on /dev/null
    proc = subprocess.Popen(
        ["unshare", "--net", "--", sys.executable, "-S", "-c", "import time\nwhile True: time.sleep(0.1)"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True,
    )
    pid = proc.pid
    restored = 0
    try:
        wait_for(lambda: os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net"),
                 what="the workload's own netns")
        sh("ip", "-n", src, "link", "add", "zvh0", "type", "veth", "peer", "name", "eth0", "netns", str(pid))
        sh("ip", "-n", src, "link", "set", "zvh0", "master", "zbra", "up")
        nsx = ["nsenter", "-t", str(pid), "-n"]
        sh(*nsx, "ip", "addr", "add", "198.18.77.2/24", "dev", "eth0")
        sh(*nsx, "ip", "link", "set", "eth0", "up")
        sh(*nsx, "ip", "link", "set", "lo", "up")
        wait_for(lambda: ping(nsx, "198.18.77.1"),
                 what="source connectivity")

        c = Container(id="zr", name="zr-veth", runtime="namespaces", init_pid=pid, own_namespaces=("net",),
                      interfaces=(NetIface(name="eth0", kind="veth", ifindex=2, peer_ifname="zvh0",
                                           bridge="zbra", external=External("peer on host", "veth")),))
        host_name = f"zn{TAG}"
        out = compiled(f'''\
            version = 1
            [[container]]
            match = {{ name = "zr-*" }}
            [[container.rule]]
            kind = "veth"
            interface = "eth0"
            host_name = "{host_name}"
            bridge = "zbrb"
            ''', c)
        assert out.restore["external"] == [f"veth[eth0]:{host_name}@zbrb"]  # type: ignore[attr-defined]
        assert not [n for n in out.notes if n.startswith("no ")]  # type: ignore[attr-defined]

        from ctconsole.criu.client import CriuClient

        images = tmp_path / "img"
        images.mkdir()
        with criu_log_on_failure():
            CriuClient(criu=criu_bin, timeout=60).dump({"pid": pid, **out.dump}, images)  # type: ignore[attr-defined]
        proc.wait(timeout=10)
        wait_gone(pid)

        client = client_in_netns(criu_bin, dst, tmp_path)
        with criu_log_on_failure():
            res = client.restore(dict(out.restore), images)  # type: ignore[attr-defined]
        restored = res.pid
        assert restored == pid

        link = json.loads(sh("ip", "-n", dst, "-j", "-d", "link", "show", host_name).stdout)[0]
        assert link.get("master") == "zbrb"
        assert "UP" in link["flags"]
        # the container's end kept its name and address, and reaches the destination bridge
        nsx = ["nsenter", "-t", str(restored), "-n"]
        addrs = json.loads(sh(*nsx, "ip", "-j", "addr", "show", "eth0").stdout)[0]
        assert any(a.get("local") == "198.18.77.2" for a in addrs["addr_info"])
        wait_for(lambda: ping(nsx, "198.18.77.1"),
                 timeout=10, what="connectivity through the new bridge")
    finally:
        kill_tree(pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        if restored:
            kill_tree(restored)
            with contextlib.suppress(AssertionError):
                wait_gone(restored)


# ------------------------------------------------------------------------------------------ mount

LOOP = "while :; do cat /data/marker > /tmp/seen 2>/dev/null; sleep 0.1; done"


def make_rootfs(root: Path) -> None:
    busybox = shutil.which("busybox")
    if not busybox:
        pytest.skip("busybox is not installed")
    for d in ("bin", "proc", "dev", "tmp", "data", "oldroot"):
        (root / d).mkdir(parents=True)
    shutil.copy(busybox, root / "bin/busybox")
    for app in ("sh", "cat", "sleep", "mount", "umount", "setsid"):
        os.symlink("busybox", root / "bin" / app)
    os.mknod(root / "dev/null", 0o666 | 0o020000, os.makedev(1, 3))


def test_mount_remap_to_other_host_path(criu_bin: str, needs_root: None, tmp_path: Path) -> None:
    if not shutil.which("busybox") or subprocess.run(["file", "-L", shutil.which("busybox") or ""],
                                                     capture_output=True, text=True).stdout.find("static") < 0:
        pytest.skip("needs a static busybox (busybox-static)")
    root = tmp_path / "rootfs"
    make_rootfs(root)
    src_a, src_b = tmp_path / "srcA", tmp_path / "srcB"
    for d, text in ((src_a, "from-A"), (src_b, "from-B")):
        d.mkdir()
        (d / "marker").write_text(text)
    inner = f"mount -t proc proc /proc; umount -l /oldroot; exec </dev/null >/dev/null 2>&1; {LOOP}"
    outer = (f"mount --make-rprivate /; mount --bind {root} {root}; mount --bind {src_a} {root}/data; "
             f"cd {root}; pivot_root . oldroot; exec /bin/busybox setsid /bin/busybox sh -c '{inner}'")
    proc = subprocess.Popen(
        ["unshare", "--pid", "--mount", "--net", "--uts", "--ipc", "--fork", "sh", "-c", outer],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True,
    )
    seen = root / "tmp/seen"
    init = 0
    restored = 0
    try:
        wait_for(lambda: seen.exists() and seen.read_text() == "from-A", what="the container reading /data")
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        init = int(children[0])

        c = Container(id="zm", name="zr-mount", runtime="namespaces", init_pid=init,
                      own_namespaces=("pid", "mnt", "net", "uts", "ipc"), root_path=str(root),
                      mounts=(Mount(mount_id=1, parent_id=0, mountpoint="/data", root=str(src_a), fstype="ext4",
                                    source="/dev/x", external=External("bind from host", "mount")),))
        out = compiled(f'''\
            version = 1
            [[container]]
            match = {{ name = "zr-mount" }}
            [[container.rule]]
            kind = "mount"
            mountpoint = "/data"
            path = "{src_b}"
            ''', c)
        assert out.dump["external"] == ["mnt[/data]:data"]  # type: ignore[attr-defined]
        assert out.restore["external"] == [f"mnt[data]:{src_b}"]  # type: ignore[attr-defined]

        from ctconsole.criu.client import CriuClient

        client = CriuClient(criu=criu_bin, timeout=60)
        images = tmp_path / "img"
        images.mkdir()
        with criu_log_on_failure():
            client.dump({"pid": init, **out.dump}, images)  # type: ignore[attr-defined]
        proc.wait(timeout=10)
        wait_gone(init)
        seen.unlink()

        with criu_log_on_failure():
            res = client.restore({"root": str(root), **out.restore}, images)  # type: ignore[attr-defined]
        restored = res.pid
        wait_for(lambda: seen.exists() and seen.read_text() == "from-B", what="the restored container reading B")
    finally:
        for p in (init, restored):
            if p:
                kill_tree(p)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        if restored:
            with contextlib.suppress(AssertionError):
                wait_gone(restored)


# ------------------------------------------------------------------------------ VF move (stand-in link)


def test_move_link_to_netns_renames_in_one_step(needs_root: None, tmp_path: Path) -> None:
    """What the engine does in setup-namespaces for a VF, shown with a veth end in a netns "host"."""
    host = f"ctc-rvf-{TAG}"
    sh("ip", "netns", "add", host)
    proc = subprocess.Popen(["unshare", "--net", "--", "sleep", "60"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: os.readlink(f"/proc/{proc.pid}/ns/net") != os.readlink("/proc/self/ns/net"),
                 what="the target netns")
        # no dummy module on this kernel: veth ends stand in for the VF and for a host eth1
        sh("ip", "-n", host, "link", "add", "eth1", "type", "veth", "peer", "name", "eth1p")  # same name: no clash
        sh("ip", "-n", host, "link", "add", "zvf3", "type", "veth", "peer", "name", "zvf3p")
        sh("ip", "-n", host, "link", "set", "zvf3", "up")
        code = ("import sys; from ctconsole.remap.vf import move_link_to_netns; "
                "move_link_to_netns('zvf3', int(sys.argv[1]), new_name='eth1')")
        r = sh("nsenter", f"--net=/run/netns/{host}", "--", sys.executable, "-c", code, str(proc.pid), check=False)
        assert r.returncode == 0, r.stderr
        inside = json.loads(sh("nsenter", "-t", str(proc.pid), "-n", "ip", "-j", "link", "show").stdout)
        assert "eth1" in [ln["ifname"] for ln in inside]
        left = json.loads(sh("ip", "-n", host, "-j", "link", "show").stdout)
        assert "zvf3" not in [ln["ifname"] for ln in left]
        # a missing link is an operator-readable error, not a traceback
        code = ("import sys; from ctconsole.errors import CtError; from ctconsole.remap.vf import "
                "move_link_to_netns\ntry: move_link_to_netns('nope0', int(sys.argv[1]))\n"
                "except CtError as e: print(e.message)")
        r = sh("nsenter", f"--net=/run/netns/{host}", "--", sys.executable, "-c", code, str(proc.pid))
        assert "no such link" in r.stdout
    finally:
        kill_tree(proc.pid)
        proc.wait(timeout=5)
        sh("ip", "netns", "del", host, check=False)


# ------------------------------------------------------------------------------ unix peer remap

CLIENT = r"""
import os, socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
os.close(0); os.close(1); os.close(2)
n = 0
while True:
    n += 1
    s.sendall(b"%d\n" % n)
    time.sleep(0.05)
"""


def test_unix_peer_remapped_to_new_socket(criu_bin: str, needs_root: None, tmp_path: Path) -> None:
    """unix[INO] on dump, inherit_fd socket:[INO] = a socket connected to the rule's path on restore."""
    import socket as socketmod

    from ctconsole.criu.client import CriuClient
    from ctconsole.model import Socket
    from ctconsole.remap.compile import open_inherit_fds

    path_a, path_b = str(tmp_path / "a.sock"), str(tmp_path / "b.sock")
    lis_a = socketmod.socket(socketmod.AF_UNIX, socketmod.SOCK_STREAM)
    lis_a.bind(path_a)
    lis_a.listen(1)
    lis_b = socketmod.socket(socketmod.AF_UNIX, socketmod.SOCK_STREAM)
    lis_b.bind(path_b)
    lis_b.listen(1)
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    proc = subprocess.Popen([sys.executable, "-S", str(script), path_a], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            close_fds=True)
    pid, restored = proc.pid, 0
    conns: list[socketmod.socket] = []
    try:
        lis_a.settimeout(10)
        conn_a, _ = lis_a.accept()
        conns.append(conn_a)
        conn_a.settimeout(10)
        assert conn_a.recv(64)
        inode = next(int(t[8:-1]) for fd in os.listdir(f"/proc/{pid}/fd")
                     if (t := os.readlink(f"/proc/{pid}/fd/{fd}")).startswith("socket:["))
        c = Container(id="zu", name="zr-unix", runtime="tree", init_pid=pid,
                      sockets=(Socket(family="unix", type="stream", inode=inode, state="ESTABLISHED",
                                      peer_path=path_a, external=External("peer is the test", "unix")),))
        out = compiled(f'''\
            version = 1
            [[container]]
            match = {{ name = "zr-unix" }}
            [[container.rule]]
            kind = "unix"
            peer = "{path_a}"
            connect = "{path_b}"
            ''', c)
        assert out.dump["external"] == [f"unix[{inode}]"]  # type: ignore[attr-defined]
        assert out.inherit_fd_keys() == [f"socket:[{inode}]"]  # type: ignore[attr-defined]

        client = CriuClient(criu=criu_bin, timeout=60)
        images = tmp_path / "img"
        images.mkdir()
        with criu_log_on_failure():
            client.dump({"pid": pid, **out.dump}, images)  # type: ignore[attr-defined]
        proc.wait(timeout=10)
        wait_gone(pid)

        fds = open_inherit_fds(out.inherit)  # type: ignore[attr-defined]
        try:
            lis_b.settimeout(10)
            conn_b, _ = lis_b.accept()
            conns.append(conn_b)
            with criu_log_on_failure():
                res = client.restore(dict(out.restore), images, inherit_fds=fds)  # type: ignore[attr-defined]
            restored = res.pid
        finally:
            for fd in fds.values():
                os.close(fd)
        conn_b.settimeout(10)
        got = b""
        while got.count(b"\n") < 3:
            chunk = conn_b.recv(64)
            assert chunk, "restored task closed the remapped socket"
            got += chunk
        assert all(x.isdigit() for x in got.split())  # the counter carries on through the new peer
    finally:
        for p in (pid, restored):
            if p:
                kill_tree(p)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        for s in (*conns, lis_a, lis_b):
            s.close()
