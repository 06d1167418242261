"""What is marked external and why, from synthetic inputs (no root, no live processes)."""

from __future__ import annotations

import os

from ctconsole.inventory import devices, fds, mounts, netifs, sockets, ttys
from ctconsole.inventory.netlink import DiagTables, InetDiag, Link, UnixDiag
from ctconsole.inventory.procfs import parse_mountinfo
from ctconsole.model import NO_REMEDY, FdRef

INSIDE = {10, 11}


def describe(pid: int) -> str:
    return f"p[{pid}]"


# ------------------------------------------------------------------ sockets


def _tables(*ds: UnixDiag) -> list[DiagTables]:
    return [DiagTables(unix={d.inode: d for d in ds})]


def test_socketpair_inside_is_internal() -> None:
    t = _tables(UnixDiag(1, "stream", 1, peer=2), UnixDiag(2, "stream", 1, peer=1))
    holders = {1: [FdRef(10, 3)], 2: [FdRef(11, 4)]}
    out = sockets.build({1: (FdRef(10, 3),), 2: (FdRef(11, 4),)}, t, holders, INSIDE, describe)
    assert [s.external for s in out] == [None, None]
    assert out[0].peer_holder == "p[11]"


def test_stream_peer_outside_is_external_with_unix_remedy() -> None:
    t = _tables(UnixDiag(1, "stream", 1, peer=2), UnixDiag(2, "stream", 1, name="/run/x.sock", peer=1))
    holders = {1: [FdRef(10, 3)], 2: [FdRef(99, 7)]}
    (s,) = sockets.build({1: (FdRef(10, 3),)}, t, holders, INSIDE, describe)
    assert s.external is not None
    assert "stream" in s.external.reason and "named peer /run/x.sock" in s.external.reason
    assert "unix[1]" in s.external.remedy and "socket:[1]" in s.external.remedy
    assert s.peer_holder == "p[99]" and s.external.holder == "p[99]"


def test_dgram_named_vs_unnamed_peer() -> None:
    t = _tables(
        UnixDiag(1, "dgram", 1, peer=2),
        UnixDiag(2, "dgram", 7, name="/dev/log"),
        UnixDiag(3, "dgram", 1, peer=4),
        UnixDiag(4, "dgram", 1),
    )
    holders = {2: [FdRef(99, 1)], 4: [FdRef(98, 1)]}
    named, unnamed = sockets.build({1: (FdRef(10, 1),), 3: (FdRef(10, 2),)}, t, holders, INSIDE, describe)
    assert named.external and "ext_unix_sk" in named.external.remedy and "datagram" in named.external.reason
    assert unnamed.external and "unix[3]" in unnamed.external.remedy and "unnamed peer" in unnamed.external.reason


def test_unaccepted_connection_peer_is_the_listener_holder() -> None:
    t = _tables(UnixDiag(1, "stream", 1, peer=2), UnixDiag(5, "stream", 10, name="/run/l.sock", icons=(1,)))
    holders = {5: [FdRef(99, 3)]}  # nobody holds inode 2 yet: it sits in the listener's queue
    (s,) = sockets.build({1: (FdRef(10, 3),)}, t, holders, INSIDE, describe)
    assert s.external is not None and s.peer_holder == "p[99]" and s.peer_path == "/run/l.sock"


def test_tcp_connections() -> None:
    est = InetDiag(7, "inet", "tcp", 1, "10.0.0.2:40000", "10.0.0.1:80")
    lst = InetDiag(8, "inet", "tcp", 10, "0.0.0.0:22", "0.0.0.0:0")
    t = [DiagTables(inet={7: est, 8: lst})]
    a, b = sockets.build({7: (FdRef(10, 1),), 8: (FdRef(10, 2),)}, t, {}, INSIDE, describe)
    assert a.external is not None and "tcp_established" in a.external.remedy and a.state == "ESTABLISHED"
    assert b.external is None and b.state == "LISTEN" and b.remote == ""


def test_tcp_loopback_pair_inside_is_internal() -> None:
    a = InetDiag(7, "inet", "tcp", 1, "127.0.0.1:5000", "127.0.0.1:6000")
    b = InetDiag(9, "inet", "tcp", 1, "127.0.0.1:6000", "127.0.0.1:5000")
    t = [DiagTables(inet={7: a, 9: b})]
    (s,) = sockets.build({7: (FdRef(10, 1),)}, t, {9: [FdRef(11, 5)]}, INSIDE, describe)
    assert s.external is None


def test_unknown_socket_family_is_reported() -> None:
    (s,) = sockets.build({42: (FdRef(10, 1),)}, [DiagTables()], {}, INSIDE, describe)
    assert s.family == "other" and s.external is not None and s.external.remedy.startswith(NO_REMEDY)


