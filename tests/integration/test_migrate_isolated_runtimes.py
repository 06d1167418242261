"""Issue #13: every lab runtime moves to a host that shares nothing, with its root carried, and back.

runc (``ctlab-runc``), LXC (``ctlab-lxc``) and libvirt-lxc (``ctlab-lv``) are migrated
the way an operator would: ``ctconsole rules suggest NAME --to DEST > r.toml`` and
``ctconsole migrate NAME --to DEST --rules r.toml --storage copy`` over real ssh:// to an
isolated lab host (own network and mount namespaces, own /var/lib, its own sshd). Then:
the counter file - carried with the root - goes on without a gap or a repeat on the host,
the source's init is gone, the host lists the container under the same name and runtime
(``ctconsole list --host DEST``; for runc, ``runc list`` there shows it running), and
neither side keeps images, work dirs, pending sessions or page sockets. Then the console
*on the isolated host* moves it back the same way (rules suggested there, root carried
again) to this host's sshd, reached on the source end of the lab link; the counter goes on
here and the copy there is gone. The lab container is restarted afterwards, so the shared
lab is left as it was (the migrations run under ``flock /tmp/ctc-coord/lab.lock``).

The plain-namespaces runtime is covered by tests/integration/test_migrate_isolated.py,
with the failure paths (a failed final sync, a cut link).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ctconsole import lab as labmod
from ctconsole import process as proc
from tests import lab_fixtures
from tests.lab_fixtures import assert_continuous, container, fresh, read_counter, wait_ticks
from tests.support_hosts import CTCONSOLE, ctenv, journal_records, kill_pid, throwaway_sshd

lab = lab_fixtures.lab

pytestmark = [pytest.mark.root, pytest.mark.lab]

HOST = "rrt"
RUNTIMES = {"runc": "runc", "lxc": "lxc", "lv": "libvirt-lxc"}


@pytest.fixture(scope="module")
def host(needs_root: None) -> Iterator[labmod.LabHost]:
    if HOST in {h.name for h in labmod.host_list()}:
        labmod.host_del(HOST)
    h = labmod.host_add(HOST, isolated=True)
    yield h
    labmod.host_del(HOST)


@pytest.fixture
def run_dir() -> Iterator[str]:
    """A short run dir: the page link's unix socket path must fit sun_path (108 bytes)."""
    d = tempfile.mkdtemp(prefix="rr", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def cli(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CTCONSOLE, *args], capture_output=True, text=True, env=env, timeout=timeout)


def events_of(out: str) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]


def leftovers(base: str, host: str = "") -> dict[str, list[str]]:
    """What a finished migration must not leave in a state/run dir pair (read through the host's root)."""
    out = {}
    for d in (f"{base}/images", f"{base}/work", f"{base}/agent-pending"):
        p = Path(labmod.host_path(host, d) if host else d)
        out[d] = sorted(os.listdir(p)) if p.is_dir() else []
    return out


def dest_leftovers() -> dict[str, list[str]]:
    out = leftovers("/var/lib/ctconsole", HOST)
    for d in ("/run/ctconsole/pages", "/run/ctconsole/agent-pending"):
        p = Path(labmod.host_path(HOST, d))
        out[d] = sorted(os.listdir(p)) if p.is_dir() else []
    return out


def wait_more_ticks(path: Path, n: int, timeout: float = 20) -> list[int]:
    end = time.monotonic() + timeout
    ticks: list[int] = []
    while time.monotonic() < end:
        try:
            ticks = [int(x) for x in path.read_text().split()]
        except (FileNotFoundError, ValueError):
            ticks = []
        if len(ticks) >= n:
            break
        time.sleep(0.1)
    return ticks


