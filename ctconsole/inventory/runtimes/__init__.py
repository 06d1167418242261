"""Runtime detectors: name a discovered container after the runtime that started it.

Why after the kernel: containers are found from pid namespaces first (the
kernel is the truth and needs no runtime cooperation); each detector then
recognises its runtime's controller process or state files and supplies the
runtime's id, name, root path and controller. The first detector that
recognises a container wins; ``namespaces`` is the fallback. A container a
migration restored here is named from its adoption record (``adopted``) first,
unless runc itself has adopted it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ctconsole.inventory.procfs import ProcStat


@dataclass
class RuntimeInfo:
    """What a runtime knows about one container."""

    runtime: str
    id: str
    name: str
    controller_pid: int = 0
    root_path: str = ""
    note: str = ""  # what the operator should know about how the runtime manages it (e.g. it does not)


@dataclass
class HostView:
    """What detectors may look at: process stats and (cached) command lines."""

    stats: dict[int, ProcStat]
    cmdline: Callable[[int], str]

    def ancestors(self, pid: int, depth: int = 3) -> list[int]:
        """Parent, grandparent... (up to ``depth``), stopping before pid 1."""
        out: list[int] = []
        st = self.stats.get(pid)
        while st is not None and st.ppid > 1 and len(out) < depth:
            out.append(st.ppid)
            st = self.stats.get(st.ppid)
        return out


def identify(init_pid: int, view: HostView, runc_states: dict[int, RuntimeInfo]) -> RuntimeInfo | None:
    """RuntimeInfo from the first detector that recognises the container, or None."""
    if init_pid in runc_states:
        return runc_states[init_pid]
    from ctconsole.inventory.runtimes import adopted, libvirt_lxc, lxc, nspawn  # they import this module

    if (info := adopted.records(view.stats).get(init_pid)) is not None:
        return info  # restored here by a migration: the source's runtime, id and name

    for detect in (libvirt_lxc.detect, lxc.detect, nspawn.detect):
        info = detect(init_pid, view)
        if info is not None:
            return info
    return None
