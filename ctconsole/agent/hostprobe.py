"""The agent's answer to ``host_probe``: the destination half of ``ctconsole check --to DEST``.

Why a separate module: the checker asks a destination the same questions
it asks this host (``criu check``, CPU compatibility, free space for the
images, do the paths and bridges the rules name exist), and the agent must
answer them without trusting the console. Everything here is read-only:
CRIU's CHECK and CPUINFO_CHECK run in a scratch directory that is removed
again, paths are only ``stat``-ed, links only looked up in ``/sys/class/net``;
nothing is created, no shell, no program named by the console.

Input is validated strictly (and refused as a whole when something is off):
at most :data:`MAX_ITEMS` paths and links, paths absolute, at most 4096
bytes, without NUL; link names follow the kernel's ``dev_valid_name``;
a cpuinfo image is at most :data:`MAX_CPUINFO` bytes.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

from ctconsole.config import state_dir
from ctconsole.errors import CtError
from ctconsole.proto import agent_pb2

MAX_ITEMS = 64
MAX_PATH = 4096
MAX_CPUINFO = 64 << 10
#: kernel dev_valid_name: 1..15 bytes, no '/', ':' or whitespace, not '.' / '..'
LINK_RE = re.compile(r"^[A-Za-z0-9_@+=.,%#-]{1,15}$")


class BadProbe(ValueError):
    """The console's request is malformed; the agent answers ``bad-request``."""


def cpuinfo_check_blob(client: Any, blob: bytes) -> tuple[bool, str]:
    """CPUINFO_CHECK of the source's ``cpuinfo.img`` (bytes) against this CPU: (compatible, detail).

    CRIU reads the image from an images dir, so it goes into a private scratch dir first.
    """
    with tempfile.TemporaryDirectory(prefix="ctconsole-cpu-") as d:
        Path(d, "cpuinfo.img").write_bytes(blob)
        try:
            client.cpuinfo_check(Path(d))
        except CtError as exc:
            return False, exc.message
    return True, "CPU compatible with the source"


def images_root_path() -> Path:
    """Where this agent would put images (same rule as ``agent.images_root``), *without* creating it."""
    v = os.environ.get("CTCONSOLE_IMAGES_DIR")
    return Path(v) if v else state_dir() / "images"


def free_bytes(path: Path) -> int:
    """Free bytes on the filesystem that holds (or would hold) ``path``."""
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def path_kind(path: str) -> str:
    """What ``path`` is (following symlinks, like CRIU and connect() will): "" when missing."""
    try:
        st = os.stat(path)
    except OSError:
        return ""
    mode = st.st_mode
    for test, name in ((stat.S_ISDIR, "dir"), (stat.S_ISREG, "file"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISCHR, "char"), (stat.S_ISBLK, "block"), (stat.S_ISFIFO, "fifo")):
        if test(mode):
            return name
    return "other"


def link_kind(name: str) -> str:
    """``bridge``, ``link`` or "" (missing) for a network interface in this network namespace."""
    base = Path("/sys/class/net") / name
    if not base.exists():
        return ""
    return "bridge" if (base / "bridge").is_dir() else "link"


MAX_PIDS = 4096
MAX_PORTS = 256
CGROUP_ROOT = Path("/sys/fs/cgroup")


def busy_pids(pids: Any) -> list[int]:
    """Those of ``pids`` that are in use in this pid namespace (a restore into the host pid ns needs them free)."""
    return [p for p in pids if os.path.exists(f"/proc/{p}")]


_WILDCARD = ("0.0.0.0", "::")


def _bound(proto: str) -> list[tuple[str, int]]:
    """(address, port) of every listening TCP / bound UDP socket of this network namespace."""
    import ipaddress

    out: list[tuple[str, int]] = []
    for name in (proto, proto + "6"):
        try:
            lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) < 4 or (proto == "tcp" and cols[3] != "0A"):
                continue
            hexaddr, hexport = cols[1].split(":")
            raw = bytes.fromhex(hexaddr)
            # /proc/net prints each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            out.append((str(ipaddress.ip_address(raw)), int(hexport, 16)))
    return out


