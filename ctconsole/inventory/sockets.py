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
"""

from __future__ import annotations

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
) -> Socket:
    peer_path = ""
    peer_holders: list[FdRef] = []
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
    for ino, holders in sorted(inodes.items()):
        ud = _find_unix(tables, ino)
        if ud is not None:
            out.append(unix_socket(ud, holders, tables, all_holders, members, describe))
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
        )
    return None


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
                holders=holders,
            )
        p = t.packet.get(ino)
        if p is not None:
            return Socket(
                family="packet",
                type=_PACKET_TYPES.get(p.type, "other"),
                inode=ino,
                protocol=f"0x{p.num:04x}",
                holders=holders,
            )
    fam = fallback_family(ino) if fallback_family else ""
    if fam:
        return Socket(family=fam, type="raw", inode=ino, holders=holders)
    return Socket(
        family="other",
        type="other",
        inode=ino,
        holders=holders,
        external=External(
            reason=f"socket:[{ino}] is of a family sock_diag does not report (vsock, AF_ALG, bluetooth, "
            "XDP...): CRIU cannot dump it",
            remedy=NO_REMEDY + " (close it first)",
        ),
    )
