"""Recovery after a crash of ctconsole itself: finish what a dead console's journal left open.

Why apart from the engine and the journal: the journal only records, the
engine only runs live migrations; recovery reads a journal, asks the source
host and the destination agent what is true now, and finishes the job the
same way a live rollback would (the source runs exactly once). It used to sit
half in the journal and half in the engine, each importing the other.
Entry point: :func:`recover` (``ctconsole migrate --recover`` and every
``ctconsole migrate`` start); :func:`recover_one` does one journal.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ctconsole import process
from ctconsole.agent.channel import AgentError, ChannelError
from ctconsole.agent.connect import connect
from ctconsole.config import state_dir
from ctconsole.errors import CtError
from ctconsole.migrate.journal import Journal, unfinished
from ctconsole.migrate.netns import clear_criu_netlock
from ctconsole.migrate.restoreenv import RestoreEnv, restore_here
from ctconsole.proto import agent_pb2


def recover(say: Callable[[str], None] | None = None) -> list[str]:
    """Resolve every migration whose ctconsole died; returns one line per journal handled.

    The rule is the same as during a live migration: the workload must end
    up running exactly once: a source that still runs wins (the destination
    is cleaned); a destination copy that runs and was restored is committed;
    a released source with kept images is restored here.
    """
    lines = []
    for p in unfinished():
        try:
            line = recover_one(Journal(p.stem, p))
        except CtError as exc:
            line = f"{p.stem}: recovery failed: {exc.message}"
        lines.append(line)
        if say:
            say(line)
    return lines


def recover_one(journal: Journal) -> str:
    """Resolve one migration whose ctconsole died (the rule of :func:`recover`)."""
    recs = journal.records()
    begin = next((r for r in recs if r.get("kind") == "begin"), {})
    plan = next((r for r in recs if r.get("kind") == "plan"), {})
    options: dict[str, Any] = next((r for r in reversed(recs) if r.get("kind") == "options"), {})
    restored = next((r for r in reversed(recs) if r.get("kind") == "restored"), None)
    released = next((r for r in recs if r.get("kind") == "source_released"), None)
    src, started = int(begin.get("source_pid", 0)), int(begin.get("source_start", 0))
    dest = str(begin.get("dest", ""))
    mid = journal.id
    # CRIU resumes a frozen source when its RPC peer vanishes; give it a moment
    end = time.monotonic() + 15
    while time.monotonic() < end and process.state(src) in ("t", "T", "D") and process.alive(src, started):
        time.sleep(0.1)
    source_alive = process.alive(src, started)
    unlocked = source_alive and clear_criu_netlock(src)

    def agent_call(field: str, msg: Any) -> Any:
        """One request to the destination; an unreachable agent stops recovery (:class:`_Unreachable`)."""
        try:
            ch, _hello = connect(dest)
        except ChannelError as exc:
            raise _Unreachable(exc.message) from exc
        try:
            return ch.call(field, msg, timeout=60)
        except AgentError:
            raise
        except ChannelError as exc:
            raise _Unreachable(exc.message) from exc
        finally:
            ch.close()

    work = state_dir() / "work" / mid
    try:
        msg, result = _decide(agent_call, mid, dest, restored, released, source_alive, work, options)
    except _Unreachable as exc:
        # what runs there is unknown: writing "end" (or cleaning up here) could lose the container or run it
        # twice; the journal stays open and the next recovery asks again
        note = f"unresolved: destination unreachable ({exc.message})"
        journal.write("unresolved", reason="destination unreachable", message=note)
        return f"{mid}: {note}"
    if unlocked:
        msg += "; removed the network lock CRIU left in the source's netns"
    journal.write("end", result=result, message=msg, recovered=True, mode=plan.get("mode"))
    shutil.rmtree(work, ignore_errors=True)
    return f"{mid}: {msg}"


class _Unreachable(CtError):
    """The destination's agent could not be reached (not: it answered with an error)."""


def _decide(agent_call: Callable[[str, Any], Any], mid: str, dest: str, restored: dict[str, Any] | None,
            released: dict[str, Any] | None, source_alive: bool, work: Path,
            options: dict[str, Any]) -> tuple[str, str]:
    """What recovery does, given the journal and what is true now: (message, result).

    Only an answer from the agent (or the agent's refusal) counts: an unreachable
    agent raises :class:`_Unreachable` out of every call, including the
    clean-ups that used to be best-effort.
    """
    if source_alive and released is None:
        with contextlib.suppress(AgentError):
            agent_call("abort", agent_pb2.AbortRequest(migration_id=mid))
        msg = "recovered: the source kept running; destination cleaned"
        result = "rolled-back"
    else:
        dest_running = False
        if restored is not None:
            with contextlib.suppress(AgentError):
                st = agent_call("status", agent_pb2.StatusRequest(migration_id=mid))
                dest_running = bool(st.running and st.pid == int(restored.get("pid", 0)))
        if dest_running:
            agent_call("commit", agent_pb2.CommitRequest(migration_id=mid))  # a refusal: recovery failed
            msg, result = f"recovered: the container runs on {dest} (pid {restored and restored['pid']})", "migrated"
        elif released is not None and (work / "images").is_dir() and not source_alive:
            with contextlib.suppress(AgentError):
                agent_call("abort", agent_pb2.AbortRequest(migration_id=mid))
            pid = restore_here(work / "images", dict(options.get("restore", {})), list(released.get("tree", [])),
                               RestoreEnv.from_journal(options))
            msg, result = f"recovered: restored here from the kept images as pid {pid}", "rolled-back"
        elif source_alive:
            with contextlib.suppress(AgentError):
                agent_call("abort", agent_pb2.AbortRequest(migration_id=mid))
            msg, result = "recovered: the source is running; destination cleaned", "rolled-back"
        else:
            msg, result = "recovery could not find the container on either side", "failed"
    return msg, result
