"""Stand-in hosts and workloads for the migration tests (netns, ssh, check --to, the UI's --host).

- a network-namespace "host" (``ctt-*``, a veth to us on 198.19.x, optionally a bridge);
- a throwaway OpenSSH server (host key, user key, known_hosts with StrictHostKeyChecking);
- a busybox "container" in its own pid+net+mnt(+uts+ipc) namespaces with a veth;
- a counter in the host namespaces (:func:`tests.support.spawn_counter`) with a reaping parent.

Only processes started here are killed (by pid); namespaces and links made here are removed.
Fixtures are used by aliasing them in a test module (``nshost = support_hosts.nshost``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
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

from tests.support import spawn_counter

ROOT = Path(__file__).resolve().parents[1]
CTCONSOLE = [sys.executable, "-m", "ctconsole"]
SSHD = "/usr/sbin/sshd"


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
    env.update(CTCONSOLE_STATE_DIR=str(tmp / "state"), CTCONSOLE_RUN_DIR=str(tmp / "run"), PYTHONPATH=str(ROOT))
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
class RootfsTicks:
    """A busybox container whose loop appends its counter to /ticks in its rootfs."""

    rootfs: Path

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


@dataclass
class NsContainer(RootfsTicks):
    launcher: subprocess.Popen[bytes]
    init_pid: int
    rootfs: Path
    host_veth: str
    script: str


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


def launch_unshared(outer: str) -> tuple[subprocess.Popen[bytes], int]:
    """``sh -c OUTER`` under ``unshare --fork`` in new pid+net+mnt+uts+ipc namespaces; returns (launcher, init)."""
    launcher = subprocess.Popen(
        ["unshare", "--pid", "--net", "--mount", "--uts", "--ipc", "--fork", "sh", "-c", outer],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True,
    )
    end = time.monotonic() + 10
    init = 0
    while time.monotonic() < end and not init:
        with contextlib.suppress(OSError, ValueError, IndexError):
            kids = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
            init = int(kids[0]) if kids else 0
        time.sleep(0.02)
    assert init, "container init did not start"
    return launcher, init


def start_ns_container(tmp: Path) -> NsContainer:
    r = make_rootfs(tmp)
    script = f"ctt-loop-{uuid.uuid4().hex[:8]}.sh"
    (r / script).write_text(LOOP + "\n")
    outer = (f"mount --make-rprivate /; mount --bind {r} {r}; cd {r}; "
             f"pivot_root . oldroot; exec /bin/busybox setsid /bin/busybox sh /{script}")
    launcher, init = launch_unshared(outer)
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
    return copies_of(c.script, c.launcher.pid)


def copies_of(script: str, launcher_pid: int) -> list[int]:
    """Live processes running ``script`` whose parent does not (the inits of a container's copies)."""
    pids = set(pids_running(script)) - {launcher_pid}  # unshare's argv names the script too
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


# -- a throwaway OpenSSH server --------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Sshd:
    """A running sshd: where it listens and the client environment that reaches it."""

    addr: str
    port: int
    env: dict[str, str]
    remote_state: Path


@contextlib.contextmanager
def throwaway_sshd(tmp_path: Path, addr: str, netns: str = "", edge_netns: str = "") -> Iterator[Sshd]:
    """sshd on ADDR (inside ``netns`` when given) with host key, user key and known_hosts in tmp_path.

    ``env`` runs ctconsole with its own state/run dirs and the ssh options that trust only that
    host key; the far side runs this checkout's ctconsole with state under tmp_path/remote-state.

    ``edge_netns``: ADDR is in that namespace (an isolated lab host's source end, ``ctsrc-NAME``),
    yet the sessions must run *here* (this host's network, where the source's containers and
    bridges are): a listening socket is made in that namespace (``lab.edge.socket_in``) and each
    connection is handed to an ``sshd -i`` started here, as inetd would. No bytes are relayed.
    """
    if not os.path.exists(SSHD) or not shutil.which("ssh"):
        pytest.skip("OpenSSH server/client not installed")
    d = tmp_path / "ssh"
    d.mkdir(mode=0o700)
    for key in ("hostkey", "userkey"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True)
    (d / "authorized_keys").write_text((d / "userkey.pub").read_text())
    port = free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress {addr}\nHostKey {d / 'hostkey'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        f"PidFile {d / 'sshd.pid'}\nAllowTcpForwarding yes\nGatewayPorts no\nPermitTunnel no\nX11Forwarding no\n"
    )
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
    argv = [SSHD, "-D", "-e", "-f", str(d / "sshd_config")]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    sessions: list[subprocess.Popen[bytes]] = []
    listener: socket.socket | None = None
    env: dict[str, str] = {}
    if edge_netns:
        from ctconsole.lab import edge

        listener = edge.socket_in(f"/run/netns/{edge_netns}")
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((addr, port))
        listener.listen(16)
        argv = ["sleep", "infinity"]  # stands for the daemon: the sessions are the accept loop's
        threading.Thread(target=_inetd, args=(listener, d, sessions), daemon=True).start()
    with open(d / "sshd.log", "wb") as log:
        sshd = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                                start_new_session=True)
    try:
        hostkey = (d / "hostkey.pub").read_text().split()
        (d / "known_hosts").write_text(f"[{addr}]:{port} {hostkey[0]} {hostkey[1]}\n")
        end = time.monotonic() + 10
        while time.monotonic() < end:
            if listener is not None:
                break
            with socket.socket() as s:
                s.settimeout(0.2)
                if s.connect_ex((addr, port)) == 0:
                    break
            time.sleep(0.05)
        state, run = tmp_path / "remote-state", tmp_path / "remote-run"
        remote_cmd = (f"env CTCONSOLE_STATE_DIR={state} CTCONSOLE_RUN_DIR={run} PYTHONPATH={ROOT} "
                      f"{ROOT / '.venv/bin/ctconsole'}")
        ssh_opts = (f"-F /dev/null -i {d / 'userkey'} -o IdentitiesOnly=yes -o StrictHostKeyChecking=yes "
                    f"-o UserKnownHostsFile={d / 'known_hosts'}")
        env = ctenv(tmp_path, CTCONSOLE_REMOTE_CMD=remote_cmd, CTCONSOLE_SSH_OPTS=ssh_opts)
        yield Sshd(addr, port, env, state)
    finally:
        if env:
            close_kept_ssh(env)
        if listener is not None:
            listener.close()
        for p in [sshd, *sessions]:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, 9)  # our sshd and the sessions it forked (same process group)
            p.wait()


