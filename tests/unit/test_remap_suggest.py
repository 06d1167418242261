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


def _fuse_ct(parent_fstype: str, mountpoint: str = "/proc/meminfo") -> Container:
    """libvirt_lxc's shape: a FUSE file (root /meminfo inside the FUSE fs) laid over the container's proc."""
    return Container(
        id="lv", name="lv-1", runtime="libvirt-lxc", init_pid=100, own_namespaces=("mnt",),
        mounts=(Mount(mount_id=1, parent_id=0, mountpoint="/", root="/", fstype="ext4", source="/dev/sda1"),
                Mount(mount_id=2, parent_id=1, mountpoint="/proc", root="/", fstype=parent_fstype, source="proc"),
                Mount(mount_id=3, parent_id=2, mountpoint=mountpoint, root="/meminfo", fstype="fuse",
                      source="libvirt", fuse_server="libvirt_lxc[42]",
                      external=ext("remap rule `mount` (CRIU external mnt[/proc/meminfo]:proc-meminfo on dump, "
                                   "mnt[proc-meminfo]:HOST_PATH on restore)"))),
    )


def test_fuse_file_over_proc_maps_to_the_hosts_own_file() -> None:
    """#14: not path = "/meminfo" (the path inside the FUSE fs, on no host): derived from the mount's parent."""
    (rule, why, _), = suggest_rules(_fuse_ct("proc"))
    assert rule.fields == {"mountpoint": "/proc/meminfo", "path": "/proc/meminfo"}
    assert any("libvirt_lxc[42]" in w for w in why)
    # the same shape at another place derives that place (no special case on the string "meminfo")
    (rule, _, _), = suggest_rules(_fuse_ct("proc", "/proc/uptime"))
    assert rule.fields["path"] == "/proc/uptime"


def test_fuse_mount_it_cannot_place_is_said_plainly(capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from ctconsole import inventory
    from ctconsole.cli import main
    from ctconsole.remap.suggest import UNDECIDED, undecided

    c = _fuse_ct("tmpfs")
    text = suggest(c)
    assert 'path = "/CHANGE-ME"' in text and f"# {UNDECIDED} which host path replaces /proc/meminfo" in text
    (decision,) = undecided(text)
    assert decision.startswith(UNDECIDED) and "no mount of that filesystem is visible" in decision
    monkeypatch.setattr(inventory, "resolve", lambda ref: c)
    assert main(["rules", "suggest", "lv-1"]) == 0
    err = capsys.readouterr().err
    assert f"rules suggest: {UNDECIDED} which host path replaces /proc/meminfo" in err
