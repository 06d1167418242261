"""Terminals: pair pts slaves in the container with the ptmx masters that serve them.

Why: CRIU refuses a pts slave whose master is outside the dumped tree ("Unable
to find a master for /N"), and that is exactly what libvirt_lxc, the LXC
monitor, sshd or an operator's terminal hold. The kernel says which pty a
master serves only in ``/proc/PID/fdinfo/N`` (``tty-index:``), and pts numbers
repeat across devpts instances, so a master is matched on (devpts st_dev, index).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from ctconsole.inventory import procfs
from ctconsole.model import External, FdRef, Tty


@dataclass(frozen=True)
class Master:
    """One open ptmx master fd: which pty it serves and in which devpts instance."""

    ref: FdRef
    index: int
    devpts: int  # st_dev of the devpts instance, 0 when unknown


def _devpts_of_master(pid: int, fd: int, link: str, mnt_id: int) -> int:
    """st_dev of the devpts instance a ptmx fd belongs to.

    /dev/pts/ptmx (or a runtime's private ``.../devpts/ptmx``) lives on the
    devpts itself; /dev/ptmx on devtmpfs opens the devpts mounted at ``pts``
    beside it, looked up in the holder's own mount namespace via /proc/PID/root.
    """
    st = procfs.fd_stat(pid, fd)
    if st is None:
        return 0
    mounts = procfs.read_mountinfo(pid) or []
    fstype = next((m.fstype for m in mounts if m.mount_id == mnt_id), "")
    if fstype == "devpts":
        return st.st_dev
    try:
        return os.stat(f"{procfs.PROC}/{pid}/root{os.path.dirname(link)}/pts").st_dev
    except OSError:
        return 0


def find_masters(ptmx_fds: list[tuple[int, int, str]]) -> list[Master]:
    """Masters among candidate fds (any fd whose link ends in ``ptmx``), skipping vanished ones."""
    out = []
    for pid, fd, link in ptmx_fds:
        info = procfs.read_fdinfo(pid, fd)
        if info is None or info.tty_index < 0:
            continue
        out.append(Master(FdRef(pid, fd), info.tty_index, _devpts_of_master(pid, fd, link, info.mnt_id)))
    return out


def pts_index(rdev: int) -> int:
    return (os.major(rdev) - 136) * 256 + os.minor(rdev)


def make_tty(
    path: str,
    kind: str,
    rdev: int,
    dev: int,
    holders: tuple[FdRef, ...],
    masters: list[Master],
    members: set[int],
    describe: Callable[[int], str],
    master_index: int = -1,
) -> Tty:
    """A Tty item; a pts slave whose master is held only outside the container is external.

    ``master_index`` is the ``tty-index`` of a ptmx master fd, so a master and
    its slave can be paired by index (as CRIU does).
    """
    index = pts_index(rdev) if kind == "pts" else master_index
    ext = None
    master_holder = ""
    if kind == "pts":
        mine = [m for m in masters if m.index == index and m.devpts == dev]
        if not mine:  # devpts of the master unknown: fall back to the index when it is unambiguous
            loose = [m for m in masters if m.index == index and m.devpts == 0]
            mine = loose if len({m.ref.pid for m in loose}) == 1 else []
        inside = [m for m in mine if m.ref.pid in members]
        outside = [m for m in mine if m.ref.pid not in members]
        if inside:
            master_holder = describe(inside[0].ref.pid)
        elif outside:
            master_holder = describe(outside[0].ref.pid)
            key = f"tty[{rdev:x}:{dev:x}]"
            ext = External(
                reason=f"terminal {path} (pts {index}) is driven by {master_holder} outside the "
                "container, which holds its ptmx master",
                remedy=f"remap rule `tty` (CRIU orphan_pts_master, RPC only), or shell_job / "
                f"external {key} + inherit_fd {key} on restore",
                holder=master_holder,
            )
        else:
            ext = External(
                reason=f"terminal {path} (pts {index}) has no master open in any process "
                "(hung up, or held by something we cannot read)",
                remedy="shell_job (restore inherits the terminal), or close it before the dump",
            )
    return Tty(
        path=path,
        kind=kind,
        rdev=rdev,
        index=index,
        master_holder=master_holder,
        holders=holders,
        external=ext,
    )
