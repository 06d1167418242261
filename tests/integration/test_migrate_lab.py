"""Migrating the lab containers (ctconsole.lab) to a lab host: the real runtimes, real externals.

``ctlab-ns`` carries a unix socket to a host daemon, a host bind mount, a veth on
the lab bridge and a TCP listener; its rules come from ``ctconsole rules suggest``.
The destination is a lab host (``lab host add``: netns ctlab-NAME, reached from
ctlab-src, where the dumping CRIU runs so it reaches the page server). Afterwards
the container is restarted fresh so the lab is left as it was found.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import lab_fixtures
from tests.lab_fixtures import assert_continuous, container, fresh, read_counter, wait_ticks
from tests.support_hosts import CTCONSOLE, ROOT, ctenv, journal_records, run_cli

lab = lab_fixtures.lab

HOST = "ctmig"


@pytest.fixture
def labhost(lab: Any) -> Iterator[Any]:
    from ctconsole.lab import hosts

    h = hosts.add(HOST)
    yield h
    fresh("ctlab-ns")  # bring the container back to the real host before the host netns goes
    hosts.delete(HOST)


def test_lab_ns_container_to_lab_host(tmp_path: Path, labhost: Any) -> None:
    c = fresh("ctlab-ns")
    wait_ticks(c, 3)
    rules = tmp_path / "rules.toml"
    out = subprocess.run([*CTCONSOLE, "rules", "suggest", "ctlab-ns"], capture_output=True, text=True,
                         cwd=ROOT, timeout=120, check=True).stdout
    rules.write_text(out)
    env = ctenv(tmp_path)
    assert c.init is not None
    rc, events, err = run_cli(["migrate", "ctlab-ns", "--to", f"netns:{labhost.netns}", "--rules", str(rules),
                               "--probe", "link:eth0",
                               "--json"], env)
    assert events and events[-1]["result"] == "migrated", (events[-1:], err[-2000:])
    assert rc == 0
    assert events[-1]["details"]["mode"] == "handover"
    c2 = container("ctlab-ns")
    wait_ticks(c2, 5)
    assert_continuous(read_counter(c2))
    assert c2.init is not None and c2.init.pid != c.init.pid
    ns = subprocess.run(["ip", "netns", "identify", str(c2.init.pid)], capture_output=True, text=True).stdout
    del ns  # the container has its own netns; its veth peer is what moved
    link = subprocess.run(["ip", "-n", labhost.netns, "-o", "link", "show", "master", "ctlab0"],
                          capture_output=True, text=True).stdout
    assert "vctlab-ns" in link, link


def _suggest(name: str, tmp: Path, extra: str = "") -> Path:
    out = subprocess.run([*CTCONSOLE, "rules", "suggest", name], capture_output=True, text=True,
                         cwd=ROOT, timeout=120, check=True).stdout
    p = tmp / f"{name}.toml"
    p.write_text(out + extra)
    return p


@pytest.fixture
def labhost2(lab: Any) -> Iterator[Any]:
    from ctconsole.lab import hosts

    h = hosts.add(HOST)
    yield h
    for name in ("ctlab-lv", "ctlab-lxc", "ctlab-runc"):
        fresh(name)
    hosts.delete(HOST)


def test_lab_libvirt_lxc_with_console(tmp_path: Path, labhost2: Any) -> None:
    """libvirt-lxc: the console PTY master comes back by notify and the keeper holds it.

    No cgroup rule: libvirt removes (and kills) the domain's cgroup once the
    source init is gone, which would take a tree restored into it along; on
    the same kernel the engine restores under its own cgroup root. That
    restored tree with it.
    """
    import os
    import select

    from ctconsole.migrate.keeper import fetch_master

    c = fresh("ctlab-lv")
    wait_ticks(c, 3)
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(Path("/proc/meminfo").read_text())
    rules = _suggest("ctlab-lv", tmp_path)
    rules.write_text(rules.read_text().replace('path = "/meminfo"', f'path = "{meminfo}"'))
    _rc, events, err = run_cli(["migrate", "ctlab-lv", "--to", f"netns:{labhost2.netns}", "--rules", str(rules),
                               "--json"], ctenv(tmp_path))
    assert events and events[-1]["result"] == "migrated", (events[-1:], err[-2000:])
    sock = events[-1]["details"]["console_socket"]
    wait_ticks(container("ctlab-lv"), 20, timeout=15)  # survives libvirt's cleanup of the old domain
    lv = container("ctlab-lv")
    assert lv.init is not None
    cg = Path(f"/proc/{lv.init.pid}/cgroup").read_text()
    assert ":/ctconsole-ctlab-lv-" in cg, cg
    assert_continuous(read_counter(container("ctlab-lv")))
    m = fetch_master(sock)
    try:
        os.write(m, b"echo ctmig-console\n")
        seen = b""
        end = time.monotonic() + 5
        while b"ctmig-console" not in seen and time.monotonic() < end:
            r, _, _ = select.select([m], [], [], 0.5)
            if r:
                seen += os.read(m, 1000)
        assert b"ctmig-console" in seen
    finally:
        os.close(m)
    wait_ticks(container("ctlab-lv"), 3)  # closing our duplicate does not hang it up


def _proc_alive(pid: int, started: int = 0) -> bool:
    from ctconsole import process

    return process.alive(pid, started)


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _migrate_runtime(name: str, tmp_path: Path, host: Any, extra_rules: str = "") -> tuple[Any, Any, dict[str, Any]]:
    """Migrate a lab container to ``host``; check what every runtime must give (see the asserts)."""
    from ctconsole.process import start_time

    c = fresh(name)
    wait_ticks(c, 3)
    assert c.init is not None
    src_pid, src_start = c.init.pid, start_time(c.init.pid)
    rules = _suggest(name, tmp_path, extra_rules)
    env = ctenv(tmp_path)
    rc, events, err = run_cli(["migrate", name, "--to", f"netns:{host.netns}", "--rules", str(rules),
                               "--json"], env)
    assert events and events[-1]["result"] == "migrated", (events[-1:], err[-2000:])
    assert rc == 0
    done = events[-1]["details"]
    # the source is gone (not merely stopped)
    assert not _proc_alive(src_pid, src_start)
    c2 = container(name)
    assert c2.init is not None and c2.init.pid == done["restored_pid"] != src_pid
    # the agent session is over (the CLI returned, the agent process is gone), yet the tree keeps
    # running for seconds: its parent is the keeper (a parent-death signal would fire otherwise)
    agent = next(r for r in journal_records(tmp_path) if r.get("kind") == "agent")["agent_pid"]
    end = time.monotonic() + 10
    while time.monotonic() < end and _proc_alive(agent):
        time.sleep(0.05)
    assert not _proc_alive(agent)
    wait_ticks(c2, 30, timeout=15)
    assert _proc_alive(c2.init.pid)
    ticks = read_counter(c2)
    assert_continuous(ticks)
    keeper = _ppid(c2.init.pid)
    assert "ctconsole.migrate.keeper" in Path(f"/proc/{keeper}/cmdline").read_text()
    out = subprocess.run([*CTCONSOLE, "keepers", "--json"], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=60, check=True).stdout
    recs = [json.loads(x) for x in out.splitlines() if x.strip()]
    rec = next(r for r in recs if r["root"] == c2.init.pid)
    assert rec["keeper"] == keeper and rec["root_running"] and rec["migration_id"] == done["id"]
    return c2, rec, env


def test_lab_lxc_container_to_lab_host(tmp_path: Path, labhost2: Any) -> None:
    """LXC sets PR_SET_PDEATHSIG=SIGKILL on the container init and CRIU restores it: a restore whose
    parent exits (the criu swrk worker) kills the init at once. The keeper restores with rst_sibling
    and stays the parent; the counter continues on the destination without gap or repeat."""
    c2, _rec, _env = _migrate_runtime("ctlab-lxc", tmp_path, labhost2)  # no cgroup rule: the engine's own root
    link = subprocess.run(["ip", "-n", labhost2.netns, "-o", "link", "show", "master", "ctlab0"],
                          capture_output=True, text=True).stdout
    assert "vctlab-lxc" in link, link
    wait_ticks(c2, 10)
    assert_continuous(read_counter(c2))
    # restored under the engine's own cgroup root (same kernel); once the copy ends, its keeper
    # removes that root in every hierarchy: nothing empty is left behind (it used to leak one per
    # hierarchy per migration)
    assert c2.init is not None
    made = sorted(Path("/sys/fs/cgroup").glob(f"*/ctconsole-ctlab-lxc-{_rec['migration_id']}"))
    assert made and f":/ctconsole-ctlab-lxc-{_rec['migration_id']}" in Path(f"/proc/{c2.init.pid}/cgroup").read_text()
    fresh("ctlab-lxc")  # ends the migrated copy (the lab restarts the container from scratch)
    end = time.monotonic() + 10
    while time.monotonic() < end and any(p.exists() for p in made):
        time.sleep(0.1)
    assert not [p for p in made if p.exists()]


def test_lab_runc_container_to_lab_host(tmp_path: Path, labhost2: Any) -> None:
    """runc: stdio are pipes whose other ends a process outside holds. The destination makes new
    pipes (inherit_fd pipe:[INO]); the keeper logs what the container writes to them."""
    c2, rec, _env = _migrate_runtime("ctlab-runc", tmp_path, labhost2)
    assert c2.init is not None
    assert len(rec["pipes"]) == 2 and rec["logs"], rec
    for fd in (1, 2):
        assert Path(f"/proc/{c2.init.pid}/fd/{fd}").resolve(strict=False).name.startswith("pipe:")
    # what the container writes to stdout reaches the keeper's log (no SIGPIPE, nothing lost)
    with open(f"/proc/{c2.init.pid}/fd/1", "w") as out:
        out.write("ctmig-stdout\n")
    log = Path(rec["logs"][0])
    end = time.monotonic() + 5
    while time.monotonic() < end and "ctmig-stdout" not in (log.read_text() if log.exists() else ""):
        time.sleep(0.05)
    assert "ctmig-stdout" in log.read_text()
    wait_ticks(c2, 10)
    assert_continuous(read_counter(c2))


SUGGEST_HOST = "ctsugto"


@pytest.fixture
def suggest_host(lab: Any) -> Iterator[str]:
    """A lab host made the documented way (``ctconsole lab host add``); the DEST string for ``--to``."""
    out = subprocess.run([*CTCONSOLE, "lab", "host", "add", SUGGEST_HOST], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    try:
        yield f"netns:ctlab-{SUGGEST_HOST}"
    finally:
        fresh("ctlab-lxc")  # bring the container back to the real host before the host netns goes
        subprocess.run([*CTCONSOLE, "lab", "host", "del", SUGGEST_HOST], capture_output=True, cwd=ROOT,
                       timeout=120, check=False)


def test_documented_suggest_to_then_migrate_to(tmp_path: Path, suggest_host: str) -> None:
    """The README's flow, verbatim: ``rules suggest REF --to DEST > r.toml; migrate REF --to DEST --rules r.toml``.

    ``suggest --to`` writes ``to = "DEST"`` into the rules' match; the engine
    used to check them against "local" (its check had no destination, then it
    compiled the rules a second time) and refused with "needs remap rules".
    ctlab-lxc needs one rule (its veth: needs-rules without it). Run as an
    operator would: one environment (the lab's state dir) for all three
    commands.
    """
    from ctconsole.process import alive, start_time

    c = fresh("ctlab-lxc")
    wait_ticks(c, 3)
    assert c.init is not None
    src_pid, src_start = c.init.pid, start_time(c.init.pid)
    sug = subprocess.run([*CTCONSOLE, "rules", "suggest", "ctlab-lxc", "--to", suggest_host], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert sug.returncode == 0, sug.stderr[-2000:]
    assert f'to = "{suggest_host}"' in sug.stdout, sug.stdout[:2000]
    rules = tmp_path / "r.toml"
    rules.write_text(sug.stdout)
    before = read_counter(c)[-1]
    p = subprocess.run([*CTCONSOLE, "migrate", "ctlab-lxc", "--to", suggest_host, "--rules", str(rules), "--json"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    events = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
    assert events and events[-1]["result"] == "migrated", (events[-1:], p.stderr[-2000:])
    assert p.returncode == 0
    # the source is gone (not merely stopped), the copy runs on the destination and counts on
    assert not alive(src_pid, src_start)
    c2 = container("ctlab-lxc")
    assert c2.init is not None and c2.init.pid == events[-1]["details"]["restored_pid"] != src_pid
    wait_ticks(c2, 5)
    ticks = read_counter(c2)
    assert_continuous(ticks)
    assert ticks[-1] > before + 4
    link = subprocess.run(["ip", "-n", f"ctlab-{SUGGEST_HOST}", "-o", "link", "show", "master", "ctlab0"],
                          capture_output=True, text=True).stdout
    assert "vctlab-lxc" in link, link  # its veth peer now sits on the destination's bridge
