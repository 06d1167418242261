"""Turn sock_diag answers plus fd holders into Socket items, and decide which tie the container outside.

Why holders decide: CRIU dumps a connected socket pair only when *both* ends
are in the dumped tree. Which process holds the other end is known only from
the fd tables of every process (``socket:[INO]`` links), so the scanner passes
a global inode -> holders map, and here we compare it with the member set.

CRIU treats the kinds differently (digest §3.4), so the reason says stream vs
datagram and named vs unnamed:
- stream/seqpacket peer outside -> external ``unix[INO]`` + inherit_fd (remap rule ``unix``);
- named dgram peer outside -> ``ext_unix_sk`` (CRIU reconnects by name);
- nameless dgram peer outside -> ``unix[INO]`` as for stream.

CRIU looks a peer up only among the sockets of the dumped tree's network
namespaces (sk-unix.c ``Unix socket %u without peer %u``), so a peer that
lives in another netns is flagged ``peer_elsewhere``: no option helps.

Every family CRIU dumps is recognised (sockets.c ``dump_socket``: unix, inet,
inet6, packet, netlink); a socket no diag table reports (an unbound netlink
socket is not hashed, raw/ICMP sockets are not in inet_diag) is named from
its fd's ``system.sockprotoname`` xattr, and only families CRIU has no dumper
for end up as ``other``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from ctconsole.inventory.netlink import NETLINK_PROTOCOLS, TCP_STATES, DiagTables, UnixDiag
from ctconsole.model import NO_REMEDY, External, FdRef, Socket

_UNIX_STATES = {1: "ESTABLISHED", 7: "UNCONN", 10: "LISTEN", 2: "SYN_SENT", 3: "SYN_RECV"}
_PACKET_TYPES = {1: "stream", 2: "dgram", 3: "raw", 5: "seqpacket"}
_TCP_CONNECTED = {"ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2", "CLOSE_WAIT", "LAST_ACK", "CLOSING"}


def _find_unix(tables: list[DiagTables], inode: int) -> UnixDiag | None:
    for t in tables:
        d = t.unix.get(inode)
        if d is not None:
            return d
    return None


def _listener_of(tables: list[DiagTables], client_inode: int) -> UnixDiag | None:
    """The listener whose accept queue holds our connection (peer not accepted yet)."""
    for t in tables:
        for d in t.unix.values():
            if d.icons and client_inode in d.icons:
                return d
    return None


def unix_socket(
    d: UnixDiag,
    holders: tuple[FdRef, ...],
    tables: list[DiagTables],
    all_holders: Mapping[int, list[FdRef]],
    members: set[int],
    describe: Callable[[int], str],
    own: list[DiagTables] | None = None,
) -> Socket:
    """``own``: the tables of the container's network namespace(s), where CRIU looks peers up."""
    peer_path = ""
    peer_holders: list[FdRef] = []
    elsewhere = bool(d.peer) and own is not None and _find_unix(own, d.peer) is None
    # connected, not accepted yet: the diag shows no peer (the server end has no inode yet) and the
    # client's inode sits in a listener's queue (UNIX_DIAG_ICONS)
    in_flight = not d.peer and d.type != "dgram" and d.state == 1 and _listener_of(tables, d.inode) is not None
    if d.peer:
        peer = _find_unix(tables, d.peer)
        peer_path = peer.name if peer else ""
        peer_holders = list(all_holders.get(d.peer, ()))
        if not peer_holders:
            lst = _listener_of(tables, d.inode)  # connected but not accepted: the listener's holder
            if lst is not None:
                peer_path = peer_path or lst.name
                peer_holders = list(all_holders.get(lst.inode, ()))
    inside = [h for h in peer_holders if h.pid in members]
    outside = [h for h in peer_holders if h.pid not in members]
    holder = describe(outside[0].pid) if outside else (describe(inside[0].pid) if inside else "")
    ext = None
    if d.peer and outside and not inside:
        named = f"named peer {peer_path}" if peer_path else "unnamed peer"
        where = f"held by {holder} outside the container"
        if d.type == "dgram":
            kind = "datagram"
            if peer_path:
                remedy = "ext_unix_sk (CRIU reconnects to the peer's name on restore; it must exist there)"
            else:
                remedy = (
                    f"remap rule `unix` (CRIU external unix[{d.inode}] on dump, inherit_fd "
                    f"socket:[{d.inode}] on restore; a nameless dgram peer cannot use ext_unix_sk)"
                )
        else:
            kind = "stream" if d.type == "stream" else d.type
            remedy = (
                f"remap rule `unix` (CRIU external unix[{d.inode}] on dump, inherit_fd socket:[{d.inode}] on restore)"
            )
        ext = External(
            reason=f"UNIX {kind} socket connected to {named} (socket:[{d.peer}]) {where}",
            remedy=remedy,
            holder=holder,
        )
    return Socket(
        family="unix",
        type=d.type,
        inode=d.inode,
        state=_UNIX_STATES.get(d.state, str(d.state)),
        path=d.name,
        peer_inode=d.peer,
        peer_path=peer_path,
        peer_holder=holder,
        holders=holders,
        external=ext,
        rqueue=d.rqueue,
        wqueue=d.wqueue,
        icons=tuple(d.icons),
        in_flight=in_flight,
        peer_elsewhere=elsewhere,
    )


