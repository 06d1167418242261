"""The destination policy (ctconsole/agent/policy.py): loading, fail-closed errors, and every check.

The file checks need root (the policy must be root-owned); they run on the
real file system in tmp_path. The request checks are pure functions, except
the ones that look at directories (roots, bind sources), which use real
directories made here.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ctconsole.agent import policy as pol
from ctconsole.agent.policy import Policy, PolicyError


def write_policy(tmp: Path, text: str, mode: int = 0o644) -> Path:
    d = tmp / "etc"
    d.mkdir(mode=0o755, exist_ok=True)
    os.chmod(tmp, 0o755)
    p = d / "agent.toml"
    p.write_text(text)
    os.chmod(p, mode)
    return p


def keys(refusals: list[pol.Refusal]) -> list[str]:
    return [r.key for r in refusals]


# -- loading -------------------------------------------------------------------------------
def test_absent_default_file_is_the_builtin_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(pol.POLICY_ENV, raising=False)
    monkeypatch.setattr(pol, "DEFAULT_PATH", tmp_path / "nope.toml")
    p = pol.load()
    assert p == Policy() and p.source == "built-in default"


def test_explicit_missing_file_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(pol.POLICY_ENV, str(tmp_path / "missing.toml"))
    with pytest.raises(PolicyError, match="does not exist"):
        pol.load()


def test_full_file_parses(tmp_path: Path, needs_root: None) -> None:
    p = write_policy(tmp_path, """
