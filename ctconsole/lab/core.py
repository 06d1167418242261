"""``lab up``/``down``/``status``/``restart``: bring the demo containers up and tear down what we made.

Why records first: each container's record (its dirs, links, runtime names)
is saved *before* anything is created and updated with pids as they appear,
so an interrupted ``up`` still leaves ``down`` knowing what to remove.
Idempotence: a container whose recorded (or re-discovered, after a
checkpoint/restore) init is alive is kept as it is, which makes a second
``up`` take a few milliseconds.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from ctconsole.lab import common, libvirt, lxc, netns, ns, proc, rootfs, runc, state
from ctconsole.lab.proc import LabError, ProcRef
from ctconsole.lab.state import Ctx, LabContainer, LabState

# short name -> (container name, runtime module name); order = start order
CONTAINERS: dict[str, tuple[str, str]] = {
    "ns": ("ctlab-ns", "ns"),
    "runc": ("ctlab-runc", "runc"),
    "lxc": ("ctlab-lxc", "lxc"),
    "lv": ("ctlab-lv", "libvirt"),
}
ALL_NAMES = tuple(full for full, _ in CONTAINERS.values())
RUNTIME_MODULES: dict[str, ModuleType] = {"ns": ns, "runc": runc, "lxc": lxc, "libvirt": libvirt}


def _module(modname: str) -> ModuleType:
    """The runtime module that starts/stops one lab container (each has record/start/stop/conflict)."""
    return RUNTIME_MODULES[modname]


def resolve(name: str) -> str:
    """``ns`` / ``ctlab-ns`` / ``libvirt`` ... -> the container name; unknown names are a usage error."""
    from ctconsole.errors import UsageError

    for short, (full, modname) in CONTAINERS.items():
        if name in (short, full, modname) or (name == "libvirt-lxc" and short == "lv"):
            return full
    raise UsageError(f"unknown lab container {name!r}", [f"known: {', '.join(ALL_NAMES)}"])


def _modname(full: str) -> str:
    return next(m for f, m in CONTAINERS.values() if f == full)


@dataclass
class UpReport:
    """What ``up`` did per container: started, kept or failed (with the reason)."""

    state: LabState
    started: list[str]
    kept: list[str]
    failed: dict[str, str]


def _ctx(st: LabState) -> Ctx:
    return Ctx(lab=Path(st.root), bridge=st.bridge, hostd_socket=str(Path(st.root) / "hostd.sock"))


def _ensure_hostd(st: LabState) -> None:
    """The host-side UNIX listener the ns container is connected to (a process outside it)."""
    sock = Path(st.root) / "hostd.sock"
    if st.hostd is not None and st.hostd.alive() and sock.exists():
        return
    if st.hostd is not None:
        proc.kill(st.hostd)
    sock.unlink(missing_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2]) + os.pathsep + env.get("PYTHONPATH", "")
    p = proc.spawn([sys.executable, "-m", "ctconsole.lab.hostd", str(sock), str(Path(st.root) / "hostd.log")], env=env)
    st.hostd = proc.ref(p.pid, "hostd")
    state.save(st)
    proc.wait_for(lambda: sock.exists() or p.poll() is not None, 5.0, "the lab host daemon to listen")
    if not sock.exists():
        raise LabError("the lab host daemon (python -m ctconsole.lab.hostd) did not start")


def refresh(c: LabContainer) -> bool:
    """Re-find the init if the recorded one is gone (a restore gives it a new pid); True if running.

    The init is looked for here first, then on the isolated lab hosts (a container
    migrated to one runs from a copy of its root there); ``c.host`` says where.
    """
    if c.init is not None and c.init.alive():
        if not common.same_root(c.init.pid, c.rootfs):
            c.host = next((h for h, pid in common.running_on_hosts(c.name) if pid == c.init.pid), c.host)
        return True
    for pid in common.pids_rooted_at(c.rootfs):
        if nspid_is_init(pid):
            c.init = proc.ref(pid, "init")
            c.host = ""
            return True
    for host, pid in common.running_on_hosts(c.name):
        c.init = proc.ref(pid, f"init (on lab host {host})")
        c.host = host
        return True
    return False


def where(c: LabContainer) -> LabContainer:
    """``c`` with ``counter_file`` pointing at the copy the container writes to now.

    After a migration to an isolated lab host the counter the container appends to
    is the one in its root's copy there (at whatever path the migration carried
    it to); reading it through the restored init's root keeps ``read_counter``
    (and the tests' tick checks) working across the move.
    """
    if c.host and c.init is not None and c.counter_file.startswith(c.rootfs + "/"):
        c.counter_file = f"/proc/{c.init.pid}/root" + c.counter_file[len(c.rootfs) :]
    return c


nspid_is_init = common.nspid_is_init


def _start_one(st: LabState, full: str) -> None:
    mod = _module(_modname(full))
    ctx = _ctx(st)
    old = st.containers.get(full)
    if old is not None:
        mod.stop(old)
    elif why := mod.conflict():
        # e.g. a lab with another state dir: never remove what this lab did not make
        raise LabError(why, ["remove it, or run `ctconsole lab down` with the state dir that made it"])
    c: LabContainer = mod.record(ctx)
    if old is not None:  # keep anything recorded earlier that the new record does not cover
        c.owned_links = sorted(set(c.owned_links) | set(old.owned_links))
        c.owned_dirs = sorted(set(c.owned_dirs) | set(old.owned_dirs))
    st.containers[full] = c
    state.save(st)
    if full == "ctlab-lv":
        vl, ld, note = libvirt.ensure_daemons(ctx.lab, st.virtlogd, st.libvirtd)
        st.virtlogd = st.virtlogd if vl is None and st.virtlogd and st.virtlogd.alive() else vl
        st.libvirtd = st.libvirtd if ld is None and st.libvirtd and st.libvirtd.alive() else ld
        state.save(st)
        c.note = note
    try:
        mod.start(c, ctx)
        c.error = ""
    except LabError as exc:
        c.error = " / ".join([exc.message, *exc.details])
        raise
    finally:
        state.save(st)


def up(names: Iterable[str] | None = None) -> UpReport:
    """Bring the lab up (all containers, or ``names``); running ones are kept.

    A container that cannot start is reported in ``failed`` with the reason;
    the others still come up.
    """
    wanted = [resolve(n) for n in names] if names else list(ALL_NAMES)
    with state.locked():
        st = state.load()
        st.root = str(state.lab_dir())
        st.bridge = netns.BRIDGE
        if not netns.link_exists(st.bridge):
            netns.ensure_bridge(st.bridge)
            st.bridge_created = True
        else:
            netns.ip("link", "set", st.bridge, "up")
        state.save(st)
        rootfs.ensure_base(Path(st.root))
        started: list[str] = []
        kept: list[str] = []
        failed: dict[str, str] = {}
        for full in ALL_NAMES:
            if full not in wanted:
                continue
            c = st.containers.get(full)
            if c is not None and refresh(c) and not c.error:
                kept.append(full)
                continue
            try:
                if full == "ctlab-ns":
                    _ensure_hostd(st)
                _start_one(st, full)
                started.append(full)
            except LabError as exc:
                failed[full] = " / ".join([exc.message, *exc.details])
                if full in st.containers:
                    st.containers[full].error = failed[full]
                state.save(st)
        state.save(st)
        return UpReport(st, started, kept, failed)


def restart(name: str) -> LabContainer:
    """Stop one lab container (and anything restored from it) and start it fresh, counter from 1.

    Why: migration tests kill or move the source; the next test wants a clean one.
    """
    full = resolve(name)
    with state.locked():
        st = state.load()
        if not st.root or not st.bridge:
            raise LabError("the lab is not up (run `ctconsole lab up` first)")
        if full == "ctlab-ns":
            _ensure_hostd(st)
        _start_one(st, full)
        return st.containers[full]


def stop(name: str) -> None:
    """Stop one lab container (its processes and runtime objects) but keep its record and files."""
    full = resolve(name)
    with state.locked():
        st = state.load()
        c = st.containers.get(full)
        if c is None:
            return
        _module(_modname(full)).stop(c)
        state.save(st)


def adopt(name: str, pid: int) -> LabContainer:
    """Record ``pid`` as the container's init (e.g. after a restore elsewhere), so ``down`` kills it."""
    full = resolve(name)
    with state.locked():
        st = state.load()
        c = st.containers.get(full)
        if c is None:
            raise LabError(f"{full} is not part of the lab")
        c.init = proc.ref(pid, "init (adopted)")
        state.save(st)
        return c


def status() -> LabState:
    """The recorded lab with each container's init re-checked (not saved: status changes nothing)."""
    st = state.load()
    order = {n: i for i, n in enumerate(ALL_NAMES)}
    st.containers = dict(sorted(st.containers.items(), key=lambda kv: order.get(kv[0], 99)))
    for c in st.containers.values():
        if not refresh(c):
            c.init = None
            c.host = ""
        where(c)
    return st


def down() -> list[str]:
    """Remove everything the lab recorded as created, and nothing else; returns what was removed.

    Order: containers (runtime objects, processes rooted in their rootfs, our
    helpers, their links and dirs), lab hosts, daemons we started, the bridge
    if we created it, then the lab's own files.
    """
    from ctconsole.lab import hosts

    removed: list[str] = []
    with state.locked():
        st = state.load()
        errors: list[str] = []
        for full, c in list(st.containers.items()):
            try:
                mod = _module(_modname(full))
                mod.stop(c)
                common.remove_owned(c)
                if mod is libvirt:
                    Path(libvirt.DOMAIN_LOG).unlink(missing_ok=True)
                removed.append(full)
                del st.containers[full]
            except LabError as exc:
                errors.append(f"{full}: {exc.message}")
            state.save(st)
        for name in list(st.hosts):
            hosts.remove_host(st, name)
            removed.append(f"host {name}")
        hosts.remove_src_if_unused(st)
        if st.libvirtd is not None or st.virtlogd is not None:
            libvirt.stop_daemons(st.virtlogd, st.libvirtd)
            st.libvirtd = st.virtlogd = None
            removed.append("libvirtd/virtlogd (started by the lab)")
        if st.hostd is not None:
            proc.kill(st.hostd)
            st.hostd = None
            removed.append("host daemon")
        if st.bridge_created and st.bridge:
            netns.delete_link(st.bridge)
            st.bridge_created = False
            removed.append(f"bridge {st.bridge}")
        state.save(st)
        if errors:
            raise LabError("lab down could not remove everything", errors)
        root = Path(st.root or state.lab_dir())
        rootfs.remove_tree(root / "base-rootfs")
        for name in ("hostd.sock", "hostd.log", "libvirtd.log", "virtlogd.log", "state.tmp"):
            (root / name).unlink(missing_ok=True)
        state.state_file().unlink(missing_ok=True)
    (root / ".lock").unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # something we did not make lives there: leave it
        root.rmdir()
    return removed


def counter(name: str) -> list[int]:
    """The counter values a lab container has written (from its counter file on the host)."""
    full = resolve(name)
    c = state.load().containers.get(full)
    if c is None:
        raise LabError(f"{full} is not part of the lab")
    return common.read_counter(c.counter_file)


__all__ = ["ALL_NAMES", "ProcRef", "UpReport", "adopt", "counter", "down", "refresh", "restart", "status", "stop", "up"]
