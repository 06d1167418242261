"""Isolated lab hosts: a destination that shares only the kernel with the real host.

What one is made of (all recorded in the lab state before it exists, so
``lab host del``/``lab down`` remove exactly this):

- network namespace ``ctlab-NAME``; a veth ``cti-NAME`` (198.18.N.1/30, in the
  source's edge namespace ``ctsrc-NAME``) to ``wan0`` (there, 198.18.N.2/30),
  shaped with ``tc`` on both ends when asked, and a ``ctlab0`` bridge (no
  address) for restored containers' veths;
- its own mount namespace, held by its sshd (see :mod:`ctconsole.lab.isolate`):
  /var/lib, /tmp, /var/tmp and /srv on a loop-mounted ext4 image of its own
  (``LAB/hosts/NAME/disk.img``, sparse), /run and /dev/shm on tmpfs, everything
  else the real host's tree read-only (same binaries, same venv);
- an ``sshd`` listening only on 198.18.N.2:22, with a host key written into
  root's known_hosts and the lab's client key in root's ssh config
  (:mod:`ctconsole.lab.sshcfg`), so ``ssh root@198.18.N.2`` and
  ``ctconsole migrate --to ssh://root@198.18.N.2`` work as with a real machine.

Why the source end is in a namespace of its own (``ctsrc-NAME``) and not in
this machine's: lab addresses (198.18.0.0/15) stay inside namespaces the lab
made. The engine, its ssh client and CRIU still run here, as on a real source
machine: root's ssh reaches the host through a ``ProxyCommand`` that connects
from the edge namespace and passes the socket to ssh (:mod:`ctconsole.lab.edge`),
so nothing relays the bytes and the shaping and a cut link apply as before.

Pids: the host has a pid namespace of its own, its sshd is pid 1 there, so a
restored container gets the pids of that host (as on a real machine; the
engine then hands over rather than restoring sequentially), and ``ctconsole
list`` there sees only the host's processes. They still show up in this
host's ``ps`` under other numbers: :func:`real_pid` translates. Cgroups are
still the machine's. Deleting the host kills every process in its mount or
network namespace, or whose root is on its private filesystems (sshd,
sessions, agents, restored containers) - all things that only exist because
the lab made the host.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from ctconsole.errors import CtError, UsageError
from ctconsole.lab import edge, netns, proc, shaping, sshcfg, state
from ctconsole.lab.proc import LabError
from ctconsole.lab.state import LabHost, LabState

ADDR_NET = "198.18"  # host N: 198.18.N.0/30 (.1 here, .2 inside)
DISK_SIZE = 16 << 30  # sparse: only what is written takes space
SSH_PORT = 22
LINK = "wan0"
SRC_PREFIX = "ctsrc-"  # the source's edge namespace: where cti-NAME and 198.18.N.1 live


def client_key() -> Path:
    """The lab's ssh client key (one for all isolated hosts)."""
    return state.lab_dir() / "ssh" / "id_ed25519"


def include_file() -> Path:
    return state.lab_dir() / "ssh" / "config"


def venv_bin() -> str:
    return str(Path(sys.executable).parent)


SSHD_CONFIG = """# isolated lab host {name} (written by ctconsole lab)
ListenAddress {address}:{port}
HostKey /run/ctlab-sshd/ssh_host_ed25519_key
AuthorizedKeysFile /run/ctlab-sshd/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile none
AllowTcpForwarding yes
X11Forwarding no
PermitTunnel no
MaxStartups 100:30:200
MaxSessions 100
# a dead link ends the session (and so the agent, which then cleans up) within ~15 s, as on a real host
ClientAliveInterval 5
ClientAliveCountMax 3
SetEnv PATH={venv}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
Subsystem sftp /usr/lib/openssh/sftp-server
"""


def _keygen(path: Path, comment: str) -> None:
    if path.exists() and path.with_suffix(".pub").exists():
        return
    path.unlink(missing_ok=True)
    path.with_suffix(".pub").unlink(missing_ok=True)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    proc.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])


