"""Runtimes on the destination: adoption (ctconsole/migrate/adopt.py) run inside an isolated lab host.

The restored tree is stood in for by a pid-namespace init started inside the
isolated host (it has a pid namespace of its own, so the lab container, a
process of this host, is not visible there), with the lab container's runtime
facts: adoption runs *inside* the isolated host exactly as the destination
server calls it, then the real runtime tools there are asked. The full migrate-then-adopt flow runs in
tests/integration/test_migrate_isolated.py.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctconsole import lab as labmod
from ctconsole.inventory import scan
from ctconsole.inventory.netlink import uts_hostname
from ctconsole.lab import isolated
from ctconsole.lab.common import nspid_is_init
from ctconsole.lab.state import LabHost
from ctconsole.migrate import adopt
from tests import lab_fixtures
from tests.lab_fixtures import container
from tests.support_hosts import kill_pid

lab = lab_fixtures.lab

pytestmark = [pytest.mark.root, pytest.mark.lab]

NAME = "f1adopt"
RECORDS = "/run/ctconsole/adopted"


@pytest.fixture(scope="module")
def dest(needs_root: None) -> Iterator[LabHost]:
    if NAME in {h.name for h in labmod.host_list()}:
        labmod.host_del(NAME)
    h = labmod.host_add(NAME, isolated=True)
    yield h
    labmod.host_del(NAME)


def facts_of(name: str) -> adopt.RuntimeFacts:
    c = next(x for x in scan() if x.name == name)
    return adopt.gather(c)


def adopt_inside(h: LabHost, facts: adopt.RuntimeFacts, pid: int, root: str) -> subprocess.CompletedProcess[str]:
    """What the destination server does after a committed restore, run in the isolated host."""
    code = ("import sys; from ctconsole.migrate import adopt\n"
            "a = adopt.adopt_restored(sys.stdin.read(), int(sys.argv[1]), sys.argv[2], sys.argv[3])\n"
            "print(a.note)\n")
    return subprocess.run(
        [*labmod.host_argv(NAME), sys.executable, "-c", code, str(pid), root, RECORDS],
        input=facts.to_json(), capture_output=True, text=True, timeout=60,
    )


def inside(*argv: str) -> subprocess.CompletedProcess[str]:
    return labmod.host_run(NAME, list(argv))


@contextlib.contextmanager
def stand_in(hostname: str) -> Iterator[tuple[int, int]]:
    """A pid-namespace init started inside the host, standing in for a restored tree: (pid there, pid here).

    The isolated host has its own pid namespace, so the lab container itself (a
    process of this host) cannot stand in: the host does not see it.
    """
    p = subprocess.Popen([*labmod.host_argv(NAME), "unshare", "--pid", "--fork", "--uts", "sh", "-c",
                          f'hostname {hostname}; exec setsid sh -c "while :; do sleep 0.2; done"'],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         close_fds=True, start_new_session=True)
    here = 0
    try:
        h = labmod.host_get(NAME)
        end = time.monotonic() + 10
        while not here and time.monotonic() < end:
            here = next((pid for pid in isolated.processes_inside(h)
                         if nspid_is_init(pid) and uts_hostname(pid) == hostname), 0)
            time.sleep(0.05)
        assert here, "the stand-in did not start"
        there = int(next(ln.split()[2] for ln in Path(f"/proc/{here}/status").read_text().splitlines()
                         if ln.startswith("NSpid:")))
        assert labmod.host_real_pid(NAME, there) == here
        yield there, here
    finally:
        if here:
            kill_pid(here)
        kill_pid(p.pid)
        p.wait(timeout=10)


def test_runc_container_is_adopted_by_runc_there(lab, dest: LabHost) -> None:
    c = container("runc")
    assert c.init is not None, c.error
    facts = facts_of("ctlab-runc")
    assert facts.runtime == "runc" and facts.runc_root == "/run/runc" and facts.runc_state["id"] == "ctlab-runc"
    assert inside("runc", "list", "-q").stdout.strip() == ""  # runc there knows nothing yet
    with stand_in("ctlab-runc") as (pid, here):
        cp = adopt_inside(dest, facts, pid, c.rootfs)
        assert cp.returncode == 0, cp.stderr
        listed = json.loads(inside("runc", "list", "--format", "json").stdout)
        assert [(x["id"], x["pid"], x["status"]) for x in listed] == [("ctlab-runc", pid, "running")]
        # ctconsole's inventory there names it the same, with the same runtime
        out = json.loads(inside(sys.executable, "-m", "ctconsole", "list", "--json", "--quick").stdout)
        mine = [x for x in out if x["init_pid"] == pid]
        assert mine and mine[0]["name"] == "ctlab-runc" and mine[0]["runtime"] == "runc"
        # ... and so does `ctconsole list --host DEST` from here, through the agent over real ssh
        cp = subprocess.run([sys.executable, "-m", "ctconsole", "list", "--host", dest.dest, "--json"],
                            capture_output=True, text=True, timeout=120)
        assert cp.returncode == 0, cp.stderr
        remote = [x for x in json.loads(cp.stdout) if x["init_pid"] == pid]
        assert remote and remote[0]["name"] == "ctlab-runc" and remote[0]["runtime"] == "runc"
        # the state carries no hooks from the source and the restored pid's namespaces
        st = json.loads(inside("cat", "/run/runc/ctlab-runc/state.json").stdout)
        assert st["config"]["hooks"] is None
        assert all(f"/proc/{pid}/" in p for p in st["namespace_paths"].values() if p)
        # runc kill there stops it
        cp = inside("runc", "kill", "ctlab-runc", "KILL")
        assert cp.returncode == 0, cp.stderr
        from tests.support import wait_gone

        wait_gone(here)
        assert json.loads(inside("runc", "list", "--format", "json").stdout)[0]["status"] == "stopped"
        assert inside("runc", "delete", "ctlab-runc").returncode == 0
    assert container("runc").init_pid == c.init_pid, "the lab's own runc container was not touched"


@pytest.mark.parametrize("short,runtime,says", [("lxc", "lxc", "not managed by LXC"),
                                                ("lv", "libvirt-lxc", "not managed by libvirt")])
def test_lxc_and_libvirt_are_named_and_say_why_not_adopted(lab, dest: LabHost, short: str, runtime: str,
                                                           says: str) -> None:
    c = container(short)
    assert c.init is not None, c.error
    facts = facts_of(c.name)
    assert facts.runtime == runtime
    with stand_in(c.name) as (pid, _here):
        cp = adopt_inside(dest, facts, pid, c.rootfs)
        assert cp.returncode == 0 and says in cp.stdout, cp.stderr
        rec = json.loads(inside("cat", f"{RECORDS}/{facts.id}.json").stdout)
        assert rec["pid"] == pid and rec["adopted"] is False and "kill -KILL" in rec["stop"]
        # list and show there: same name and runtime, and `show` says plainly what to do
        out = json.loads(inside(sys.executable, "-m", "ctconsole", "list", "--json", "--quick").stdout)
        mine = [x for x in out if x["init_pid"] == pid]
        assert mine and mine[0]["name"] == c.name and mine[0]["runtime"] == runtime
        show = inside(sys.executable, "-m", "ctconsole", "show", f"pid:{pid}").stdout
        assert says in " ".join(show.split()) and "move it back" in show
        assert "Traceback" not in show
    # nothing was written for LXC's or libvirt's own tools (lxc-ls would list a STOPPED copy)
    assert inside("sh", "-c", "ls /var/lib/lxc 2>/dev/null; ls /run/libvirt 2>/dev/null").stdout.strip() == ""
    inside("rm", "-f", f"{RECORDS}/{facts.id}.json")


def test_untrusted_facts_are_refused(needs_root: None) -> None:
    good = adopt.RuntimeFacts("runc", "ct1", "ct1", "/r", "/run/runc", {"id": "ct1"})
    for bad in (
        {"runc_root": "/etc"},
        {"runc_root": "/run/runc/../../etc"},
        {"id": "../x"},
        {"runtime": "docker-in-space"},
        {"runc_state": {"id": "other"}},
    ):
        text = json.dumps({**json.loads(good.to_json()), **bad})
        with pytest.raises(adopt.AdoptError):
            adopt.RuntimeFacts.from_json(text)
    with pytest.raises(adopt.AdoptError):
        adopt.RuntimeFacts.from_json("[1]")
    a = adopt.plan(adopt.RuntimeFacts.from_json(good.to_json()), 4242, 99, "/new/root", "/tmp/recs")
    assert [f.path for f in a.files] == ["/run/runc/ct1/state.json", "/tmp/recs/ct1.json"]
    st = json.loads(a.files[0].content)
    assert st["init_process_pid"] == 4242 and st["init_process_start"] == 99


def test_migration_to_an_isolated_host_records_the_runtime_there(lab, dest: LabHost, tmp_path) -> None:
    """End to end over real ssh: `ctconsole migrate` sends the runtime facts with the commit, the
    destination server adopts the kept tree, `list --host DEST` names it as the source did."""
    from tests.support_hosts import ctenv, run_cli

    tag = f"f1m{uuid.uuid4().hex[:5]}"
    launcher = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--uts", "sh", "-c",
         f'hostname {tag}; exec setsid sh -c "while :; do sleep 0.2; done"'],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        close_fds=True, start_new_session=True,
    )
    restored = 0
    run_dir = tempfile.mkdtemp(prefix="f1r", dir="/tmp")
    try:
        threading.Thread(target=launcher.wait, daemon=True).start()  # reap the source when CRIU kills it
        assert _wait_named(tag), "the test container did not start"
        src = next(c for c in scan() if c.name == tag)
        # a short run dir: the page link's unix socket path must fit sun_path (108 bytes)
        env = ctenv(tmp_path)
        env["CTCONSOLE_RUN_DIR"] = run_dir
        rc, events, err = run_cli(["migrate", tag, "--to", dest.dest, "--json"], env)
        assert rc == 0, (events[-3:], err[-3000:])
        out = subprocess.run([sys.executable, "-m", "ctconsole", "list", "--host", dest.dest, "--json"],
                             capture_output=True, text=True, timeout=120)
        mine = [x for x in json.loads(out.stdout) if x["name"] == tag]
        assert [(x["id"], x["runtime"]) for x in mine] == [(src.id, "namespaces")], out.stderr
        restored = mine[0]["init_pid"]
        rec = json.loads(inside("cat", f"{RECORDS}/{src.id}.json").stdout)
        assert rec["pid"] == restored and rec["name"] == tag
        committed = [r for r in journal(tmp_path) if r.get("kind") == "committed"]
        assert committed and committed[0]["adoption"] == f"namespaces container {tag}"
    finally:
        if restored:  # the host's pid (its own pid namespace): ours for the same process
            kill_pid(labmod.host_real_pid(NAME, restored))
        kill_pid(launcher.pid)
        shutil.rmtree(run_dir, ignore_errors=True)


def _wait_named(name: str, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if any(c.name == name for c in scan()):
            return True
        time.sleep(0.1)
    return False


def journal(tmp_path) -> list[dict[str, object]]:
    from tests.support_hosts import journal_records

    return journal_records(tmp_path)
