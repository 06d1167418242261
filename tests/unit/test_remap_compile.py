"""Compiling rules for a container into CRIU dump/restore options (criu-digest §3.9 key formats)."""

from __future__ import annotations

import json
import os
import random
import textwrap
from pathlib import Path

import pytest

from ctconsole.errors import UsageError
from ctconsole.model import Container, External, Mount, NetIface, Socket, Tty
from ctconsole.remap.compile import (
    CONNECT_UNIX,
    KEEP_PTY_MASTER,
    MOVE_VF,
    compile_rules,
    effective_rules,
    selector_matches,
)
from ctconsole.remap.model import Selector
from ctconsole.remap.parse import parse_text
from ctconsole.remap.validate import HostEnv


def container(**kw: object) -> Container:
    base: dict[str, object] = dict(
        id="abc123",
        name="web-1",
        runtime="lxc",
        init_pid=100,
        own_namespaces=("net", "mnt", "pid"),
        interfaces=(
            NetIface(name="eth0", kind="veth", ifindex=2, peer_ifname="vethA1", bridge="lxcbr0",
                     external=External("peer is on the host", "veth")),
        ),
        sockets=(
            Socket(family="unix", type="stream", inode=4242, state="ESTABLISHED", peer_path="/run/log.sock",
                   external=External("peer held by journald", "unix[4242]")),
        ),
        ttys=(Tty(path="/dev/pts/3", kind="pts", rdev=0x8803,
                  external=External("console master is outside", "orphan_pts_master")),),
        mounts=(Mount(mount_id=5, parent_id=1, mountpoint="/srv/data", root="/data/web", fstype="ext4",
                      source="/dev/sda1", external=External("bind mount from the host", "mnt")),),
    )
    base.update(kw)
    return Container(**base)  # type: ignore[arg-type]


def rules(text: str) -> object:
    rs, problems = parse_text(textwrap.dedent(text), "r.toml")
    assert problems == []
    return rs


FULL = '''\
    version = 1
    [defaults]
    tcp = "keep"
    cgroup_mode = "soft"

    [[container]]
    match = { name = "web-*", runtime = "lxc" }
    [[container.rule]]
    kind = "veth"
    interface = "eth0"
    host_name = "vweb0"
    bridge = "br1"
    [[container.rule]]
    kind = "unix"
    peer = "/run/log.sock"
    connect = "/run/systemd/journal/stdout"
    [[container.rule]]
    kind = "tty"
    [[container.rule]]
    kind = "mount"
    mountpoint = "/srv/data"
    path = "/export/web"
    [[container.rule]]
    kind = "device"
    source = "8:16"
    target = "/dev/sdc"
    name = "data"
    [[container.rule]]
    kind = "lsm"
    selinux = "system_u:system_r:svirt_lxc_net_t:s0"
    mcs = "auto"
    mount_context = "system_u:object_r:svirt_sandbox_file_t:s0"
    [[container.rule]]
    kind = "cgroup"
    roots = [{ ctrl = "cpu,memory", path = "/machine.slice/web" }, { path = "/ct" }]
    '''


def test_full_compile() -> None:
    out = compile_rules(rules(FULL), container(), "ssh://b", used_mcs=set(), rng=random.Random(7))  # type: ignore[arg-type]
    assert out.dump["external"] == ["unix[4242]", "mnt[/srv/data]:srv-data", "dev[8/16]:data"]
    assert out.dump["tcp_established"] is True
    assert out.dump["manage_cgroups_mode"] == "SOFT"
    assert out.dump["orphan_pts_master"] is True and out.dump["notify_scripts"] is True
    r = out.restore
    assert r["external"] == ["veth[eth0]:vweb0@br1", "mnt[srv-data]:/export/web", "dev[data]:/dev/sdc"]
    assert r["orphan_pts_master"] and r["notify_scripts"] and r["shell_job"]
    assert r["tcp_established"] is True
    assert r["cg_root"] == [{"ctrl": "cpu,memory", "path": "/machine.slice/web"}, {"path": "/ct"}]
    level = r["lsm_profile"].rsplit(":", 2)
    assert r["lsm_profile"].startswith("selinux:system_u:system_r:svirt_lxc_net_t:s0:c")
    assert r["lsm_mount_context"].endswith(":" + ":".join(level[-2:]))
    assert out.inherit_fd_keys() == ["socket:[4242]"]
    unix = next(i for i in out.inherit if i.how == CONNECT_UNIX)
    assert unix.path == "/run/systemd/journal/stdout" and unix.line == 13
    pty = next(i for i in out.inherit if i.how == KEEP_PTY_MASTER)
    assert pty.via == "notify" and pty.key == "orphan-pts-master"
    # every external item is covered: no "no ... rule" notes
    assert not [n for n in out.notes if n.startswith("no ")]
    doc = json.loads(json.dumps(out.to_json()))
    assert set(doc) >= {"dump", "restore", "inherit_fd", "setup_ns_actions", "notes"}
    assert doc["inherit_fd"][0]["key"] == "socket:[4242]"


