"""Isolated lab hosts: own netns + mount namespace + sshd, reached with plain ssh, removed without a trace.

Real namespaces, a real sshd, root's real ssh client configuration (the lab's
marked lines are added and removed; the test compares the files before/after).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctconsole import lab as labmod
from ctconsole.lab import isolated, sshcfg
from ctconsole.lab.state import LabHost
from tests import lab_fixtures

lab = lab_fixtures.lab  # the session fixture (the lab stays up with CTCONSOLE_LAB_KEEP=1)

pytestmark = [pytest.mark.root, pytest.mark.lab]

NAME = "f1iso"


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    cp = subprocess.run([sys.executable, "-m", "ctconsole", *args], capture_output=True, text=True, timeout=120)
    if check:
        assert cp.returncode == 0, f"ctconsole {' '.join(args)} -> {cp.returncode}\n{cp.stdout}\n{cp.stderr}"
    return cp


def ssh(h: LabHost, command: str) -> subprocess.CompletedProcess[str]:
    """Root's plain ssh client, no options of ours: what an operator types."""
    return subprocess.run(["ssh", f"root@{h.address}", command], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def snapshot() -> dict[str, object]:
    """What a host add/del must leave as it was."""
    def read(p: Path) -> str:
        try:
            return p.read_text()
        except FileNotFoundError:
            return "<absent>"

    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    return {
        "netns": sorted(ln.split()[0] for ln in netns.splitlines()
                        if ln.startswith(("ctlab-" + NAME, isolated.SRC_PREFIX + NAME))),
        "links": sorted(ln.split()[0] for ln in links.splitlines() if NAME in ln),
        "mounts": sorted(ln.split()[4] for ln in Path("/proc/self/mountinfo").read_text().splitlines()
                         if NAME in ln),
        "known_hosts": read(sshcfg.ssh_dir() / "known_hosts"),
        "ssh_config": read(sshcfg.ssh_dir() / "config"),
        "host_dir": (labmod.lab_dir() / "hosts" / NAME).exists(),
    }


@pytest.fixture
def iso(needs_root: None) -> Iterator[tuple[LabHost, dict[str, object]]]:
    if labmod.host_list() and NAME in {h.name for h in labmod.host_list()}:
        labmod.host_del(NAME)  # left over from an interrupted run of this test
    before = snapshot()
    h = labmod.host_add(NAME, isolated=True, rate="100mbit")
    try:
        yield h, before
    finally:
        labmod.host_del(NAME)


def test_isolated_host_shares_only_the_kernel(iso: tuple[LabHost, dict[str, object]], tmp_path: Path) -> None:
    h, before = iso
    assert h.kind == "isolated" and h.dest == f"ssh://root@{h.address}"
    assert h.address.startswith("198.18.") and h.src_address.startswith("198.18.")
    # lab addresses only in namespaces the lab made: the source end is in its edge namespace,
    # this host's own namespace has no 198.18 address and no lab link
    assert h.src_netns == isolated.SRC_PREFIX + NAME
    here = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True).stdout
    assert " 198.18." not in here and " 198.19." not in here, here
    assert h.src_link not in subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    edge_addrs = subprocess.run(["ip", "-n", h.src_netns, "-o", "-4", "addr"], capture_output=True, text=True).stdout
    assert f"{h.src_address}/30" in edge_addrs and h.src_link in edge_addrs
    listed = {d["name"]: d for d in json.loads(cli("lab", "host", "list", "--json").stdout)}
    assert listed[NAME]["dest"] == h.dest and listed[NAME]["kind"] == "isolated"

    # plain, non-interactive ssh with root's own configuration
    cp = ssh(h, "true")
    assert cp.returncode == 0, cp.stderr
    assert sshcfg.known_host_lines(NAME) and sshcfg.has_block(isolated.include_file())
    # ... through the edge namespace: ssh's ProxyCommand hands it a socket connected from there
    g = subprocess.run(["ssh", "-G", h.address], capture_output=True, text=True).stdout
    assert f"/run/netns/{h.src_netns}" in g and "proxyusefdpass yes" in g, g
    # ... and this namespace itself has no route to it (no lab address or link here): only through the
    # edge namespace, which is also how the lab checks that the host answers
    from ctconsole.lab import hosts as labhosts

    route = subprocess.run(["ip", "route", "get", h.address], capture_output=True, text=True).stdout
    assert h.src_link not in route and "198.18." not in route.split(" src ")[-1], route
    assert labhosts.answers(labmod.host_get(NAME))
    # the destination picker says so too, the lab's way (never a TCP probe from this namespace)
    from ctconsole.commands import destinations as dm

    picked = {d.dest: d for d in dm.known_destinations()}
    assert picked[h.dest].reachable is True, picked[h.dest]

    # sshd listens only on the lab address
    ss = labmod.host_run(NAME, ["ss", "-Hltn"]).stdout.split("\n")
    listeners = {ln.split()[3] for ln in ss if ln.strip()}
    assert listeners == {f"{h.address}:22"}, listeners

    # /tmp and /var/lib are private both ways (and /var/tmp, /srv)
    tag = uuid.uuid4().hex[:8]
    for d in ("/tmp", "/var/lib", "/var/tmp", "/srv"):
        cp = ssh(h, f"echo inside > {d}/f1-{tag}")
        assert cp.returncode == 0, cp.stderr
        assert not Path(f"{d}/f1-{tag}").exists(), f"{d} leaks out of the isolated host"
    host_side = Path(f"/var/lib/f1-host-{tag}")
    host_side.write_text("outside\n")
    try:
        assert ssh(h, f"test -e /var/lib/f1-host-{tag} || test -e /tmp/f1-host-{tag}").returncode == 1
    finally:
        host_side.unlink()
    assert Path(isolated.path_inside(h, f"/var/lib/f1-{tag}")).read_text() == "inside\n"

    # the rest of the tree is the host's, read-only: same binaries, same venv
    cp = ssh(h, "touch /usr/f1-x")
    assert cp.returncode != 0 and "Read-only file system" in cp.stderr
    assert ssh(h, f"test -x {sys.executable}").returncode == 0

    # nothing can be hard-linked across (own filesystem), from either side
    cp = ssh(h, "ln /etc/hostname /var/lib/f1-link")
    assert cp.returncode != 0 and "cross-device" in cp.stderr
    src = tmp_path / "x"
    src.write_text("x")
    with pytest.raises(OSError) as exc:
        os.link(src, isolated.path_inside(h, "/var/lib/f1-link2"))
    assert exc.value.errno == errno.EXDEV

    # the agent runs there over ssh (python, the venv, ctconsole visible; its state dirs writable)
    from ctconsole.feasibility.remote import RemoteProbe

    with RemoteProbe(h.dest) as probe:
        ver, text = probe.version()
        assert ver >= (3, 0, 0), text
    assert ssh(h, "test -d /var/lib/ctconsole && test -w /var/lib/ctconsole").returncode == 0
    assert not Path("/var/lib/ctconsole").joinpath("journal", "nothing-from-" + tag).exists()

    # shaping on both ends, changed later, removed
    tc_src = ["tc", "-n", h.src_netns, "qdisc", "show", "dev", h.src_link]
    assert "tbf" in subprocess.run(tc_src, capture_output=True, text=True).stdout
    inside = subprocess.run(["tc", "-n", h.netns, "qdisc", "show", "dev", h.link], capture_output=True,
                            text=True).stdout
    assert "tbf" in inside and "rate 100Mbit" in inside
    cli("lab", "host", "shape", NAME, "--rate", "1gbit")
    assert "rate 1Gbit" in subprocess.run(tc_src, capture_output=True, text=True).stdout
    cli("lab", "host", "shape", NAME)
    assert "tbf" not in subprocess.run(tc_src, capture_output=True, text=True).stdout
    assert labmod.host_get(NAME).rate == ""

    # del removes all of it: processes (sshd, sessions, what runs inside), mounts, netns, keys, lines
    disk_inode = f":{os.stat(Path(h.host_dir) / 'disk.img').st_ino} "
    assert disk_inode in subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    sleeper = ssh(h, "nohup sleep 600 >/dev/null 2>&1 & echo $!")
    inside_pids = isolated.processes_inside(labmod.host_get(NAME))
    assert h.sshd is not None and h.sshd.pid in inside_pids and len(inside_pids) >= 2, sleeper.stderr
    # its own pid namespace: sshd is its pid 1, it sees none of this host's processes, and a pid it
    # reports is another number here (lab.host_real_pid translates)
    assert ssh(h, "cat /proc/1/comm").stdout.strip() == "sshd"
    assert ssh(h, f"test -e /proc/{os.getpid()}/comm && grep -q pytest /proc/{os.getpid()}/cmdline").returncode != 0
    real_sleeper = labmod.host_real_pid(NAME, int(sleeper.stdout.split()[-1]))
    assert real_sleeper in inside_pids and Path(f"/proc/{real_sleeper}/comm").read_text().strip() == "sleep"
    assert cli("lab", "host", "del", NAME).returncode == 0
    for pid in inside_pids:
        assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] == "Z"
    assert snapshot() == before
    assert disk_inode not in subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    assert not any(ln.split()[3].startswith(h.address) for ln in subprocess.run(
        ["ss", "-Htn"], capture_output=True, text=True).stdout.splitlines() if len(ln.split()) > 3)
    cp = subprocess.run(["ip", "route", "get", h.address], capture_output=True, text=True)
    assert h.src_link not in cp.stdout  # no route through the lab link any more


