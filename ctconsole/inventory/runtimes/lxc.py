"""LXC: the ``[lxc monitor] LXCPATH NAME`` process is the container init's parent.

The root path comes from ``lxc.rootfs.path`` in LXCPATH/NAME/config
(``dir:/path`` or a plain path).
"""

from __future__ import annotations

import os

from ctconsole.inventory.runtimes import HostView, RuntimeInfo


def rootfs(lxcpath: str, name: str) -> str:
    try:
        with open(os.path.join(lxcpath, name, "config")) as f:
            for line in f:
                key, _, value = line.partition("=")
                if key.strip() in ("lxc.rootfs.path", "lxc.rootfs"):
                    value = value.strip()
                    return value.split(":", 1)[1] if value.startswith("dir:") else value
    except OSError:
        pass
    return ""


def detect(init_pid: int, view: HostView) -> RuntimeInfo | None:
    for pid in view.ancestors(init_pid, 2):
        cmd = view.cmdline(pid)
        if not cmd.startswith("[lxc monitor]"):
            continue
        parts = cmd[len("[lxc monitor]") :].split()
        if len(parts) < 2:
            continue
        lxcpath, name = parts[0], parts[1]
        return RuntimeInfo("lxc", name, name, controller_pid=pid, root_path=rootfs(lxcpath, name))
    return None
