"""Pieces every lab runtime shares: finding a container's processes, its counter, stopping it.

Why by root directory: after a checkpoint/restore (or a crash of ctconsole) the
recorded init pid may be stale, yet processes whose root is a lab rootfs are
still lab containers, and nothing else on the host can have that root. So
stopping a container kills exactly the processes rooted in its rootfs (plus
the recorded helpers), never anything matched by name.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from ctconsole.lab import netns
from ctconsole.lab.proc import ProcRef, kill, ref, start_time, wait_gone
from ctconsole.lab.rootfs import COUNTER_REL, remove_tree
from ctconsole.lab.state import Ctx, LabContainer


def pids_rooted_at(rootfs: str) -> list[int]:
    """Pids whose root directory (``/proc/PID/root``) is ``rootfs`` (same device and inode)."""
    try:
        st = os.stat(rootfs)
    except OSError:
        return []
    key = (st.st_dev, st.st_ino)
    out: list[int] = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            s = os.stat(f"/proc/{name}/root")
        except OSError:
            continue
        if (s.st_dev, s.st_ino) == key and name != "1":
            out.append(int(name))
    return out


def read_counter(path: str | Path) -> list[int]:
    """The counter values written so far (a partial last line is ignored)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    lines = text.split("\n")
    return [int(x) for x in lines[:-1] if x.strip().isdigit()]


def last_counter(path: str | Path) -> int:
    ticks = read_counter(path)
    return ticks[-1] if ticks else 0


def reset_counter(path: str | Path) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("")


def same_root(pid: int, path: str) -> bool:
    """Whether ``pid``'s root directory is ``path`` (same device and inode)."""
    try:
        a, b = os.stat(f"/proc/{pid}/root"), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def copies_on_hosts(rootfs: str) -> dict[str, str]:
    """Isolated lab host name -> real-host path of its copy of ``rootfs`` (where such a copy exists).

    Why: a container migrated to an isolated host runs from a copy of its root at
    the same path on that host's own filesystem; from here that copy is reached
    through the host's sshd (``/proc/SSHD/root/PATH``).
    """
    from ctconsole.lab import state

    out: dict[str, str] = {}
    for h in state.load().hosts.values():
        if h.kind != "isolated" or h.sshd is None or not h.sshd.alive():
            continue
        path = f"/proc/{h.sshd.pid}/root{rootfs}"
        if os.path.isdir(path):
            out[h.name] = path
    return out


def nspid_is_init(pid: int) -> bool:
    """Whether ``pid`` is the init (pid 1) of a pid namespace below ours."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return line.split()[-1] == "1" and len(line.split()) > 2
    except OSError:
        pass
    return False


def running_on_hosts(name: str) -> list[tuple[str, int]]:
    """(isolated lab host, init pid) of each copy of lab container ``name`` running on an isolated host.

    Why by hostname and not by path: a migration may carry the root to another
    path on the destination (its storage dir), so the copy is recognised as a
    pid-namespace init inside the host whose UTS hostname is the container's
    name (every lab container sets it) and whose root holds the lab counter.
    """
    from ctconsole.inventory.netlink import uts_hostname
    from ctconsole.lab import isolated, state

    out: list[tuple[str, int]] = []
    for h in state.load().hosts.values():
        if h.kind != "isolated" or h.sshd is None or not h.sshd.alive():
            continue
        for pid in isolated.processes_inside(h):
            if nspid_is_init(pid) and os.path.exists(f"/proc/{pid}/root/{COUNTER_REL}") and uts_hostname(pid) == name:
                out.append((h.name, pid))
    return out


def kill_rooted(rootfs: str) -> None:
    """SIGKILL every process rooted in ``rootfs`` (init first: that ends its pid namespace)."""
    for _ in range(3):
        pids = pids_rooted_at(rootfs)
        if not pids:
            return
        for pid in sorted(pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in pids:
            wait_gone(pid, 5.0)


def stop_processes(c: LabContainer) -> None:
    """Kill the container's init, every process rooted in its rootfs, and our helpers."""
    if c.init is not None:
        kill(c.init)
    kill_rooted(c.rootfs)
    for copy in copies_on_hosts(c.rootfs).values():  # a copy migrated to an isolated lab host
        kill_rooted(copy)
    for _, pid in running_on_hosts(c.name):  # ... or carried to another path there
        kill_rooted(f"/proc/{pid}/root")
    c.host = ""
    for h in c.helpers:
        kill(h)
    c.init = None
    c.helpers = []


def remove_owned(c: LabContainer) -> None:
    """Delete the links and directories recorded as made for this container."""
    for link in c.owned_links:
        netns.delete_link(link)
    c.owned_links = []
    for d in c.owned_dirs:
        remove_tree(Path(d))
    c.owned_dirs = []


def find_init(parent: int, timeout: float = 5.0) -> ProcRef | None:
    """The single child of ``parent`` (unshare --fork and runtimes start one init)."""
    import time

    from ctconsole.lab.proc import children

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        kids = children(parent)
        if kids:
            return ref(kids[0], "init")
        if start_time(parent) < 0:
            return None
        time.sleep(0.01)
    return None


def bridged_record(
    ctx: Ctx,
    *,
    name: str,
    runtime: str,
    root: Path,
    owned_dir: Path,
    address: str,
    host_veth: str,
    runtime_id: str = "",
    runtime_path: str = "",
    share_dir: str = "",
    share_target: str = "",
    unix_socket: str = "",
    tcp_port: int = 0,
) -> LabContainer:
    """The record of a container on the lab bridge: rootfs ``root``, counter inside it, one veth.

    ``owned_dir`` (and the veth) is what ``down`` removes; the rest are :class:`LabContainer` fields.
    """
    return LabContainer(
        name=name,
        runtime=runtime,
        rootfs=str(root),
        counter_file=str(root / COUNTER_REL),
        address=address,
        host_veth=host_veth,
        bridge=ctx.bridge,
        owned_dirs=[str(owned_dir)],
        runtime_id=runtime_id,
        runtime_path=runtime_path,
        share_dir=share_dir,
        share_target=share_target,
        unix_socket=unix_socket,
        tcp_port=tcp_port,
        owned_links=[host_veth],
    )


def log_tail(log: Path) -> list[str]:
    """The last five lines of a runtime's log (none when it cannot be read)."""
    try:
        return log.read_text().splitlines()[-5:]
    except OSError:
        return []


def veth_conflict(host_veth: str) -> str:
    """A host-side veth of this name that the lab's state does not record ("" when none)."""
    if netns.link_exists(host_veth):
        return f"link {host_veth} exists but is not recorded in this lab's state"
    return ""
