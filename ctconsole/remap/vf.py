"""SR-IOV VF pools: pick a free VF on the destination and move a link into a netns.

Why here: a ``netdev`` rule with a ``vf_pool`` cannot name its device in
advance (whichever VF is free at restore time is used), so the compiler emits
a setup-namespaces action and the migration engine calls :func:`pick_free_vf`
and :func:`move_link_to_netns` from its ``setup-namespaces`` notify handler,
when the restored root task exists with its new netns and nothing is in it
yet (criu-digest §5.2, approach D / netdev-style).

A VF is *free* when its netdev is visible in our network namespace (a VF moved
into a container disappears from our ``/sys/class/net``), is administratively
down and is not enslaved to a bridge or bond.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctconsole.errors import CtError

_VIRTFN = re.compile(r"^virtfn(\d+)$")


@dataclass(frozen=True)
class VfPool:
    """A PF and the VF indexes a rule may use (``None`` = any VF of the PF)."""

    pf: str
    vfs: tuple[int, ...] | None = None

    def allows(self, index: int) -> bool:
        return self.vfs is None or index in self.vfs


@dataclass(frozen=True)
class VfInfo:
    """One VF of a PF as seen in sysfs: its index, netdev name ("" if none here) and state."""

    index: int
    netdev: str
    up: bool = False
    master: str = ""

    @property
    def free(self) -> bool:
        return bool(self.netdev) and not self.up and not self.master


#: Highest VF index accepted (PCIe SR-IOV allows 65535 VFs; real NICs have at most a few thousand).
MAX_VF_INDEX = 4095
#: Most entries in one ``vfs`` list: a pool is a handful of indexes and ranges, not a generated list.
MAX_VF_ITEMS = 256


def parse_vf_list(value: Any) -> tuple[int, ...] | None:
    """``[0, 1, "4-7"]`` -> ``(0, 1, 4, 5, 6, 7)``; ``None``/missing -> any VF. Raises ValueError.

    Bounded for hostile files: at most :data:`MAX_VF_ITEMS` entries, indexes up to
    :data:`MAX_VF_INDEX`, overlapping ranges merged before expanding, so a pool costs at most 4096 integers
    however many ranges it repeats.
    """
    if value is None:
        return None
    if not isinstance(value, list):
        raise ValueError("vfs must be a list of VF indexes or ranges like \"4-7\"")
    if len(value) > MAX_VF_ITEMS:
        raise ValueError(f"vfs has {len(value)} entries; at most {MAX_VF_ITEMS} (use ranges like \"0-63\")")
    spans: list[tuple[int, int]] = []
    for item in value:
        if isinstance(item, bool):
            raise ValueError(f"bad VF index {item!r}")
        if isinstance(item, int):
            lo = hi = item
        elif isinstance(item, str) and re.fullmatch(r"\s*\d{1,6}\s*-\s*\d{1,6}\s*", item):
            lo, hi = (int(x) for x in item.split("-"))
            if hi < lo:
                raise ValueError(f"bad VF range {item!r}: the end is below the start")
        elif isinstance(item, str) and re.fullmatch(r"\s*\d{1,6}\s*", item):
            lo = hi = int(item)
        else:
            raise ValueError(f"bad VF index {str(item)[:40]!r}: use an integer or a range like \"4-7\"")
        if lo < 0 or hi > MAX_VF_INDEX:
            raise ValueError(f"bad VF index {str(item)[:40]!r}: VF indexes are 0..{MAX_VF_INDEX}")
        spans.append((lo, hi))
    out: list[int] = []
    for lo, hi in sorted(spans):  # merged before expanding: each index once, however often it repeats
        start = max(lo, out[-1] + 1) if out else lo
        out.extend(range(start, hi + 1))
    return tuple(out)


def pool_from_rule(value: Any) -> VfPool:
    """Build a :class:`VfPool` from a rule's ``vf_pool`` table. Raises ValueError when malformed."""
    if not isinstance(value, dict):
        raise ValueError('vf_pool must be a table like { pf = "enp1s0f0", vfs = [0, 1, "4-7"] }')
    unknown = sorted(set(value) - {"pf", "vfs"})
    if unknown:
        raise ValueError(f"unknown key(s) in vf_pool: {', '.join(unknown)} (expected pf, vfs)")
    pf = value.get("pf")
    if not isinstance(pf, str) or not pf:
        raise ValueError("vf_pool.pf must name the physical function, e.g. \"enp1s0f0\"")
    return VfPool(pf=pf, vfs=parse_vf_list(value.get("vfs")))


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def list_vfs(pf: str, sys_root: str | Path = "/sys") -> list[VfInfo]:
    """Every VF of ``pf`` with its netdev (if visible in our netns), up flag and master."""
    dev = Path(sys_root) / "class/net" / pf / "device"
    out: list[VfInfo] = []
    try:
        entries = sorted(os.listdir(dev))
    except OSError:
        return out
    for name in entries:
        m = _VIRTFN.match(name)
        if not m:
            continue
        netdir = dev / name / "net"
        try:
            names = sorted(os.listdir(netdir))
        except OSError:
            names = []
        netdev = names[0] if names else ""
        up = False
        master = ""
        if netdev:
            ndir = Path(sys_root) / "class/net" / netdev
            flags = _read(ndir / "flags")
            try:
                up = bool(int(flags, 0) & 0x1) if flags else False
            except ValueError:
                up = False
            try:
                master = os.path.basename(os.readlink(ndir / "master"))
            except OSError:
                master = ""
        out.append(VfInfo(index=int(m.group(1)), netdev=netdev, up=up, master=master))
    out.sort(key=lambda v: v.index)
    return out


