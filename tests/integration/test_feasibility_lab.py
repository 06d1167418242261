"""The checker on the real lab containers (libvirt-lxc, LXC, runc, plain namespaces).

For each: static check + trial dump. CRIU is the judge: a failed trial may never
come with a ``feasible`` verdict, and every error the trial dump hits must have
been predicted by a static needs-rule finding (no surprise blockers). The
container keeps running and its netns' iptables are unchanged by the trial.
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from ctconsole import feasibility, inventory
from tests import lab_fixtures

lab = lab_fixtures.lab

pytestmark = [pytest.mark.root, pytest.mark.criu, pytest.mark.lab]


def _iptables(pid: int) -> str:
    out = subprocess.run(["nsenter", "-t", str(pid), "-n", "iptables-save"], capture_output=True, text=True)
    return "\n".join(ln for ln in out.stdout.splitlines() if not ln.startswith("#"))


def _running(lab: Any) -> list[Any]:
    from ctconsole.lab import core

    return [c for c in core.status().containers.values() if c.running]


def test_lab_containers_trial_agrees_with_static(lab: Any, needs_criu: str) -> None:
    running = _running(lab)
    assert running
    for lc in running:
        c = inventory.resolve(f"pid:{lc.init_pid}")
        before = _iptables(c.init_pid) if c.has_own("net") else ""
        report = feasibility.check(c, trial=True)
        assert report.trial is not None, lc.name
        if not report.trial.ok:
            assert report.verdict != "feasible", (lc.name, report.to_dict())
        surprises = [f for f in report.findings if f.source == "trial" and f.severity == "blocker"]
        assert not surprises, (lc.name, [f.to_dict() for f in surprises])
        lab_fixtures.wait_ticks(lc.name, 2)
        if c.has_own("net"):
            assert _iptables(c.init_pid) == before, f"{lc.name}: the trial changed iptables"


def test_check_to_a_lab_host_previews_the_storage(lab: Any, needs_criu: str) -> None:
    """``check --to`` asks the destination (a dry-run ``carry``: nothing created) where the container's
    root would go: on a netns host of this machine the same directory is already there."""
    import json
    import os

    from ctconsole import lab as labmod
    from tests.support_hosts import CTCONSOLE, ROOT

    ns = next(lc for lc in _running(lab) if lc.name == "ctlab-ns")
    host = labmod.host_add("ckstore")
    try:
        p = subprocess.run([*CTCONSOLE, "check", f"pid:{ns.init_pid}", "--to", host.dest, "--json"],
                           capture_output=True, text=True, timeout=300, cwd=ROOT, env=dict(os.environ))
    finally:
        labmod.host_del("ckstore")
    doc = json.loads(p.stdout)
    st = doc["destination"]["storage"]
    assert st["problems"] == [] and st["free_bytes"] > 0, st
    assert any("already on the destination" in line for line in st["summary"]), st
    assert [f for f in doc["findings"] if f["rule"] == "dest-storage" and f["severity"] == "info"]
    lab_fixtures.wait_ticks(ns.name, 2)  # nothing was frozen