@contextlib.contextmanager
def ssh_control_master(sshd: Sshd, ctl: Path) -> Iterator[list[str]]:
    """An ssh control master on ``ctl`` to ``sshd`` (like the agent channel's); yields the ssh options that
    trust that sshd, for clients that ride the master."""
    opts = shlex.split(sshd.env["CTCONSOLE_SSH_OPTS"])
    master = subprocess.Popen(["ssh", *opts, "-o", "ControlMaster=yes", "-o", f"ControlPath={ctl}", "-N",
                               "-p", str(sshd.port), f"root@{sshd.addr}"], stdin=subprocess.DEVNULL)
    try:
        end = time.monotonic() + 10
        while not ctl.exists() and time.monotonic() < end:
            time.sleep(0.05)
        assert ctl.exists(), "ssh control master did not start"
        yield opts
    finally:
        master.kill()
        master.wait()


def close_kept_ssh(env: dict[str, str]) -> None:
    """End the ssh connections ctconsole kept open (CTCONSOLE_SSH_PERSIST) under ``env``'s run dir, so a
    test leaves no ssh master, nor the sshd session it holds, for a minute after it."""
    code = ("import glob, subprocess\n"
            "from ctconsole.agent.channel import parse_destination, shared_control_path\n"
            "d = shared_control_path(parse_destination('ssh://x')).parent\n"
            "for p in glob.glob(str(d) + '/*'):\n"
            "    subprocess.run(['ssh', '-o', 'ControlPath=' + p, '-O', 'exit', 'x'],\n"
            "                   capture_output=True, timeout=10)\n")
    subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=60, check=False)


def _inetd(listener: socket.socket, d: Path, sessions: list[subprocess.Popen[bytes]]) -> None:
    """Accept on ``listener`` (in another namespace) and run ``sshd -i`` here on each connection."""
    listener.settimeout(0.5)  # a close from another thread does not wake a blocked accept
    while True:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        except OSError:
            return  # closed: the fixture is done
        conn.setblocking(True)
        with conn, open(d / "sshd.log", "ab") as log:
            sessions.append(subprocess.Popen([SSHD, "-i", "-e", "-f", str(d / "sshd_config")], stdin=conn.fileno(),
                                             stdout=conn.fileno(), stderr=log, start_new_session=True))


@dataclass
class SshHost:
    host: NetnsHost
    port: int
    env: dict[str, str]

    @property
    def dest(self) -> str:
        return f"ssh://root@{self.host.ns_addr}:{self.port}"


@pytest.fixture
def sshhost(tmp_path: Path, needs_root: None) -> Iterator[SshHost]:
    """A real sshd inside a netns "host", reached on its 198.19.x address."""
    if not os.path.exists(SSHD) or not shutil.which("ssh"):
        pytest.skip("OpenSSH server/client not installed")
    h = make_netns_host()
    try:
        with throwaway_sshd(tmp_path, h.ns_addr, netns=h.name) as sshd:
            yield SshHost(h, sshd.port, sshd.env)
    finally:
        remove_netns_host(h)
