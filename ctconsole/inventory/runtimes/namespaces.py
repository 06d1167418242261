"""Plain namespaces: a pid-namespace init no runtime claims (``unshare``, a lab script, a sandbox).

Why a stable id: the pid namespace inode lives as long as the container, so
``ns-<inode>`` survives re-scans; the name (``comm-pid``) is for humans.
"""

from __future__ import annotations

from ctconsole.inventory.procfs import ProcStat
from ctconsole.inventory.runtimes import RuntimeInfo


def fallback(init: ProcStat, pidns: int) -> RuntimeInfo:
    """Describe an unclaimed container; its parent (unshare, a launcher) counts as the controller."""
    return RuntimeInfo(
        runtime="namespaces",
        id=f"ns-{pidns}",
        name=f"{init.comm}-{init.pid}",
        controller_pid=init.ppid if init.ppid > 1 else 0,
    )