def test_mcs_auto_avoids_used_pairs() -> None:
    text = '''\
        version = 1
        [defaults]
        [[defaults.rule]]
        kind = "lsm"
        selinux = "u:r:t:s0"
        mcs = "auto"
        '''
    used = {(a, b) for a in range(0, 1024) for b in range(a + 1, 1024) if not (a == 3 and b == 9)}
    out = compile_rules(rules(text), container(), used_mcs=used, rng=random.Random(1))  # type: ignore[arg-type]
    assert out.restore["lsm_profile"] == "selinux:u:r:t:s0:c3,c9"


def test_apparmor_and_tcp_close() -> None:
    text = '''\
        version = 1
        [defaults]
        tcp = "keep"
        [[container]]
        match = { name = "*" }
        [[container.rule]]
        kind = "tcp"
        mode = "close"
        [[container.rule]]
        kind = "lsm"
        apparmor = "lxc-container-default-cgns"
        '''
    out = compile_rules(rules(text), container())  # type: ignore[arg-type]
    assert out.dump == {"tcp_close": True}
    assert out.restore == {"tcp_close": True, "lsm_profile": "apparmor:lxc-container-default-cgns"}
    assert any("overrides line 3 in defaults" in n for n in out.notes)


def test_selectors_and_precedence() -> None:
    text = '''\
        version = 1
        [[container]]
        match = { name = "*" }
        [[container.rule]]
        kind = "veth"
        interface = "eth0"
        host_name = "generic"
        [[container]]
        match = { name = "web-*", to = "ssh://b*" }
        [[container.rule]]
        kind = "veth"
        interface = "eth0"
        host_name = "special"
        [[container]]
        match = { runtime = "runc" }
        [[container.rule]]
        kind = "tcp"
        mode = "close"
        '''
    rs = rules(text)
    assert compile_rules(rs, container(), "ssh://b1").restore["external"] == ["veth[eth0]:special"]  # type: ignore[arg-type]
    assert compile_rules(rs, container(), "ssh://c").restore["external"] == ["veth[eth0]:generic"]  # type: ignore[arg-type]
    assert compile_rules(rs, container(), None).restore["external"] == ["veth[eth0]:generic"]  # type: ignore[arg-type]
    assert [r.kind for _, r in effective_rules(rs, container(runtime="runc"))] == ["veth", "tcp"]  # type: ignore[arg-type]
    assert selector_matches(Selector(id="abc*"), container(), None)
    assert not selector_matches(Selector(id="zzz"), container(), None)


def test_uncovered_externals_are_noted() -> None:
    out = compile_rules(rules("version = 1\n"), container())  # type: ignore[arg-type]
    notes = "\n".join(out.notes)
    assert "no veth rule for interface eth0" in notes
    assert "no unix rule for unix socket 4242" in notes
    assert "no tty rule for tty /dev/pts/3" in notes
    assert "no mount rule for mount /srv/data" in notes
    assert out.dump == {} and out.restore == {}


def test_unix_rule_by_inode_and_unmatched_peer() -> None:
    text = '''\
        version = 1
        [[container]]
        match = { name = "*" }
        [[container.rule]]
        kind = "unix"
        inode = 777
        connect = "/run/a.sock"
        [[container.rule]]
        kind = "unix"
        peer = "/run/other.sock"
        connect = "/run/b.sock"
        '''
    out = compile_rules(rules(text), container())  # type: ignore[arg-type]
    assert out.dump["external"] == ["unix[777]"]
    assert out.inherit_fd_keys() == ["socket:[777]"]
    assert any("has peer '/run/other.sock'; rule unused" in n for n in out.notes)


