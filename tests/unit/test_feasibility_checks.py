"""Each static rule on hand-built model objects (no root, no CRIU)."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import pytest

from ctconsole.feasibility import check, describe, static_findings
from ctconsole.feasibility.catalogue import CATALOGUE, Context, HostFacts, run_all
from ctconsole.feasibility.findings import Finding, merge_options, verdict_of
from ctconsole.model import (
    Container,
    Device,
    External,
    FdRef,
    Mount,
    NetIface,
    OpenFile,
    Process,
    Socket,
    SpecialFd,
    Tty,
)

H = (FdRef(100, 3),)


def proc(pid: int = 100, **kw: Any) -> Process:
    base: dict[str, Any] = dict(
        pid=pid,
        ppid=1,
        nspid=pid,
        name="w",
        cmdline="w",
        state="S",
        uid=0,
        sid=pid,
        pgid=pid,
        namespaces={"pid": 1, "uts": 2, "ipc": 3, "user": 4, "cgroup": 5, "time": 6, "mnt": 7, "net": 8},
    )
    base.update(kw)
    return Process(**base)


def ct(**kw: Any) -> Container:
    base: dict[str, Any] = dict(id="c1", name="c1", runtime="tree", init_pid=100, processes=(proc(),))
    base.update(kw)
    return Container(**base)


def findings(c: Container, **ctx: Any) -> list[Finding]:
    return run_all(Context(c, **ctx))


def by_rule(c: Container, rule: str, **ctx: Any) -> list[Finding]:
    return [f for f in findings(c, **ctx) if f.rule == rule]


def test_catalogue_is_complete_and_described() -> None:
    rows = describe()
    ids = {r["id"] for r in rows}
    for rid in (
        "session",
        "unix-stream-external",
        "unix-dgram-external",
        "tty-external-master",
        "device",
        "unsupported-fd",
        "tcp-established",
        "file-lock",
        "deleted-file",
        "unlinked-linked-file",
        "bind-mount-external",
        "fuse-mount",
        "veth-external",
        "macvlan",
        "netdev-kind",
        "nested-namespace",
        "pidns-init",
        "traced",
        "sigtrap",
        "sysv-shm",
        "criu-kernel-inet",
        "socket-family",
        "lsm",
        "cgroups",
        "route-linkdown",
        "tun",
    ):
        assert rid in ids, rid
    assert all(r["severity"] in ("blocker", "needs-rule", "auto", "info") for r in rows)
    assert len(CATALOGUE) == len(rows)


def test_plain_container_is_clean() -> None:
    assert not [f for f in findings(ct()) if f.severity != "info"]
    assert verdict_of(findings(ct())) == "no-known-blockers"  # static rules only: unverified
    assert verdict_of(findings(ct()), verified=True) == "feasible"  # a trial dump confirmed it


def test_session_not_leader_sets_shell_job() -> None:
    (f,) = by_rule(ct(processes=(proc(sid=42),)), "session")
    assert f.severity == "auto" and f.dump == {"shell_job": True} and f.restore == {"shell_job": True}


def test_session_outside_own_pidns_blocks() -> None:
    """unshare --pid --fork CMD without setsid: the session id is 0 inside, CRIU refuses (cr-dump.c)."""
    c = ct(processes=(proc(sid=42, nspid=1),), own_namespaces=("pid",))
    (f,) = by_rule(c, "session")
    assert f.severity == "blocker" and not f.dump and "setsid" in f.remedy
    # a leader inside the namespace is fine, and so is one outside a tree without its own pid namespace
    assert not by_rule(replace(c, processes=(proc(sid=100, nspid=1),)), "session")
    assert by_rule(replace(c, own_namespaces=()), "session")[0].severity == "auto"


def test_pidns_init() -> None:
    c = ct(processes=(proc(nspid=7),), own_namespaces=("pid",))
    assert by_rule(c, "pidns-init")[0].severity == "blocker"
    assert not by_rule(replace(c, processes=(proc(nspid=1),)), "pidns-init")


@pytest.mark.parametrize("kind", ["pid", "uts", "ipc", "user", "cgroup", "time"])
def test_nested_namespaces_block(kind: str) -> None:
    child = proc(101, ppid=100, sid=100)
    ns = dict(child.namespaces)
    ns[kind] = 999
    c = ct(processes=(proc(), replace(child, namespaces=ns)))
    assert by_rule(c, "nested-namespace")[0].severity == "blocker"


@pytest.mark.parametrize("kind", ["mnt", "net"])
def test_nested_mnt_net_are_fine(kind: str) -> None:
    child = proc(101, ppid=100, sid=100)
    ns = dict(child.namespaces)
    ns[kind] = 999
    assert not by_rule(ct(processes=(proc(), replace(child, namespaces=ns))), "nested-namespace")


def test_time_for_children() -> None:
    p = proc(namespaces={"time": 6, "time_for_children": 60})
    assert by_rule(ct(processes=(p,)), "nested-namespace")


def test_traced_and_sigtrap() -> None:
    assert by_rule(ct(processes=(proc(tracer_pid=5),)), "traced")[0].severity == "blocker"
    assert by_rule(ct(processes=(proc(sigpnd_trap=True),)), "sigtrap")[0].severity == "blocker"


def test_vfork_and_sysv_facts() -> None:
    facts = HostFacts(vfork_parents=(100,), sysv_shm_pids=(100,))
    assert by_rule(ct(), "vfork", facts=facts)
    assert by_rule(ct(), "sysv-shm", facts=facts)
    assert not by_rule(ct(own_namespaces=("ipc",)), "sysv-shm", facts=facts)


def unix(ino: int, peer: int, type_: str = "stream", **kw: Any) -> Socket:
    return Socket(family="unix", type=type_, inode=ino, peer_inode=peer, holders=H, **kw)


def test_unix_stream_external_needs_rule() -> None:
    (f,) = by_rule(ct(sockets=(unix(10, 99),)), "unix-stream-external")
    assert f.severity == "needs-rule" and f.rule_kind == "unix"
    assert f.dump == {"external": ["unix[10]"]} and f.needs == ("socket:[10]",)


def test_unix_pair_inside_is_fine() -> None:
    c = ct(sockets=(unix(10, 11), unix(11, 10)))
    assert not by_rule(c, "unix-stream-external")


def test_unix_external_flag_from_inventory() -> None:
    s = unix(10, 0, external=External("peer outside", "unix", "sshd[1]"))
    assert by_rule(ct(sockets=(s,)), "unix-stream-external")


def test_unix_dgram_named_and_nameless() -> None:
    (named,) = by_rule(ct(sockets=(unix(10, 99, "dgram", peer_path="/dev/log"),)), "unix-dgram-external")
    assert named.severity == "auto" and named.dump == {"ext_unix_sk": True}
    (anon,) = by_rule(ct(sockets=(unix(10, 99, "dgram"),)), "unix-dgram-external")
    assert anon.severity == "needs-rule" and anon.needs == ("socket:[10]",)


def inet(state: str, type_: str = "stream", **kw: Any) -> Socket:
    return Socket(
        family="inet", type=type_, inode=20, state=state, local="127.0.0.1:80", remote="127.0.0.1:5000", holders=H, **kw
    )


def test_tcp_established_auto_listen_info() -> None:
    (f,) = by_rule(ct(sockets=(inet("ESTABLISHED"),)), "tcp-established")
    assert f.severity == "auto" and f.dump["tcp_established"] and f.restore["tcp_established"]
    assert not by_rule(ct(sockets=(inet("LISTEN"),)), "tcp-established")
    assert by_rule(ct(sockets=(inet("LISTEN"),)), "tcp-listen")[0].severity == "info"


def test_old_criu_on_new_kernel_blocks_inet() -> None:
    c = ct(sockets=(inet("LISTEN"),))
    assert by_rule(c, "criu-kernel-inet", criu_version=(4, 1, 1), kernel=(6, 18))
    assert not by_rule(c, "criu-kernel-inet", criu_version=(4, 2, 1), kernel=(6, 18))
    assert not by_rule(c, "criu-kernel-inet", criu_version=(4, 1, 1), kernel=(6, 12))


@pytest.mark.parametrize("family", ["vsock", "other"])
def test_exotic_socket_families_block(family: str) -> None:
    s = Socket(family=family, type="stream", inode=5, holders=H)
    assert by_rule(ct(sockets=(s,)), "socket-family")[0].severity == "blocker"


def test_sctp_blocks_raw_ok() -> None:
    assert by_rule(ct(sockets=(inet("LISTEN", protocol="sctp"),)), "socket-family")
    assert not by_rule(ct(sockets=(inet("", type_="raw", protocol="icmp"),)), "socket-family")


def pts(index: int, **kw: Any) -> Tty:
    return Tty(path=f"/dev/pts/{index}", kind="pts", rdev=os.makedev(136, index), index=index, holders=H, **kw)


def test_pts_with_master_outside() -> None:
    c = ct(ttys=(pts(3, master_holder="sshd[50]"),))
    (f,) = by_rule(c, "tty-external-master")
    assert f.severity == "auto" and f.dump["orphan_pts_master"] and f.restore["shell_job"]
    # same host, host devpts: the old master keeps the index busy
    assert by_rule(c, "tty-index-busy")[0].severity == "blocker"
    assert not by_rule(c, "tty-index-busy", dest_local=False)


def test_pts_private_devpts_is_not_busy() -> None:
    m = Mount(1, 0, "/dev/pts", "/", "devpts", "devpts")
    c = ct(ttys=(pts(0),), own_namespaces=("mnt",), mounts=(m,))
    assert not by_rule(c, "tty-index-busy")


def test_pty_pair_inside_is_fine() -> None:
    master = Tty(path="/dev/ptmx", kind="ptmx", rdev=os.makedev(5, 2), index=3, holders=H)
    assert not by_rule(ct(ttys=(pts(3), master)), "tty-external-master")


def test_two_outside_terminals_block() -> None:
    (f,) = by_rule(ct(ttys=(pts(3), pts(4))), "tty-external-master")
    assert f.severity == "blocker"


def test_serial_port_blocks() -> None:
    t = Tty(path="/dev/ttyS0", kind="serial", rdev=os.makedev(4, 64), holders=H)
    assert by_rule(ct(ttys=(t,)), "tty-serial")


@pytest.mark.parametrize(
    ("major", "minor", "kind", "blocked"),
    [
        (1, 3, "char", False),
        (10, 232, "char", True),
        (10, 229, "char", True),
        (226, 0, "char", True),
        (7, 0, "block", True),
        (1, 9, "char", False),
        (136, 2, "char", False),
    ],
)
def test_devices(major: int, minor: int, kind: str, blocked: bool) -> None:
    d = Device(path="/dev/x", kind=kind, major=major, minor=minor, supported=True, holders=H)
    assert bool(by_rule(ct(devices=(d,)), "device")) is blocked


def test_tun_needs_own_netns() -> None:
    d = Device(path="/dev/net/tun", kind="char", major=10, minor=200, supported=True, holders=H)
    assert by_rule(ct(devices=(d,)), "device")
    assert not by_rule(ct(devices=(d,), own_namespaces=("net",)), "device")


@pytest.mark.parametrize("kind", ["io_uring", "perf_event", "bpf", "userfaultfd", "memfd_secret", "other_anon"])
def test_unsupported_special_fds(kind: str) -> None:
    f = SpecialFd(kind=kind, target=f"anon_inode:[{kind}]", holders=H)
    assert by_rule(ct(fds=(f,)), "unsupported-fd")[0].severity == "blocker"


@pytest.mark.parametrize("kind", ["eventfd", "epoll", "timerfd", "signalfd", "memfd", "pipe", "pidfd", "inotify"])
def test_supported_special_fds(kind: str) -> None:
    assert not by_rule(ct(fds=(SpecialFd(kind=kind, target=kind, holders=H),)), "unsupported-fd")


def test_file_locks() -> None:
    f = OpenFile(path="/var/lock/x", mnt_id=1, inode=2, locked=True, holders=H)
    (x,) = by_rule(ct(files=(f,)), "file-lock")
    assert x.dump == {"file_locks": True} and x.restore == {"file_locks": True}


def test_ghost_limit_sized_from_allocated() -> None:
    small = OpenFile(path="/tmp/a (deleted)", mnt_id=1, inode=2, deleted=True, nlink=0, allocated=4096)
    big = replace(small, inode=3, allocated=(3 << 20) + 5)
    assert by_rule(ct(files=(small,)), "deleted-file")[0].severity == "info"
    (f,) = by_rule(ct(files=(small, big)), "deleted-file")
    assert f.severity == "auto" and f.dump["ghost_limit"] == 4 << 20


def test_link_remap() -> None:
    f = OpenFile(path="/tmp/a (deleted)", mnt_id=1, inode=2, deleted=True, nlink=1)
    assert by_rule(ct(files=(f,)), "unlinked-linked-file")[0].dump == {"link_remap": True}


def test_external_file_in_own_mntns() -> None:
    root = Mount(20, 1, "/", "/srv/rootfs", "ext4", "/dev/sda1", 8, 1)
    f = OpenFile(path="/host/out.log", mnt_id=27, inode=0x99, holders=H)
    (x,) = by_rule(ct(own_namespaces=("mnt",), mounts=(root,), files=(f,)), "external-file")
    assert x.needs == ("file[1b:99]",)


def test_bind_mount_from_outside() -> None:
    root = Mount(20, 1, "/", "/srv/rootfs", "ext4", "/dev/sda1", 8, 1)
    proc_m = Mount(21, 20, "/proc", "/", "proc", "proc", 0, 30)
    share = Mount(22, 20, "/share", "/srv/share", "ext4", "/dev/sda1", 8, 1)
    host_proc = Mount(23, 20, "/proc/sys/net", "/sys/net", "proc", "proc", 0, 21)
    own_proc_bind = Mount(24, 20, "/proc/sys", "/sys", "proc", "proc", 0, 30)
    inside_root = Mount(25, 20, "/data", "/srv/rootfs/data", "ext4", "/dev/sda1", 8, 1)
    cg = Mount(26, 20, "/sys/fs/cgroup/cpu", "/ct1", "cgroup", "cgroup", 0, 40)
    c = ct(own_namespaces=("mnt",), mounts=(root, proc_m, share, host_proc, own_proc_bind, inside_root, cg))
    subjects = {f.subject for f in by_rule(c, "bind-mount-external")}
    assert subjects == {"mount /share", "mount /proc/sys/net", "mount /sys/fs/cgroup/cpu"}
    assert not by_rule(replace(c, own_namespaces=()), "bind-mount-external")


def test_fuse_outside_needs_rule_inside_blocks() -> None:
    m = Mount(30, 20, "/proc/meminfo", "/", "fuse", "libvirt", 0, 50, fuse_server="libvirt_lxc[5]")
    c = ct(own_namespaces=("mnt",), mounts=(m,))
    assert by_rule(c, "fuse-mount")[0].severity == "needs-rule"
    inside = replace(m, fuse_server="sshfs[100]")
    assert by_rule(replace(c, mounts=(inside,)), "fuse-mount")[0].severity == "blocker"


def test_whole_unknown_fs_needs_rule() -> None:
    m = Mount(30, 20, "/data", "/", "xfs", "/dev/sdb", 8, 16)
    assert by_rule(ct(own_namespaces=("mnt",), mounts=(m,)), "mount-fstype")


def iface(name: str, kind: str, **kw: Any) -> NetIface:
    return NetIface(name=name, kind=kind, ifindex=2, **kw)


def test_veth_macvlan_and_unsupported_links() -> None:
    c = ct(
        own_namespaces=("net",),
        interfaces=(
            iface("lo", "loopback"),
            iface("eth0", "veth", peer_ifname="vh0", peer_netns="host", bridge="br0"),
            iface("mv0", "macvlan", parent="eno1"),
            iface("vx0", "vxlan"),
            iface("vf0", "sriov-vf"),
            iface("tunl0", "ipip"),
            iface("br1", "bridge"),
            iface("tap0", "tun"),
        ),
    )
    assert by_rule(c, "veth-external")[0].needs == ("veth[eth0]", "netdev[eth0]")
    assert by_rule(c, "macvlan")[0].severity == "needs-rule"
    blocked = {f.subject for f in by_rule(c, "netdev-kind")}
    assert blocked == {"interface vx0", "interface vf0", "interface tunl0"}


def test_veth_pair_inside() -> None:
    c = ct(
        own_namespaces=("net",), interfaces=(iface("a", "veth", peer_ifname="b"), iface("b", "veth", peer_ifname="a"))
    )
    assert not by_rule(c, "veth-external")


def test_route_linkdown_fact() -> None:
    assert by_rule(ct(), "route-linkdown", facts=HostFacts(linkdown_routes=("198.18.0.0/24 dev eth0",)))


def test_lsm_info_local_needs_rule_remote() -> None:
    c = ct(lsm_label="lxc-container-default")
    assert by_rule(c, "lsm")[0].severity == "info"
    assert by_rule(c, "lsm", dest_local=False)[0].severity == "needs-rule"
    assert not by_rule(ct(lsm_label="unconfined"), "lsm")


def test_merge_options() -> None:
    d: dict[str, Any] = {"external": ["a"], "ghost_limit": 1 << 20, "shell_job": False}
    merge_options(d, {"external": ["a", "b"], "ghost_limit": 512, "shell_job": True})
    assert d == {"external": ["a", "b"], "ghost_limit": 1 << 20, "shell_job": True}


def test_check_static_only_with_rules_satisfying_needs() -> None:
    c = ct(
        sockets=(unix(10, 99),),
        own_namespaces=("net",),
        interfaces=(iface("eth0", "veth", peer_ifname="vh0", peer_netns="host"),),
    )
    r = check(c, hosts=False)
    assert r.verdict == "needs-rules"
    assert r.options["dump"]["external"] == ["unix[10]"]
    rules = {"dump": {"external": ["unix[10]"]}, "restore": {"external": ["veth[eth0]:vh0@br0"]}}
    partial = check(c, hosts=False, rules=rules)
    assert partial.verdict == "needs-rules"  # the socket still needs an inherited fd
    full = check(
        c,
        hosts=False,
        rules=dict(rules, restore={"external": ["veth[eth0]:vh0"], "inherit_fd": [{"key": "socket:[10]"}]}),
    )
    assert full.verdict == "no-known-blockers" and not full.verified
    assert "veth[eth0]:vh0" in full.options["restore"]["external"]
    assert full.to_dict()["verdict"] == "no-known-blockers" and full.to_dict()["verified"] is False


def test_rules_tcp_close_wins() -> None:
    c = ct(sockets=(inet("ESTABLISHED"),))
    r = check(c, hosts=False, rules={"dump": {"tcp_close": True}, "restore": {"tcp_close": True}})
    assert "tcp_established" not in r.options["dump"] and r.options["dump"]["tcp_close"]


def test_blocker_beats_everything() -> None:
    c = ct(sockets=(unix(10, 99),), fds=(SpecialFd(kind="io_uring", target="anon_inode:[io_uring]"),))
    assert check(c, hosts=False).verdict == "infeasible"


def test_broken_rule_becomes_info(monkeypatch: pytest.MonkeyPatch) -> None:
    from ctconsole.feasibility import catalogue

    def boom(ctx: Context) -> list[Finding]:
        raise RuntimeError("x")

    monkeypatch.setitem(catalogue.CATALOGUE, "boom", catalogue.Check("boom", "info", "t", boom))
    fs = static_findings(ct())
    assert any(f.rule == "boom" and "could not run" in f.message for f in fs)


class FakeProbe:
    name = "fake"

    def __init__(
        self,
        version: tuple[int, int, int] = (4, 2, 1),
        check_ok: bool = True,
        cpu_ok: bool = True,
        free: int = 1 << 40,
        paths: bool = True,
    ) -> None:
        self._v, self._c, self._cpu, self._free, self._paths = version, check_ok, cpu_ok, free, paths

    def version(self) -> tuple[tuple[int, int, int], str]:
        return self._v, ".".join(map(str, self._v))

    def kernel(self) -> str:
        return "6.18.0"

    def features(self) -> dict[str, bool]:
        return {"mem_track": False, "lazy_pages": False}

    def check(self) -> Any:
        from ctconsole.feasibility.host import ProbeResult

        return ProbeResult(self._c, "msg")

    def cpuinfo_dump(self) -> bytes:
        return b"cpu"

    def cpuinfo_check(self, blob: bytes) -> Any:
        from ctconsole.feasibility.host import ProbeResult

        return ProbeResult(self._cpu)

    def free_space(self, path: str) -> int:
        return self._free

    def path_exists(self, path: str) -> bool:
        return self._paths


def test_host_checks_with_fake_probes() -> None:
    from ctconsole.feasibility.host import HostProbe

    assert isinstance(FakeProbe(), HostProbe)
    c = ct(init_pid=0, root_path="/srv/rootfs", sockets=(inet("LISTEN"),))
    ok = check(c, probe=FakeProbe(), dest="local")
    assert ok.verdict == "no-known-blockers" and ok.criu.version == "4.2.1"
    old = check(c, probe=FakeProbe((4, 1, 1)))
    assert {"criu-version", "criu-kernel-inet"} <= {f.rule for f in old.findings if f.severity == "blocker"}
    remote = check(c, probe=FakeProbe(), dest="netns:x", dest_probe=FakeProbe((4, 2, 0), cpu_ok=False, paths=False))
    rules = {f.rule for f in remote.findings if f.severity == "blocker"}
    assert {"criu-version", "cpu"} <= rules and "rootfs" not in rules  # migrate carries a missing root
    assert "rootfs" in {f.rule for f in remote.findings if f.severity == "info"}
    assert check(c, probe=FakeProbe(check_ok=False)).verdict == "infeasible"


# --------------------------------------------------------------------------- rules from CRIU's refusals


def _sev(c: Container, rule: str, **ctx: Any) -> list[str]:
    return [f.severity for f in by_rule(c, rule, **ctx)]


def test_unix_in_flight_closed_client_and_unsent_data() -> None:
    """sk-unix.c: a listener with a closed queued client, an in-flight client with unsent data."""
    listener = Socket("unix", "stream", 20, state="LISTEN", path="@srv", icons=(0,), holders=H)
    assert _sev(ct(sockets=(listener,)), "unix-in-flight") == ["blocker"]
    ok_listener = replace(listener, icons=(21,))
    client = Socket("unix", "stream", 21, state="ESTABLISHED", in_flight=True, wqueue=6, holders=H)
    assert _sev(ct(sockets=(ok_listener, client)), "unix-in-flight") == ["blocker"]
    # a queued connection that sent nothing is re-made on restore: fine
    assert _sev(ct(sockets=(ok_listener, replace(client, wqueue=0))), "unix-in-flight") == []


def test_unix_peer_in_another_netns_is_a_blocker_not_a_rule() -> None:
    """'Unix socket N without peer M' comes before any external handling: no rule helps."""
    s = Socket("unix", "dgram", 30, state="ESTABLISHED", peer_inode=31, peer_path="/dev/log", peer_elsewhere=True,
               holders=H, external=External("x", "ext_unix_sk", "journald[1]"))
    c = ct(sockets=(s,), own_namespaces=("net",))
    assert _sev(c, "unix-peer-netns") == ["blocker"]
    assert by_rule(c, "unix-dgram-external") == []
    assert check(c, hosts=False).verdict == "infeasible"


def test_udp_corked_from_facts() -> None:
    s = Socket("inet", "dgram", 40, local="127.0.0.1:5000", protocol="udp", holders=H)
    assert _sev(ct(sockets=(s,)), "udp-corked") == []
    assert _sev(ct(sockets=(s,)), "udp-corked", facts=HostFacts(corked_udp=(40,))) == ["blocker"]


def test_netlink_sockets() -> None:
    """Recognised (never 'other'); refused only with unread data, groups above 32 or groups w/o portid."""
    nl = Socket("netlink", "raw", 50, protocol="route", state="bound", holders=H)
    c = ct(sockets=(nl,))
    assert _sev(c, "netlink-socket") == [] and by_rule(c, "socket-family") == []
    assert check(c, hosts=False).verdict == "no-known-blockers"
    assert _sev(ct(sockets=(replace(nl, rqueue=1200),)), "netlink-socket") == ["blocker"]
    assert _sev(ct(sockets=(replace(nl, groups=1, group_words=2),)), "netlink-socket") == ["blocker"]
    assert _sev(ct(sockets=(replace(nl, groups=1, group_words=1),)), "netlink-socket") == []
    assert _sev(ct(sockets=(replace(nl, groups=1, group_words=1, state="unbound"),)), "netlink-socket") == ["blocker"]


def test_packet_socket_duplicate_membership() -> None:
    pk = Socket("packet", "raw", 60, protocol="0x0003", holders=H)
    assert "blocker" not in _sev(ct(sockets=(pk,)), "packet-socket")
    assert _sev(ct(sockets=(replace(pk, groups=1, group_words=2),)), "packet-socket") == ["blocker"]


def test_pidfd_thread_and_outside() -> None:
    c = ct(fds=(SpecialFd("pidfd", "anon_inode:[pidfd]", H),))
    assert _sev(c, "pidfd") == []
    assert _sev(c, "pidfd", facts=HostFacts(pidfds=((100, 3, 100, False),))) == []  # its own tree
    assert _sev(c, "pidfd", facts=HostFacts(pidfds=((100, 3, -1, False),))) == []  # exited: fine
    assert _sev(c, "pidfd", facts=HostFacts(pidfds=((100, 3, 101, True),))) == ["blocker"]
    assert _sev(c, "pidfd", facts=HostFacts(pidfds=((100, 3, 4242, False),))) == ["blocker"]


def test_creds_rlimit_and_tcp_in_flight() -> None:
    assert _sev(ct(), "creds-rlimit", facts=HostFacts(foreign_creds=((100, "uid 1 gid 1"),))) == ["blocker"]
    lst = Socket("inet", "stream", 70, state="LISTEN", local="127.0.0.1:80", protocol="tcp", rqueue=2, holders=H)
    (f,) = by_rule(ct(sockets=(lst,)), "tcp-in-flight")
    assert f.severity == "auto" and f.dump == {"tcp_skip_in_flight": True}
    assert by_rule(ct(sockets=(replace(lst, rqueue=0),)), "tcp-in-flight") == []


def test_other_family_named_by_protocol() -> None:
    s = Socket("other", "other", 80, protocol="AF_VSOCK", holders=H)
    (f,) = by_rule(ct(sockets=(s,)), "socket-family")
    assert f.severity == "blocker" and "AF_VSOCK" in f.message


def test_report_round_trips_through_json_and_distrusts_a_peer() -> None:
    """Report.from_dict is the inverse of to_dict (a report from another host's agent), but a peer
    cannot claim more than it backs: 'feasible' needs verified + an ok trial, unknown words are infeasible."""
    import json

    from ctconsole.feasibility.findings import Report, TrialResult

    c = ct(sockets=(unix(10, 99),))
    r = check(c, hosts=False)
    back = Report.from_dict(json.loads(json.dumps(r.to_dict())))
    assert back.to_dict() == r.to_dict()
    ok = replace(r, verdict="feasible", verified=True, trial=TrialResult(True, 0.05), findings=())
    assert Report.from_dict(json.loads(json.dumps(ok.to_dict()))) == replace(ok, elapsed=round(ok.elapsed, 4))
    claimed = dict(ok.to_dict(), trial=None)
    assert Report.from_dict(claimed).verdict == "no-known-blockers" and not Report.from_dict(claimed).verified
    assert Report.from_dict({"verdict": "totally-fine"}).verdict == "infeasible"
    assert Report.from_dict("garbage").verdict == "infeasible"
    odd = Report.from_dict({"verdict": "needs-rules", "findings": [{"severity": "evil", "rule": 3}, "x"]})
    assert [(f.severity, f.rule) for f in odd.findings] == [("info", "")]


def test_pts_whose_master_is_closed_is_not_busy() -> None:
    """zdtm pty04: the master was closed, so the index goes with the dumped slaves; CRIU restores it."""
    c = ct(ttys=(pts(5),))
    assert [f.severity for f in by_rule(c, "tty-external-master")] == ["auto"]
    assert not by_rule(c, "tty-index-busy")


def test_breaking_lease_and_closed_tcp_and_child_time_ns() -> None:
    """Facts /proc shows but the model does not carry: a lease being broken (file-lock.c breaks it again
    on restore), a TCP socket reset by its peer (restored as a connection), unshare(CLONE_NEWTIME)."""
    f = OpenFile(path="/srv/a", mnt_id=1, inode=7, holders=H)
    assert _sev(ct(files=(f,)), "lease-breaking", facts=HostFacts(breaking_leases=((100, 7),))) == ["blocker"]
    s = Socket("inet", "stream", 90, protocol="tcp", holders=H)
    (t,) = by_rule(ct(sockets=(s,)), "tcp-established", facts=HostFacts(closed_tcp_peers=(90,)))
    assert t.severity == "auto" and t.restore == {"tcp_established": True}
    assert by_rule(ct(sockets=(s,)), "tcp-established") == []
    assert _sev(ct(), "nested-namespace", facts=HostFacts(timens_for_children=(100,))) == ["blocker"]
