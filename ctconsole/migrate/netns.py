"""Network-namespace plumbing on the source: where the dumping CRIU runs, and what CRIU may leave behind.

Why: a destination may be reachable only from another network namespace
(the lab's hosts are reached from ``ctlab-src``; the caller says which in
``MigrationRequest.source_netns``), the post-copy page server must listen
where the destination can reach it, and a CRIU that died mid-dump leaves its
network lock in the container's netns (:func:`clear_criu_netlock`).
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from ctconsole.errors import CtError


def ns_inode(pid: int | str, kind: str) -> int:
    """Inode of ``/proc/PID/ns/KIND`` (0 when unreadable): equal inodes mean the same namespace."""
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino
    except OSError:
        return 0


CLONE_NEWNET = 0x40000000


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run this thread (and the processes it starts, e.g. ``criu swrk``) in netns ``name``.

    Why: a lab host is reachable only from the lab's source namespace, and the
    dumping CRIU must connect to the destination's page server. setns() moves
    only the calling thread; the previous namespace is restored on exit.
    """
    if not name:
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    orig = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        os.close(orig)
        raise CtError(f"cannot open network namespace {name}: {exc.strerror}") from exc
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise CtError(f"cannot enter network namespace {name}: {os.strerror(err)}")
        try:
            yield
        finally:
            if libc.setns(orig, CLONE_NEWNET) != 0:
                raise CtError("cannot return to the original network namespace")
    finally:
        os.close(target)
        os.close(orig)


def clear_criu_netlock(pid: int) -> bool:
    """Remove CRIU's iptables network lock left in a resumed tree's own netns.

    Why: CRIU locks a dumped netns with a ``CRIU`` chain (DROP all but its
    marked packets) and unlocks it when it resumes the tree. If CRIU itself
    dies while the tree is frozen (ctconsole killed mid-migration), the tree
    resumes when ptrace lets go but the lock stays: the container runs with no
    network. With iptables-nft the unlock can also leave an empty chain and
    its jumps behind (harmless, but noise). Only touches a netns that is not
    the host's.
    """
    if not pid or ns_inode(pid, "net") in (0, ns_inode(1, "net"), ns_inode("self", "net")):
        return False
    changed = False
    for tool in ("iptables", "ip6tables"):
        base = ["nsenter", "-t", str(pid), "-n", tool, "-w"]
        try:
            if subprocess.run([*base, "-S", "CRIU"], capture_output=True, timeout=10).returncode != 0:
                continue
            for chain in ("INPUT", "OUTPUT"):
                for _ in range(10):
                    if subprocess.run([*base, "-D", chain, "-j", "CRIU"], capture_output=True,
                                      timeout=10).returncode != 0:
                        break
            subprocess.run([*base, "-F", "CRIU"], capture_output=True, timeout=10)
            subprocess.run([*base, "-X", "CRIU"], capture_output=True, timeout=10)
            changed = True
        except (OSError, subprocess.TimeoutExpired):
            continue
    return changed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def local_ipv4(netns: str) -> list[tuple[str, ipaddress.IPv4Network | ipaddress.IPv6Network]]:
    """Global IPv4 addresses (with their networks) in ``netns`` ("" = ours)."""
    argv = ["ip", *(["-n", netns] if netns else []), "-j", "-4", "addr", "show"]
    try:
        data = json.loads(subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout or "[]")
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return []
    out = []
    for link in data:
        for a in link.get("addr_info", []):
            if a.get("scope") == "global" and a.get("local"):
                out.append((a["local"], ipaddress.ip_network(f"{a['local']}/{a.get('prefixlen', 32)}", strict=False)))
    return out


def wait_listen(port: int, timeout: float) -> None:
    """Wait until something listens on TCP ``port`` in this thread's netns (CRIU's lazy page server).

    Reads /proc/thread-self/net/tcp{,6} instead of connecting: the page server
    accepts exactly one connection, which must be the lazy-pages daemon's.
    """
    end = time.monotonic() + timeout
    want = f":{port:04X}"
    while time.monotonic() < end:
        for name in ("tcp", "tcp6"):
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/thread-self/net/{name}").read_text().splitlines()[1:]:
                    f = line.split()
                    if len(f) > 3 and f[1].endswith(want) and f[3] == "0A":
                        return
        time.sleep(0.01)
    raise CtError(f"CRIU's lazy page server did not start listening on port {port}")