[connect]
users = ["root", "ops"]
groups = ["ctconsole"]
[restore]
roots = ["/srv/containers"]
bind_sources = ["/srv/shares"]
cgroup_roots = ["/machine.slice"]
lsm_labels = ["apparmor:lxc-default"]
join_ns = true
[files]
open = ["/var/log/apps"]
perm_mask = 0o644
sockets = ["/run/apps"]
[network]
bridges = ["br0"]
netdevs = ["eth9"]
vf_pfs = ["ens1f0"]
[images]
max_bytes = 1048576
[probes]
http = ["curl", "-fsS", "http://127.0.0.1/"]
""")
    got = pol.load(p)
    assert got.source == str(p) and got.users == ("root", "ops") and got.groups == ("ctconsole",)
    assert got.roots == ("/srv/containers",) and got.join_ns is True and got.perm_mask == 0o644
    assert got.max_image_bytes == 1 << 20 and got.probes == {"http": ("curl", "-fsS", "http://127.0.0.1/")}
    assert any("max_bytes: 1048576" in line for line in got.summary())


@pytest.mark.parametrize(("text", "needle"), [
    ("[restore]\nroots = '/x'\n", "restore.roots: expected a list of strings"),
    ("[restore]\nroots = ['relative']\n", "absolute paths"),
    ("[restore]\nroots = ['/a/../b']\n", "absolute paths"),
    ("[restore]\njoin_ns = 1\n", "true or false"),
    ("[files]\nperm_mask = 0o17777\n", "at most 0o7777"),
    ("[images]\nmax_bytes = -1\n", "non-negative"),
    ("[nonsense]\nx = 1\n", "unknown section [nonsense]"),
    ("[files]\nopne = []\n", "unknown key files.opne"),
    ("[probes]\nx = 'sh -c id'\n", "probes.x: expected a non-empty list"),
    ("[probes]\n'../x' = ['id']\n", "probe name"),
    ("restore = 3\n", "[restore] must be a table"),
    ("[restore\n", "not valid TOML"),
])
def test_bad_files_are_clear_errors(tmp_path: Path, needs_root: None, text: str, needle: str) -> None:
    p = write_policy(tmp_path, text)
    with pytest.raises(PolicyError) as info:
        pol.load(p)
    assert needle in " ".join([info.value.message, *info.value.details])


def test_unsafe_files_are_refused(tmp_path: Path, needs_root: None) -> None:
    p = write_policy(tmp_path, "", mode=0o666)
    with pytest.raises(PolicyError, match="group/world-writable"):
        pol.load(p)
    os.chmod(p, 0o644)
    os.chown(p, 65534, 65534)
    with pytest.raises(PolicyError, match="owned by uid 65534"):
        pol.load(p)
    os.chown(p, 0, 0)
    link = tmp_path / "etc" / "link.toml"
    link.symlink_to(p)
    with pytest.raises(PolicyError, match="symbolic link"):
        pol.load(link)
    os.chmod(tmp_path / "etc", 0o777)
    with pytest.raises(PolicyError, match="writable by others"):
        pol.load(p)
    os.chmod(tmp_path / "etc", 0o755)
    (tmp_path / "etc" / "big.toml").write_text("#" * (pol.MAX_POLICY_BYTES + 1))
    with pytest.raises(PolicyError, match="larger than"):
        pol.load(tmp_path / "etc" / "big.toml")


# -- checks --------------------------------------------------------------------------------
def test_paths_below() -> None:
    assert pol.below("/tmp/x", ["/tmp"]) and pol.below("/tmp", ["/tmp"]) and not pol.below("/tmp", ["/tmp"],
                                                                                              strict=True)
    assert not pol.below("/tmpx", ["/tmp"]) and not pol.below("/tmp/../etc", ["/tmp"])
    assert not pol.below("/tmp/./x", ["/tmp"]) and not pol.below("tmp/x", ["/tmp"])
    assert pol.below("/any", ["/"]) and not pol.below("/", ["/"], strict=True)


def test_open_file_paths_and_perm_mask() -> None:
    p = Policy()
    assert keys(pol.check_inherit(p, "open-file", "/etc/ld.so.preload", 0o644)) == ["files.open"]
    assert keys(pol.check_inherit(p, "open-file", "/tmp/d/x", 0o6777)) == ["files.perm_mask"]
    msg = str(pol.check_inherit(p, "open-file", "/tmp/d/x", 0o6777)[0])
    assert "set-id" in msg and "group/world-writable" in msg and "destination policy: files.perm_mask" in msg
    assert keys(pol.check_inherit(p, "open-file", "/tmp/d/x", 0o666)) == ["files.perm_mask"]
    assert pol.check_inherit(p, "open-file", "/tmp/d/x", 0o644) == []
    assert pol.check_inherit(p, "open-file", "/tmp/d/x", -1) == []
    # a policy cannot re-enable the never bits
    assert keys(pol.check_inherit(Policy(perm_mask=0o7777), "open-file", "/tmp/d/x", 0o4755)) == ["files.perm_mask"]


def test_connect_unix_paths() -> None:
    p = Policy()
    assert keys(pol.check_inherit(p, "connect-unix", "/run/docker.sock")) == ["files.sockets"]
    assert keys(pol.check_inherit(p, "connect-unix", "/run/systemd/private")) == ["files.sockets"]
    assert pol.check_inherit(p, "connect-unix", "/var/lib/ctconsole/lab/hostd.sock") == []
    assert keys(pol.check_inherit(p, "exec", "/bin/sh")) == ["files.open"]


def test_restore_options_refusals(tmp_path: Path, needs_root: None) -> None:
    p = Policy()
    bad = {"root": "/", "external": ["mnt[k]:/", "veth[eth0]:a]b@ctlab0", "veth[eth0]:v0@eth0",
                                     "netdev[eth0]:eth0", "weird[x]:y"],
           "ext_mnt": [{"key": "k", "val": "/etc"}], "cg_root": [{"path": "/../x"}, {"path": "/"}],
           "lsm_profile": "apparmor:unconfined", "join_ns": [{"ns": "net", "ns_file": "/proc/1/ns/net"}],
           "veths": [{"if_in": "eth0", "if_out": "x$y"}], "cgroup_yard": "/", "freeze_cgroup": "/sys/fs/cgroup/x"}
    got = keys(pol.check_restore_options(p, bad))
    assert got.count("restore.roots") == 1 and got.count("restore.bind_sources") == 2
    assert got.count("network.names") == 2 and got.count("network.bridges") == 1
    assert got.count("network.netdevs") == 1 and got.count("restore.cgroup_roots") == 2
    assert {"restore.lsm_labels", "restore.join_ns"} <= set(got) and got.count("restore.options") == 3


def test_restore_options_a_lab_migration_sends_pass(tmp_path: Path, needs_root: None) -> None:
    root = tmp_path / "rootfs"
    root.mkdir(mode=0o755)
    os.chmod(tmp_path, 0o755)
    share = tmp_path / "share"
    share.mkdir()
    opts = {"root": str(root), "log_level": 4, "shell_job": True,
            "external": [f"mnt[data]:{share}", "veth[eth0]:cttr12ab@cttbr0", "unix[1234]"],
            "cg_root": [{"path": "/ctconsole-lab-1234"}], "veths": [{"if_in": "eth1", "if_out": "ctt-x.1"}]}
    assert pol.check_restore_options(Policy(), opts) == []
    assert pol.check_restore_options(Policy(), {"root": "/var/lib/ctconsole/lab/ns/rootfs"}) == []
    # what runtimes bind (rules suggest for the lab's runc and libvirt-lxc containers)
    runtime = {"external": ["mnt[cg]:/sys/fs/cgroup/memory/ctlab-runc", "mnt[n4]:/proc/sys/net/ipv4",
                            "mnt[mi]:/proc/meminfo"]}
    assert pol.check_restore_options(Policy(), runtime) == []
    whole = pol.check_restore_options(Policy(), {"external": ["mnt[a]:/sys/fs/cgroup", "mnt[b]:/sys/fs/cgroup/cpu",
                                                              "mnt[c]:/proc/sys", "mnt[d]:/proc"]})
    assert keys(whole) == ["restore.bind_sources"] * 4 and "whole cgroup hierarchy" in whole[0].message


def test_restore_roots_on_disk(tmp_path: Path, needs_root: None) -> None:
    os.chmod(tmp_path, 0o755)
    writable = tmp_path / "w"
    writable.mkdir()
    os.chmod(writable, 0o777)
    foreign = tmp_path / "f"
    foreign.mkdir()
    os.chown(foreign, 65534, 65534)
    (tmp_path / "l").symlink_to("/")
    for d, why in ((writable, "writable by others"), (foreign, "owned by uid 65534"), (tmp_path / "l", "symbolic")):
        r = pol.check_restore_options(Policy(), {"root": str(d)})
        assert keys(r) == ["restore.roots"] and why in r[0].message, r
    ww = tmp_path / "share"
    ww.mkdir()
    os.chmod(ww, 0o777)
    r = pol.check_restore_options(Policy(), {"external": [f"mnt[k]:{ww}"]})
    assert keys(r) == ["restore.bind_sources"] and "writable by others" in r[0].message


def test_probes_by_name_only() -> None:
    p = Policy(probes={"http": ("curl", "-fsS", "http://127.0.0.1/")})
    assert pol.check_probe(p, "http") == (("all", "curl", "-fsS", "http://127.0.0.1/"), [])
    assert pol.check_probe(p, "link:eth0") == (("net", "ip", "link", "show", "dev", "eth0"), [])
    for bad in ("sh -c id", "id", "link:a b", "link:$(id)", "link:" + "x" * 16):
        argv, refused = pol.check_probe(p, bad)
        assert argv == () and keys(refused) == ["probes"]


def test_image_quota_and_vf_pools() -> None:
    p = Policy(max_image_bytes=1000, vf_pfs=("ens*",))
    assert pol.check_image_bytes(p, 1000) == [] and keys(pol.check_image_bytes(p, 1001)) == ["images.max_bytes"]
    assert pol.check_setup_ns(p, [("move-vf", "data0", "ens1f0")]) == []
    assert keys(pol.check_setup_ns(p, [("move-vf", "data0", "eth0")])) == ["network.vf_pfs"]
    assert keys(pol.check_setup_ns(p, [("move-vf", "da]ta", "ens1")])) == ["network.vf_pfs"]


def test_ifnames() -> None:
    for good in ("eth0", "cttr12ab", "v-1.x", "a" * 15):
        assert pol.valid_ifname(good)
    for bad in ("", "a" * 16, "a]b", "a$b", "a@b", "a/b", "..", ".", "-x", "a b", "a\nb"):
        assert not pol.valid_ifname(bad), bad


def test_who_may_connect() -> None:
    p = Policy()
    assert pol.check_connect(p, uid=0, loginuid=0xFFFFFFFF) == []
    assert pol.check_connect(p, uid=0, loginuid=0) == []
    refused = pol.check_connect(p, uid=0, loginuid=65534, groups=[65534])  # sudo from nobody's login
    assert keys(refused) == ["connect.users"] and "nobody" in refused[0].message
    assert keys(pol.check_connect(p, uid=65534, loginuid=0xFFFFFFFF, groups=[])) == ["connect.users"]
    assert pol.check_connect(Policy(groups=("root",)), uid=65534, loginuid=None, groups=[0]) == []


def test_the_agents_own_dirs_are_never_handed_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTCONSOLE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("CTCONSOLE_RUN_DIR", str(tmp_path / "run"))
    p = Policy(files_open=("/",), sockets=("/",), bind_sources=("/",), roots=("/",))
    assert keys(pol.check_inherit(p, "connect-unix", str(tmp_path / "run" / "keepers" / "k.sock"))) == [
        "files.sockets"]
    assert keys(pol.check_inherit(p, "open-file", str(tmp_path / "state" / "journal" / "x.jsonl"), 0o600)) == [
        "files.open"]
    r = pol.check_restore_options(p, {"root": str(tmp_path / "state" / "images" / "m1"),
                                      "external": [f"mnt[k]:{tmp_path}/state/work"]}, look=False)
    assert keys(r) == ["restore.roots", "restore.bind_sources"] and "own directories" in r[0].message


# -- docs/security.md stays true -------------------------------------------------------------
DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"


def test_docs_list_every_policy_key_and_the_real_default() -> None:
    import re

    text = DOC.read_text()
    documented = set(re.findall(r"^\| `([a-z_]+\.[A-Za-z_]+)` \|", text, re.M))
    schema = {f"{section}.{key}" for section, body in pol._SCHEMA.items() for key in body} | {"probes.NAME"}
    assert documented == schema
    default_block = text.split("Built-in default", 1)[1].split("```", 2)[1].strip()
    assert default_block.splitlines() == Policy().summary()
    example = text.rsplit("```toml", 1)[1].split("```", 1)[0]
    import tomllib

    parsed = pol.from_dict(tomllib.loads(example), "docs example")
    assert parsed.probes["http"][0] == "wget" and parsed.groups == ("ctconsole",)


def test_check_restore_combines_every_part() -> None:
    p = Policy(probes={"http": ("curl", "http://127.0.0.1/")})
    got = pol.check_restore(p, {"root": "/"}, [pol.InheritAsk("open-file", "/etc/x", "append", 0o666),
                                               pol.InheritAsk("pipe-relay", "", "write"),
                                               pol.InheritAsk("open-file", "/tmp/d/r", "read", 0o6777)],
                            probe_name="nope", probe_argv=["id"], setup_ns=[("move-vf", "d0", "ens1")], look=False)
    assert keys(got) == ["restore.roots", "files.open", "files.perm_mask", "probes", "probes"]
    assert pol.check_restore(p, {}, probe_name="http") == []


def test_docs_name_tests_that_exist() -> None:
    """Every ``file.py::test`` docs/security.md cites as proof exists (so the page cannot drift silently)."""
    import re

    tests = Path(__file__).resolve().parents[1]
    cited = re.findall(r"`(test_[a-z_]+\.py)(?:::(test_[a-z_]+))?`", DOC.read_text())
    assert len(cited) >= 10
    for fname, test in cited:
        found = list(tests.rglob(fname))
        assert found, fname
        if test:
            assert f"def {test}(" in found[0].read_text(), f"{fname}::{test}"


def test_doctor_shows_the_policy_in_force(tmp_path: Path, needs_root: None) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    p = write_policy(tmp_path, '[files]\nopen = ["/srv/logs"]\n[probes]\nhttp = ["true"]\n')
    env = {**os.environ, pol.POLICY_ENV: str(p)}
    out = subprocess.run([sys.executable, "-m", "ctconsole", "doctor", "--selftest", "skip"], capture_output=True,
                         text=True, env=env, cwd=root, timeout=120).stdout
    assert f"source: {p}" in out and "files.open: /srv/logs" in out and "probes: http" in out, out
    p.write_text("[files]\nopne = 1\n")
    out = subprocess.run([sys.executable, "-m", "ctconsole", "doctor", "--selftest", "skip"], capture_output=True,
                         text=True, env=env, cwd=root, timeout=120).stdout
    assert "PROBLEM: agent policy" in out and "unknown key files.opne" in out and "refuses every request" in out