# ------------------------------------------------------------------ devices and fds


def test_device_rules() -> None:
    assert devices.char_supported(1, 3, own_netns=False)[0]  # /dev/null
    assert devices.char_supported(1, 9, own_netns=False)[0]  # /dev/urandom
    assert devices.char_supported(10, 200, own_netns=True)[0]  # tun with own netns
    assert not devices.char_supported(10, 200, own_netns=False)[0]
    for mm in ((10, 232), (10, 229), (10, 238), (226, 0), (195, 0), (4, 64)):
        ok, why = devices.char_supported(*mm, own_netns=True)
        assert not ok and why
    kvm = devices.make_device("/dev/kvm", False, 10, 232, True, ())
    assert kvm.external is not None and "KVM" in kvm.external.reason and not kvm.supported
    blk = devices.make_device("/dev/loop0", True, 7, 0, True, ())
    assert blk.external is not None and blk.kind == "block"
    null = devices.make_device("/dev/null", False, 1, 3, False, ())
    assert null.external is None and null.supported


def test_tty_kinds() -> None:
    assert devices.tty_kind(136, 0) == "pts"
    assert devices.tty_kind(5, 2) == "ptmx"
    assert devices.tty_kind(5, 1) == "console"
    assert devices.tty_kind(4, 1) == "vt"
    assert devices.tty_kind(4, 64) is None  # ttyS: not handled by CRIU's tty code
    assert devices.tty_kind(1, 3) is None


def test_fd_categories() -> None:
    assert fds.category("socket:[12]") == "socket" and fds.link_inode("socket:[12]") == 12
    assert fds.category("pipe:[7]") == "pipe"
    assert fds.category("anon_inode:[eventfd]") == "anon"
    assert fds.category("/memfd:x (deleted)") == "memfd"
    assert fds.category("/secretmem (deleted)") == "memfd_secret"
    assert fds.category("/etc/passwd") == "path"
    assert fds.category("net:[4026531840]") == "nsfs"
    assert fds.anon_kind("anon_inode:[eventpoll]") == ("epoll", True)
    assert fds.anon_kind("anon_inode:inotify") == ("inotify", True)
    assert fds.anon_kind("anon_inode:[io_uring]") == ("io_uring", False)
    assert fds.anon_kind("anon_inode:bpf-prog") == ("bpf", False)
    assert fds.anon_kind("anon_inode:[userfaultfd]") == ("userfaultfd", False)
    assert fds.anon_kind("anon_inode:[pidfd]") == ("pidfd", True)
    assert fds.anon_kind("anon_inode:[weird]") == ("other_anon", False)
    uring = fds.special("io_uring", "anon_inode:[io_uring]", False, ())
    assert uring.external is not None and uring.external.remedy.startswith(NO_REMEDY)


def test_pipe_external_only_when_other_end_outside() -> None:
    assert fds.pipe_item("pipe:[5]", (), []).external is None
    ext = fds.pipe_item("pipe:[5]", (), ["cat[9]"]).external
    assert ext is not None and "inherit_fd pipe:[5]" in ext.remedy and ext.holder == "cat[9]"


# ------------------------------------------------------------------ ttys


def test_pts_with_master_outside_is_external() -> None:
    rdev = os.makedev(136, 0)
    masters = [ttys.Master(FdRef(99, 11), 0, 50), ttys.Master(FdRef(98, 5), 0, 22)]
    t = ttys.make_tty("/dev/pts/0", "pts", rdev, 50, (FdRef(10, 0),), masters, INSIDE, describe)
    assert t.external is not None and t.master_holder == "p[99]"  # same devpts instance, not p[98]
    assert "orphan_pts_master" in t.external.remedy and "tty[8800:32]" in t.external.remedy


def test_pts_with_master_inside_is_internal() -> None:
    rdev = os.makedev(136, 3)
    masters = [ttys.Master(FdRef(11, 4), 3, 22)]
    t = ttys.make_tty("/dev/pts/3", "pts", rdev, 22, (FdRef(10, 0),), masters, INSIDE, describe)
    assert t.external is None and t.index == 3 and t.master_holder == "p[11]"


def test_pts_without_any_master() -> None:
    t = ttys.make_tty("/dev/pts/9", "pts", os.makedev(136, 9), 22, (), [], INSIDE, describe)
    assert t.external is not None and "shell_job" in t.external.remedy


# ------------------------------------------------------------------ mounts