def test_isolated_host_cli_errors_are_clean(needs_root: None) -> None:
    cp = cli("lab", "host", "add", "f1bad", "--rate", "1gbit", check=False)
    assert cp.returncode == 2 and "need --isolated" in cp.stderr and "Traceback" not in cp.stderr
    cp = cli("lab", "host", "add", "f1bad", "--isolated", "--rate", "fast", check=False)
    assert cp.returncode == 2 and "bad rate" in cp.stderr and "Traceback" not in cp.stderr
    assert "f1bad" not in {h.name for h in labmod.host_list()}
    cp = cli("lab", "host", "shape", "f1nosuch", "--rate", "1gbit", check=False)
    assert cp.returncode != 0 and "no lab host" in cp.stderr and "Traceback" not in cp.stderr


def test_lab_container_moved_to_an_isolated_host_is_followed(lab, criu_bin: str, tmp_path: Path) -> None:
    """ctlab-ns moved by hand (criu dump here, root + images copied, criu restore there): `lab status`
    finds it on the host, its counter reads through the host's root, `lab restart` kills the copy."""
    from tests.lab_fixtures import assert_continuous, container, fresh, read_counter, wait_ticks

    name = "f1mv"
    if name in {h.name for h in labmod.host_list()}:
        labmod.host_del(name)
    h = labmod.host_add(name, isolated=True)
    try:
        c = fresh("ns")
        wait_ticks(c, 3)
        pid = c.init_pid
        ino = os.readlink(f"/proc/{pid}/fd/3").strip("socket:[]")
        img = tmp_path / "img"
        img.mkdir()
        cp = subprocess.run([criu_bin, "dump", "-t", str(pid), "-D", str(img), "-o", "dump.log",
                             "--external", f"mnt[{c.share_target}]:share", "--external", f"unix[{ino}]"],
                            capture_output=True, text=True, timeout=60)
        assert cp.returncode == 0, (img / "dump.log").read_text()[-2000:]
        base = str(Path(c.rootfs).parent)  # STATE/lab/ns: rootfs + share, same path over there
        there = Path(isolated.path_inside(h, base))
        there.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-a", base, str(there.parent)], check=True)
        subprocess.run(["cp", "-a", str(img), isolated.path_inside(h, "/tmp/f1img")], check=True)
        # a new connection to the lab host daemon, made here, is the restored fd 3 (as in test_lab.py)
        wrapper = ("import os,socket,sys\ns=socket.socket(socket.AF_UNIX,socket.SOCK_STREAM);s.connect(sys.argv[1])\n"
                   "fd=s.detach();os.set_inheritable(fd,True)\n"
                   "a=[x.replace('@FD@',str(fd)) for x in sys.argv[2:]];os.execvp(a[0],a)\n")
        restore = [criu_bin, "restore", "-D", "/tmp/f1img", "-o", "restore.log", "-d", "--root", c.rootfs,
                   "--external", f"mnt[share]:{c.share_dir}", "--external", f"veth[eth0]:{c.host_veth}@{h.bridge}",
                   "--inherit-fd", f"fd[@FD@]:socket:[{ino}]", "--pidfile", "/tmp/f1img/pid"]
        cp = subprocess.run([sys.executable, "-c", wrapper, c.unix_socket, *isolated.nsenter_argv(h), *restore],
                            capture_output=True, text=True, timeout=60)
        log = Path(isolated.path_inside(h, "/tmp/f1img/restore.log"))
        assert cp.returncode == 0, log.read_text()[-2000:]
        # the pidfile holds the host's pid (its own pid namespace); this host numbers it differently
        there = int(Path(isolated.path_inside(h, "/tmp/f1img/pid")).read_text())
        new_pid = labmod.host_real_pid(name, there)
        assert new_pid and new_pid != there, (there, new_pid)

        moved = container("ns")
        assert moved.host == name and moved.init_pid == new_pid
        assert moved.counter_file == f"/proc/{new_pid}/root/lab/counter"  # read through the copy's root
        wait_ticks(moved, 3)
        assert_continuous(read_counter(moved))
        data = {x["name"]: x for x in json.loads(cli("lab", "status", "--json").stdout)["containers"]}
        assert data["ctlab-ns"]["host"] == name and data["ctlab-ns"]["state"] == "running"
        assert f"on {name}" in cli("lab", "status").stdout
        assert c.host_veth in subprocess.run(["ip", "-n", h.netns, "-br", "link"], capture_output=True,
                                             text=True).stdout
    finally:
        fresh("ns")  # kills the copy on the isolated host too
    assert not Path(f"/proc/{new_pid}").exists() or Path(f"/proc/{new_pid}/stat").read_text().split(") ")[1][0] == "Z"
    assert container("ns").host == ""
    labmod.host_del(name)


