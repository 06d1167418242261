"""Local /proc facts the shared model does not carry (SysV maps, device maps, vfork, memory).

Why here and not in the inventory: these only matter to the checker, are cheap
to read for one tree, and are read only when the container runs on this host.
Everything tolerates processes vanishing mid-read.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
from pathlib import Path

from ctconsole.feasibility.catalogue import HostFacts
from ctconsole.model import Container

_SYS_KCMP = 312  # x86_64
_KCMP_VM = 0


def _kcmp_vm(a: int, b: int) -> bool:
    """True when two processes share one mm (kcmp(KCMP_VM) == 0)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.syscall(_SYS_KCMP, a, b, _KCMP_VM, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _scan_smaps(pid: int) -> tuple[bool, list[str]]:
    """(has a SysV shm mapping, device mappings with VmFlags io/pf)."""
    sysv = False
    dev: list[str] = []
    name = ""
    try:
        text = Path(f"/proc/{pid}/smaps").read_text()
    except OSError:
        return False, []
    for line in text.splitlines():
        first = line.split(" ", 1)[0]
        if "-" in first and not first.endswith(":"):
            parts = line.split(None, 5)
            name = parts[5].strip() if len(parts) > 5 else ""
            if name.startswith("/SYSV"):
                sysv = True
        elif line.startswith("VmFlags:"):
            flags = set(line.split()[1:])
            if flags & {"io", "pf"} and not name.startswith("[v"):
                dev.append(name or "anonymous device mapping")
    return sysv, dev


def _linkdown_routes(pid: int) -> list[str]:
    """Routes marked linkdown in pid's netns (CRIU's `ip route restore` rejects them)."""
    out: list[str] = []
    for fam in ("-4", "-6"):
        try:
            r = subprocess.run(
                ["nsenter", f"--net=/proc/{pid}/ns/net", "ip", fam, "-j", "route", "show", "table", "all"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            routes = json.loads(r.stdout or "[]")
        except (OSError, subprocess.SubprocessError, ValueError):
            continue
        for rt in routes:
            if "linkdown" in rt.get("flags", []):
                out.append(f"{rt.get('dst', '?')} dev {rt.get('dev', '?')}")
    return out


def _mount_ids(pid: int) -> set[int]:
    try:
        return {int(ln.split()[0]) for ln in Path(f"/proc/{pid}/mountinfo").read_text().splitlines() if ln}
    except (OSError, ValueError):
        return set()


def _foreign_fds(pid: int, mnt_ids: set[int]) -> list[tuple[int, int, str, int, int]]:
    """Path-backed fds whose mount is not in the container's mount namespace (any kind:
    regular files, directories, device nodes such as an inherited /dev/null)."""
    out: list[tuple[int, int, str, int, int]] = []
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for name in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
            if not target.startswith("/") or target.startswith(("/memfd:", "/secretmem")):
                continue
            mnt = 0
            for line in Path(f"/proc/{pid}/fdinfo/{name}").read_text().splitlines():
                if line.startswith("mnt_id:"):
                    mnt = int(line.split()[1])
            if mnt and mnt not in mnt_ids:
                out.append((pid, int(name), target, mnt, os.stat(f"/proc/{pid}/fd/{name}").st_ino))
        except (OSError, ValueError):
            continue
    return out


def gather(container: Container) -> HostFacts:
    """Facts for a container whose processes are visible in this host's /proc."""
    sysv: list[int] = []
    devmaps: list[tuple[int, str]] = []
    vfork: list[int] = []
    rss = anon = 0
    children: dict[int, list[int]] = {}
    for p in container.processes:
        children.setdefault(p.ppid, []).append(p.pid)
    for p in container.processes:
        if not os.path.exists(f"/proc/{p.pid}"):
            continue
        has_sysv, dev = _scan_smaps(p.pid)
        if has_sysv:
            sysv.append(p.pid)
        devmaps.extend((p.pid, d) for d in dev)
        rss += _status_kb(p.pid, "VmRSS")
        anon += _status_kb(p.pid, "RssAnon") + _status_kb(p.pid, "RssShmem")
        if p.state == "D" and any(_kcmp_vm(p.pid, c) for c in children.get(p.pid, [])):
            vfork.append(p.pid)
    foreign: list[tuple[int, int, str, int, int]] = []
    if container.has_own("mnt") and container.init_pid:
        ids = _mount_ids(container.init_pid)
        if ids:
            for p in container.processes:
                foreign.extend(_foreign_fds(p.pid, ids))
    linkdown: list[str] = []
    if container.has_own("net") and container.init_pid:
        linkdown = _linkdown_routes(container.init_pid)
    return HostFacts(
        linkdown_routes=tuple(linkdown),
        foreign_mount_fds=tuple(foreign),
        sysv_shm_pids=tuple(sysv),
        device_map_pids=tuple(devmaps),
        vfork_parents=tuple(vfork),
        rss_bytes=rss,
        anon_bytes=anon,
    )
