"""Drafting rules from a container's external items."""

from __future__ import annotations

import datetime as dt

import pytest

from ctconsole.model import NO_REMEDY, Container, External, Mount, NetIface, Process, Socket, Tty
from ctconsole.remap.parse import parse_text
from ctconsole.remap.suggest import rule_kind_for, suggest, suggest_rules
from ctconsole.remap.validate import validate_text


def ext(remedy: str) -> External:
    return External(reason="because", remedy=remedy)


@pytest.mark.parametrize(
    ("remedy", "kind"),
    [
        ("veth", "veth"),
        ("veth[eth0]:HOST@BR on restore", "veth"),
        ("mount rule", "mount"),
        ("mnt[/srv]:KEY", "mount"),
        ("external unix[4242] + inherit_fd socket:[4242]", "unix"),
        ("orphan_pts_master", "tty"),
        ("tcp_established or tcp_close", "tcp"),
        ("macvlan[mv0]:PARENT", "netdev"),
        ("netdev rule (VF pool)", "netdev"),
        ("dev[8/16]:NAME", "device"),
        ("cg_root", "cgroup"),
        ("lsm_profile", "lsm"),
        ("rule: tty", "tty"),
        ("shell_job", None),
        ("file_locks", None),
        ("ext_unix_sk", None),
        (NO_REMEDY, None),
        ("", None),
    ],
)
def test_rule_kind_for(remedy: str, kind: str | None) -> None:
    assert rule_kind_for(Process(pid=1, ppid=0, nspid=1, name="x", cmdline="", state="S", uid=0, sid=1, pgid=1,
                                 external=ext(remedy))) == kind


def test_rule_kind_for_item_without_external() -> None:
    assert rule_kind_for(NetIface(name="lo", kind="loopback", ifindex=1)) is None


def big_container() -> Container:
    return Container(
        id="c0ffee", name="web-1", runtime="lxc", init_pid=100, own_namespaces=("net", "mnt"),
        interfaces=(
            NetIface(name="eth0", kind="veth", ifindex=2, peer_ifname="vethA1", bridge="lxcbr0",
                     external=ext("veth")),
            NetIface(name="eth1", kind="veth", ifindex=3, peer_ifname="", external=ext("veth")),
            NetIface(name="mv0", kind="macvlan", ifindex=4, parent="eno2", external=ext("macvlan")),
            NetIface(name="vf0", kind="sriov-vf", ifindex=5, parent="enp1s0f0", external=ext("netdev")),
        ),
        sockets=(
            Socket(family="unix", type="stream", inode=11, peer_path="/run/a.sock", external=ext("unix[11]")),
            Socket(family="unix", type="stream", inode=12, external=ext("unix[12]")),
            Socket(family="inet", type="stream", inode=13, state="ESTABLISHED", external=ext("tcp_established")),
            Socket(family="inet", type="stream", inode=14, state="ESTABLISHED", external=ext("tcp_established")),
            Socket(family="unix", type="dgram", inode=15, peer_path="/dev/log", external=ext("ext_unix_sk")),
        ),
        ttys=(Tty(path="/dev/pts/0", kind="pts", rdev=0x8800, external=ext("orphan_pts_master")),),
        mounts=(Mount(mount_id=9, parent_id=1, mountpoint="/data", root="/srv/web", fstype="ext4",
                      source="/dev/sda1", external=ext("mnt")),
                Mount(mount_id=10, parent_id=1, mountpoint="/big", root="/", fstype="btrfs", source="/dev/sdb",
                      major=8, minor=16, external=ext("dev[8/16]:NAME"))),
    )


def test_suggest_covers_every_item_needing_a_rule() -> None:
    rules = suggest_rules(big_container())
    kinds = [r.kind for r, _, _ in rules]
    assert sorted(kinds) == sorted(["veth", "veth", "netdev", "netdev", "unix", "unix", "tcp", "tty", "mount",
                                    "device"])
    by = {(r.kind, r.get("interface") or r.get("mountpoint") or r.get("inode") or r.get("peer")): r
          for r, _, _ in rules}
    assert by[("veth", "eth0")].fields == {"interface": "eth0", "host_name": "vethA1", "bridge": "lxcbr0"}
    assert by[("veth", "eth1")].fields["host_name"] == "veth1"
    assert by[("netdev", "mv0")].fields["macvlan_parent"] == "eno2"
    assert by[("netdev", "vf0")].fields["vf_pool"] == {"pf": "enp1s0f0"}
    assert by[("unix", "/run/a.sock")].fields == {"peer": "/run/a.sock", "connect": "/run/a.sock"}
    assert by[("unix", 12)].fields["connect"] == "/CHANGE-ME"
    assert by[("mount", "/data")].fields == {"mountpoint": "/data", "path": "/srv/web"}


def test_suggest_text_parses_and_explains() -> None:
    text = suggest(big_container(), "ssh://b", now=dt.datetime(2026, 1, 2, 3, 4, tzinfo=dt.UTC))
    rs, problems = parse_text(text)
    assert problems == []
    assert rs.containers[0].selector is not None
    assert rs.containers[0].selector.to == "ssh://b" and rs.containers[0].selector.name == "web-1"
    assert "# interface eth0: because (remedy: veth)" in text
    assert "GUESS" in text and "2026-01-02 03:04 UTC" in text
    # only the CHANGE-ME placeholders fail structural validation
    problems = validate_text(text, host_checks=False)
    assert all("CHANGE-ME" in p.message for p in problems), problems


def test_suggest_for_container_without_externals() -> None:
    c = Container(id="x", name="plain", runtime="namespaces", init_pid=5)
    text = suggest(c)
    rs, problems = parse_text(text)
    assert problems == [] and rs.containers[0].rules == ()
    assert "Nothing of this container needs a remap rule" in text