def _prepare_files(h: LabHost) -> Path:
    """Keys, sshd config and the disk image under LAB/hosts/NAME; returns the sshd staging dir."""
    d = Path(h.host_dir)
    sshd_dir = d / "sshd"
    sshd_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    _keygen(client_key(), "ctconsole-lab")
    _keygen(sshd_dir / "ssh_host_ed25519_key", f"ctconsole-lab-{h.name}")
    (sshd_dir / "authorized_keys").write_text(client_key().with_suffix(".pub").read_text())
    (sshd_dir / "sshd_config").write_text(
        SSHD_CONFIG.format(name=h.name, address=h.address, port=SSH_PORT, venv=venv_bin())
    )
    disk = d / "disk.img"
    if not disk.exists():
        with open(disk, "wb") as f:
            f.truncate(DISK_SIZE)
        proc.run(["mkfs.ext4", "-q", "-F", "-L", f"ctlab-{h.name}"[:16], "-E",
                  "lazy_itable_init=1,lazy_journal_init=1", str(disk)], timeout=60)
    return sshd_dir


def _link(h: LabHost) -> None:
    netns.delete_netns(h.netns)
    netns.add_netns(h.netns)
    src = h.src_netns or None  # "" in records from before the edge namespace: the real host's
    if src:
        netns.delete_netns(src)
        netns.add_netns(src)
    netns.delete_link(h.src_link, src)
    netns.ip("link", "add", h.src_link, "type", "veth", "peer", "name", h.link, "netns", h.netns, netns=src)
    netns.ip("addr", "add", f"{h.src_address}/30", "dev", h.src_link, netns=src)
    netns.ip("link", "set", h.src_link, "up", netns=src)
    netns.ip("addr", "add", f"{h.address}/30", "dev", h.link, netns=h.netns)
    netns.ip("link", "set", h.link, "up", netns=h.netns)
    netns.ensure_bridge(h.bridge, h.netns)
    shape(h, h.rate, h.delay)


def shape(h: LabHost, rate: str, delay: str) -> None:
    """(Re)shape both ends of the host's link; empty rate and delay remove the shaping.

    A failure leaves the link unshaped (and recorded so) rather than shaped one way only.
    """
    try:
        shaping.apply(h.src_link, rate, delay, netns_name=h.src_netns)
        shaping.apply(h.link, rate, delay, netns_name=h.netns)
    except (LabError, UsageError):
        shaping.clear(h.src_link, h.src_netns)
        shaping.clear(h.link, h.netns)
        h.rate = h.delay = ""
        raise
    h.rate, h.delay = rate, delay


def _listening(h: LabHost, port: int) -> bool:
    """Does the host's sshd accept connections, as seen from the source's end of the link?"""
    if h.src_netns:
        return edge.listening_in(netns_path(h.src_netns), h.address, port)
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((h.address, port)) == 0


def netns_path(name: str) -> str:
    return os.path.join(netns.NETNS_DIR, name)


def _start_sshd(h: LabHost, sshd_dir: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2]) + os.pathsep + env.get("PYTHONPATH", "")
    argv = [
        "nsenter", f"--net=/run/netns/{h.netns}",
        "unshare", "--mount", "--pid", "--fork", "--propagation", "private",
        sys.executable, "-m", "ctconsole.lab.isolate", str(Path(h.host_dir) / "disk.img"), str(sshd_dir),
    ]
    log = Path(h.host_dir) / "sshd.log"
    with open(log, "ab") as f:
        p = proc.spawn(argv, stdout=f.fileno(), env=env)
    h.sshd = proc.ref(p.pid, "unshare (isolated host)")  # until its child, the sshd, is known
    try:
        proc.wait_for(lambda: p.poll() is not None or _listening(h, SSH_PORT), 20.0,
                      f"the sshd of lab host {h.name} to listen")
    except LabError as exc:
        exc.details.extend(_tail(log))
        raise
    if p.poll() is not None:
        raise LabError(f"the sshd of lab host {h.name} exited (status {p.returncode})", _tail(log))
    # `unshare --pid --fork` waits for its child, the host's init: the sshd (pid 1 in there)
    kids = Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()
    if len(kids) != 1:
        raise LabError(f"lab host {h.name}: cannot find its sshd below unshare {p.pid}")
    h.sshd = proc.ref(int(kids[0]), "sshd (isolated host, pid 1 there)")
    pid = h.sshd.pid
    h.pid_ns = os.stat(f"/proc/{pid}/ns/pid").st_ino
    h.mnt_ns = os.stat(f"/proc/{pid}/ns/mnt").st_ino
    h.net_ns = os.stat(f"/proc/{pid}/ns/net").st_ino
    h.private_devs = sorted({os.stat(f"/proc/{pid}/root{d}").st_dev for d in ("/var/lib", "/run")})


