"""A rules file is hostile input (issue #10): what no rules author may ask of the destination.

Each case is one way a rules author could become root on the destination
(bind the host's /, write /etc/ld.so.preload, run unconfined, escape the
cgroup tree, talk to the docker socket); ``validate`` must refuse it with the
file and line, and ``compile`` must never produce the option.
"""

from __future__ import annotations

import os
import textwrap
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from ctconsole.cli import main
from ctconsole.errors import UsageError
from ctconsole.model import Container, FdRef, Mount, OpenFile
from ctconsole.remap import safety
from ctconsole.remap.compile import ALLOWED_OPTIONS, compile_rules
from ctconsole.remap.model import Rule, RuleSet, Scope, Selector
from ctconsole.remap.parse import MAX_BYTES, parse_text
from ctconsole.remap.validate import validate_text


def wrap(rule: str) -> str:
    return f'version = 1\n[[container]]\nmatch = {{ name = "*" }}\n[[container.rule]]\n{textwrap.dedent(rule)}'


def refused(rule: str) -> list[str]:
    return [f"{p.line}: {p.message}" for p in validate_text(wrap(rule), "evil.toml", host_checks=False)
            if "refused" in p.message]


def ct(**kw: Any) -> Container:
    base: dict[str, Any] = dict(id="ct1", name="web-1", runtime="lxc", init_pid=2**22 + 7,
                                own_namespaces=("mnt",),
                                mounts=(Mount(20, 1, "/", "/srv/rootfs", "ext4", "/dev/sda1", 8, 1),))
    base.update(kw)
    return Container(**base)


@pytest.mark.parametrize("path", ["/", "/proc", "/proc/1/root", "/proc/self/root", "/proc/sys/kernel",
                                  "/proc/sysrq-trigger", "/proc/kcore", "/sys", "/sys/kernel", "/sys/fs/cgroup",
                                  "/sys/fs/cgroup/memory", "/sys/fs/cgroup/cpu,cpuacct", "/dev", "/dev/mem", "/dev/sda",
                                  "/etc", "/var", "/root", "/srv/../etc", "/srv/./x", "/srv//x", "/srv/x/"])
def test_mount_sources_that_give_the_host_away(path: str) -> None:
    got = refused(f'kind = "mount"\nmountpoint = "/srv/data"\npath = "{path}"\n')
    assert len(got) == 1 and got[0].startswith("7: path ") and "refused" in got[0], got


@pytest.mark.parametrize("path", ["/srv/data", "/proc/meminfo", "/proc/cpuinfo", "/etc/ctconsole-data/x",
                                  "/var/lib/app", "/home/app/data", "/proc/sys/net/ipv4",
                                  "/sys/fs/cgroup/cpu/ctlab-runc", "/sys/fs/cgroup/machine.slice", "/dev/fuse"])
def test_mount_sources_a_container_may_have(path: str) -> None:
    assert refused(f'kind = "mount"\nmountpoint = "/srv/data"\npath = "{path}"\n') == []


@pytest.mark.parametrize("dest", ["/etc/ld.so.preload", "/etc/cron.d/x", "/root/.ssh/authorized_keys",
                                  "/usr/lib/x.so", "/proc/sys/kernel/core_pattern", "/sys/kernel/uevent_helper",
                                  "/var/spool/cron/root", "/dev/sda", "/x", "/var/log/../../etc/passwd"])
def test_file_destinations_that_make_root(dest: str) -> None:
    got = refused(f'kind = "file"\nsource = "/dev/null"\ndestination = "{dest}"\n')
    assert len(got) == 1 and got[0].startswith("7: destination ") and "refused" in got[0], got


@pytest.mark.parametrize("dest", ["/var/log/app/out.log", "/dev/null", "/srv/log/x"])
def test_file_destinations_that_are_fine(dest: str) -> None:
    assert refused(f'kind = "file"\nsource = "/dev/null"\ndestination = "{dest}"\n') == []


