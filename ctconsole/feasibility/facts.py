"""Local /proc facts the shared model does not carry (SysV maps, device maps, vfork, memory).

Why here and not in the inventory: these only matter to the checker, are cheap
to read for one tree, and are read only when the container runs on this host.
Everything tolerates processes vanishing mid-read.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import socket
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path

from ctconsole.feasibility.catalogue import HostFacts
from ctconsole.model import Container, Socket

_SYS_KCMP = 312  # x86_64
_KCMP_VM = 0
_SYS_PIDFD_GETFD = 438
CAP_SYS_RESOURCE = 24
SOL_UDP, UDP_CORK = 17, 1
SO_PEERNAME = 28
PIDFD_THREAD = os.O_EXCL  # include/uapi/linux/pidfd.h


def _kcmp_vm(a: int, b: int) -> bool:
    """True when two processes share one mm (kcmp(KCMP_VM) == 0)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.syscall(_SYS_KCMP, a, b, _KCMP_VM, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _scan_smaps(pid: int) -> tuple[bool, list[str]]:
    """(has a SysV shm mapping, device mappings with VmFlags io/pf)."""
    sysv = False
    dev: list[str] = []
    name = ""
    try:
        text = Path(f"/proc/{pid}/smaps").read_text()
    except OSError:
        return False, []
    for line in text.splitlines():
        first = line.split(" ", 1)[0]
        if "-" in first and not first.endswith(":"):
            parts = line.split(None, 5)
            name = parts[5].strip() if len(parts) > 5 else ""
            if name.startswith("/SYSV"):
                sysv = True
        elif line.startswith("VmFlags:"):
            flags = set(line.split()[1:])
            if flags & {"io", "pf"} and not name.startswith("[v"):
                dev.append(name or "anonymous device mapping")
    return sysv, dev


def _linkdown_routes(pid: int) -> list[str]:
    """Routes marked linkdown in pid's netns (CRIU's `ip route restore` rejects them)."""
    out: list[str] = []
    for fam in ("-4", "-6"):
        try:
            r = subprocess.run(
                ["nsenter", f"--net=/proc/{pid}/ns/net", "ip", fam, "-j", "route", "show", "table", "all"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            routes = json.loads(r.stdout or "[]")
        except (OSError, subprocess.SubprocessError, ValueError):
            continue
        for rt in routes:
            if "linkdown" in rt.get("flags", []):
                out.append(f"{rt.get('dst', '?')} dev {rt.get('dev', '?')}")
    return out


def _mount_ids(pid: int) -> set[int]:
    try:
        return {int(ln.split()[0]) for ln in Path(f"/proc/{pid}/mountinfo").read_text().splitlines() if ln}
    except (OSError, ValueError):
        return set()


def _foreign_fds(pid: int, mnt_ids: set[int]) -> list[tuple[int, int, str, int, int]]:
    """Path-backed fds whose mount is not in the container's mount namespace (any kind:
    regular files, directories, device nodes such as an inherited /dev/null)."""
    out: list[tuple[int, int, str, int, int]] = []
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for name in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
            if not target.startswith("/") or target.startswith(("/memfd:", "/secretmem")):
                continue
            mnt = 0
            for line in Path(f"/proc/{pid}/fdinfo/{name}").read_text().splitlines():
                if line.startswith("mnt_id:"):
                    mnt = int(line.split()[1])
            if mnt and mnt not in mnt_ids:
                out.append((pid, int(name), target, mnt, os.stat(f"/proc/{pid}/fd/{name}").st_ino))
        except (OSError, ValueError):
            continue
    return out


def _caps(pid: int | str = "self") -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _creds(pid: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(real, effective, saved uids), (the same gids) from /proc/PID/status."""
    uids: tuple[int, ...] = ()
    gids: tuple[int, ...] = ()
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                uids = tuple(int(x) for x in line.split()[1:4])
            elif line.startswith("Gid:"):
                gids = tuple(int(x) for x in line.split()[1:4])
    except (OSError, ValueError):
        pass
    return uids, gids


def foreign_creds(container: Container) -> list[tuple[int, str]]:
    """Tasks CRIU cannot read rlimits of: kernel/sys.c check_prlimit_permission() lets a caller
    whose uid/gid differ from the task's real, effective and saved ids through only with
    CAP_SYS_RESOURCE in the task's user namespace. CRIU runs as root with our capabilities; a task
    in a user namespace of its own is left alone (root owns it, so has every capability there)."""
    if _caps() & (1 << CAP_SYS_RESOURCE):
        return []
    me_uid, me_gid = os.getuid(), os.getgid()
    try:
        my_userns = os.stat("/proc/self/ns/user").st_ino
    except OSError:
        return []
    out: list[tuple[int, str]] = []
    for p in container.processes:
        try:
            if os.stat(f"/proc/{p.pid}/ns/user").st_ino != my_userns:
                continue
        except OSError:
            continue
        uids, gids = _creds(p.pid)
        if not uids or not gids:
            continue
        if any(u != me_uid for u in uids) or any(g != me_gid for g in gids):
            out.append((p.pid, f"uid {uids[1]} gid {gids[1]}"))
    return out


def _pidfd_getfd(pid: int, fd: int) -> int:
    """A duplicate of ``pid``'s ``fd`` in this process (pidfd_getfd(2)); -1 if not allowed."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return -1
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0))
    finally:
        os.close(pidfd)


def _borrowed(sockets: Iterable[Socket]) -> Iterator[tuple[Socket, socket.socket]]:
    """Each socket with a duplicate of its first holder's fd, to ask the socket itself what no diag
    reports; the duplicate is only read and is closed before the next one is taken."""
    for s in sockets:
        for h in s.holders[:1]:
            fd = _pidfd_getfd(h.pid, h.fd)
            if fd < 0:
                continue
            try:
                sk = socket.socket(fileno=fd)
            except OSError:
                os.close(fd)
                continue
            with sk:
                yield s, sk


def corked_udp(container: Container) -> list[int]:
    """UDP/UDPlite sockets with UDP_CORK set. sk-inet.c refuses every corked datagram socket
    ('Can't dump corked dgram socket'), queued data or not, and no diag reports the option, so
    we ask the socket itself through a duplicate of the holder's fd (read-only, closed at once)."""
    out: list[int] = []
    udp = [s for s in container.sockets
           if s.family in ("inet", "inet6") and s.type == "dgram" and s.protocol in ("udp", "udplite")]
    for s, sk in _borrowed(udp):
        with contextlib.suppress(OSError):
            if sk.getsockopt(SOL_UDP, UDP_CORK):
                out.append(s.inode)
    return out


def closed_tcp_peers(container: Container) -> list[int]:
    """TCP sockets sock_diag does not report (closed: reset by the peer, or closed after connect) that
    still have a peer port. sk-inet.c gen_uncon_sk reads it with getsockopt(SO_PEERNAME), which, unlike
    getpeername(), answers for a closed socket; on restore any TCP entry with a destination port is
    treated as a connection ('Connected TCP socket in image' without tcp_established)."""
    out: list[int] = []
    closed = [s for s in container.sockets
              if s.family in ("inet", "inet6") and s.type == "stream" and not s.state and not s.remote]
    for s, sk in _borrowed(closed):
        with contextlib.suppress(OSError):
            size = 16 if s.family == "inet" else 28  # sockaddr_in / sockaddr_in6 exactly (else EINVAL)
            raw = sk.getsockopt(socket.SOL_SOCKET, SO_PEERNAME, size)  # the port is at bytes 2..4
            if len(raw) >= 4 and int.from_bytes(raw[2:4], "big"):
                out.append(s.inode)
    return out


def breaking_leases(container: Container) -> list[tuple[int, int]]:
    """(pid, inode) of leases the tree holds that are being broken (``LEASE BREAKING`` in /proc/locks)."""
    pids = {p.pid for p in container.processes}
    out: list[tuple[int, int]] = []
    try:
        text = Path("/proc/locks").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        cols = line.split()
        if "->" in cols or len(cols) < 6 or cols[1] != "LEASE" or cols[2] != "BREAKING":
            continue
        try:
            pid, ino = int(cols[4]), int(cols[5].rsplit(":", 1)[1])
        except (ValueError, IndexError):
            continue
        if pid in pids:
            out.append((pid, ino))
    return out


def pidfds(container: Container) -> list[tuple[int, int, int, bool]]:
    """Every pidfd with the pid it refers to and whether it is a thread pidfd (fdinfo flags)."""
    out: list[tuple[int, int, int, bool]] = []
    for f in container.fds:
        if f.kind != "pidfd":
            continue
        for h in f.holders:
            flags, target = 0, 0
            try:
                for line in Path(f"/proc/{h.pid}/fdinfo/{h.fd}").read_text().splitlines():
                    if line.startswith("flags:"):
                        flags = int(line.split()[1], 8)
                    elif line.startswith("Pid:"):
                        target = int(line.split()[1])
            except (OSError, ValueError, IndexError):
                continue
            out.append((h.pid, h.fd, target, bool(flags & PIDFD_THREAD)))
    return out


def timens_for_children(container: Container) -> list[int]:
    """Tasks that unshared a time namespace for their children without entering it (namespaces.c
    dump_task_ns_ids: 'Can't dump nested time namespace'); the inventory does not read that link."""
    out = []
    for p in container.processes:
        try:
            if os.stat(f"/proc/{p.pid}/ns/time").st_ino != os.stat(f"/proc/{p.pid}/ns/time_for_children").st_ino:
                out.append(p.pid)
        except OSError:
            continue
    return out


def gather(container: Container) -> HostFacts:
    """Facts for a container whose processes are visible in this host's /proc."""
    sysv: list[int] = []
    devmaps: list[tuple[int, str]] = []
    vfork: list[int] = []
    rss = anon = 0
    children: dict[int, list[int]] = {}
    for p in container.processes:
        children.setdefault(p.ppid, []).append(p.pid)
    for p in container.processes:
        if not os.path.exists(f"/proc/{p.pid}"):
            continue
        has_sysv, dev = _scan_smaps(p.pid)
        if has_sysv:
            sysv.append(p.pid)
        devmaps.extend((p.pid, d) for d in dev)
        rss += _status_kb(p.pid, "VmRSS")
        anon += _status_kb(p.pid, "RssAnon") + _status_kb(p.pid, "RssShmem")
        if p.state == "D" and any(_kcmp_vm(p.pid, c) for c in children.get(p.pid, [])):
            vfork.append(p.pid)
    foreign: list[tuple[int, int, str, int, int]] = []
    if container.has_own("mnt") and container.init_pid:
        ids = _mount_ids(container.init_pid)
        if ids:
            for p in container.processes:
                foreign.extend(_foreign_fds(p.pid, ids))
    linkdown: list[str] = []
    if container.has_own("net") and container.init_pid:
        linkdown = _linkdown_routes(container.init_pid)
    return HostFacts(
        foreign_creds=tuple(foreign_creds(container)),
        corked_udp=tuple(corked_udp(container)),
        pidfds=tuple(pidfds(container)),
        timens_for_children=tuple(timens_for_children(container)),
        closed_tcp_peers=tuple(closed_tcp_peers(container)),
        breaking_leases=tuple(breaking_leases(container)),
        linkdown_routes=tuple(linkdown),
        foreign_mount_fds=tuple(foreign),
        sysv_shm_pids=tuple(sysv),
        device_map_pids=tuple(devmaps),
        vfork_parents=tuple(vfork),
        rss_bytes=rss,
        anon_bytes=anon,
    )
