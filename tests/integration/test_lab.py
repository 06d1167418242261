"""The lab brings up real containers on every runtime, reports them, and removes only what it made."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ctconsole import lab as labmod
from tests import lab_fixtures
from tests.lab_fixtures import assert_continuous, container, fresh, read_counter, wait_ticks

lab = lab_fixtures.lab  # the session fixture: brings the lab up once, down at the end

pytestmark = [pytest.mark.root, pytest.mark.lab]


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    cp = subprocess.run([sys.executable, "-m", "ctconsole", *args], capture_output=True, text=True, timeout=120)
    if check:
        assert cp.returncode == 0, f"ctconsole {' '.join(args)} -> {cp.returncode}\n{cp.stdout}\n{cp.stderr}"
    return cp


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False).stdout


def netns_list() -> set[str]:
    return {line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()}


def links() -> set[str]:
    return {line.split()[0].split("@")[0] for line in ip("-br", "link").splitlines() if line.strip()}


@pytest.mark.parametrize("name", labmod.ALL_NAMES)
def test_each_runtime_runs_with_a_ticking_counter(lab, name: str) -> None:
    c = container(name)
    assert c.error == "", f"{name} did not start: {c.error}"
    assert c.init is not None and c.init.alive()
    wait_ticks(c, 3)
    ticks = read_counter(c)
    assert_continuous(ticks)
    assert (
        Path(f"/proc/{c.init_pid}/root").resolve() == Path(c.rootfs).resolve()
        or os.stat(f"/proc/{c.init_pid}/root").st_ino == os.stat(c.rootfs).st_ino
    )


def test_status_cli_shows_every_container(lab) -> None:
    data = json.loads(cli("lab", "status", "--json").stdout)
    by_name = {c["name"]: c for c in data["containers"]}
    assert set(by_name) == set(labmod.ALL_NAMES)
    for c in by_name.values():
        assert c["state"] == "running", c
        assert c["init_pid"] > 0 and c["counter"] > 0
    text = cli("lab", "status").stdout
    for name in labmod.ALL_NAMES:
        assert name in text


def test_second_up_is_idempotent_and_fast(lab) -> None:
    before = {n: c.init_pid for n, c in labmod.status().containers.items()}
    t0 = time.monotonic()
    cp = cli("lab", "up", "--require-all", "--json")
    took = time.monotonic() - t0
    data = json.loads(cp.stdout)
    assert sorted(data["kept"]) == sorted(labmod.ALL_NAMES) and not data["started"]
    assert took < 3.0, f"warm lab up took {took:.2f} s"
    after = {n: c.init_pid for n, c in labmod.status().containers.items()}
    assert after == before


def test_ns_container_has_its_external_items(lab) -> None:
    c = container("ctlab-ns")
    pid = c.init_pid
    # veth: eth0 inside with a 198.18 address, host end on the bridge without any address
    inside = subprocess.run(
        ["nsenter", "-t", str(pid), "-n", "ip", "-br", "addr"], capture_output=True, text=True, check=True
    ).stdout
    assert "eth0" in inside and "198.18.0.2/24" in inside
    host_end = ip("-o", "addr", "show", "dev", c.host_veth)
    assert " inet " not in host_end
    assert f"master {c.bridge}" in ip("link", "show", "dev", c.host_veth)
    for link in (c.bridge, *(x.host_veth for x in labmod.status().containers.values() if x.host_veth)):
        assert " inet " not in ip("-o", "addr", "show", "dev", link), link  # lab links carry no address
    # fd 3: a unix stream socket whose peer is the host daemon (a process outside the container)
    fd3 = os.readlink(f"/proc/{pid}/fd/3")
    assert fd3.startswith("socket:[")
    log = Path(c.unix_socket).with_name("hostd.log").read_text()
    assert "hello from ctlab-ns" in log  # the host daemon received what the container sent on fd 3
    hostd = labmod.status().hostd
    assert hostd is not None and hostd.alive()
    assert os.stat(f"/proc/{hostd.pid}/root").st_ino != os.stat(c.rootfs).st_ino  # it is outside
    # /dev/zero open, a TCP listener, the host bind mount, stdio not on host files
    assert os.readlink(f"/proc/{pid}/fd/4") == "/dev/zero"
    tcp = subprocess.run(
        ["nsenter", "-t", str(pid), "-n", "ss", "-ltn"], capture_output=True, text=True, check=True
    ).stdout
    assert f":{c.tcp_port}" in tcp
    mounts = Path(f"/proc/{pid}/mountinfo").read_text()
    assert f" {c.share_dir} {c.share_target} " in mounts
    assert os.readlink(f"/proc/{pid}/fd/1") == "/lab/init.log"
    # init is its own session leader
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    assert int(stat[3]) == pid  # sid


def _criu(criu: str, *args: str, netns: str = "", inherit_sock: str = "") -> subprocess.CompletedProcess[str]:
    argv = [criu, *args]
    if inherit_sock:  # connect a fresh socket to the host daemon and hand it to criu as fd FD
        wrapper = (
            "import os,socket,sys\n"
            "s=socket.socket(socket.AF_UNIX,socket.SOCK_STREAM);s.connect(sys.argv[1])\n"
            "fd=s.detach();os.set_inheritable(fd,True)\n"
            "a=[x.replace('@FD@',str(fd)) for x in sys.argv[2:]];os.execvp(a[0],a)\n"
        )
        argv = [sys.executable, "-c", wrapper, inherit_sock, *argv]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def _errors(log: Path) -> list[str]:
    return [ln for ln in log.read_text().splitlines() if "Error" in ln and "RLIMIT_NOFILE" not in ln]


def _dump_restore_ns(criu_bin: str, tmp_path: Path, netns: str = "") -> int:
    c = container("ctlab-ns")
    wait_ticks(c, 2)
    pid = c.init_pid
    ino = os.readlink(f"/proc/{pid}/fd/3").strip("socket:[]")
    img = tmp_path / "img"
    img.mkdir()
    cp = _criu(
        criu_bin,
        "dump",
        "-t",
        str(pid),
        "-D",
        str(img),
        "-o",
        "dump.log",
        "-v4",
        "--external",
        f"mnt[{c.share_target}]:share",
        "--external",
        f"unix[{ino}]",
    )
    assert cp.returncode == 0, _errors(img / "dump.log")
    from tests.support import wait_gone

    wait_gone(pid)
    pidfile = tmp_path / "restored.pid"
    cp = _criu(
        criu_bin,
        "restore",
        "-D",
        str(img),
        "-o",
        "restore.log",
        "-v4",
        "-d",
        "--root",
        c.rootfs,
        "--external",
        f"mnt[share]:{c.share_dir}",
        "--external",
        f"veth[eth0]:{c.host_veth}@{c.bridge}",
        "--inherit-fd",
        f"fd[@FD@]:socket:[{ino}]",
        "--pidfile",
        str(pidfile),
        netns=netns,
        inherit_sock=c.unix_socket,
    )
    assert cp.returncode == 0, _errors(img / "restore.log")
    new_pid = int(pidfile.read_text())
    wait_ticks("ctlab-ns", 3)
    assert_continuous(read_counter("ctlab-ns"))
    return new_pid


def test_ns_container_is_checkpointable_with_criu_cli(lab, criu_bin: str, tmp_path: Path) -> None:
    new_pid = _dump_restore_ns(criu_bin, tmp_path)
    c = container("ctlab-ns")
    assert c.init_pid == new_pid  # status re-finds the restored init by its root
    assert f"master {c.bridge}" in ip("link", "show", "dev", c.host_veth)
    fresh("ctlab-ns")


def test_host_add_del(lab) -> None:
    before = netns_list()
    h = labmod.host_add("tst1")
    try:
        assert h.netns == "ctlab-tst1" and h.netns in netns_list()
        assert ",UP" in ip("-n", h.netns, "-br", "link", "show", "lo").split()[-1]  # <LOOPBACK,UP,...>
        assert h.bridge in ip("-n", h.netns, "-br", "link")
        assert f"{h.address}/24" in ip("-n", h.netns, "-br", "addr")
        assert f"{h.src_address}/24" in ip("-n", h.src_netns, "-br", "addr")
        assert f"{h.address}/" not in ip("-o", "addr") and f"{h.src_address}/" not in ip("-o", "addr")
        assert labmod.host_add("tst1") == h  # idempotent
        cp = subprocess.run(
            ["ip", "netns", "exec", h.src_netns, "busybox", "ping", "-c1", "-W2", h.address],
            capture_output=True,
            text=True,
        )
        assert cp.returncode == 0, cp.stdout + cp.stderr
        assert "tst1" in cli("lab", "host", "list").stdout
    finally:
        assert labmod.host_del("tst1")
    assert "ctlab-tst1" not in netns_list()
    assert netns_list() - before == set()
    assert cli("lab", "host", "del", "tst1", check=False).returncode == 2


def test_ns_container_restores_into_a_lab_host(lab, criu_bin: str, tmp_path: Path) -> None:
    h = labmod.host_add("tst2")
    try:
        new_pid = _dump_restore_ns(criu_bin, tmp_path, netns=h.netns)
        c = container("ctlab-ns")
        assert c.init_pid == new_pid
        assert c.host_veth in ip("-n", h.netns, "-br", "link")
        assert f"master {h.bridge}" in ip("-n", h.netns, "link", "show", "dev", c.host_veth)
    finally:
        fresh("ctlab-ns")  # kills the restored copy before its host netns goes away
        labmod.host_del("tst2")


def test_restart_gives_a_fresh_container(lab) -> None:
    old = container("ctlab-runc")
    new = fresh("ctlab-runc")
    assert new.init_pid != old.init_pid and not old.init.alive()  # type: ignore[union-attr]
    assert read_counter(new)[0] == 1


def test_down_removes_exactly_what_up_made(lab) -> None:
    """``lab down`` on the default lab (it has to be that one: the container names are fixed).

    Skipped when ``CTCONSOLE_LAB_KEEP=1``: whoever runs the tests wants the lab to stay up (others
    use it, with their own lab hosts, which ``lab down`` would remove under their feet). CI never sets
    it, so the full suite runs this test.
    """
    if os.environ.get("CTCONSOLE_LAB_KEEP") == "1":
        pytest.skip("CTCONSOLE_LAB_KEEP=1: the lab must stay up")
    st = labmod.status()
    pids = [c.init_pid for c in st.containers.values()] + [
        h.pid for c in st.containers.values() for h in c.helpers if h.alive()
    ]
    dirs = [d for c in st.containers.values() for d in c.owned_dirs]
    labmod.host_add("tst3")
    # unrelated things that exist before `up` and must survive `down`
    other_ns, other_link = f"ctt-keep{os.getpid() % 10000}", f"cttkeep{os.getpid() % 10000}"
    try:
        subprocess.run(["ip", "netns", "add", other_ns], check=True)
        subprocess.run(["ip", "link", "add", other_link, "type", "bridge"], check=True)  # no dummy module here
        out = cli("lab", "down").stdout
        assert "removed ctlab-ns" in out
        for pid in pids:
            assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] == "Z"
        for d in dirs:
            assert not Path(d).exists()
        assert not any(n.startswith("ctlab-") for n in netns_list())
        assert not any(n.startswith("vctlab-") or n == "ctlab0" for n in links())
        assert other_ns in netns_list() and other_link in links()
        assert "runc" not in subprocess.run(["runc", "list", "-q"], capture_output=True, text=True).stdout
        # up again (for later tests), then down once more: unrelated things still survive
        cli("lab", "up", "--require-all")
        cli("lab", "down")
        assert other_ns in netns_list() and other_link in links()
    finally:
        subprocess.run(["ip", "link", "del", other_link], check=False)
        subprocess.run(["ip", "netns", "del", other_ns], check=False)
        labmod.up()
    assert all(c.init is not None for c in labmod.status().containers.values())


def test_cli_errors_are_clean() -> None:
    cp = cli("lab", "restart", "nosuch", check=False)
    assert cp.returncode == 2 and "unknown lab container" in cp.stderr and "Traceback" not in cp.stderr
    cp = cli("lab", "host", "add", "Bad_Name", check=False)
    assert cp.returncode == 2 and "invalid lab host name" in cp.stderr


def test_one_failing_runtime_does_not_stop_the_others(lab, monkeypatch: pytest.MonkeyPatch) -> None:
    from ctconsole.lab import libvirt

    labmod.stop("lv")

    def broken(c: object, ctx: object) -> None:  # same signature as the runtime start()
        raise labmod.LabError("simulated libvirt failure", ["detail line"])

    monkeypatch.setattr(libvirt, "start", broken)
    rep = labmod.up()
    assert "ctlab-lv" in rep.failed and "simulated libvirt failure" in rep.failed["ctlab-lv"]
    assert sorted(rep.kept) == sorted(n for n in labmod.ALL_NAMES if n != "ctlab-lv")
    st = labmod.status()
    assert st.containers["ctlab-lv"].init is None and "simulated" in st.containers["ctlab-lv"].error
    monkeypatch.undo()
    rep = labmod.up()
    assert rep.started == ["ctlab-lv"] and not rep.failed
    wait_ticks("ctlab-lv", 2)
