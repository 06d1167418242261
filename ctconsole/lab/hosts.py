"""Lab "hosts": network namespaces that stand in for destination machines.

Layout (all addresses only inside lab namespaces, nothing on the real host):

    ctlab-src  (the source end; run the dumping CRIU / page-server client here)
      dst-NAME 198.19.N.1/24 ──veth── wan0 198.19.N.2/24  ctlab-NAME
                                       ctlab0 (bridge, no address), lo up

Why a separate ``ctlab-src`` netns: the real host keeps no 198.x address, yet a
dump started with ``ip netns exec ctlab-src criu dump ... --page-server
--address 198.19.N.2`` reaches the destination's page server (CRIU may run in
another netns than the container it dumps). The destination shares the host's
filesystem, so a container restored there uses the same rootfs path; its veth
is recreated on the ``ctlab0`` bridge *inside* ``ctlab-NAME`` with
``--external veth[eth0]:HOSTVETH@ctlab0`` when CRIU restores inside that netns.
"""

from __future__ import annotations

import re

from ctconsole.errors import UsageError
from ctconsole.lab import netns, state
from ctconsole.lab.proc import LabError
from ctconsole.lab.state import LabHost, LabState

SRC_NETNS = "ctlab-src"
NETNS_PREFIX = "ctlab-"
WAN_NET = "198.19"  # host N: 198.19.N.0/24 (.1 source end, .2 destination)
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,10}$")
RESERVED = {"src", "wan", "ns", "runc", "lxc", "lv"}


def _check_name(name: str) -> None:
    if not NAME_RE.match(name) or name in RESERVED:
        raise UsageError(
            f"invalid lab host name {name!r}",
            [
                "use 1-11 lower-case letters, digits or '-' (the veth name dst-NAME must fit 15 chars)",
                f"reserved: {', '.join(sorted(RESERVED))}",
            ],
        )


def _ensure_src(st: LabState) -> None:
    if not netns.netns_exists(SRC_NETNS):
        netns.add_netns(SRC_NETNS)
        st.src_netns_created = True
    else:
        netns.ip("link", "set", "lo", "up", netns=SRC_NETNS)


def add(name: str) -> LabHost:
    """Create (or return the existing) lab host ``name``; idempotent."""
    _check_name(name)
    with state.locked():
        st = state.load()
        if not st.root:
            st.root = str(state.lab_dir())
        h = st.hosts.get(name)
        if h is not None and netns.netns_exists(h.netns) and netns.link_exists(h.link, h.netns):
            return h
        ns_name = NETNS_PREFIX + name
        if h is None and netns.netns_exists(ns_name):
            raise LabError(f"network namespace {ns_name} exists but was not made by the lab; not touching it")
        used = {x.index for x in st.hosts.values() if x.name != name}
        index = h.index if h is not None else next(i for i in range(1, 255) if i not in used)
        h = LabHost(
            name=name,
            netns=ns_name,
            address=f"{WAN_NET}.{index}.2",
            src_netns=SRC_NETNS,
            src_address=f"{WAN_NET}.{index}.1",
            bridge=netns.BRIDGE,
            index=index,
            src_link=f"dst-{name}",
            link="wan0",
        )
        st.hosts[name] = h  # recorded before creation: an interrupted add is still removed by del/down
        _ensure_src(st)
        state.save(st)
        try:
            netns.delete_netns(ns_name)
            netns.add_netns(ns_name)
            netns.delete_link(h.src_link, SRC_NETNS)
            netns.ip(
                "link", "add", h.src_link, "type", "veth", "peer", "name", h.link, "netns", ns_name, netns=SRC_NETNS
            )
            netns.ip("addr", "add", f"{h.src_address}/24", "dev", h.src_link, netns=SRC_NETNS)
            netns.ip("link", "set", h.src_link, "up", netns=SRC_NETNS)
            netns.ip("addr", "add", f"{h.address}/24", "dev", h.link, netns=ns_name)
            netns.ip("link", "set", h.link, "up", netns=ns_name)
            netns.ensure_bridge(h.bridge, ns_name)
        except LabError:
            remove_host(st, name)
            remove_src_if_unused(st)
            state.save(st)
            raise
        state.save(st)
        return h


def remove_host(st: LabState, name: str) -> None:
    """Delete a recorded lab host's netns and its veth (caller holds the lock and saves)."""
    h = st.hosts.pop(name, None)
    if h is None:
        return
    if netns.netns_exists(h.src_netns):
        netns.delete_link(h.src_link, h.src_netns)
    netns.delete_netns(h.netns)


def remove_src_if_unused(st: LabState) -> None:
    if st.src_netns_created and not st.hosts:
        netns.delete_netns(SRC_NETNS)
        st.src_netns_created = False


def delete(name: str) -> bool:
    """Remove lab host ``name``; False when the lab has no such host."""
    with state.locked():
        st = state.load()
        if name not in st.hosts:
            return False
        remove_host(st, name)
        remove_src_if_unused(st)
        state.save(st)
        return True


def list_hosts() -> list[LabHost]:
    return sorted(state.load().hosts.values(), key=lambda h: h.index)