def pf_exists(pf: str, sys_root: str | Path = "/sys") -> bool:
    return (Path(sys_root) / "class/net" / pf).exists()


def free_vfs(pool: VfPool, sys_root: str | Path = "/sys", exclude: tuple[str, ...] = ()) -> list[VfInfo]:
    """The free VFs of the pool, lowest index first (``exclude``: netdevs already promised)."""
    return [v for v in list_vfs(pool.pf, sys_root) if v.free and pool.allows(v.index)
            and v.netdev not in exclude]


def pick_free_vf(pool: VfPool, sys_root: str | Path = "/sys", exclude: tuple[str, ...] = ()) -> VfInfo:
    """The lowest-index free VF of the pool. Raises CtError when none is free (the restore must stop)."""
    free = free_vfs(pool, sys_root, exclude)
    if not free:
        allowed = "any" if pool.vfs is None else ",".join(map(str, pool.vfs))
        raise CtError(f"no free VF on {pool.pf} (allowed VFs: {allowed})",
                      ["a VF is free when its netdev is in this host's netns, down and not enslaved"])
    return free[0]


def move_link_to_netns(ifname: str, pid: int, new_name: str | None = None) -> None:
    """Move link ``ifname`` into the network namespace of ``pid``, renaming it to ``new_name``.

    One RTM_NEWLINK with IFLA_NET_NS_PID and IFLA_IFNAME: the kernel moves and
    renames in one step, so a name already used on this host (``eth1``) is no
    obstacle. The link is set down first because a running VF cannot move.
    """
    from pyroute2 import IPRoute  # lazy: ~150 ms import

    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise CtError(f"cannot move {ifname} into pid {pid}'s netns: no such link on this host")
        idx = found[0]
        try:
            ipr.link("set", index=idx, state="down")
            kwargs: dict[str, Any] = {"index": idx, "net_ns_pid": pid}
            if new_name and new_name != ifname:
                kwargs["ifname"] = new_name
            ipr.link("set", **kwargs)
        except Exception as exc:  # NetlinkError and friends: say which link and where
            raise CtError(f"cannot move {ifname} into the netns of pid {pid}: {exc}") from exc
