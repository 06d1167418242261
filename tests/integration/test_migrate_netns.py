"""Live migration with real CRIU to a network-namespace "host" (netns:NAME).

Workloads are processes these tests start (a counter in the host namespaces,
and a busybox "container" in its own pid+net+mnt namespaces with a veth);
namespaces are created here (names ``ctt*``, addresses 198.18.0.0/15) and
removed afterwards. Every test ends with the same check an operator makes:
the counter kept counting without a gap or repeat, and exactly one copy of
the workload runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests import support_hosts
from tests.support import assert_continuous
from tests.support_hosts import (
    NetnsHost,
    NsContainer,
    container_inits,
    ctenv,
    pids_running,
    run_cli,
    sh,
    veth_rules,
)

nshost, counter, nsct = support_hosts.nshost, support_hosts.counter, support_hosts.nsct  # fixtures


# -- tests ----------------------------------------------------------------------------------
def test_stop_copy_counter_to_netns(tmp_path: Path, counter: Any, nshost: NetnsHost) -> None:
    env = ctenv(tmp_path)
    rc, events, err = run_cli(["migrate", f"tree:{counter.pid}", "--to", nshost.dest, "--json"], env)
    assert events and events[-1]["event"] == "done", err
    assert events[-1]["result"] == "migrated", events[-1]
    assert rc == 0
    kinds = [e["event"] for e in events]
    for k in ("phase_changed", "final_dump", "frozen_time", "restore_time", "downtime", "transfer"):
        assert k in kinds, kinds
    assert all(e["done"] == e["total"] for e in events if e["event"] == "transfer" and e["kind"] == "linked")
    assert events[-1]["source"] == "released" and events[-1]["restored_pid"] > 0
    phases = [e["phase"] for e in events if e["event"] == "phase_changed"]
    assert phases[:3] == ["begin", "prepare", "perform"] and phases[-2:] == ["finish", "confirm"]
    marker = str(counter.counter_file)
    counter.wait_ticks(5)
    running = pids_running(marker)
    assert len(running) == 1, running
    assert os.stat(f"/proc/{running[0]}/ns/net").st_ino == nshost.netns_inode(), "not inside the destination"
    assert_continuous(counter.ticks())
    # the journal says how it went, and history shows it
    rc, hist, _ = run_cli(["history", "--json"], env)
    assert rc == 0 and hist[-1]["result"] == "migrated"
    assert not list((tmp_path / "state" / "images").glob("*")), "images left on the destination"
    assert not list((tmp_path / "state" / "work").glob("*")), "images left on the source"


def test_stop_copy_ns_container_handover(tmp_path: Path, nsct: NsContainer, nshost: NetnsHost) -> None:
    env = ctenv(tmp_path)
    rules = veth_rules(tmp_path, nshost.bridge, "cttr" + uuid.uuid4().hex[:6])
    rc, events, err = run_cli(["migrate", f"tree:{nsct.init_pid}", "--to", nshost.dest, "--rules", str(rules),
                               "--probe", "link:eth0", "--json"], env)
    assert events and events[-1]["result"] == "migrated", (events[-1:], err)
    assert rc == 0
    assert events[-1]["details"]["mode"] == "handover"
    nsct.wait_ticks(5)
    inits = container_inits(nsct)
    assert len(inits) == 1, inits
    assert os.stat(f"/proc/{inits[0]}/ns/pid").st_ino != os.stat(f"/proc/{nsct.init_pid}/ns/pid").st_ino \
        if os.path.exists(f"/proc/{nsct.init_pid}") else True
    # the restored container's veth peer sits on the destination's bridge
    out = sh("ip", "-n", nshost.name, "-o", "link", "show", "master", nshost.bridge).stdout
    assert "cttr" in out, out
    assert_continuous(nsct.ticks())
    assert events[-1]["details"]["downtime"] < 5.0


def test_post_copy_refused_before_freezing_and_auto_picks_stop_copy(
    tmp_path: Path, counter: Any, nshost: NetnsHost
) -> None:
    env = ctenv(tmp_path)
    rc, events, _ = run_cli(["migrate", f"tree:{counter.pid}", "--to", nshost.dest, "--strategy", "post-copy",
                             "--json"], env)
    assert rc != 0 and events[-1]["result"] == "failed"
    assert "post-copy" in events[-1]["message"] and "self-test" in events[-1]["message"]
    assert not any(e.get("phase") == "perform" for e in events), "something was frozen"
    assert pids_running(str(counter.counter_file)) == [counter.pid]
    rc, events, _ = run_cli(["migrate", f"tree:{counter.pid}", "--to", nshost.dest, "--strategy", "pre-copy",
                             "--json"], env)
    assert rc != 0 and "soft-dirty" in events[-1]["message"]
    rc, events, _ = run_cli(["migrate", f"tree:{counter.pid}", "--to", nshost.dest, "--json"], env)
    assert rc == 0 and events[-1]["details"]["strategy"] == "stop-copy"
    counter.wait_ticks(3)
    assert len(pids_running(str(counter.counter_file))) == 1
    assert_continuous(counter.ticks())


def test_agent_hello_inventory_check(tmp_path: Path, counter: Any, nshost: NetnsHost,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The console can show and check a remote host's containers through the agent."""
    from ctconsole.agent.connect import connect
    from ctconsole.proto import agent_pb2

    for k, v in ctenv(tmp_path).items():
        if k.startswith("CTCONSOLE_"):
            monkeypatch.setenv(k, v)
    ch, hello = connect(nshost.dest)
    try:
        assert hello.criu_version.startswith("4.") and hello.mem_track is False
        assert nshost.ns_addr in hello.addresses
        assert hello.netns_inode == nshost.netns_inode()
        inv = json.loads(ch.call("inventory", agent_pb2.InventoryRequest(), timeout=120).json)
        assert isinstance(inv, list)
        chk = ch.call("check", agent_pb2.CheckRequest(ref=f"tree:{counter.pid}"), timeout=120)
        assert chk.verdict in ("feasible", "no-known-blockers", "needs-rules", "infeasible") and json.loads(chk.json)
    finally:
        ch.close()