def build(
    inodes: Mapping[int, tuple[FdRef, ...]],
    tables: list[DiagTables],
    all_holders: Mapping[int, list[FdRef]],
    members: set[int],
    describe: Callable[[int], str],
    fallback_family: Callable[[int], str] | None = None,
) -> list[Socket]:
    """Socket items for every socket inode held in the container.

    ``tables`` lists the diag tables of the container's netns(es) first and
    the host's after; ``fallback_family`` names sockets no diag table knows
    (raw sockets read from /proc/PID/net), else they are reported as ``other``.
    """
    out: list[Socket] = []
    # the container's netns tables: those that hold one of its sockets (CRIU collects only these)
    own = [t for t in tables if any(i in t.unix or i in t.inet or i in t.netlink or i in t.packet for i in inodes)]
    for ino, holders in sorted(inodes.items()):
        ud = _find_unix(tables, ino)
        if ud is not None:
            out.append(unix_socket(ud, holders, tables, all_holders, members, describe, own))
            continue
        item = _inet_socket(ino, holders, tables, all_holders, members, describe)
        if item is None:
            item = _other_socket(ino, holders, tables, fallback_family)
        out.append(item)
    return out


def _inet_socket(
    ino: int,
    holders: tuple[FdRef, ...],
    tables: list[DiagTables],
    all_holders: Mapping[int, list[FdRef]],
    members: set[int],
    describe: Callable[[int], str],
) -> Socket | None:
    for t in tables:
        d = t.inet.get(ino)
        if d is None:
            continue
        state = TCP_STATES.get(d.state, str(d.state))
        if d.proto != "tcp":
            state = "UNCONN" if state == "CLOSE" else state
        ext = None
        if d.proto == "tcp" and state in _TCP_CONNECTED:
            # the other end inside the container? (same netns table, mirrored addresses)
            twin = next(
                (o for o in t.inet.values() if o.local == d.remote and o.remote == d.local and o.proto == "tcp"),
                None,
            )
            twin_inside = twin is not None and any(h.pid in members for h in all_holders.get(twin.inode, ()))
            if not twin_inside:
                ext = External(
                    reason=f"TCP connection {d.local} -> {d.remote} ({state}) to a peer outside the container",
                    remedy="remap rule `tcp` (CRIU tcp_established to keep it via TCP repair, or tcp_close)",
                )
        return Socket(
            family=d.family,
            type="stream" if d.proto == "tcp" else "dgram",
            inode=ino,
            state=state,
            local=d.local,
            remote=d.remote if not d.remote.endswith(":0") else "",
            protocol=d.proto,
            holders=holders,
            external=ext,
            rqueue=d.rqueue,
            wqueue=d.wqueue,
        )
    return None


