"""systemd-nspawn: the container init's parent runs ``systemd-nspawn`` (-M NAME / -D DIR)."""

from __future__ import annotations

import os

from ctconsole.inventory.runtimes import HostView, RuntimeInfo


def _opt(argv: list[str], short: str, long: str) -> str:
    for i, a in enumerate(argv):
        if a in (short, long) and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(long + "="):
            return a.split("=", 1)[1]
        if a.startswith(short) and len(a) > len(short) and not a.startswith("--"):
            return a[len(short) :]
    return ""


def detect(init_pid: int, view: HostView) -> RuntimeInfo | None:
    for pid in view.ancestors(init_pid, 2):
        argv = view.cmdline(pid).split()
        if not argv or os.path.basename(argv[0]) != "systemd-nspawn":
            continue
        directory = _opt(argv, "-D", "--directory")
        name = _opt(argv, "-M", "--machine") or os.path.basename(directory.rstrip("/")) or f"nspawn-{init_pid}"
        return RuntimeInfo("nspawn", name, name, controller_pid=pid, root_path=directory)
    return None
