"""Give an agent started by ``ip netns exec`` the host's cgroup mounts back.

Why: ``ip netns exec`` unshares the mount namespace and mounts a fresh sysfs
on ``/sys`` (so ``/sys/class/net`` shows the namespace's links); everything
that was mounted below ``/sys`` — the cgroup hierarchies under
``/sys/fs/cgroup`` — is gone for the agent and for the CRIU it starts. A real
destination host has them, and restores need them: a runc container's cgroup
mounts are bind mounts of ``/sys/fs/cgroup/CTRL/ID`` that CRIU reopens by
path (``mnt-v2: Failed to open_tree /sys/fs/cgroup/cpu/ctlab-runc``). So when
the agent runs in its own mount namespace and lacks cgroup mounts that PID 1
has, it mounts the same hierarchies again (a cgroup v1 mount with the same
controllers attaches to the existing hierarchy; cgroup2 has only one). The
mounts stay in the agent's private namespace (``ip netns exec`` made ``/``
a slave), so the host is not touched.
"""

from __future__ import annotations

import contextlib
import os
import subprocess

CGROUP_ROOT = "/sys/fs/cgroup"


def _mounts(pid: str) -> list[tuple[str, str, str, str]]:
    """(root, mountpoint, fstype, super options) of ``pid``'s mount namespace."""
    out = []
    try:
        with open(f"/proc/{pid}/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                a, b = left.split(), right.split()
                if len(a) >= 5 and len(b) >= 3:
                    out.append((a[3], a[4], b[0], b[2]))
    except OSError:
        return []
    return out


def _ns(pid: str) -> int:
    try:
        return os.stat(f"/proc/{pid}/ns/mnt").st_ino
    except OSError:
        return 0


def restore_cgroup_view() -> list[str]:
    """Mount the host's cgroup hierarchies under /sys/fs/cgroup if this namespace lost them.

    Returns the mount points made (empty when nothing was missing, when this
    is the host's own mount namespace, or when mounting failed).
    """
    if _ns("self") in (0, _ns("1")):
        return []
    ours = _mounts("self")
    if any(mp == CGROUP_ROOT or mp.startswith(CGROUP_ROOT + "/") for _r, mp, _t, _o in ours):
        return []
    host = [(mp, fstype, opts) for root, mp, fstype, opts in _mounts("1")
            if root == "/" and fstype in ("cgroup", "cgroup2") and mp.startswith(CGROUP_ROOT + "/")]
    if not host or not os.path.isdir(CGROUP_ROOT):
        return []
    made: list[str] = []

    def mount(*argv: str) -> bool:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            return subprocess.run(["mount", *argv], capture_output=True, timeout=10).returncode == 0
        return False

    if not mount("-t", "tmpfs", "-o", "mode=755,nosuid,nodev,noexec", "cgroup_root", CGROUP_ROOT):
        return []
    for mp, fstype, opts in host:
        with contextlib.suppress(OSError):
            os.makedirs(mp, exist_ok=True)
        keep = ",".join(o for o in opts.split(",") if o not in ("rw", "ro"))
        argv = ["-t", fstype, *(["-o", keep] if keep else []), fstype, mp]
        if mount(*argv):
            made.append(mp)
    return made
