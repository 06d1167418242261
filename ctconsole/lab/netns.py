"""Bridges, veths and network namespaces, through iproute2.

Why the ``ip`` tool rather than pyroute2: these calls run a handful of times
per ``lab up``; the tool's error messages are what an operator would see doing
it by hand, and importing pyroute2 would cost more than the calls themselves.
All addresses the lab assigns are in 198.18.0.0/15 and only ever inside
namespaces the lab created; the lab's bridges carry no address.
"""

from __future__ import annotations

import os

from ctconsole.lab.proc import run

#: every address the lab assigns, and only inside namespaces it made: nothing outside the lab
#: may send to these (this machine's own namespace routes them to its default gateway)
LAB_NETWORK = "198.18.0.0/15"
BRIDGE = "ctlab0"
CONTAINER_NET = "198.18.0"  # containers on the bridge: 198.18.0.N/24
NETNS_DIR = "/run/netns"


def link_exists(name: str, netns: str | None = None) -> bool:
    argv = ["ip"] + (["-n", netns] if netns else []) + ["link", "show", "dev", name]
    return run(argv, check=False).returncode == 0


def netns_exists(name: str) -> bool:
    return os.path.exists(os.path.join(NETNS_DIR, name))


def netns_list() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def ip(*args: str, netns: str | None = None, check: bool = True) -> str:
    argv = ["ip"] + (["-n", netns] if netns else []) + list(args)
    return run(argv, check=check).stdout


def ensure_bridge(name: str = BRIDGE, netns: str | None = None) -> bool:
    """Create the bridge (no address) when missing and bring it up; True when we created it."""
    created = False
    if not link_exists(name, netns):
        ip("link", "add", name, "type", "bridge", netns=netns)
        created = True
    ip("link", "set", name, "up", netns=netns)
    return created


def delete_link(name: str, netns: str | None = None) -> None:
    if link_exists(name, netns):
        ip("link", "del", name, netns=netns, check=False)


def add_netns(name: str) -> None:
    ip("netns", "add", name)
    ip("link", "set", "lo", "up", netns=name)


def delete_netns(name: str) -> None:
    if netns_exists(name):
        ip("netns", "del", name, check=False)


def veth_into_pid(host_name: str, pid: int, inside: str, address: str, bridge: str) -> None:
    """A veth pair: ``host_name`` on ``bridge`` here, ``inside`` with ``address`` in PID's netns.

    The address is configured from outside (nsenter into the net namespace only)
    so the container needs no CAP_NET_ADMIN and the host end stays address-free.
    """
    ip("link", "add", host_name, "type", "veth", "peer", "name", inside, "netns", str(pid))
    ip("link", "set", host_name, "master", bridge, "up")
    nsenter = ["nsenter", "-t", str(pid), "-n", "ip"]
    run([*nsenter, "link", "set", "lo", "up"])
    if address:
        run([*nsenter, "addr", "add", address, "dev", inside])
    run([*nsenter, "link", "set", inside, "up"])