def listed(dest: str, pid: int) -> list[tuple[str, str]]:
    cp = subprocess.run([*CTCONSOLE, "list", "--host", dest, "--json"], capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0, cp.stderr[-2000:]
    return [(x["name"], x["runtime"]) for x in json.loads(cp.stdout) if x["init_pid"] == pid]


@pytest.mark.parametrize("short", list(RUNTIMES))
def test_lab_runtime_to_an_isolated_host_and_back(lab, host: labmod.LabHost, short: str, tmp_path: Path,
                                                  run_dir: str) -> None:
    runtime = RUNTIMES[short]
    c = container(short)
    if c.init is None or c.host:
        c = fresh(short)
    wait_ticks(c, 3)
    name, src_pid = c.name, c.init_pid
    src_start = proc.start_time(src_pid)
    env = ctenv(tmp_path, CTCONSOLE_RUN_DIR=run_dir)
    home_pid = 0
    try:
        # -- there: the operator's two commands ------------------------------------------------
        rules = tmp_path / "rules.toml"
        cp = cli(["rules", "suggest", name, "--to", host.dest], env)
        assert cp.returncode == 0, cp.stderr[-2000:]
        rules.write_text(cp.stdout)
        cp = cli(["migrate", name, "--to", host.dest, "--rules", str(rules), "--storage", "copy", "--json"], env)
        done = events_of(cp.stdout)[-1]
        assert done["result"] == "migrated", (done.get("message"), done.get("errors"), cp.stderr[-2000:])
        there_pid = int(done["details"]["restored_pid"])  # the isolated host's pid (its own pid namespace)
        there_real = labmod.host_real_pid(HOST, there_pid)  # the same process as this host numbers it
        assert there_real, f"no process is pid {there_pid} on {HOST}"
        there_start = proc.start_time(there_real)
        carry = next(r for r in journal_records(tmp_path) if r.get("kind") == "carry")
        (target,) = [t for t in carry["targets"] if t["key"] == "root"]
        assert target["action"] == "carry" and target["path"].startswith("/var/lib/ctconsole/storage/")
        finals = [r for r in journal_records(tmp_path) if r.get("kind") == "carried" and r.get("final")]
        assert finals and finals[0]["bytes"] < 256 << 10, finals  # the frozen delta is only what changed

        # the source is gone; the lab follows the container to the host; its counter goes on there
        assert not proc.alive(src_pid, src_start), "the source init must be gone"
        moved = container(short)
        assert moved.host == HOST and moved.init_pid == there_real, (moved.host, moved.init_pid, there_real)
        wait_ticks(moved, 10)
        assert_continuous(read_counter(moved))  # the carried file: the ticks from before the move, then these
        # the host names it as the source did; runc there has adopted it
        assert (name, runtime) in listed(host.dest, there_pid)
        if runtime == "runc":
            runc = json.loads(labmod.host_run(HOST, ["runc", "list", "--format", "json"]).stdout)
            assert [(x["id"], x["pid"], x["status"]) for x in runc] == [(name, there_pid, "running")]
        # nothing left behind on either side
        assert not any(dest_leftovers().values()), dest_leftovers()
        assert not any(leftovers(str(tmp_path / "state")).values()), leftovers(str(tmp_path / "state"))

        # -- back: the console on the isolated host, this host's sshd on the link's source end ---------
        shared = Path(tempfile.mkdtemp(prefix="ctc-rr-back-", dir="/var/cache"))  # readable from there
        try:
            with throwaway_sshd(shared, host.src_address, edge_netns=host.src_netns) as sshd:
                back_dest = f"ssh://root@{host.src_address}:{sshd.port}"
                there_env = [f"{k}={v}" for k, v in sshd.env.items()
                             if k in ("CTCONSOLE_REMOTE_CMD", "CTCONSOLE_SSH_OPTS", "PYTHONPATH")]
                inside = ["env", *there_env, sys.executable, "-m", "ctconsole"]
                cp = labmod.host_run(HOST, [*inside, "rules", "suggest", name, "--to", back_dest], timeout=120)
                assert cp.returncode == 0, cp.stderr[-2000:]
                back_rules = shared / "back.toml"
                back_rules.write_text(cp.stdout)
                before = len(read_counter(container(short)))
                cp = labmod.host_run(HOST, [*inside, "migrate", name, "--to", back_dest, "--rules", str(back_rules),
                                            "--storage", "copy", "--json"], timeout=300)
                back = events_of(cp.stdout)
                assert back and back[-1]["result"] == "migrated", (back[-1:], cp.stderr[-2000:])
                home_pid = int(back[-1]["details"]["restored_pid"])
                assert not proc.alive(there_real, there_start), "the copy on the isolated host is gone"
                (home_root,) = [p / "0" for p in (sshd.remote_state / "storage").iterdir()]
                ticks = wait_more_ticks(home_root / "lab" / "counter", before + 10)
                assert len(ticks) >= before + 10, "the counter does not go on back here"
                assert_continuous(ticks)
                # this host's agent (the throwaway sshd's) recorded it in its run dir: list reads it there
                here = dict(os.environ, CTCONSOLE_RUN_DIR=str(shared / "remote-run"))
                assert (name, runtime) in [(x["name"], x["runtime"]) for x in json.loads(
                    cli(["list", "--json", "--quick"], here).stdout) if x["init_pid"] == home_pid]
                assert not any(dest_leftovers().values()), dest_leftovers()  # it was the source this time
                assert not any(leftovers(str(sshd.remote_state)).values()), leftovers(str(sshd.remote_state))
                if runtime == "runc":  # adopted here too: runc itself stops it
                    assert subprocess.run(["runc", "kill", name, "KILL"], capture_output=True).returncode == 0
                    end = time.monotonic() + 10
                    while proc.alive(home_pid) and time.monotonic() < end:
                        time.sleep(0.05)
                    assert not proc.alive(home_pid), "runc kill did not stop the adopted container"
        finally:
            if home_pid:
                kill_pid(home_pid)  # before its carried root (below shared) goes
            shutil.rmtree(shared, ignore_errors=True)
    finally:
        fresh(short)  # the lab as it was: its container running here from its own root
