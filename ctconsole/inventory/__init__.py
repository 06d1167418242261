"""Inventory: which containers run here and what ties each of them to the outside.

Public API (UI-free; no textual/rich imports, no pyroute2):

- :func:`scan` - every container (``full=True`` adds sockets, ttys, fds, mounts, interfaces);
- :func:`resolve` - one container by id, name, ``pid:N`` or ``tree:N``, in full detail;
- :func:`detail` - refresh a container from :func:`scan` with full detail.

All raise :class:`ctconsole.errors.NotFound` (exit status 2 in the CLI) when a
reference matches nothing or the container vanished meanwhile.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ctconsole.errors import NotFound
from ctconsole.model import Container

if TYPE_CHECKING:  # the scanner is imported when a scan runs, not when the package is
    from ctconsole.inventory.scanner import Snapshot

__all__ = ["detail", "resolve", "scan"]


def _containers(snap: Snapshot, full: bool) -> list[Container]:
    out = []
    seen_ids: set[str] = set()
    for init in snap.container_inits():
        if not snap.alive(init):
            continue
        try:
            c = _build_for_init(snap, init, full)
        except _Vanished:
            continue  # exited while we looked at it
        if c.id in seen_ids:  # two containers claiming one runtime id: keep both, distinguishable
            from dataclasses import replace

            c = replace(c, id=f"{c.id}@{init}")
        seen_ids.add(c.id)
        out.append(c)
    return out


class _Vanished(Exception):
    pass


def _build_for_init(snap: Snapshot, init: int, full: bool) -> Container:
    from ctconsole.inventory.scanner import build_container

    if init not in snap.stats:
        raise _Vanished
    info = snap.runtime_of(init)
    members = snap.subtree(init)
    pidns = snap.pidns(init)
    host_pidns = snap.host_ns.get("pid")
    joined: set[int] = set()
    if pidns and pidns != host_pidns:
        tree = set(members)
        joined = {pid for pid in snap.same_pidns(pidns) if pid not in tree}
        members = sorted(tree | joined)
    c = build_container(snap, init, members, info, deep=full, joined=joined)
    if not c.processes:
        raise _Vanished
    return c


def _build_tree(snap: Snapshot, root: int, full: bool) -> Container:
    from ctconsole.inventory.runtimes import RuntimeInfo
    from ctconsole.inventory.scanner import build_container

    st = snap.stats.get(root)
    if st is None:
        raise NotFound(f"tree:{root}: there is no process {root}")
    info = RuntimeInfo("tree", f"tree:{root}", f"{st.comm}-{root}", controller_pid=0)
    c = build_container(snap, root, snap.subtree(root), info, deep=full)
    if not c.processes:
        raise NotFound(f"tree:{root}: process {root} exited during the scan")
    return c


def scan(full: bool = False) -> list[Container]:
    """Every container on this host, kernel-discovered and named by its runtime.

    The default is the fast, shallow list (processes, namespaces, cgroups,
    runtime facts). ``full=True`` also fills sockets, ttys, devices, fds,
    files, mounts and interfaces, sharing one fd/netns pass across containers.
    """
    from ctconsole.inventory.scanner import Snapshot

    return _containers(Snapshot(), full)


def _parse_num(ref: str, prefix: str) -> int:
    text = ref[len(prefix) :]
    if not text.isdigit():
        raise NotFound(f"{ref!r}: expected {prefix}N with N a process id")
    return int(text)


def resolve(ref: str) -> Container:
    """One container in full detail, by id, name, id prefix, ``pid:N`` or ``tree:N``."""
    from ctconsole.inventory.scanner import Snapshot

    ref = ref.strip()
    snap = Snapshot()
    if ref.startswith("tree:"):
        return _build_tree(snap, _parse_num(ref, "tree:"), full=True)
    if ref.startswith("pid:"):
        pid = _parse_num(ref, "pid:")
        if pid not in snap.stats:
            raise NotFound(f"pid:{pid}: there is no process {pid}")
        best: tuple[int, int] | None = None  # (member count, init) - the innermost container wins
        for init in snap.container_inits():
            members = set(snap.subtree(init))
            pidns = snap.pidns(init)
            if pid in members or (pidns and pidns != snap.host_ns.get("pid") and snap.pidns(pid) == pidns):
                cand = (len(members), init)
                best = cand if best is None or cand < best else best
        if best is None:
            raise NotFound(
                f"pid:{pid}: process {snap.describe(pid)} is not inside a container",
                [f"use tree:{pid} to inspect its process subtree instead"],
            )
        try:
            return _build_for_init(snap, best[1], full=True)
        except _Vanished:
            raise NotFound(f"pid:{pid}: its container exited during the scan") from None
    shallow = _containers(snap, full=False)
    match = [c for c in shallow if ref in (c.id, c.name)]
    if not match and len(ref) >= 3:
        match = [c for c in shallow if c.id.startswith(ref)]
    if not match:
        known = ", ".join(sorted(c.name for c in shallow)[:10]) or "none found"
        raise NotFound(
            f"no container matches {ref!r}",
            [f"containers here: {known}", "a reference is an id, a name, pid:N or tree:N"],
        )
    if len(match) > 1:
        raise NotFound(
            f"{ref!r} is ambiguous: it matches {', '.join(c.id for c in match[:5])}",
            ["use the full id"],
        )
    try:
        return _build_for_init(snap, match[0].init_pid, full=True)
    except _Vanished:
        raise NotFound(f"container {ref!r} exited during the scan") from None


def detail(container: Container) -> Container:
    """The same container re-read in full detail (raises NotFound when it has gone)."""
    from ctconsole.inventory.scanner import Snapshot

    snap = Snapshot()
    if container.runtime == "tree":
        return _build_tree(snap, container.init_pid, full=True)
    st = snap.stats.get(container.init_pid)
    if st is None or container.init_pid not in snap.container_inits():
        raise NotFound(f"container {container.name} ({container.id}) has gone: init pid {container.init_pid} exited")
    try:
        return _build_for_init(snap, container.init_pid, full=True)
    except _Vanished:
        raise NotFound(f"container {container.name} ({container.id}) exited during the scan") from None