def test_operator_ssh_files_are_kept_byte_for_byte(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lab's lines go in and out of root's ssh files without touching the operator's own entries."""
    d = tmp_path / "dotssh"
    d.mkdir(mode=0o700)
    monkeypatch.setattr(sshcfg, "ssh_dir", lambda: d)
    config = "Host *\n    ServerAliveInterval 7\n\nHost db1\n    User admin\n"
    known = "db1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOperatorKeyOperatorKeyOperatorKey000\n"
    (d / "config").write_text(config)
    ghost = "198.18.77.2 ssh-ed25519 AAAAstale ctconsole-lab:ghost\n"  # a lab that died without `del`
    (d / "known_hosts").write_text(known + ghost)
    os.chmod(d / "config", 0o640)
    include, key = tmp_path / "lab" / "ssh" / "config", tmp_path / "lab" / "ssh" / "id_ed25519"
    sshcfg.add_known_host("h1", "198.18.77.2", "ssh-ed25519 AAAAhostkey c")
    sshcfg.write_lab_config(include, {"h1": "198.18.77.2"}, key, {"h1": "/bin/false edge %h %p"})
    assert "AAAAstale" not in (d / "known_hosts").read_text()  # would make ssh refuse the new host key
    text = (d / "config").read_text()
    assert text.endswith(config) and text.index(f"Include {include}") < text.index("Host *")
    assert (d / "config").stat().st_mode & 0o777 == 0o640
    # OpenSSH itself: our Host entry applies to the lab address only, the operator's `Host *` still to all
    def g(host: str) -> str:
        return subprocess.run(["ssh", "-F", str(d / "config"), "-G", host], capture_output=True, text=True).stdout

    assert f"identityfile {key}" in g("198.18.77.2") and "serveraliveinterval 7" in g("198.18.77.2")
    assert str(key) not in g("db1") and "user admin" in g("db1") and "serveraliveinterval 7" in g("db1")
    assert "proxycommand /bin/false edge %h %p" in g("198.18.77.2") and "proxycommand" not in g("db1")
    sshcfg.remove_known_host("h1")
    sshcfg.write_lab_config(include, {}, key)
    assert (d / "config").read_text() == config and (d / "known_hosts").read_text() == known
    assert not include.exists()


def test_lab_down_removes_isolated_hosts(tmp_path: Path, needs_root: None) -> None:
    """`lab down` of a lab (its own state dir here: never the shared default lab) removes its isolated hosts."""
    env = dict(os.environ, CTCONSOLE_STATE_DIR=str(tmp_path / "state"))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ctconsole", *args], capture_output=True, text=True,
                              timeout=120, env=env)

    before = (sshcfg.ssh_dir() / "config").read_text() if (sshcfg.ssh_dir() / "config").exists() else None
    cp = run("lab", "host", "add", "f1down", "--isolated", "--json")
    assert cp.returncode == 0, cp.stderr
    h = json.loads(cp.stdout)
    sshd = int(h["sshd"]["pid"])
    assert subprocess.run(["ssh", f"root@{h['address']}", "true"], capture_output=True, timeout=60,
                          stdin=subprocess.DEVNULL).returncode == 0
    cp = run("lab", "down")
    assert cp.returncode == 0 and "host f1down" in cp.stdout, cp.stderr
    assert not Path(f"/proc/{sshd}").exists() or Path(f"/proc/{sshd}/stat").read_text().split(") ")[1][0] == "Z"
    assert "ctlab-f1down" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "cti-f1down" not in subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    assert isolated.SRC_PREFIX + "f1down" not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                               text=True).stdout
    assert not sshcfg.known_host_lines("f1down")
    after = (sshcfg.ssh_dir() / "config").read_text() if (sshcfg.ssh_dir() / "config").exists() else None
    assert after == before
    assert not (tmp_path / "state" / "lab").exists()
