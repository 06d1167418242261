"""Network-namespace cleanup on the source: what CRIU may leave behind in the container's netns.

Why: a CRIU that died mid-dump leaves its network lock in the container's
netns (:func:`clear_criu_netlock`). Where the dump runs is no longer a
question: the page channel (post-copy's too) is a unix socket, reached from
any network namespace (ctconsole.migrate.transport).
"""

from __future__ import annotations

import os
import subprocess


def ns_inode(pid: int | str, kind: str) -> int:
    """Inode of ``/proc/PID/ns/KIND`` (0 when unreadable): equal inodes mean the same namespace."""
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino
    except OSError:
        return 0


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