def _tail(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-6:]
    except OSError:
        return []


def _check_ssh(h: LabHost) -> None:
    """Plain ``ssh root@ADDR true`` with root's own configuration: what the operator will run."""
    cp = proc.run(["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", f"root@{h.address}", "true"],
                  check=False, timeout=30)
    if cp.returncode != 0:
        raise LabError(f"ssh root@{h.address} does not work", cp.stderr.strip().splitlines()[-5:])


def indexes_in_use() -> set[int]:
    """Host indexes N whose 198.18.N.x addresses already exist, here or in any named network namespace
    (another lab state dir's hosts, a test's)."""
    out = netns.ip("-o", "-4", "addr", "show", check=False)
    for ns in netns.netns_list():
        out += netns.ip("-o", "-4", "addr", "show", netns=ns, check=False)
    return {int(m) for m in re.findall(rf"inet {re.escape(ADDR_NET)}\.([0-9]+)\.", out)}


def record(name: str, index: int, rate: str, delay: str) -> LabHost:
    return LabHost(
        name=name,
        netns=f"ctlab-{name}",
        address=f"{ADDR_NET}.{index}.2",
        src_netns=f"{SRC_PREFIX}{name}",
        src_address=f"{ADDR_NET}.{index}.1",
        bridge=netns.BRIDGE,
        index=index,
        src_link=f"cti-{name}",
        link=LINK,
        kind="isolated",
        rate=rate,
        delay=delay,
        host_dir=str(state.lab_dir() / "hosts" / name),
    )


def create(st: LabState, h: LabHost) -> None:
    """Make everything ``h`` describes (its record is already saved); raises LabError on failure."""
    if rate := h.rate:
        shaping.rate_bits(rate)
    if h.delay:
        shaping.check_delay(h.delay)
    sshd_dir = _prepare_files(h)
    _link(h)
    _start_sshd(h, sshd_dir)
    state.save(st)
    pub = (sshd_dir / "ssh_host_ed25519_key.pub").read_text()
    sshcfg.add_known_host(h.name, h.address, pub)
    sync_ssh_config(st)
    _check_ssh(h)


def healthy(h: LabHost) -> bool:
    return (
        h.sshd is not None
        and h.sshd.alive()
        and netns.netns_exists(h.netns)
        and netns.link_exists(h.src_link, h.src_netns or None)
        and _listening(h, SSH_PORT)
    )


def processes_inside(h: LabHost) -> list[int]:
    """Every process in the host's mount or network namespace or rooted on its private filesystems."""
    out: list[int] = []
    devs = set(h.private_devs)
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            mnt = os.stat(f"/proc/{entry}/ns/mnt").st_ino
            net = os.stat(f"/proc/{entry}/ns/net").st_ino
            root_dev = os.stat(f"/proc/{entry}/root").st_dev
        except OSError:
            continue
        if (h.mnt_ns and mnt == h.mnt_ns) or (h.net_ns and net == h.net_ns) or root_dev in devs:
            out.append(int(entry))
    return out


def _kill_inside(h: LabHost) -> None:
    if h.sshd is not None:
        proc.kill(h.sshd)
    for _ in range(5):
        pids = processes_inside(h)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in pids:
            proc.wait_gone(pid, 5.0)


def _loop_devices(image: Path) -> list[str]:
    cp = proc.run(["losetup", "-j", str(image)], check=False)
    return [ln.split(":", 1)[0] for ln in cp.stdout.splitlines() if ln.strip()]