def test_cgroups_the_tree_does_not_own_are_not_dumped(tmp_path: Path, counter: Any, nshost: NetnsHost) -> None:
    """A tree at "/" of a hierarchy does not carry that hierarchy's cgroups: CRIU is told to dump only the
    hierarchies where the tree has a cgroup of its own, so what others made at "/" neither lengthens the
    freeze nor gets recreated on the destination (a runc migration once froze 63 s on leaked cgroups)."""
    own_h, root_h = Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup/pids")
    if not own_h.is_dir() or not root_h.is_dir():
        pytest.fail("needs the cgroup-v1 cpu and pids hierarchies")
    tag = uuid.uuid4().hex[:8]
    own, unrelated = own_h / f"ctt-own-{tag}", root_h / f"ctt-unrelated-{tag}"
    own.mkdir()
    unrelated.mkdir()
    try:
        # the tree gets a cpu cgroup of its own (as a runtime gives it), and sits at "/" in pids
        (own / "cgroup.procs").write_text(str(counter.pid))
        assert ":pids:/\n" in Path(f"/proc/{counter.pid}/cgroup").read_text()
        env = ctenv(tmp_path)
        rc, events, err = run_cli(["migrate", f"tree:{counter.pid}", "--to", nshost.dest, "--json"], env)
        assert rc == 0 and events and events[-1]["result"] == "migrated", (events[-1:], err)
        counter.wait_ticks(5)
        assert_continuous(counter.ticks())
        journal = tmp_path / "state" / "journal"
        opts = [json.loads(x) for f in journal.glob("*.jsonl") for x in f.read_text().splitlines()
                if '"options"' in x]
        dumped = opts[-1]["dump"].get("cgroup_dump_controller", [])
        assert "pids" not in dumped, dumped
        logs = "".join(f.read_text(errors="replace") for f in journal.glob("*dump*.log"))
        assert own.name in logs, "CRIU dumped the tree's own cgroup"
        assert unrelated.name not in logs, "CRIU walked a cgroup the tree does not own"
        restored = pids_running(str(counter.counter_file))
        assert [own.name in Path(f"/proc/{p}/cgroup").read_text() for p in restored] == [True], restored
    finally:
        for pid in (own / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                (own_h / "cgroup.procs").write_text(pid)
        own.rmdir()
        unrelated.rmdir()
