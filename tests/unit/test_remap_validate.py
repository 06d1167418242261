"""The validator: every problem with file, line and rule; never raises; host checks on fake trees."""

from __future__ import annotations

import os
import socket
import textwrap
from pathlib import Path

import pytest

from ctconsole.remap.validate import HostEnv, ifname_problem, validate_file, validate_text


def _v(text: str, **kw: object) -> list[str]:
    return [f"{p.line}: {p.message}" for p in validate_text(textwrap.dedent(text), "f.toml", **kw)]  # type: ignore[arg-type]


def _wrap(rule: str, match: str = 'name = "c"') -> str:
    return f"version = 1\n[[container]]\nmatch = {{ {match} }}\n[[container.rule]]\n{textwrap.dedent(rule)}"


@pytest.mark.parametrize(
    ("name", "ok"),
    [("eth0", True), ("a" * 15, True), ("a" * 16, False), ("", False), (".", False), ("..", False),
     ("a/b", False), ("a b", False), ("a\tb", False), ("a:1", False), (3, False)],
)
def test_ifname(name: object, ok: bool) -> None:
    assert (ifname_problem(name) is None) is ok


def test_ok_file(tmp_path: Path) -> None:
    d = tmp_path / "data"
    d.mkdir()
    text = f'''\
        version = 1
        [defaults]
        tcp = "keep"
        cgroup_mode = "soft"
        [[container]]
        match = {{ name = "web-*", runtime = "lxc" }}
        [[container.rule]]
        kind = "veth"
        interface = "eth0"
        host_name = "vweb0"
        [[container.rule]]
        kind = "mount"
        mountpoint = "/srv"
        path = "{d}"
        [[container.rule]]
        kind = "tty"
        [[container.rule]]
        kind = "lsm"
        apparmor = "lxc-container-default"
        [[container.rule]]
        kind = "cgroup"
        roots = [{{ ctrl = "cpu", path = "/a" }}, {{ path = "/b" }}]
        '''
    assert _v(text) == []


def test_unknown_kind_and_field_and_missing() -> None:
    out = _v(_wrap('kind = "vet"\ninterface = "eth0"\n'))
    assert out == ["5: unknown rule kind 'vet' (known: veth, netdev, unix, tty, mount, device, lsm, cgroup, tcp, file)"]
    out = _v(_wrap('kind = "veth"\ninterface = "eth0"\nbrige = "br0"\n'))
    assert any(o.startswith("7: unknown field 'brige'") for o in out)
    assert any(o.startswith("4: missing field 'host_name'") for o in out)
    out = _v(_wrap('interface = "eth0"\n'))
    assert out[0].startswith("4: unknown rule kind '(missing)'")


def test_bad_interface_names_have_their_lines() -> None:
    out = _v(_wrap('kind = "veth"\ninterface = "this-name-is-too-long"\nhost_name = "a b"\n'))
    assert any(o.startswith("6: interface: interface name 'this-name-is-too-long' is 21 bytes") for o in out)
    assert any(o.startswith("7: host_name:") and "whitespace" in o for o in out)


def test_relative_and_missing_paths(tmp_path: Path) -> None:
    out = _v(_wrap('kind = "mount"\nmountpoint = "srv"\npath = "data"\n'))
    assert "6: mountpoint 'srv' is not an absolute path" in out
    assert "7: path 'data' is not an absolute path" in out
    missing = tmp_path / "nope"
    out = _v(_wrap(f'kind = "mount"\nmountpoint = "/srv"\npath = "{missing}"\n'))
    assert out == [f"7: path {missing} does not exist on this host"]
    assert _v(_wrap(f'kind = "mount"\nmountpoint = "/srv"\npath = "{missing}"\n'), host_checks=False) == []