def remove(h: LabHost) -> None:
    """Kill what runs inside, delete the link, netns, known_hosts line and files.

    The caller then drops the record and calls :func:`sync_ssh_config` (and saves).
    """
    from ctconsole.agent.channel import close_shared, parse_destination

    # the SSH connection ctconsole keeps open to the host (ControlPersist) ends with it, not ~15 s later
    with contextlib.suppress(CtError):
        close_shared(parse_destination(h.dest))
    if h.mnt_ns or h.net_ns or h.sshd is not None:
        _kill_inside(h)
    shaping.clear(h.src_link, h.src_netns)
    netns.delete_link(h.src_link, h.src_netns or None)
    if h.src_netns:
        netns.delete_netns(h.src_netns)
    netns.delete_netns(h.netns)
    sshcfg.remove_known_host(h.name)
    d = Path(h.host_dir)
    image = d / "disk.img"
    if image.exists():
        # the loop device goes when the namespace's last mount does (autoclear), shortly after its
        # last process; wait for it so `losetup` shows nothing of ours once del returns
        end = time.monotonic() + 10
        while _loop_devices(image) and time.monotonic() < end:
            time.sleep(0.05)
    from ctconsole.lab.rootfs import remove_tree

    remove_tree(d)
    with contextlib.suppress(OSError):
        d.parent.rmdir()


def sync_ssh_config(st: LabState) -> None:
    """Root's ssh config block and the lab's client key follow the recorded isolated hosts."""
    hosts = [x for x in st.hosts.values() if x.kind == "isolated"]
    sync = {x.name: x.address for x in hosts}
    proxies = {x.name: edge.proxy_command(netns_path(x.src_netns)) for x in hosts if x.src_netns}
    sshcfg.write_lab_config(include_file(), sync, client_key(), proxies)
    if not sync:
        from ctconsole.lab.rootfs import remove_tree

        remove_tree(client_key().parent)


def nsenter_argv(h: LabHost) -> list[str]:
    """Prefix that runs a command inside the host (its mount and network namespaces, cwd /)."""
    if h.kind != "isolated" or h.sshd is None or not h.sshd.alive():
        raise LabError(f"lab host {h.name} is not a running isolated host")
    return ["nsenter", f"--target={h.sshd.pid}", "--mount", "--net", *(["--pid"] if h.pid_ns else []), "--wd=/"]


def run_inside(h: LabHost, argv: list[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` inside the host and return its result (no check: the caller looks at returncode)."""
    return proc.run([*nsenter_argv(h), *argv], check=False, timeout=timeout)


def real_pid(h: LabHost, pid: int) -> int:
    """This host's pid of the process that is ``pid`` inside the isolated host (0 if none).

    What the host's own tools report (a restored pid, ``list --host``) is a pid
    of its pid namespace; ``kill``, ``/proc`` and ``lab status`` here need ours.
    ``NSpid`` lists a process's pid from the outermost namespace inwards, so the
    host's pid is its second field for anything in the host's namespace or below.
    """
    if not h.pid_ns:
        return pid  # an older host that shares this host's pids
    for p in processes_inside(h):
        try:
            fields = next(ln.split()[1:] for ln in Path(f"/proc/{p}/status").read_text().splitlines()
                          if ln.startswith("NSpid:"))
        except (OSError, StopIteration):
            continue
        if len(fields) >= 2 and int(fields[1]) == pid and _pidns_below(p, h.pid_ns):
            return p
    return 0


NS_GET_PARENT = 0xB702  # ioctl _IO(0xb7, 0x2): the parent of a pid (or user) namespace


def _pidns_below(pid: int, ancestor: int) -> bool:
    """``pid``'s pid namespace is ``ancestor`` (an inode) or nested in it (walked up with NS_GET_PARENT)."""
    try:
        fd = os.open(f"/proc/{pid}/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        for _ in range(33):  # the kernel nests pid namespaces at most 32 deep
            if os.fstat(fd).st_ino == ancestor:
                return True
            try:
                parent = fcntl.ioctl(fd, NS_GET_PARENT)
            except OSError:  # EPERM above our own namespace: the top was reached
                return False
            os.close(fd)
            fd = parent
        return False
    finally:
        os.close(fd)


def path_inside(h: LabHost, path: str) -> str:
    """The real-host path that shows ``path`` as the isolated host sees it (through its sshd's root)."""
    if h.sshd is None:
        raise LabError(f"lab host {h.name} has no sshd")
    return f"/proc/{h.sshd.pid}/root{path}"