def test_dev_null_source_never_compiles_to_a_world_writable_file() -> None:
    """The reproduction from #10: /dev/null (0666) as the source gave perm=0o666 to a root file."""
    c = ct(files=(OpenFile(path="/dev/null", mnt_id=44, inode=0x1F2, holders=(FdRef(2**22 + 7, 1),)),))
    rs, _ = parse_text(wrap('kind = "file"\nsource = "/dev/null"\ndestination = "/var/log/web-1.log"\n'))
    from ctconsole.remap import compile as comp

    real = comp.live_file_fds
    try:
        comp.live_file_fds = lambda _c: [comp.FileFd("/dev/null", 44, 0x1F2, st_mode=0o20666, flags=(os.O_WRONLY,))]
        out = compile_rules(rs, c)
    finally:
        comp.live_file_fds = real
    (spec,) = out.inherit
    assert spec.perm == 0o644 and not spec.perm & safety.UNSAFE_PERM_BITS
    assert any("created 0644, not 0666" in n for n in out.notes)
    for bits in (0o666, 0o4755, 0o2775, 0o1777, 0o777, 0o640):
        assert not safety.safe_perm(bits) & 0o7022 and safety.safe_perm(bits) & 0o600 == bits & 0o600


@pytest.mark.parametrize(("field", "value"), [
    ("apparmor", "unconfined"), ("apparmor", "docker-unconfined"), ("apparmor", "a b"),
    ("selinux", "system_u:system_r:unconfined_t:s0"), ("selinux", "system_u:system_r:spc_t:s0"),
    ("selinux", "unconfined_u:unconfined_r:unconfined_t:s0-s0:c0.c1023"),
    ("selinux", "system_u:system_r:svirt_lxc_net_t:s0-s15:c0.c1023"),
    ("mount_context", "system_u:object_r:unlabeled_t:s0")])
def test_lsm_labels_that_unconfine(field: str, value: str) -> None:
    got = [f"{p.line}: {p.message}" for p in validate_text(wrap(f'kind = "lsm"\n{field} = "{value}"\n'), "e.toml",
                                                              host_checks=False)]
    assert any(g.startswith("6: ") and ("refused" in g or "whitespace" in g) for g in got), got


def test_lsm_mcs_relabel_is_fine() -> None:
    assert refused('kind = "lsm"\nselinux = "system_u:system_r:svirt_lxc_net_t:s0:c1,c2"\n') == []
    assert refused('kind = "lsm"\nselinux = "system_u:system_r:svirt_lxc_net_t:s0"\nmcs = "auto"\n') == []
    assert refused('kind = "lsm"\napparmor = "lxc-container-default-cgns"\n') == []


@pytest.mark.parametrize("root", ["/", "/machine.slice/../..", "/a/./b", "machine.slice"])
def test_cgroup_roots_that_escape(root: str) -> None:
    got = [p.message for p in validate_text(wrap(f'kind = "cgroup"\nroot = "{root}"\n'), "e", host_checks=False)]
    assert got and any("refused" in m or "absolute" in m for m in got), got
    got = [p.message for p in validate_text(wrap(f'kind = "cgroup"\nroots = [{{ path = "{root}" }}]\n'), "e",
                                            host_checks=False)]
    assert got, root


@pytest.mark.parametrize("sock", ["/run/docker.sock", "/var/run/docker.sock", "/run/containerd/containerd.sock",
                                  "/run/systemd/private", "/run/dbus/system_bus_socket"])
def test_unix_peers_that_are_root(sock: str) -> None:
    assert refused(f'kind = "unix"\npeer = "/x"\nconnect = "{sock}"\n')


def test_interface_names_cannot_change_criu_keys() -> None:
    for name in ("v]x", "v@br", "v$x"):
        got = [p.message for p in validate_text(wrap(f'kind = "veth"\ninterface = "eth0"\nhost_name = "{name}"\n'),
                                                "e", host_checks=False)]
        assert any("may only contain" in m for m in got), (name, got)