def test_unix_connect_must_be_a_socket(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("")
    out = _v(_wrap(f'kind = "unix"\npeer = "/run/x.sock"\nconnect = "{f}"\n'))
    assert out == [f"7: connect {f} is not a UNIX socket"]
    sp = tmp_path / "s.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(sp))
    try:
        assert _v(_wrap(f'kind = "unix"\npeer = "/run/x.sock"\nconnect = "{sp}"\n')) == []
        out = _v(_wrap(f'kind = "unix"\nconnect = "{sp}"\n'))
        assert any("needs peer" in o for o in out)
        out = _v(_wrap(f'kind = "unix"\ninode = -3\nconnect = "{sp}"\n'))
        assert any(o.startswith("6: inode must be a positive integer") for o in out)
    finally:
        s.close()


def test_overlapping_rules_in_same_scope() -> None:
    text = _wrap('kind = "veth"\ninterface = "eth0"\nhost_name = "a"\n') + textwrap.dedent('''\
        [[container.rule]]
        kind = "netdev"
        interface = "eth0"
        device = "x"
        [[container.rule]]
        kind = "tcp"
        mode = "keep"
        [[container.rule]]
        kind = "tcp"
        mode = "close"
        ''')
    out = _v(text, host_checks=False)
    assert "8: overlaps rule #1 (line 4): both decide eth0 in container[0] (name='c')" in out[0]
    assert any(o.startswith("15: overlaps rule #3 (line 12): both decide tcp") for o in out)


def test_same_slot_in_different_scopes_is_fine() -> None:
    text = textwrap.dedent('''\
        version = 1
        [defaults]
        tcp = "keep"
        [[container]]
        match = { name = "c" }
        [[container.rule]]
        kind = "tcp"
        mode = "close"
        ''')
    assert _v(text) == []


def test_mount_key_clash() -> None:
    text = _wrap('kind = "mount"\nmountpoint = "/a"\npath = "/"\nkey = "k"\n') + (
        '[[container.rule]]\nkind = "mount"\nmountpoint = "/b"\npath = "/"\nkey = "k"\n')
    out = _v(text)
    assert any(o.startswith("13: mount key 'k' is also used by rule #1") for o in out)


def _fake_sriov(root: Path, pf: str, vfs: dict[int, tuple[str, bool]]) -> None:
    """A /sys tree with PF and VFs: index -> (netdev name or "", up)."""
    dev = root / "class/net" / pf / "device"
    dev.mkdir(parents=True)
    for idx, (name, up) in vfs.items():
        vdir = root / "devices" / f"vf{idx}"
        (vdir / "net").mkdir(parents=True)
        os.symlink(vdir, dev / f"virtfn{idx}")
        if name:
            (vdir / "net" / name).mkdir()
            nd = root / "class/net" / name
            nd.mkdir(parents=True)
            (nd / "flags").write_text("0x1003\n" if up else "0x1002\n")


def test_vf_pool_free_and_exhausted(tmp_path: Path) -> None:
    _fake_sriov(tmp_path, "pf0", {0: ("vf0", True), 1: ("vf1", False), 2: ("", False)})
    host = HostEnv(sys_root=str(tmp_path))
    ok = _wrap('kind = "netdev"\ninterface = "eth1"\nvf_pool = { pf = "pf0", vfs = ["0-1"] }\n')
    assert _v(ok, host=host) == []
    busy = _wrap('kind = "netdev"\ninterface = "eth1"\nvf_pool = { pf = "pf0", vfs = [0, 2] }\n')
    out = _v(busy, host=host)
    assert len(out) == 1 and out[0].startswith("7: VF pool on pf0 has no free VF")
    two = ok + '[[container.rule]]\nkind = "netdev"\ninterface = "eth2"\nvf_pool = { pf = "pf0" }\n'
    out = _v(two, host=host)
    assert len(out) == 1 and "already taken by earlier rules" in out[0]
    bad = _wrap('kind = "netdev"\ninterface = "eth1"\nvf_pool = { pf = "pf0", vfs = ["x"] }\n')
    assert any("bad VF index" in o for o in _v(bad, host=host))
    none = _wrap('kind = "netdev"\ninterface = "eth1"\nvf_pool = { pf = "nopf" }\n')
    assert _v(none, host=host) == ["7: PF nopf does not exist on this host"]


def test_netdev_needs_exactly_one_target() -> None:
    out = _v(_wrap('kind = "netdev"\ninterface = "eth1"\n'), host_checks=False)
    assert any("exactly one of device, macvlan_parent, vf_pool" in o for o in out)


def test_mcs_pair_in_use(tmp_path: Path) -> None:
    for pid, ctx in ((10, "system_u:system_r:svirt_lxc_net_t:s0:c5,c7"), (11, "unconfined")):
        (tmp_path / str(pid) / "attr").mkdir(parents=True)
        (tmp_path / str(pid) / "attr" / "current").write_text(ctx + "\x00")
    host = HostEnv(proc_root=str(tmp_path))
    base = 'kind = "lsm"\nselinux = "system_u:system_r:svirt_lxc_net_t:s0"\n'
    out = _v(_wrap(base + 'mcs = "s0:c7,c5"\n'), host=host)
    assert out == ["7: MCS pair s0:c7,c5 is already used by a process on this host; use mcs = \"auto\" or "
                   "another pair"]
    assert _v(_wrap(base + 'mcs = "s0:c1,c2"\n'), host=host) == []
    assert _v(_wrap(base + 'mcs = "auto"\n'), host=host) == []
    assert any("expected \"auto\"" in o for o in _v(_wrap(base + 'mcs = "c1"\n'), host=host))
    out = _v(_wrap('kind = "lsm"\napparmor = "p"\nmcs = "auto"\n'), host=host)
    assert any("mcs only applies with selinux" in o for o in out)


def test_cgroup_and_tcp_values() -> None:
    out = _v(_wrap('kind = "cgroup"\nmode = "sofft"\nroot = "rel"\n'))
    assert any(o.startswith("6: mode 'sofft'") for o in out)
    assert any(o.startswith("7: root 'rel' is not an absolute") for o in out)
    out = _v(_wrap('kind = "tcp"\nmode = "maybe"\n'))
    assert out == ["6: tcp mode 'maybe': expected one of keep, close"]


def test_device_rule(tmp_path: Path) -> None:
    out = _v(_wrap('kind = "device"\nsource = "8-16"\ntarget = "/dev/null"\n'))
    assert any(o.startswith("6: source '8-16'") for o in out)
    f = tmp_path / "notdev"
    f.write_text("")
    out = _v(_wrap(f'kind = "device"\nsource = "8:16"\ntarget = "{f}"\n'))
    assert out == [f"7: target {f} is not a device node"]
    assert _v(_wrap('kind = "device"\nsource = "8:16"\ntarget = "/dev/null"\n')) == []


def test_unknown_runtime_typo() -> None:
    out = _v(_wrap('kind = "tcp"\nmode = "keep"\n', match='name = "c", runtime = "lcx"'))
    assert out == ["2: unknown runtime 'lcx' (known: libvirt-lxc, lxc, runc, nspawn, namespaces, tree)"]


def test_malformed_toml_is_one_problem() -> None:
    out = _v("version = 1\n[[container]\n")
    assert len(out) == 1 and out[0].startswith("2: malformed TOML")


def test_validate_file_never_writes(tmp_path: Path) -> None:
    f = tmp_path / "rules.toml"
    f.write_text(_wrap('kind = "tcp"\nmode = "bad"\n'))
    before = (f.read_bytes(), f.stat().st_mtime_ns)
    problems = validate_file(f)
    assert problems and problems[0].file == str(f)
    assert (f.read_bytes(), f.stat().st_mtime_ns) == before
    assert sorted(os.listdir(tmp_path)) == ["rules.toml"]


def test_validate_file_unreadable_inputs(tmp_path: Path) -> None:
    assert validate_file(tmp_path / "missing.toml")[0].message == "file does not exist"
    assert "directory" in validate_file(tmp_path)[0].message
    b = tmp_path / "bin.toml"
    b.write_bytes(b"version = 1\n\xff\xfe")
    p = validate_file(b)[0]
    assert p.line == 2 and "not UTF-8" in p.message