def busy_ports(queries: Any) -> list[agent_pb2.PortInfo]:
    """Of the (proto, address, port) asked, those a socket here already binds (same port; same address
    or a wildcard on either side): restoring a socket bound there would fail with EADDRINUSE."""
    tables: dict[str, list[tuple[str, int]]] = {}
    out = []
    for q in queries:
        bound = tables.setdefault(q.proto, _bound(q.proto))
        for addr, port in bound:
            if port == q.port and (addr == q.address or addr in _WILDCARD or q.address in _WILDCARD):
                out.append(agent_pb2.PortInfo(proto=q.proto, address=addr, port=port))
                break
    return out


def cgroup_info(path: str) -> agent_pb2.CgroupInfo:
    """Whether the cgroup v2 ``path`` exists here and how many tasks it (with its children) holds."""
    base = CGROUP_ROOT / path.lstrip("/")
    if not base.is_dir():
        return agent_pb2.CgroupInfo(path=path, exists=False)
    procs = 0
    for i, (d, _dirs, files) in enumerate(os.walk(base)):
        if i > 256:
            break
        if "cgroup.procs" in files:
            try:
                procs += len(Path(d, "cgroup.procs").read_text().split())
            except OSError:
                continue
    return agent_pb2.CgroupInfo(path=path, exists=True, procs=procs)


def validate(msg: agent_pb2.HostProbeRequest) -> None:
    """Refuse the whole request on anything a well-behaved console never sends."""
    if len(msg.paths) > MAX_ITEMS or len(msg.links) > MAX_ITEMS:
        raise BadProbe(f"at most {MAX_ITEMS} paths and {MAX_ITEMS} links per request")
    if len(msg.pids) > MAX_PIDS or len(msg.ports) > MAX_PORTS or len(msg.cgroups) > MAX_ITEMS:
        raise BadProbe(f"at most {MAX_PIDS} pids, {MAX_PORTS} ports and {MAX_ITEMS} cgroups per request")
    if any(p <= 0 for p in msg.pids):
        raise BadProbe("pids must be positive")
    for q in msg.ports:
        if q.proto not in ("tcp", "udp") or not 0 < q.port < 65536 or len(q.address) > 64:
            raise BadProbe(f"refusing port query {q.proto}:{q.address[:40]}:{q.port}")
    for c in msg.cgroups:
        if not c.startswith("/") or "\0" in c or ".." in c.split("/") or len(c.encode()) > MAX_PATH:
            raise BadProbe(f"refusing cgroup path {c[:80]!r}")
    if len(msg.cpuinfo_img) > MAX_CPUINFO:
        raise BadProbe(f"cpuinfo image larger than {MAX_CPUINFO} bytes")
    for p in msg.paths:
        if not p.startswith("/") or "\0" in p or len(p.encode()) > MAX_PATH:
            raise BadProbe(f"refusing path {p[:80]!r}: absolute paths of at most {MAX_PATH} bytes only")
    for n in msg.links:
        if not LINK_RE.fullmatch(n) or n in (".", ".."):
            raise BadProbe(f"refusing interface name {n[:40]!r}")


def answer(msg: agent_pb2.HostProbeRequest) -> agent_pb2.HostProbeReply:
    """Run what ``msg`` asks for and describe this host (raises :class:`BadProbe` on bad input)."""
    validate(msg)
    r = agent_pb2.HostProbeReply()
    if msg.criu_check or msg.cpuinfo_img:
        from ctconsole.criu.client import CriuClient

        client = CriuClient(timeout=60)
        if msg.criu_check:
            with tempfile.TemporaryDirectory(prefix="ctconsole-check-") as d:
                try:
                    client.check(Path(d))
                    r.criu_check_ok, r.criu_check_detail = True, "Looks good."
                except CtError as exc:
                    r.criu_check_ok = False
                    r.criu_check_detail = "; ".join([exc.message, *exc.details[:3]])[:1000]
        if msg.cpuinfo_img:
            r.cpuinfo_ok, detail = cpuinfo_check_blob(client, msg.cpuinfo_img)
            r.cpuinfo_detail = detail[:1000]
    if msg.images_space:
        where = images_root_path()
        r.images_dir, r.images_free = str(where), free_bytes(where)
    r.paths.extend(agent_pb2.PathInfo(path=p, kind=path_kind(p)) for p in msg.paths)
    r.links.extend(agent_pb2.LinkInfo(name=n, kind=link_kind(n)) for n in msg.links)
    r.busy_pids.extend(busy_pids(msg.pids))
    r.busy_ports.extend(busy_ports(msg.ports))
    r.cgroups.extend(cgroup_info(c) for c in msg.cgroups)
    return r
