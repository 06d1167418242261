"""Pre-copy with real CRIU on a host without soft-dirty tracking (this one: FEATURE_CHECK mem_track=false).

The rounds cannot succeed here, so what is checked is what must hold on any
host: ``--strategy pre-copy`` is refused before anything is frozen, and when
the gate is bypassed (``CTCONSOLE_FAULT=skip:memtrack``, honoured for tests
only) the engine really runs PRE_DUMP round 1 on ``criu swrk``; CRIU refuses
it with its own soft-dirty error, the migration rolls back, the workload keeps
running exactly once with a continuous counter, and nothing is left on the
destination. Successful rounds need a host with soft-dirty tracking (the
test skips its success branch here; see docs/migration.md).
"""

from __future__ import annotations

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
    journal_records,
    pids_running,
    run_cli,
    veth_rules,
)

pytestmark = [pytest.mark.root, pytest.mark.criu]

counter, nshost, nsct = support_hosts.counter, support_hosts.nshost, support_hosts.nsct  # fixtures


def _mem_track() -> bool:
    from ctconsole.criu.client import CriuClient

    return CriuClient(timeout=30).feature_check().mem_track


def test_pre_copy_refused_before_freezing(tmp_path: Path, counter: Any, nshost: NetnsHost) -> None:
    if _mem_track():
        pytest.skip("this host tracks dirty memory: pre-copy is not refused here")
    env = ctenv(tmp_path)
    before = counter.last()
    rc, events, err = run_cli(["migrate", f"tree:{counter.pid}", "--to", nshost.dest, "--strategy", "pre-copy",
                               "--precopy-max-rounds", "3", "--json"], env)
    assert rc != 0 and events, err
    done = events[-1]
    assert done["result"] == "failed" and done["details"]["source"] == "untouched", done
    assert "soft-dirty" in done["message"] and "mem_track=false" in done["message"], done
    assert not any(e.get("phase") == "perform" for e in events), "something was frozen"
    assert not any(e["event"] == "round_progress" for e in events)
    assert not any(r.get("kind") == "round" for r in journal_records(tmp_path))
    counter.wait_ticks(3)
    assert counter.last() > before
    assert pids_running(str(counter.counter_file)) == [counter.pid]
    assert_continuous(counter.ticks())


def _check_forced_failure(tmp_path: Path, events: list[dict[str, Any]], err: str, rc: int,
                          page_server: bool) -> None:
    assert rc != 0 and events, err
    done = events[-1]
    assert done["result"] == "rolled-back", done
    assert done["details"]["source"] == "running", done
    assert done["details"]["strategy"] == "pre-copy"
    text = "\n".join([done["message"], *done["details"]["errors"]])
    # CRIU's own words: its option check refuses track_mem without soft-dirty (criu/config.c) before it
    # freezes anything; without track_mem the pre-dump would hit BUG_ON(!kdat.has_dirty_track) in mem.c
    assert "CRIU PRE_DUMP failed" in text, text
    assert "Tracking memory is not available" in text or "criu/mem.c" in text, text
    assert "soft-dirty" in text, text
    # the round really was asked for, as planned: round 1 in pre/1 with track_mem and no parent
    recs = journal_records(tmp_path)
    rounds = [r for r in recs if r.get("kind") == "round"]
    assert len(rounds) == 1 and rounds[0]["round"] == 1, rounds
    assert rounds[0]["options"]["track_mem"] is True and "parent_img" not in rounds[0]["options"]
    assert ("ps" in rounds[0]["options"]) is page_server, rounds[0]
    assert not any(e["event"] == "round_progress" for e in events)  # no round completed
    # the CRIU log of the failed round is kept next to the journal
    logs = list((tmp_path / "state" / "journal").glob("*.round1.pre-dump.log"))
    assert logs and "Tracking memory is not available" in logs[0].read_text(errors="replace")
    # nothing left on either side
    assert not list((tmp_path / "state" / "images").glob("*")), "images left on the destination"
    assert not list((tmp_path / "state" / "work").glob("*")), "images left on the source"


def test_forced_pre_copy_runs_real_pre_dump_and_rolls_back(tmp_path: Path, counter: Any, nshost: NetnsHost) -> None:
    """Sequential mode (host pid ns): round 1's pages would go over the agent channel."""
    if _mem_track():
        pytest.skip("this host tracks dirty memory; the forced failure path needs a host without it")
    env = ctenv(tmp_path, CTCONSOLE_FAULT="skip:memtrack")
    rc, events, err = run_cli(["migrate", f"tree:{counter.pid}", "--to", nshost.dest, "--strategy", "pre-copy",
                               "--json"], env)
    _check_forced_failure(tmp_path, events, err, rc, page_server=False)
    assert events[-1]["details"]["mode"] == "sequential"
    counter.wait_ticks(5)
    assert pids_running(str(counter.counter_file)) == [counter.pid]
    assert_continuous(counter.ticks())
    assert not nshost.pids(), nshost.pids()


