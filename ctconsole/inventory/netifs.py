"""Network interfaces of a container's own netns, and which ones tie it to the outside (digest §3.7).

Why: CRIU dumps only the container's end of a veth and, without a mapping,
restores the peer *inside* the container (silent loss of connectivity). So
every veth whose peer lives in another netns is external and needs a
``veth[IF]:HOSTNAME@BRIDGE`` mapping; we resolve the host-side name and
bridge so the suggested rule is complete. macvlan, physical devices and SR-IOV
VFs need a device on the destination (``netdev`` rule); kinds CRIU has no
dumper for are external with no remedy.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from ctconsole.inventory.netlink import Link
from ctconsole.model import NO_REMEDY, External, NetIface

#: kinds CRIU dumps and restores inside the netns without help
SUPPORTED_KINDS = frozenset({"loopback", "tun", "tap", "bridge", "sit", "venet"})
#: kinds that CRIU refuses ("Unsupported link") - no plugin here
UNSUPPORTED_KINDS = frozenset(
    {
        "vlan",
        "vxlan",
        "ipvlan",
        "ipvtap",
        "dummy",
        "wireguard",
        "bond",
        "team",
        "gre",
        "gretap",
        "ip6gre",
        "ip6gretap",
        "ipip",
        "ip6tnl",
        "geneve",
        "ifb",
        "vrf",
        "nlmon",
        "macsec",
        "bareudp",
        "xfrm",
        "vti",
        "vti6",
    }
)
ARPHRD_LOOPBACK = 772
ARPHRD_VOID = 0xFFFF
IFF_UP = 0x1


def iface_kind(ln: Link, sysfs_dir: str | None) -> str:
    """A readable kind: IFLA_INFO_KIND when present, else loopback / sriov-vf / physical."""
    if ln.kind:
        return ln.kind
    if ln.arptype == ARPHRD_LOOPBACK:
        return "loopback"
    if ln.arptype == ARPHRD_VOID:
        return "venet"
    if sysfs_dir and os.path.exists(f"{sysfs_dir}/{ln.name}/device/physfn"):
        return "sriov-vf"
    return "physical"


def build(
    links: Mapping[int, Link],
    other_netns: Mapping[str, Mapping[int, Link]],
    sysfs_dir: str | None = None,
) -> list[NetIface]:
    """NetIface items for one container netns.

    ``other_netns`` maps a label ("host", "netns:NAME", "netns inode N") to
    that namespace's links; veth peers are looked up there (a peer is the
    veth whose IFLA_LINK points back at our ifindex).
    """
    out = []
    for ln in sorted(links.values(), key=lambda x: x.index):
        kind = iface_kind(ln, sysfs_dir)
        peer_name = peer_ns = bridge = parent = ""
        ext = None
        if kind == "veth":
            if ln.link_netnsid is None:
                peer = links.get(ln.link)
                peer_name = peer.name if peer else ""
                peer_ns = "same netns"
            else:
                for label, lks in other_netns.items():
                    cand = lks.get(ln.link)
                    if cand is not None and cand.kind == "veth" and cand.link == ln.index:
                        peer_name, peer_ns = cand.name, label
                        master = lks.get(cand.master) if cand.master else None
                        bridge = master.name if master else ""
                        break
                else:
                    peer_ns = f"netnsid {ln.link_netnsid}"
                target = f"{peer_name or 'HOSTNAME'}{'@' + bridge if bridge else ''}"
                where = f"{peer_name or 'an unknown interface'} in the {peer_ns} network namespace"
                ext = External(
                    reason=f"veth {ln.name}'s peer is {where}"
                    + (f" (bridge {bridge})" if bridge else "")
                    + "; CRIU dumps only this end",
                    remedy=f"remap rule `veth` (CRIU veth[{ln.name}]:{target} on restore)",
                    holder=peer_name,
                )
        elif kind in ("macvlan", "macvtap"):
            parent = _lower_name(ln, links, other_netns)
            ext = External(
                reason=f"{kind} {ln.name} sits on {parent or 'a lower device'} outside the container",
                remedy=f"remap rule `netdev` (CRIU macvlan[{ln.name}]:PARENT or netdev[{ln.name}]:DEVICE)",
                holder=parent,
            )
        elif kind in ("physical", "sriov-vf"):
            if kind == "sriov-vf" and sysfs_dir:
                try:
                    pf = os.listdir(f"{sysfs_dir}/{ln.name}/device/physfn/net")
                    parent = pf[0] if pf else ""
                except OSError:
                    parent = ""
            what = "an SR-IOV virtual function" if kind == "sriov-vf" else "a physical device"
            ext = External(
                reason=f"{ln.name} is {what} moved into the container; it is hardware of this host",
                remedy=f"remap rule `netdev` (CRIU netdev[{ln.name}]:DEVICE: a device the destination provides)",
                holder=parent,
            )
        elif kind in UNSUPPORTED_KINDS or (kind not in SUPPORTED_KINDS and kind != "veth"):
            ext = External(
                reason=f"{ln.name} is a {kind} interface; CRIU has no dumper for this link kind",
                remedy=NO_REMEDY,
            )
        out.append(
            NetIface(
                name=ln.name,
                kind=kind,
                ifindex=ln.index,
                mac=ln.mac,
                mtu=ln.mtu,
                up=bool(ln.flags & IFF_UP),
                addresses=tuple(ln.addresses),
                peer_ifname=peer_name,
                peer_netns=peer_ns,
                bridge=bridge,
                parent=parent,
                external=ext,
            )
        )
    return out


def _lower_name(ln: Link, links: Mapping[int, Link], other: Mapping[str, Mapping[int, Link]]) -> str:
    if not ln.link:
        return ""
    if ln.link_netnsid is None:
        lower = links.get(ln.link)
        return lower.name if lower else ""
    host = other.get("host", {})
    lower = host.get(ln.link)
    return f"{lower.name} (host)" if lower else ""
