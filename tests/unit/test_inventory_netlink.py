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