# system.sockprotoname (the socket's struct proto name) -> (family, type, protocol) for the families
# CRIU dumps; the inet names with "v6" are inet6
_PROTONAMES = {
    "NETLINK": ("netlink", "raw", ""),
    "PACKET": ("packet", "raw", ""),
    "UNIX": ("unix", "", ""),
    "UNIX-STREAM": ("unix", "stream", ""),
    "TCP": ("inet", "stream", "tcp"),
    "UDP": ("inet", "dgram", "udp"),
    "UDP-Lite": ("inet", "dgram", "udplite"),
    "RAW": ("inet", "raw", "raw"),
    "PING": ("inet", "dgram", "icmp"),
    "TCPv6": ("inet6", "stream", "tcp"),
    "UDPv6": ("inet6", "dgram", "udp"),
    "UDPLITEv6": ("inet6", "dgram", "udplite"),
    "RAWv6": ("inet6", "raw", "raw"),
    "PINGv6": ("inet6", "dgram", "icmp"),
    "MPTCP": ("inet", "stream", "mptcp"),
    "MPTCPv6": ("inet6", "stream", "mptcp"),
    "SCTP": ("inet", "stream", "sctp"),
    "SCTPv6": ("inet6", "stream", "sctp"),
}


def protoname(holders: tuple[FdRef, ...]) -> str:
    """The kernel's name for a socket's protocol (``system.sockprotoname`` on the fd), "" if unknown."""
    for h in holders:
        try:
            return os.getxattr(f"/proc/{h.pid}/fd/{h.fd}", "system.sockprotoname").rstrip(b"\0").decode()
        except (OSError, UnicodeDecodeError):
            continue
    return ""


def _other_socket(
    ino: int,
    holders: tuple[FdRef, ...],
    tables: list[DiagTables],
    fallback_family: Callable[[int], str] | None,
) -> Socket:
    for t in tables:
        n = t.netlink.get(ino)
        if n is not None:
            return Socket(
                family="netlink",
                type="raw",
                inode=ino,
                protocol=NETLINK_PROTOCOLS.get(n.protocol, str(n.protocol)),
                local=str(n.portid),
                remote=f"{n.dst_portid}/{n.dst_group}" if n.dst_portid or n.dst_group else "",
                state="bound" if n.portid else "unbound",
                holders=holders,
                rqueue=n.rqueue,
                groups=n.groups[0] if n.groups else 0,
                group_words=_crius_group_words(n.groups),
            )
        p = t.packet.get(ino)
        if p is not None:
            return Socket(
                family="packet",
                type=_PACKET_TYPES.get(p.type, "other"),
                inode=ino,
                protocol=f"0x{p.num:04x}",
                holders=holders,
                groups=len(p.mclist),
                group_words=max((c for _i, c in p.mclist), default=0),
            )
    name = protoname(holders)
    known = _PROTONAMES.get(name)
    if known is not None:
        fam, typ, proto = known
        state = "unbound" if fam == "netlink" else ""
        return Socket(family=fam, type=typ or "other", inode=ino, protocol=proto, state=state, holders=holders)
    fam = fallback_family(ino) if fallback_family else ""
    if fam:
        return Socket(family=fam, type="raw", inode=ino, holders=holders)
    what = name or "a family sock_diag does not report"
    return Socket(
        family="other",
        type="other",
        inode=ino,
        protocol=name,
        holders=holders,
        external=External(
            reason=f"socket:[{ino}] is of {what} (CRIU dumps only unix, inet, inet6, packet and netlink "
            "sockets): CRIU cannot dump it",
            remedy=NO_REMEDY + " (close it first)",
        ),
    )


def _crius_group_words(words: tuple[int, ...]) -> int:
    """How many 32-bit group words CRIU's sk-netlink.c keeps: all of them minus one trailing zero
    word (it refuses more than one: 'has more than 32 groups')."""
    n = len(words)
    if n and words[-1] == 0:
        n -= 1
    return n