LIBVIRT_MOUNTINFO = """\
144 117 254:0 /var/lab/lvroot / rw - ext4 /dev/vda rw
138 144 0:52 / /dev rw - tmpfs devfs rw
137 138 0:50 / /dev/pts rw - devpts devpts rw
146 144 0:61 / /proc rw - proc proc rw
148 146 0:61 /sys /proc/sys ro - proc proc rw
150 148 0:21 /sys/net/ipv4 /proc/sys/net/ipv4 rw - proc proc rw
156 146 0:53 /meminfo /proc/meminfo rw - fuse libvirt rw
154 144 0:62 / /sys ro - sysfs sysfs rw
170 138 0:50 /0 /dev/console rw - devpts devpts rw
171 144 254:0 /var/lab/lvroot/data /data rw - ext4 /dev/vda rw
172 144 254:0 /srv/shared /shared rw - ext4 /dev/vda rw
173 144 8:16 / /disk rw - xfs /dev/sdb rw
"""

HOST_MOUNTINFO = """\
20 1 254:0 / / rw - ext4 /dev/vda rw
21 20 0:21 / /proc rw - proc proc rw
"""


def test_mount_rules_on_a_libvirt_like_table() -> None:
    items = mounts.build(
        parse_mountinfo(LIBVIRT_MOUNTINFO),
        {(0, 53): "libvirt_lxc[812]"},
        parse_mountinfo(HOST_MOUNTINFO),
    )
    ext = {m.mountpoint: m.external for m in items}
    assert ext["/"] is None  # the namespace root comes from --root
    assert ext["/dev"] is None and ext["/dev/pts"] is None and ext["/proc"] is None
    assert ext["/proc/sys"] is None  # bind inside the container's own procfs
    assert ext["/dev/console"] is None  # bind of the container's devpts
    assert ext["/data"] is None  # inside the container root's filesystem subtree
    net4 = ext["/proc/sys/net/ipv4"]
    assert net4 is not None and "host's proc" in net4.reason
    assert "mnt[/proc/sys/net/ipv4]" in net4.remedy and ":/proc/sys/net/ipv4 on restore" in net4.remedy
    fuse = ext["/proc/meminfo"]
    assert fuse is not None and "libvirt_lxc[812]" in fuse.reason and fuse.holder == "libvirt_lxc[812]"
    shared = ext["/shared"]
    assert shared is not None and ":/srv/shared on restore" in shared.remedy
    disk = ext["/disk"]
    assert disk is not None and "dev[8/16]" in disk.remedy
    meminfo = next(m for m in items if m.mountpoint == "/proc/meminfo")
    assert meminfo.fuse_server == "libvirt_lxc[812]"


# ------------------------------------------------------------------ interfaces


def test_veth_with_host_peer_and_bridge() -> None:
    container = {
        1: Link(1, "lo", arptype=772),
        2: Link(2, "eth0", kind="veth", link=31, link_netnsid=0, mac="52:54:00:00:00:01"),
        3: Link(3, "tun0", kind="tun"),
    }
    host = {31: Link(31, "vlv1", kind="veth", link=2, link_netnsid=5, master=40), 40: Link(40, "labbr0", kind="bridge")}
    items = {i.name: i for i in netifs.build(container, {"host": host})}
    assert items["lo"].kind == "loopback" and items["lo"].external is None
    assert items["tun0"].external is None
    eth0 = items["eth0"]
    assert (eth0.peer_ifname, eth0.peer_netns, eth0.bridge) == ("vlv1", "host", "labbr0")
    assert eth0.external is not None and "veth[eth0]:vlv1@labbr0" in eth0.external.remedy


def test_veth_pair_inside_one_netns_is_internal() -> None:
    lk = {2: Link(2, "a", kind="veth", link=3), 3: Link(3, "b", kind="veth", link=2)}
    assert all(i.external is None for i in netifs.build(lk, {}))


def test_macvlan_physical_and_unsupported_kinds() -> None:
    lk = {
        2: Link(2, "mv0", kind="macvlan", link=4, link_netnsid=0),
        3: Link(3, "eth1", arptype=1),
        5: Link(5, "vl0", kind="vlan"),
        6: Link(6, "wg0", kind="wireguard"),
        7: Link(7, "ipv0", kind="ipvlan"),
    }
    host = {4: Link(4, "enp1s0")}
    items = {i.name: i for i in netifs.build(lk, {"host": host})}
    mv = items["mv0"]
    assert mv.external is not None and "`netdev`" in mv.external.remedy and mv.parent == "enp1s0 (host)"
    phys = items["eth1"]
    assert phys.kind == "physical" and phys.external is not None and "netdev[eth1]" in phys.external.remedy
    for name in ("vl0", "wg0", "ipv0"):
        ext = items[name].external
        assert ext is not None and ext.remedy == NO_REMEDY
