"""Our stdlib sock_diag/rtnetlink reader agrees with pyroute2 (which we avoid importing at run time)."""

from __future__ import annotations

import os
import socket

import pytest

from ctconsole.inventory import netlink


def test_unix_diag_matches_pyroute2() -> None:
    diag = pytest.importorskip("pyroute2.netlink.diag")
    a, b = socket.socketpair()
    try:
        tables, _ = netlink.netns_snapshot(None, want_links=False)
        with diag.DiagSocket() as ds:
            ds.bind()
            theirs = {m["udiag_ino"]: m for m in ds.get_sock_stats(family=socket.AF_UNIX)}
        ours = tables.unix
        ia, ib = os.fstat(a.fileno()).st_ino, os.fstat(b.fileno()).st_ino
        assert ours[ia].peer == ib and ours[ib].peer == ia and ours[ia].type == "stream"
        common = set(ours) & set(theirs)
        assert {ia, ib} <= common  # other sockets come and go between the two dumps
        for ino in common:
            peer = theirs[ino].get_attr("UNIX_DIAG_PEER") or 0
            assert ours[ino].peer == peer
    finally:
        a.close()
        b.close()


def test_inet_diag_sees_a_listener() -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        tables, _ = netlink.netns_snapshot(None, want_links=False)
        ino = os.fstat(s.fileno()).st_ino
        d = tables.inet[ino]
        assert d.state == 10 and d.local == f"127.0.0.1:{port}" and d.proto == "tcp"
    finally:
        s.close()


def test_links_match_pyroute2() -> None:
    pr = pytest.importorskip("pyroute2")
    _, links = netlink.netns_snapshot(None)
    with pr.IPRoute() as ipr:
        theirs = {m["index"]: m for m in ipr.get_links()}
    assert set(links) == set(theirs)
    for idx, m in theirs.items():
        assert links[idx].name == m.get_attr("IFLA_IFNAME")
        assert links[idx].mtu == m.get_attr("IFLA_MTU")
        info = m.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info else None
        assert links[idx].kind == (kind or "")
    lo = next(ln for ln in links.values() if ln.name == "lo")
    assert "127.0.0.1/8" in lo.addresses


def test_netlink_diag_groups_and_unread_data() -> None:
    """NDIAG_SHOW_GROUPS/MEMINFO: the group bitmap and the receive queue CRIU refuses on."""
    import struct

    plain = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
    grouped = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
    busy = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
    with plain, grouped, busy:
        plain.bind((0, 0))
        grouped.bind((0, 0))
        grouped.setsockopt(270, 1, 3)  # NETLINK_ADD_MEMBERSHIP group 3
        grouped.setsockopt(270, 1, 33)  # and one above 32
        busy.bind((0, 0))
        busy.send(struct.pack("=IHHII", 32, 18, 0x301, 1, 0) + struct.pack("=BxHiII", 0, 0, 0, 0, 0))
        import time

        time.sleep(0.1)
        with netlink._netlink_socket(netlink.NETLINK_SOCK_DIAG) as sk:
            table = netlink.netlink_diag(sk)
        ino = {n: os.fstat(s.fileno()).st_ino for n, s in (("plain", plain), ("grouped", grouped), ("busy", busy))}
        assert table[ino["plain"]].groups == () and table[ino["plain"]].rqueue == 0
        g = table[ino["grouped"]].groups
        assert g[0] == 1 << 2 and g[1] == 1  # bit n-1 for group n, as CRIU reads the words
        assert table[ino["busy"]].rqueue > 0


def test_unbound_and_unknown_sockets_are_named_by_the_kernel() -> None:
    """An unbound netlink socket is in no diag table; the fd's system.sockprotoname names it."""
    from ctconsole.inventory import sockets
    from ctconsole.model import FdRef

    nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 15)
    with nl:
        ino = os.fstat(nl.fileno()).st_ino
        holders = (FdRef(os.getpid(), nl.fileno()),)
        (s,) = sockets.build({ino: holders}, [netlink.DiagTables()], {}, {os.getpid()}, str)
        assert (s.family, s.state, s.external) == ("netlink", "unbound", None)
    assert sockets.protoname((FdRef(os.getpid(), 10**6),)) == ""