def test_forced_pre_copy_handover_page_server_rolls_back(tmp_path: Path, nsct: NsContainer,
                                                         nshost: NetnsHost) -> None:
    """Handover mode (own pid ns): round 1 streams to a page server the agent started in images/pre/1."""
    if _mem_track():
        pytest.skip("this host tracks dirty memory; the forced failure path needs a host without it")
    env = ctenv(tmp_path, CTCONSOLE_FAULT="skip:memtrack")
    rules = veth_rules(tmp_path, nshost.bridge, "cttr" + uuid.uuid4().hex[:6])
    # --copy-images: a netns host shares our filesystem, so by default the images would be linked
    # there and no page server would run; this test is about the page-server path (remote hosts)
    rc, events, err = run_cli(["migrate", f"tree:{nsct.init_pid}", "--to", nshost.dest, "--rules", str(rules),
                               "--strategy", "pre-copy", "--copy-images", "--json"], env)
    _check_forced_failure(tmp_path, events, err, rc, page_server=True)
    assert events[-1]["details"]["mode"] == "handover"
    nsct.wait_ticks(5)
    assert container_inits(nsct) == [nsct.init_pid]
    assert_continuous(nsct.ticks())
    # the round's page server was stopped and the agent is gone: nothing of ours runs there
    assert not nshost.pids(), nshost.pids()


def test_agent_round_page_servers_with_real_criu(tmp_path: Path, criu_bin: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The destination half of pre-copy with real CRIU page servers, one per round.

    PRE_DUMP cannot run here, so round 1 is a DUMP with ``leave_running``
    streaming to round 1's page server (the page-server protocol a PRE_DUMP
    with ``ps`` uses). Checked with real CRIU: the agent waits for round 1's
    server before starting round 2's (its pages are on disk), and round 2's
    server follows the agent-made ``parent -> ../1`` link: it tells the
    dumping CRIU it has a parent, which makes that CRIU read the *source's*
    parent round's inventory. A DUMP's inventory lacks the pre-dump uptime,
    so CRIU refuses it ("Pid-reuse detection failed") - which is why a DUMP
    cannot stand in for a PRE_DUMP beyond round 1, and why the source keeps
    the same pre/k layout as the destination. Then an abort with a round's
    server running leaves nothing behind, and the workload never noticed.
    """
    import time

    from ctconsole.criu.client import CriuClient, CriuError
    from ctconsole.migrate import transport
    from ctconsole.migrate.precopy import precopy_round_dir, precopy_round_opts
    from ctconsole.process import state as proc_state
    from ctconsole.proto import agent_pb2
    from tests.support import spawn_counter
    from tests.unit.test_agent import Conn

    w = spawn_counter(tmp_path, name=f"ctr-{uuid.uuid4().hex[:6]}")
    conn = Conn(tmp_path, monkeypatch)
    client = CriuClient(timeout=60)
    link: transport.PageLink | None = None
    try:
        d = Path(conn.call("prepare", agent_pb2.PrepareRequest(migration_id="pc1")).prepare.images_dir)
        src = tmp_path / "src"
        servers = []
        for k in (1, 2):
            r = conn.call("round", agent_pb2.RoundRequest(round=k, page_server=True,
                                                          page_server_address="127.0.0.1"))
            assert r.WhichOneof("body") == "round", r
            assert Path(r.round.images_dir) == precopy_round_dir(d, k)
            # one page channel for every round: round 1 names the socket, later rounds reuse it
            assert bool(r.round.page_socket) == (k == 1)
            if k == 1:
                link = transport.open_page_link(r.round.page_socket)
            assert link is not None
            local = precopy_round_dir(src, k)
            local.mkdir(parents=True)
            opts = precopy_round_opts({"pid": w.pid, "leave_running": True}, k, {"fd": link.fd})
            del opts["track_mem"]  # refused here; without it CRIU writes every page
            if k == 1:
                client.dump(opts, local, ps_fd=link.fd)
                assert conn.agent.pages is not None
                servers.append(conn.agent.pages.pid)
                continue
            servers.append(r.round.page_server_pid)
            # round 1's server was waited for before round 2's started: its pages are on disk
            assert proc_state(servers[0]) == ""
            names = {p.name for p in precopy_round_dir(d, 1).iterdir()}
            assert any(n.startswith("pages-") for n in names) and any(n.startswith("pagemap-") for n in names)
            assert os.readlink(precopy_round_dir(d, 2) / "parent") == "../1"
            with pytest.raises(CriuError) as ei:
                client.dump(opts, local, ps_fd=link.fd)
            assert any("Pid-reuse detection failed" in e for e in ei.value.log_errors), ei.value.log_errors
        r = conn.call("abort", agent_pb2.AbortRequest())
        assert r.WhichOneof("body") == "abort", r
        assert not d.exists()
        end = time.monotonic() + 5
        while time.monotonic() < end and proc_state(servers[1]) not in ("", "Z"):
            time.sleep(0.05)
        assert proc_state(servers[1]) in ("", "Z"), "round 2's page server survived the abort"
        w.wait_ticks(5)
        assert pids_running(str(w.counter_file)) == [w.pid]
        assert_continuous(w.ticks())
    finally:
        if link is not None:
            link.close()
        conn.close()
        w.kill()
