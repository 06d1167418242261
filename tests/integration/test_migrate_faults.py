"""Fault injection: whatever breaks, the workload ends up running exactly once, no counter value lost.

Faults: the agent is killed during the image transfer; the destination cannot
restore (its bridge is missing); ctconsole itself is SIGKILLed mid-migration and
the next ``ctconsole history`` recovers. Each runs against both modes: a
counter in the host pid namespace (sequential: the source is released before
the restore, so rollback restores it here from the kept images) and a
namespaced container (handover: CRIU resumes the frozen source).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import support_hosts
from tests.support import assert_continuous
from tests.support_hosts import (
    CTCONSOLE,
    ROOT,
    NetnsHost,
    NsContainer,
    container_inits,
    ctenv,
    make_netns_host,
    pids_running,
    remove_netns_host,
    run_cli,
    sh,
    veth_rules,
    wait_journal,
)

nshost, counter, nsct = support_hosts.nshost, support_hosts.counter, support_hosts.nsct  # fixtures


@pytest.fixture
def bare_host(needs_root: None) -> Iterator[NetnsHost]:
    h = make_netns_host(bridge=False)
    yield h
    remove_netns_host(h)


def start_cli(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([*CTCONSOLE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=ROOT, start_new_session=True)


def once_counter(w: Any) -> None:
    w.wait_ticks(5, timeout=20)
    assert len(pids_running(str(w.counter_file))) == 1, pids_running(str(w.counter_file))
    assert_continuous(w.ticks())


def once_container(c: NsContainer) -> None:
    c.wait_ticks(5, timeout=20)
    inits = container_inits(c)
    assert len(inits) == 1, inits
    assert_continuous(c.ticks())
    # no CRIU network lock left behind in whichever copy survived
    rules = sh("nsenter", "-t", str(inits[0]), "-n", "iptables", "-S").stdout
    assert "CRIU" not in rules, rules


def _target(kind: str, request: pytest.FixtureRequest) -> tuple[Any, list[str], Any]:
    tmp = request.getfixturevalue("tmp_path")
    host = request.getfixturevalue("nshost")
    if kind == "counter":
        w = request.getfixturevalue("counter")
        return w, [f"tree:{w.pid}", "--to", host.dest], once_counter
    c = request.getfixturevalue("nsct")
    rules = veth_rules(tmp, host.bridge, "cttr" + uuid.uuid4().hex[:6])
    return c, [f"tree:{c.init_pid}", "--to", host.dest, "--rules", str(rules)], once_container


@pytest.mark.parametrize("kind", ["counter", "container"])
def test_agent_killed_during_transfer(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    target, args, check = _target(kind, request)
    env = ctenv(tmp_path, CTCONSOLE_FAULT="pause:transfer:20")
    p = start_cli(["migrate", *args, "--json"], env)
    agent = wait_journal(tmp_path, "agent")["agent_pid"]
    wait_journal(tmp_path, "phase", "phase", "transfer")
    os.killpg(agent, signal.SIGKILL)  # the agent runs in its own session: `ip netns exec` + python
    out, err = p.communicate(timeout=120)
    assert p.returncode == 1, (out, err)
    last = [ln for ln in out.splitlines() if ln.strip()][-1]
    assert '"rolled-back"' in last, last
    check(target)


def test_destination_without_bridge_is_refused_before_freezing(
    tmp_path: Path, nsct: NsContainer, bare_host: NetnsHost
) -> None:
    rules = veth_rules(tmp_path, "cttbr0", "cttr" + uuid.uuid4().hex[:6])
    rc, events, _ = run_cli(["migrate", f"tree:{nsct.init_pid}", "--to", bare_host.dest, "--rules", str(rules),
                             "--json"], ctenv(tmp_path))
    assert rc == 1 and events[-1]["result"] == "failed"
    assert any("bridge" in e for e in events[-1]["details"]["errors"]), events[-1]
    assert not any(e.get("phase") == "perform" for e in events)
    once_container(nsct)


def test_destination_restore_fails_rolls_back(tmp_path: Path, nsct: NsContainer, bare_host: NetnsHost) -> None:
    rules = veth_rules(tmp_path, "cttbr0", "cttr" + uuid.uuid4().hex[:6])
    env = ctenv(tmp_path, CTCONSOLE_FAULT="skip:preflight")
    rc, events, _ = run_cli(["migrate", f"tree:{nsct.init_pid}", "--to", bare_host.dest, "--rules", str(rules),
                             "--json"], env)
    assert rc == 1 and events[-1]["result"] == "rolled-back", events[-1]
    assert any("RESTORE" in e or "restore" in e for e in events[-1]["details"]["errors"])
    once_container(nsct)
    assert bare_host.pids() == [], "destination not cleaned"
    assert not list((tmp_path / "state" / "images").glob("*"))


@pytest.mark.parametrize(("kind", "point"), [("counter", "transfer"), ("container", "transfer"),
                                             ("counter", "ack"), ("container", "ack")])
def test_ctconsole_killed_then_recovered(kind: str, point: str, tmp_path: Path,
                                         request: pytest.FixtureRequest) -> None:
    """``ack``: killed after the destination restored but before post-dump was answered, the worst
    moment (both copies may run until the next ctconsole start recovers)."""
    target, args, check = _target(kind, request)
    env = ctenv(tmp_path, CTCONSOLE_FAULT=f"pause:{point}:60")
    p = start_cli(["migrate", *args, "--json"], env)
    if point == "ack":
        wait_journal(tmp_path, "restored")
        time.sleep(0.3)
    else:
        wait_journal(tmp_path, "phase", "phase", point)
    os.killpg(p.pid, signal.SIGKILL)  # ctconsole and its CRIU; the agent has its own session
    p.communicate(timeout=30)
    time.sleep(0.5)
    rc, out, err = run_cli(["history", "--json"], ctenv(tmp_path))
    assert rc == 0, err
    recovered = [o for o in out if "recovered" in o]
    assert recovered, out
    assert out[-1]["result"] in ("rolled-back", "migrated"), out[-1]
    check(target)


@pytest.mark.parametrize("kind", ["counter", "container"])
def test_ctrl_c_rolls_back(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    target, args, check = _target(kind, request)
    env = ctenv(tmp_path, CTCONSOLE_FAULT="pause:transfer:60")
    p = start_cli(["migrate", *args, "--json"], env)
    wait_journal(tmp_path, "phase", "phase", "transfer")
    os.kill(p.pid, signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 1, (out, err)
    last = [ln for ln in out.splitlines() if ln.strip()][-1]
    assert '"rolled-back"' in last and "aborted" in last, last
    check(target)
    assert not list((tmp_path / "state" / "images").glob("*")), "destination images left behind"


def test_one_migration_per_container(tmp_path: Path, counter: Any, nshost: NetnsHost) -> None:
    env = ctenv(tmp_path, CTCONSOLE_FAULT="pause:prepare:20")
    p = start_cli(["migrate", f"tree:{counter.pid}", "--to", nshost.dest, "--json"], env)
    wait_journal(tmp_path, "phase", "phase", "prepare")
    rc, events, _ = run_cli(["migrate", f"tree:{counter.pid}", "--to", nshost.dest, "--json"], ctenv(tmp_path))
    assert rc == 1 and "another migration" in events[-1]["message"]
    os.kill(p.pid, signal.SIGINT)
    p.communicate(timeout=60)
    assert p.returncode == 1
    once_counter(counter)


def test_post_copy_transfer_failure_resumes_source(tmp_path: Path, nsct: NsContainer, nshost: NetnsHost) -> None:
    """Force post-copy past its self-test: the lazy transfer fails here (page-pipe tee EPERM).

    CRIU itself resumes the source when the lazy transfer fails after post-dump
    (but leaves its network lock: the engine removes it); the destination's
    restore hangs and is bounded by the restore timeout, then killed.
    """
    rules = veth_rules(tmp_path, nshost.bridge, "cttr" + uuid.uuid4().hex[:6])
    env = ctenv(tmp_path, CTCONSOLE_FAULT="skip:selftest")
    rc, events, err = run_cli(["migrate", f"tree:{nsct.init_pid}", "--to", nshost.dest, "--rules", str(rules),
                               "--strategy", "post-copy", "--timeout", "20", "--json"], env, timeout=300)
    assert rc == 1 and events[-1]["result"] == "rolled-back", (events[-1:], err[-1000:])
    assert events[-1]["details"]["strategy"] == "post-copy"
    once_container(nsct)
    assert nshost.pids() == [], "destination not cleaned"
