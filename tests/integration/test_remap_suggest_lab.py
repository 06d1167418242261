"""``rules suggest REF --to DEST`` gives working answers for every lab runtime (issue #14).

For each lab container (plain namespaces, runc, LXC, libvirt-lxc): the draft
validates with host checks on (this host's filesystem is the netns host's),
and ``check REF --to DEST --rules DRAFT`` leaves no needs-rule finding
unsatisfied and says go. libvirt-lxc is the case that used to fail: its FUSE
``/proc/meminfo`` was mapped to ``path = "/meminfo"`` (a path inside the FUSE
filesystem that exists on no host). Run under ``flock /tmp/ctc-coord/lab.lock``.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ctconsole.feasibility.findings import GO_VERDICTS
from ctconsole.remap.parse import parse_text
from ctconsole.remap.suggest import UNDECIDED
from tests import lab_fixtures
from tests.support_hosts import CTCONSOLE, ROOT

pytestmark = [pytest.mark.root, pytest.mark.criu, pytest.mark.lab]

lab = lab_fixtures.lab

HOST = "dst"  # kept: the lab's documented example destination (``ctconsole lab host add dst``)
DEST = f"netns:ctlab-{HOST}"


@pytest.fixture(scope="module")
def dest(lab: Any) -> str:
    """The lab host ``dst`` (made with ``lab host add`` when missing; left up like the lab)."""
    hosts = subprocess.run([*CTCONSOLE, "lab", "host", "list", "--json"], capture_output=True, text=True, cwd=ROOT,
                           timeout=60)
    known = [h.get("dest") for h in json.loads(hosts.stdout or "[]")] if hosts.returncode == 0 else []
    if DEST not in known:
        add = subprocess.run([*CTCONSOLE, "lab", "host", "add", HOST], capture_output=True, text=True, cwd=ROOT,
                             timeout=180)
        assert add.returncode == 0, add.stderr[-2000:]
    return DEST


def _cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CTCONSOLE, *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout)


@pytest.mark.parametrize("name", ["ctlab-ns", "ctlab-runc", "ctlab-lxc", "ctlab-lv"])
def test_suggest_to_dest_then_check_is_go(name: str, dest: str, tmp_path: Path) -> None:
    draft = tmp_path / f"{name}.toml"
    sug = _cli("rules", "suggest", name, "--to", dest, "-o", str(draft))
    assert sug.returncode == 0, sug.stderr[-2000:]
    text = draft.read_text()
    rs, problems = parse_text(text, str(draft))
    assert problems == [] and rs.containers[0].selector is not None
    assert rs.containers[0].selector.to == dest
    # every decision was made (or the draft and stderr would say UNDECIDED)
    assert UNDECIDED not in text and UNDECIDED not in sug.stderr, sug.stderr
    val = _cli("rules", "validate", str(draft))
    assert val.returncode == 0 and val.stdout.strip() == "ok", val.stdout + val.stderr
    chk = _cli("check", name, "--to", dest, "--rules", str(draft), "--json")
    report = json.loads(chk.stdout)
    open_needs = [f for f in report["findings"] if f.get("needs") and not f.get("satisfied")]
    blockers = [f for f in report["findings"] if f.get("severity") == "blocker"]
    assert report["verdict"] in GO_VERDICTS and not open_needs and not blockers, (report["verdict"], blockers,
                                                                                  open_needs)


def test_libvirt_fuse_meminfo_maps_to_a_host_file(dest: str, tmp_path: Path) -> None:
    """Derived from mountinfo (a FUSE mount on the container's proc), not from the string "meminfo"."""
    sug = _cli("rules", "suggest", "ctlab-lv", "--to", dest)
    assert sug.returncode == 0, sug.stderr[-2000:]
    rs, _ = parse_text(sug.stdout)
    mounts = {r.get("mountpoint"): r.get("path") for r in rs.containers[0].rules if r.kind == "mount"}
    assert mounts.get("/proc/meminfo") == "/proc/meminfo", mounts
    assert all(Path(p).exists() for p in mounts.values()), mounts


@pytest.mark.parametrize("name", ["ctlab-ns", "ctlab-runc", "ctlab-lxc", "ctlab-lv"])
def test_suggest_to_dest_then_migrate_with_nothing_else(name: str, dest: str, tmp_path: Path) -> None:
    """#14: the draft alone is enough to migrate (no hand-written rule, no extra option); the copy counts on."""
    from ctconsole.process import alive, start_time
    from tests.lab_fixtures import assert_continuous, container, fresh, read_counter, wait_ticks

    c = fresh(name)
    wait_ticks(c, 3)
    assert c.init is not None
    src_pid, src_start = c.init.pid, start_time(c.init.pid)
    draft = tmp_path / f"{name}.toml"
    sug = _cli("rules", "suggest", name, "--to", dest, "-o", str(draft))
    assert sug.returncode == 0, sug.stderr[-2000:]
    try:
        p = _cli("migrate", name, "--to", dest, "--rules", str(draft), "--json", timeout=300)
        events = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
        assert events and events[-1].get("result") == "migrated", (events[-1:], p.stderr[-2000:])
        assert not alive(src_pid, src_start)
        c2 = container(name)
        assert c2.init is not None and c2.init.pid != src_pid
        wait_ticks(c2, 3)
        assert_continuous(read_counter(c2))
    finally:
        fresh(name)  # the lab container back on this host, counter from 1
