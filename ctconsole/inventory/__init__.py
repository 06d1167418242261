"""Inventory: which containers run here and what ties each of them to the outside.

Public API (UI-free; no textual/rich imports, no pyroute2):

- :func:`scan` - every container (``full=True`` adds sockets, ttys, fds, mounts, interfaces);
- :func:`resolve` - one container by id, name, ``pid:N`` or ``tree:N``, in full detail;
- :func:`detail` - refresh a container from :func:`scan` with full detail.

All raise :class:`ctconsole.errors.NotFound` (exit status 2 in the CLI) when a
reference matches nothing or the container vanished meanwhile.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ctconsole.errors import NotFound
from ctconsole.model import Container

if TYPE_CHECKING:  # the scanner is imported when a scan runs, not when the package is
    from ctconsole.inventory.scanner import Snapshot

__all__ = ["detail", "resolve", "scan", "scan_json"]


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
    members, joined = snap.members(init)
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


def scan_json(full: bool = True) -> str:
    """``ctconsole list --json``: the JSON text of :func:`scan`, each container with its ``external_count``.

    The text is exactly ``json.dumps(rows, separators=(",", ":"))`` of what
    :func:`scan` returns. Why a function of its own: building and serialising
    the containers is ~70% of ``list --json`` at 200 containers and every
    container is independent once the host-wide tables (every fd, the host
    netns, the host mounts) are read, so with many containers and a second
    CPU a forked child builds and serialises the second half while this
    process does the first (see :func:`_rows_parallel`); only JSON text
    crosses back, which is far cheaper than pickled objects.
    """
    from ctconsole.inventory.scanner import Snapshot

    snap = Snapshot()
    inits = [i for i in snap.container_inits() if snap.alive(i)]
    rows = _rows_parallel(snap, inits, full) if _use_fork(len(inits)) else None
    if rows is None:
        rows = _rows(snap, inits, full, set())
    return "[" + ",".join(text for _init, _id, text in rows) + "]"


#: below this many containers a fork (~2 ms plus copying back) does not pay
FORK_MIN_CONTAINERS = 24


def _use_fork(n: int) -> bool:
    import threading

    if n < FORK_MIN_CONTAINERS or not hasattr(os, "fork"):
        return False
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    # forking a process that runs other threads can deadlock the child: only the plain CLI forks
    return cpus >= 2 and threading.active_count() == 1


def _row_json(c: Container) -> str:
    import json

    from ctconsole.model import json_default

    row = {**json_default(c), "external_count": len(c.externals())}
    return json.dumps(row, separators=(",", ":"), default=json_default)


def _rows(snap: Snapshot, inits: list[int], full: bool, seen_ids: set[str]) -> list[tuple[int, str, str]]:
    """(init, id, JSON text) per container, in ``inits`` order, ids made unique as :func:`scan` does."""
    out = []
    for init in inits:
        if not snap.alive(init):
            continue
        try:
            c = _build_for_init(snap, init, full)
        except _Vanished:
            continue
        if c.id in seen_ids:
            from dataclasses import replace

            c = replace(c, id=f"{c.id}@{init}")
        seen_ids.add(c.id)
        out.append((init, c.id, _row_json(c)))
    return out


def _split(snap: Snapshot, inits: list[int]) -> int:
    """Index splitting ``inits`` into two halves of about equal work (members + a per-container cost)."""
    weights = [len(snap.subtree(i)) + 4 for i in inits]
    half, acc = sum(weights) / 2, 0
    for k, w in enumerate(weights):
        acc += w
        if acc >= half:
            return k + 1
    return len(inits)


def _rows_parallel(snap: Snapshot, inits: list[int], full: bool) -> list[tuple[int, str, str]] | None:
    """:func:`_rows` for the first half here and the second half in a forked child.

    The host-wide tables are read before the fork so both processes share
    them. The child starts with the network namespaces a one-process scan
    would already have met (``Snapshot.earlier_inits``), so veth peers are
    found exactly as in :func:`scan`. A duplicate id across the halves is
    rebuilt here; a child that fails is replaced by building its half here.
    Returns None when the fork itself fails (the caller scans in one process).
    """
    import pickle

    if full:
        snap.build_fd_index()
        snap.masters()
        snap.host_netns().resolve(set())
        snap.host_mounts()
    snap.runc_states()
    snap.same_pidns(0)  # the pid-namespace index every container's member list needs
    k = _split(snap, inits)
    first, second = inits[:k], inits[k:]
    try:
        rfd, wfd = os.pipe()
    except OSError:
        return None
    try:
        pid = os.fork()
    except OSError:
        os.close(rfd)
        os.close(wfd)
        return None
    if pid == 0:  # the child: build the second half, send it, never return into the caller
        status = 1
        try:
            os.close(rfd)
            snap.earlier_inits = first
            data = pickle.dumps(_rows(snap, second, full, set()), protocol=pickle.HIGHEST_PROTOCOL)
            view = memoryview(data)
            while view:
                view = view[os.write(wfd, view) :]
            status = 0
        finally:
            os._exit(status)
    os.close(wfd)
    rows: list[tuple[int, str, str]] = []
    child_rows: list[tuple[int, str, str]] | None = None
    try:
        seen: set[str] = set()
        rows = _rows(snap, first, full, seen)
        chunks = []
        while True:
            chunk = os.read(rfd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(rfd)
        _, status = os.waitpid(pid, 0)
    if status == 0:
        try:
            child_rows = pickle.loads(b"".join(chunks))
        except Exception:  # a truncated or garbled answer: build that half here instead
            child_rows = None
    if child_rows is None:
        return rows + _rows(snap, second, full, seen)
    for init, cid, text in child_rows:
        if cid in seen:  # the same runtime id in both halves: rebuild it here, renamed as scan() would
            rows.extend(_rows(snap, [init], full, seen))
            continue
        seen.add(cid)
        rows.append((init, cid, text))
    return rows


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