def test_netdev_variants_and_vf(tmp_path: Path) -> None:
    dev = tmp_path / "class/net/pf0/device"
    dev.mkdir(parents=True)
    (tmp_path / "vf/net/pf0v1").mkdir(parents=True)
    os.symlink(tmp_path / "vf", dev / "virtfn1")
    (tmp_path / "class/net/pf0v1").mkdir()
    (tmp_path / "class/net/pf0v1/flags").write_text("0x1002")
    text = '''\
        version = 1
        [[container]]
        match = { name = "*" }
        [[container.rule]]
        kind = "netdev"
        interface = "eth0"
        device = "pre0"
        [[container.rule]]
        kind = "netdev"
        interface = "mv0"
        macvlan_parent = "eno1"
        [[container.rule]]
        kind = "netdev"
        interface = "vf0"
        vf_pool = { pf = "pf0", vfs = ["0-3"] }
        '''
    out = compile_rules(rules(text), container(), host=HostEnv(sys_root=str(tmp_path)))  # type: ignore[arg-type]
    assert out.restore["external"] == ["netdev[eth0]:pre0", "macvlan[mv0]:eno1"]
    (act,) = out.setup_ns_actions
    assert (act.action, act.interface, act.pf, act.vfs, act.preview) == (MOVE_VF, "vf0", "pf0", (0, 1, 2, 3),
                                                                       "pf0v1")
    assert out.restore["notify_scripts"] is True
    assert out.to_json()["setup_ns_actions"][0]["vfs"] == [0, 1, 2, 3]


def test_device_source_path_resolved() -> None:
    text = '''\
        version = 1
        [[container]]
        match = { name = "*" }
        [[container.rule]]
        kind = "device"
        source = "/dev/null"
        target = "/dev/zero"
        '''
    out = compile_rules(rules(text), container())  # type: ignore[arg-type]
    assert out.dump["external"] == ["dev[1/3]:dev_1_3"]
    assert out.restore["external"] == ["dev[dev_1_3]:/dev/zero"]


def test_invalid_rules_refuse_to_compile() -> None:
    rs, _ = parse_text('version = 1\n[[container]]\nmatch = { name = "*" }\n[[container.rule]]\nkind = "x"\n')
    with pytest.raises(UsageError) as ei:
        compile_rules(rs, container())
    assert "unknown rule kind 'x'" in "\n".join(ei.value.details)


def test_open_inherit_fds(tmp_path: Path) -> None:
    import socket

    from ctconsole.errors import CtError
    from ctconsole.remap.compile import InheritSpec, open_inherit_fds

    path = str(tmp_path / "l.sock")
    lis = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lis.bind(path)
    lis.listen(2)
    try:
        specs = [InheritSpec(key="socket:[1]", how=CONNECT_UNIX, path=path),
                 InheritSpec(key="orphan-pts-master", how=KEEP_PTY_MASTER, via="notify")]
        fds = open_inherit_fds(specs)
        assert list(fds) == ["socket:[1]"]
        peer, _ = lis.accept()
        os.write(fds["socket:[1]"], b"hi")
        assert peer.recv(2) == b"hi"
        peer.close()
        os.close(fds["socket:[1]"])
        with pytest.raises(CtError, match="cannot connect to"):
            open_inherit_fds([*specs, InheritSpec(key="socket:[2]", how=CONNECT_UNIX, path=str(tmp_path / "no"))])
    finally:
        lis.close()


# ---------------------------------------------------------------- carry = true (issue #13)


def test_carry_lists_the_host_paths_to_copy(tmp_path: Path) -> None:
    from ctconsole.remap.validate import validate_text

    text = textwrap.dedent('''\
        version = 1
        [[container]]
        match = { name = "web-*" }
          [[container.rule]]
          kind = "mount"
          mountpoint = "/srv/data"
          path = "/srv/export/web-data"
          carry = true

          [[container.rule]]
          kind = "mount"
          mountpoint = "/srv/cache"
          path = "/srv/export/cache"
          carry = false
        ''')
    out = compile_rules(rules(text), container())  # type: ignore[arg-type]
    assert out.carry_paths() == ["/srv/export/web-data"]
    assert [(c.path, c.mountpoint, c.line) for c in out.carry] == [("/srv/export/web-data", "/srv/data", 4)]
    assert out.to_json()["carry"] == [{"path": "/srv/export/web-data", "mountpoint": "/srv/data", "line": 4}]
    assert "mnt[srv-data]:/srv/export/web-data" in out.restore["external"]
    assert any("copied to the destination" in n for n in out.notes)
    # a carried source need not exist on this (the destination) host; one that is not carried must
    host = [p.message for p in validate_text(text, "r.toml", host_checks=True)]
    assert host == ["path /srv/export/cache does not exist on this host"], host
    bad = text.replace("carry = true", 'carry = "yes"')
    assert any("carry must be true or false" in p.message for p in validate_text(bad, "r.toml", host_checks=False))
    # carry never widens what may be bound: the source still passes the bind-source refusals
    worse = text.replace('path = "/srv/export/web-data"', 'path = "/etc"')
    assert any("refused" in p.message for p in validate_text(worse, "r.toml", host_checks=False))
