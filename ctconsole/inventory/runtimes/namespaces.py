"""Plain namespaces: a pid-namespace init no runtime claims (``unshare``, a lab script, a sandbox).

Why a stable id: the pid namespace inode lives as long as the container, so
``ns-<inode>`` survives re-scans; the name is the container's own hostname
when it has a UTS namespace (what its operator called it), else ``comm-pid``.
"""

from __future__ import annotations

from ctconsole.inventory.procfs import ProcStat
from ctconsole.inventory.runtimes import RuntimeInfo


def fallback(init: ProcStat, pidns: int) -> RuntimeInfo:
    """Describe an unclaimed container; its parent (unshare, a launcher) counts as the controller."""
    from ctconsole.inventory.netlink import uts_hostname

    return RuntimeInfo(
        runtime="namespaces",
        id=f"ns-{pidns}",
        name=uts_hostname(init.pid) or f"{init.comm}-{init.pid}",
        controller_pid=init.ppid if init.ppid > 1 else 0,
    )