def test_compile_refuses_refused_rules_and_only_emits_allowed_options() -> None:
    rs, _ = parse_text(wrap('kind = "mount"\nmountpoint = "/srv"\npath = "/"\n'))
    with pytest.raises(UsageError) as e:
        compile_rules(rs, ct())
    assert any("refused" in d for d in e.value.details), e.value.details
    # whatever a valid file asks, compile's options stay inside the allow-list (no root, join_ns, ...)
    ok = RuleSet(containers=(Scope(Selector(name="*"), (
        Rule("mount", {"mountpoint": "/srv", "path": "/srv/data"}), Rule("tcp", {"mode": "keep"}),
        Rule("cgroup", {"mode": "soft", "root": "/machine.slice/x"}), Rule("tty", {}),
        Rule("lsm", {"apparmor": "lxc-container-default"})), index=0),), path="ok")
    out = compile_rules(ok, ct())
    assert set(out.dump) | set(out.restore) <= ALLOWED_OPTIONS
    assert not {"root", "join_ns"} & ALLOWED_OPTIONS


def test_cli_validate_says_why_with_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "evil.toml"
    f.write_text(wrap('kind = "mount"\nmountpoint = "/srv"\npath = "/"\n'))
    assert main(["rules", "validate", "--no-host-checks", str(f)]) == 1
    out = capsys.readouterr().out
    assert f"{f}:7: " in out and "path '/' refused: is the host's root" in out


# ---------------------------------------------------------------- sizes, depth, VF ranges


def test_size_cap_is_a_clear_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "big.toml"
    f.write_text("version = 1\n" + "# pad\n" * (MAX_BYTES // 6 + 10))
    assert main(["rules", "validate", str(f)]) == 1
    assert f"larger than {MAX_BYTES} bytes" in capsys.readouterr().out
    assert main(["rules", "compile", str(f), "--container", "x"]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_deep_nesting_is_a_syntax_error_not_a_recursion_error(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "deep.toml"
    f.write_text("version = 1\nx = " + "[" * 200_000 + "\n")
    assert main(["rules", "compile", str(f), "--container", "x"]) == 2
    err = capsys.readouterr().err
    assert "RecursionError" not in err and "internal error" not in err and "deep.toml:2" in err


def test_vf_ranges_are_bounded_in_time_and_memory() -> None:
    """#10: an 18 KB file of VF ranges took 321 MB; now a pool costs at most 4096 integers."""
    rng = ", ".join(['"0-4095"'] * 250)
    text = wrap(f'kind = "netdev"\ninterface = "eth1"\nvf_pool = {{ pf = "p0", vfs = [{rng}] }}\n') * 1
    assert len(text) > 2000
    tracemalloc.start()
    t0 = time.monotonic()
    problems = validate_text(text, "vf.toml", host_checks=False)
    elapsed = time.monotonic() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert problems == [] and elapsed < 2 and peak < 20 << 20, (problems, elapsed, peak)
    ones = ", ".join(["1"] * 300)
    too_many = wrap(f'kind = "netdev"\ninterface = "eth1"\nvf_pool = {{ pf = "p0", vfs = [{ones}] }}\n')
    assert any("at most 256" in p.message for p in validate_text(too_many, "vf.toml", host_checks=False))
    out_of_range = wrap('kind = "netdev"\ninterface = "eth1"\nvf_pool = { pf = "p0", vfs = ["0-999999"] }\n')
    assert any("0..4095" in p.message for p in validate_text(out_of_range, "vf.toml", host_checks=False))


@pytest.mark.parametrize("extra", ['root = "/"', 'join_ns = ["net:/proc/1/ns/net"]', 'external = ["mnt[k]:/"]',
                                   'lsm_profile = "apparmor:unconfined"'])
def test_criu_options_cannot_be_smuggled_in_as_fields(extra: str) -> None:
    """No rule kind takes a raw CRIU option: any of these is an unknown field (at its line), never compiled."""
    text = wrap(f'kind = "mount"\nmountpoint = "/srv"\npath = "/srv/data"\n{extra}\n')
    got = [f"{p.line}: {p.message}" for p in validate_text(text, "e.toml", host_checks=False)]
    assert len(got) == 1 and got[0].startswith("8: unknown field"), got
    with pytest.raises(UsageError):
        compile_rules(parse_text(text)[0], ct())
    top = f"version = 1\n{extra}\n"
    assert any("unknown top-level key" in p.message for p in validate_text(top, "e.toml", host_checks=False))
