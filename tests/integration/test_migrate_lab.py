"""Migrating the lab containers (ctconsole.lab) to a lab host: the real runtimes, real externals.

``ctlab-ns`` carries a unix socket to a host daemon, a host bind mount, a veth on
the lab bridge and a TCP listener; its rules come from ``ctconsole rules suggest``.
The destination is a lab host (``lab host add``: netns ctlab-NAME, reached from
ctlab-src, where the dumping CRIU runs so it reaches the page server). Afterwards
the container is restarted fresh so the lab is left as it was found.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import lab_fixtures
from tests.integration.test_migrate_netns import CTCONSOLE, ROOT, ctenv, run_cli
from tests.lab_fixtures import assert_continuous, container, fresh, read_counter, wait_ticks

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
                               "--source-netns", labhost.src_netns, "--probe", "ip link show eth0",
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
    for name in ("ctlab-lv", "ctlab-lxc"):
        fresh(name)
    hosts.delete(HOST)


def test_lab_libvirt_lxc_with_console(tmp_path: Path, labhost2: Any) -> None:
    """libvirt-lxc: the console PTY master comes back by notify and the keeper holds it.

    The restore goes to its own cgroup root: libvirt removes (and kills) the
    domain's cgroup once the source init is gone, which would take the
    restored tree with it.
    """
    import os
    import select

    from ctconsole.migrate.keeper import fetch_master

    c = fresh("ctlab-lv")
    wait_ticks(c, 3)
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(Path("/proc/meminfo").read_text())
    rules = _suggest("ctlab-lv", tmp_path, '  [[container.rule]]\n  kind = "cgroup"\n  root = "/ctmig-lv"\n')
    rules.write_text(rules.read_text().replace('path = "/meminfo"', f'path = "{meminfo}"'))
    _rc, events, err = run_cli(["migrate", "ctlab-lv", "--to", f"netns:{labhost2.netns}", "--rules", str(rules),
                               "--source-netns", labhost2.src_netns, "--json"], ctenv(tmp_path))
    assert events and events[-1]["result"] == "migrated", (events[-1:], err[-2000:])
    sock = events[-1]["details"]["console_socket"]
    wait_ticks(container("ctlab-lv"), 20, timeout=15)  # survives libvirt's cleanup of the old domain
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


def test_lab_lxc_failure_keeps_source(tmp_path: Path, labhost2: Any) -> None:
    """LXC: the restored init dies at once on this host (LXC's parent-death signal, suspected);
    the handover notices before acknowledging, and CRIU resumes the source: still exactly one."""
    c = fresh("ctlab-lxc")
    wait_ticks(c, 3)
    rules = _suggest("ctlab-lxc", tmp_path, '  [[container.rule]]\n  kind = "cgroup"\n  root = "/ctmig-lxc"\n')
    _rc, events, _ = run_cli(["migrate", "ctlab-lxc", "--to", f"netns:{labhost2.netns}", "--rules", str(rules),
                             "--source-netns", labhost2.src_netns, "--json"], ctenv(tmp_path))
    result = events[-1]["result"]
    assert result in ("migrated", "rolled-back"), events[-1]
    c2 = container("ctlab-lxc")
    wait_ticks(c2, 5)
    assert_continuous(read_counter(c2))
    if result == "rolled-back":
        assert c2.init is not None and c.init is not None and c2.init.pid == c.init.pid
