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
import subprocess

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


def add(name: str, *, isolated: bool = False, rate: str = "", delay: str = "") -> LabHost:
    """Create (or return the existing) lab host ``name``; idempotent.

    ``isolated`` makes a host that shares only the kernel (see :mod:`ctconsole.lab.isolated`),
    reached as ``ssh://root@ADDR``; ``rate``/``delay`` shape its link (isolated hosts only).
    """
    _check_name(name)
    if (rate or delay) and not isolated:
        raise UsageError("--rate and --delay need --isolated", ["netns hosts have no shaped link"])
    with state.locked():
        st = state.load()
        if not st.root:
            st.root = str(state.lab_dir())
        h = st.hosts.get(name)
        if h is not None and (h.kind == "isolated") != isolated:
            raise UsageError(
                f"lab host {name} exists as a {h.kind} host", [f"remove it first: ctconsole lab host del {name}"]
            )
        if isolated:
            return _add_isolated(st, name, h, rate, delay)
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


def _add_isolated(st: LabState, name: str, h: LabHost | None, rate: str, delay: str) -> LabHost:
    from ctconsole.lab import isolated

    if h is not None and isolated.healthy(h):
        if (rate, delay) != (h.rate, h.delay):
            isolated.shape(h, rate, delay)
            state.save(st)
        return h
    ns_name = NETNS_PREFIX + name
    if h is None and netns.netns_exists(ns_name):
        raise LabError(f"network namespace {ns_name} exists but was not made by the lab; not touching it")
    if h is None and netns.netns_exists(isolated.SRC_PREFIX + name):
        raise LabError(f"network namespace {isolated.SRC_PREFIX}{name} exists but was not made by the lab; "
                       "not touching it")
    if h is None and netns.link_exists(f"cti-{name}"):
        raise LabError(f"link cti-{name} exists but was not made by the lab; not touching it")
    if h is not None:  # recorded but broken (e.g. its sshd was killed): rebuild from scratch
        remove_host(st, name)
    used = {x.index for x in st.hosts.values() if x.name != name} | isolated.indexes_in_use()
    index = next(i for i in range(1, 255) if i not in used)
    h = isolated.record(name, index, rate, delay)
    st.hosts[name] = h  # recorded before creation: an interrupted add is still removed by del/down
    state.save(st)
    try:
        isolated.create(st, h)
    except (LabError, UsageError):
        remove_host(st, name)
        state.save(st)
        raise
    state.save(st)
    return h


def shape(name: str, rate: str, delay: str) -> LabHost:
    """Change the shaping of isolated host ``name``'s link (empty strings remove it)."""
    from ctconsole.errors import NotFound
    from ctconsole.lab import isolated

    with state.locked():
        st = state.load()
        h = st.hosts.get(name)
        if h is None:
            raise NotFound(f"no lab host named {name!r}")
        if h.kind != "isolated":
            raise UsageError(f"lab host {name} is a netns host; only isolated hosts have a shaped link")
        isolated.shape(h, rate, delay)
        state.save(st)
        return h


def remove_host(st: LabState, name: str) -> None:
    """Delete a recorded lab host's netns and its veth (caller holds the lock and saves)."""
    h = st.hosts.get(name)
    if h is None:
        return
    if h.kind == "isolated":
        from ctconsole.lab import isolated

        isolated.remove(h)
        st.hosts.pop(name, None)
        isolated.sync_ssh_config(st)
        return
    st.hosts.pop(name, None)
    if netns.netns_exists(h.src_netns):
        netns.delete_link(h.src_link, h.src_netns)
    netns.delete_netns(h.netns)


def remove_src_if_unused(st: LabState) -> None:
    if st.src_netns_created and not any(h.kind == "netns" for h in st.hosts.values()):
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


def get(name: str) -> LabHost:
    """The recorded lab host ``name`` (NotFound when there is none)."""
    from ctconsole.errors import NotFound

    h = state.load().hosts.get(name)
    if h is None:
        raise NotFound(f"no lab host named {name!r}")
    return h


def run_in(name: str, argv: list[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` inside lab host ``name`` (nsenter for isolated hosts, ``ip netns exec`` otherwise)."""
    from ctconsole.lab import isolated
    from ctconsole.lab.proc import run

    h = get(name)
    if h.kind == "isolated":
        return isolated.run_inside(h, argv, timeout)
    return run(["ip", "netns", "exec", h.netns, *argv], check=False, timeout=timeout)


def path_in(name: str, path: str) -> str:
    """A real-host path showing ``path`` as lab host ``name`` sees it (identity for netns hosts)."""
    from ctconsole.lab import isolated

    h = get(name)
    return isolated.path_inside(h, path) if h.kind == "isolated" else path


def answers(h: LabHost) -> bool:
    """Is the lab host up: its netns exists; an isolated host's sshd also accepts connections.

    For an isolated host the check connects from the source's edge namespace
    (:mod:`ctconsole.lab.edge`): its address is not reachable from this
    namespace except through ssh's ProxyCommand, so a plain TCP probe from here fails.
    """
    from ctconsole.lab import isolated

    return isolated.healthy(h) if h.kind == "isolated" else netns.netns_exists(h.netns)


def real_pid(name: str, pid: int) -> int:
    """This host's pid for ``pid`` as lab host ``name`` sees it (0 if none; identity for netns hosts)."""
    from ctconsole.lab import isolated

    h = get(name)
    return isolated.real_pid(h, pid) if h.kind == "isolated" else pid


def argv_in(name: str) -> list[str]:
    """The argv prefix that runs a command inside lab host ``name`` (stdio and fds pass through)."""
    from ctconsole.lab import isolated

    h = get(name)
    return isolated.nsenter_argv(h) if h.kind == "isolated" else ["ip", "netns", "exec", h.netns]
