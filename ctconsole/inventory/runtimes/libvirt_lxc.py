"""libvirt-lxc: the ``libvirt_lxc --name NAME`` controller is the container init's parent.

State lives in /run/libvirt/lxc/NAME.pid (controller pid) and NAME.xml (the
live domain XML: uuid, and the filesystem mounted at ``/`` = root path).
"""

from __future__ import annotations

import os

from ctconsole.inventory.runtimes import HostView, RuntimeInfo

STATE_DIR = "/run/libvirt/lxc"


def _arg(argv: list[str], flag: str) -> str:
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return ""


def read_xml(name: str) -> tuple[str, str]:
    """(uuid, root dir) from the live domain XML; empty strings when unreadable."""
    import xml.etree.ElementTree as ET  # only when a libvirt container exists

    try:
        root = ET.parse(os.path.join(STATE_DIR, f"{name}.xml")).getroot()
    except (OSError, ET.ParseError):
        return "", ""
    uuid = (root.findtext("uuid") or "").strip()
    rootdir = ""
    for fs in root.iter("filesystem"):
        tgt = fs.find("target")
        src = fs.find("source")
        if tgt is not None and tgt.get("dir") == "/" and src is not None:
            rootdir = src.get("dir") or src.get("file") or ""
    return uuid, rootdir


def detect(init_pid: int, view: HostView) -> RuntimeInfo | None:
    for pid in view.ancestors(init_pid, 2):
        argv = view.cmdline(pid).split()
        if not argv or not os.path.basename(argv[0]).startswith("libvirt_lxc"):
            continue
        name = _arg(argv, "--name") or _arg(argv, "-n")
        if not name:
            continue
        uuid, rootdir = read_xml(name)
        return RuntimeInfo("libvirt-lxc", uuid or name, name, controller_pid=pid, root_path=rootdir)
    return None
