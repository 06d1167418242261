"""The migration state machine: Begin, Prepare, Perform, Finish, Confirm (libvirt v3 style).

Why this shape: the only safe moment to let go of the source is CRIU's
``post-dump`` notification. The source is frozen and fully dumped; answering
success makes CRIU kill it, answering failure makes CRIU resume it intact. So
the engine does the destination's work *inside* that notification:

- **handover** mode (the destination cannot clash with the source's pids: a
  different kernel, or a tree with its own pid namespace): pages stream to the
  destination's CRIU page server during the dump; in ``post-dump`` the other
  images go over the agent channel, the agent restores, the optional probe
  runs, and only then is ``post-dump`` acknowledged. Any failure first cleans
  the destination, then answers failure, and CRIU resumes the source.
- **sequential** mode (same kernel and the tree lives in the host's pid
  namespace, so the restored pids would collide with the frozen source): the
  dump is kept locally, ``post-dump`` is acknowledged after the journal says
  where the images are, the old pids are waited for, then the images go to
  the destination and are restored there. Any failure restores the tree back
  here from the kept images.

Pre-copy adds PRE_DUMP rounds before that DUMP, on the same ``criu swrk``
session, while the source still runs (:meth:`Migration._precopy`); none of
them releases anything, so the rule above is unchanged. Remap rules add fds
the agent opens just before RESTORE and VF moves it does in CRIU's
``setup-namespaces`` notify (restoreenv.py).

The run is one method per phase (:meth:`Migration._begin`, ``_prepare``,
``_perform``, ``_finish``, ``_confirm``) with a :class:`Plan` passed from one
to the next: what Begin decided (strategy, mode, destination) and Prepare
completed (page server, source netns, options). The options themselves come
from options.py (the rules compiled once, with the destination); the restore
environment from restoreenv.py; pre-copy's arithmetic from precopy.py.
Every step is written to a journal first (journal.py), so a crash of
ctconsole itself is resolved by recovery.py at the next start.
Progress goes out as plain events (events.py) through one callback.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctconsole import process
from ctconsole.agent.channel import CHUNK_SIZE, AgentChannel, AgentError, Destination, parse_destination
from ctconsole.agent.connect import connect
from ctconsole.config import private_dir, state_dir
from ctconsole.criu.client import CriuClient
from ctconsole.criu.images import ImageError, parse_stats
from ctconsole.criu.selftest import lazy_pages_works
from ctconsole.errors import CtError, UsageError
from ctconsole.inventory import resolve
from ctconsole.migrate import adopt, cgroups, storage, transport
from ctconsole.migrate import events as ev
from ctconsole.migrate.destination import bridges_needed
from ctconsole.migrate.journal import Journal, MigrationLock, new_id
from ctconsole.migrate.netns import clear_criu_netlock
from ctconsole.migrate.options import MigrationOptions, Refusal, migration_options
from ctconsole.migrate.precopy import (
    PRECOPY_DIR,
    PrecopyPolicy,
    precopy_final_opts,
    precopy_round_dir,
    precopy_round_opts,
    precopy_should_stop,
)
from ctconsole.migrate.restoreenv import RestoreEnv, restore_here
from ctconsole.model import Container
from ctconsole.proto import agent_pb2

STRATEGIES = ("auto", "stop-copy", "pre-copy", "post-copy")
Emit = Callable[[ev.Event], None]
# runtimes whose controller deletes the container's cgroup (killing its tasks) when the container stops
RUNTIMES_OWNING_CGROUPS = frozenset({"libvirt-lxc", "lxc", "nspawn"})


@dataclass
class MigrationRequest:
    """Everything the operator chose (CLI flags or TUI form)."""

    ref: str
    dest: str
    strategy: str = "auto"
    rules: str | None = None
    probe: str | None = None
    policy: PrecopyPolicy = field(default_factory=PrecopyPolicy)
    timeout: float = 120.0
    preflight: bool = True
    #: stream pages to the destination's CRIU page server during the dump (handover mode);
    #: False dumps locally and sends every image over the agent channel inside post-dump
    page_server: bool = True
    #: when the destination agent shares this filesystem (``local``, a ``netns:`` lab host), dump
    #: locally and hard-link the images into its images dir: no bytes move and no page server runs
    #: (``page_server`` is then moot). False: always send the bytes (benchmarks, tests)
    shared_images: bool = True
    #: the container's root and carried bind-mount sources (migrate/storage.py): ``auto`` copies what
    #: the destination does not already have, ``shared`` never copies (it must be there), ``copy`` always
    storage: str = "auto"


@dataclass
class Plan:
    """What Begin decided and Prepare completed, handed from phase to phase.

    ``dump``/``restore`` are the options from options.py, completed here with
    what only the destination can tell (page server, cgroup root, lazy pages).
    """

    dest: Destination
    strategy: str
    mode: str  # handover | sequential (see the module doc)
    images: Path
    dump: dict[str, Any]
    restore: dict[str, Any]
    addresses: list[str] = field(default_factory=list)  # the destination's global addresses (post-copy)
    probe: list[str] = field(default_factory=list)
    use_ps: bool = False  # pages stream to the destination's page server

    @property
    def precopy(self) -> bool:
        return self.strategy == "pre-copy"

    @property
    def postcopy(self) -> bool:
        return self.strategy == "post-copy"


def _fault(point: str, abort: Callable[[], bool] = lambda: False) -> None:
    """Test hook: ``CTCONSOLE_FAULT=pause:POINT:SECONDS`` or ``fail:POINT`` (fault-injection tests)."""
    spec = os.environ.get("CTCONSOLE_FAULT", "")
    for item in spec.split(","):
        parts = item.split(":")
        if len(parts) >= 2 and parts[1] == point:
            if parts[0] == "pause":
                end = time.monotonic() + float(parts[2] if len(parts) > 2 else 30)
                while time.monotonic() < end and not abort():
                    time.sleep(0.05)
            elif parts[0] == "fail":
                raise CtError(f"injected failure at {point}")


class Migration:
    """One migration. ``run()`` drives the phases and returns the final Done event."""

    def __init__(self, req: MigrationRequest, emit: Emit | None = None) -> None:
        if req.strategy not in STRATEGIES:
            raise UsageError(f"unknown strategy '{req.strategy}'", [f"use one of {', '.join(STRATEGIES)}"])
        self.req = req
        self._emit = emit or (lambda e: None)
        self.id = new_id()
        self.journal = Journal(self.id)
        self._abort = threading.Event()
        self.channel: AgentChannel | None = None
        self.work: Path | None = None
        self.mode = ""
        self.strategy = ""
        self.container: Container | None = None
        self.source_pid = 0
        self.source_start = 0
        self.tree_pids: list[int] = []
        self.t_freeze = 0.0
        self.t_restored = 0.0
        self.restored_pid = 0
        self.restore_stats: Any = None
        self.bytes_sent = 0
        self.frozen_seconds: float | None = None
        self.source_released = False
        self.dest_restored = False
        self.committed = False  # commit was sent (at most once)
        self.commit_confirmed = False  # the destination answered the commit: only then "migrated"
        self.details: dict[str, Any] = {"id": self.id}
        self.env = RestoreEnv()  # inherited fds and setup-namespaces actions (VF moves) for the restore
        self.rounds = 0  # pre-copy rounds done
        self.cause: list[str] = []  # why the handover refused post-dump (the real reason for a rollback)
        self.helper: threading.Thread | None = None
        self.shared = False  # the agent links our images (same filesystem) instead of receiving them
        self.marks: list[tuple[str, float]] = []  # (what, monotonic time): the frozen window's timeline
        self.page_link: transport.PageLink | None = None  # our end of the page channel (the dump's ps.fd)
        self.carry_paths: list[str] = []  # bind-mount sources marked carry = true
        self.carry: storage.Plan | None = None  # what follows the container, and where the destination put it
        self.own_cgroup = ""  # the cgroup root this migration restores under (same kernel), see _own_cgroup_root

    # -- plumbing -------------------------------------------------------------------
    def emit(self, e: ev.Event) -> None:
        with contextlib.suppress(Exception):
            self._emit(e)

    def abort(self) -> None:
        """Ask for a rollback (Ctrl-C, TUI abort): honoured at the next safe point."""
        self._abort.set()

    def aborted(self) -> bool:
        return self._abort.is_set()

    def _check_abort(self) -> None:
        if self._abort.is_set():
            raise CtError("aborted by the operator")

    def phase(self, name: str, detail: str = "") -> None:
        # not fsynced: recovery never acts on a phase, and inside post-dump every fsync is downtime
        self.journal.write("phase", durable=False, phase=name, detail=detail)
        self.mark(name)
        self.emit(ev.PhaseChanged(name, detail))

    def mark(self, what: str) -> None:
        """Note a moment for the timeline (journal ``timeline``: ms since the freeze)."""
        self.marks.append((what, time.monotonic()))

    def timeline(self) -> dict[str, float]:
        """Where the frozen time went: each mark after the freeze, in ms since the freeze."""
        if not self.t_freeze:
            return {}
        out: dict[str, float] = {}
        for what, t in self.marks:
            if t >= self.t_freeze:
                key, n = what, 2
                while key in out:
                    key, n = f"{what}#{n}", n + 1
                out[key] = round((t - self.t_freeze) * 1000, 1)
        return out

    def info(self, text: str, level: str = "info") -> None:
        self.emit(ev.LogLine(level, text))

    # -- the state machine ------------------------------------------------------------
    def run(self) -> ev.Done:
        lock: MigrationLock | None = None
        done: ev.Done | None = None
        try:
            self.phase("begin", f"{self.req.ref} -> {self.req.dest}")
            self._start_agent()
            self.container = c = resolve(self.req.ref)
            lock = MigrationLock(c.id).acquire()
            self.source_pid, self.source_start = c.init_pid, process.start_time(c.init_pid)
            opts = migration_options(c, self.req.dest, self.req.rules, self.req.ref)
            self.env = opts.env
            self.carry_paths = list(opts.carry)
            self.journal.write("begin", container=c.id, name=c.name, dest=self.req.dest,
                               strategy=self.req.strategy, source_pid=self.source_pid,
                               source_start=self.source_start, lock=str(lock.path), pid=os.getpid())
            for n in opts.notes:
                self.info(n, "warning")
            done = self._run(c, opts)
        except Refusal as exc:
            done = self._finish_refused(exc.message, exc.details)
        except CtError as exc:
            done = self._finish_refused(exc.message, exc.details) if not self.t_freeze else self._rollback(exc)
        except (Exception, KeyboardInterrupt) as exc:  # a bug or Ctrl-C must still roll back, never lose
            err = CtError(f"internal error: {type(exc).__name__}: {exc}" if isinstance(exc, Exception)
                          else "interrupted")
            done = self._finish_refused(err.message, []) if not self.t_freeze else self._rollback(err)
        finally:
            if self.channel is not None:
                with contextlib.suppress(Exception):
                    self.channel.close()
            if self.work is not None:
                self._keep_logs()
                # the local images are the last copy of a released source unless we know better
                safe = done is not None and (done.result in ("migrated", "rolled-back")
                                             or done.source == "untouched")
                if safe or not self.source_released:
                    shutil.rmtree(self.work, ignore_errors=True)
            if lock is not None:
                lock.release()
        self.emit(done)
        return done

    def _run(self, c: Container, opts: MigrationOptions) -> ev.Done:
        """Begin, Prepare, Perform, Finish, Confirm; a :class:`Plan` goes from each phase to the next."""
        client = CriuClient(timeout=self.req.timeout)
        plan = self._begin(c, client, opts)
        self._prepare(plan)
        result = self._perform(c, client, plan)
        self._finish(plan, result)
        return self._confirm(c, plan)

    def _start_agent(self) -> None:
        """Start the destination's agent first; the hello follows in :meth:`_begin`.

        Why first: over ssh, the connection and the agent's start-up take about
        0.3-0.5 s, all of it waiting; resolving the container, compiling the
        options and asking our CRIU for its features and ``cpuinfo.img`` (which
        the hello carries) take 0.1-0.2 s here. Run one after the other they
        were the biggest fixed cost of a small migration (issue #13). A
        destination that cannot be started here is left to :func:`connect`,
        which starts it again and explains the failure.
        """
        try:
            dest = parse_destination(self.req.dest)
        except CtError:
            return  # _begin reports it
        self.work = private_dir(state_dir() / "work" / self.id)
        ch = AgentChannel(dest, log_dir=self.work)
        ch.should_abort = self.aborted
        try:
            ch.start()
        except CtError:
            return
        self.channel = ch  # run() closes it whatever happens next (bye, or EOF: the agent exits)

    def _begin(self, c: Container, client: CriuClient, opts: MigrationOptions) -> Plan:
        """Begin: reach the destination, learn what it can do, choose the strategy and the mode."""
        local = client.feature_check()
        self.work = private_dir(state_dir() / "work" / self.id)
        cpu_dir = private_dir(self.work / "cpu")
        cpuinfo = b""
        with contextlib.suppress(CtError, OSError):
            cpuinfo = client.cpuinfo_dump(cpu_dir).read_bytes()
        dest = parse_destination(self.req.dest)
        early, self.channel = self.channel, None  # started by _start_agent (None: connect starts it)
        self.channel, hello = connect(dest, log_dir=self.work, cpuinfo=cpuinfo, should_abort=self.aborted,
                                      started=early)
        self.journal.write("agent", agent_pid=self.channel.pid)
        self.details["destination"] = {"host": hello.hostname, "criu": hello.criu_version, "kernel": hello.kernel}
        if not hello.criu_version:
            raise Refusal(f"CRIU is not usable on {dest}")
        if not hello.cpuinfo_ok:
            raise Refusal(f"the destination CPU is not compatible: {hello.cpuinfo_detail}")
        self.strategy = self._choose_strategy(local, hello)
        same_kernel = (hello.boot_id == _boot_id() and hello.pidns_inode == os.stat("/proc/self/ns/pid").st_ino)
        self.mode = "handover" if (not same_kernel or c.has_own("pid")) else "sequential"
        if hello.boot_id == _boot_id():
            self._own_cgroup_root(c, opts.restore)
        if "cgroup_dump_controller" not in opts.dump:
            # only the hierarchies where the container has a cgroup of its own: where it sits at "/",
            # CRIU would dump (freeze time) and recreate on the destination this host's whole tree
            opts.dump["cgroup_dump_controller"] = dump_controllers(p.pid for p in c.processes)
        if self.strategy == "post-copy" and self.mode != "handover":
            raise Refusal("post-copy cannot restore while the source keeps its pids (same kernel, shared pid "
                          "namespace): the source stays frozen until every page has moved",
                          ["use --strategy stop-copy"])
        self.details.update(strategy=self.strategy, mode=self.mode)
        self.journal.write("plan", strategy=self.strategy, mode=self.mode, dest=str(dest))
        self.info(f"strategy {self.strategy}, {self.mode} mode"
                  + (" (same kernel, shared pid namespace: restore after the source is released)"
                     if self.mode == "sequential" else ""))
        return Plan(dest=dest, strategy=self.strategy, mode=self.mode, images=private_dir(self.work / "images"),
                    dump=opts.dump, restore=opts.restore, addresses=list(hello.addresses),
                    probe=[self.req.probe] if self.req.probe else [])  # a name: the argv is the destination's

    def _prepare(self, plan: Plan) -> None:
        """Prepare: destination checks, its images dir, the page server (or linked images), post-copy's server."""
        assert self.channel is not None
        ch, dest = self.channel, plan.dest
        self.phase("prepare", str(dest))
        # storage that follows the container: the destination decides what it already has (dry run)
        items = self._carry_items(plan)
        carried = set()
        if items:
            dry = storage.ask(ch, self.id, items, self.req.storage, dry_run=True)
            if dry.problems:
                raise Refusal("the container's storage cannot follow it", dry.problems)
            carried = {it.path for it, _ in dry.carried}
        if self.req.preflight and os.environ.get("CTCONSOLE_FAULT", "").find("skip:preflight") < 0:
            root = plan.restore.get("root")
            paths = [root] if root and root not in carried else []
            pf = ch.call("preflight", agent_pb2.PreflightRequest(
                bridges=bridges_needed(plan.restore), paths=paths), timeout=60)
            if not pf.ok:
                raise Refusal("the destination is not ready", list(pf.problems))
        plan.use_ps = self.mode == "handover" and self.req.page_server and not plan.postcopy
        token = self._share_token(plan.restore)
        # pre-copy: one page server per round (and one for the final dump), asked for round by round
        prep = ch.call("prepare", agent_pb2.PrepareRequest(
            migration_id=self.id, page_server=plan.use_ps and not plan.precopy,
            shared_token=token, lazy_pages=plan.postcopy), timeout=60)
        if prep.shared_fs:
            # same filesystem: a local dump and hard links beat any transfer (CRIU's page server
            # over TCP was the slowest path here); the agent started no page server
            self.shared, plan.use_ps = True, False
            self.info(f"{dest} shares this filesystem: the images are linked there, not copied")
        if plan.use_ps and not plan.precopy:
            _fault("page-link", self.aborted)  # tests: the destination's page socket is listening now
            self._open_page_link(prep.page_socket, plan)
        if items:
            self._carry(items, plan)
        # the destination's policy (agent/policy.py) on this very restore (with the carried paths),
        # before anything is frozen
        hp = ch.call("host_probe", agent_pb2.HostProbeRequest(
            restore_options_json=json.dumps(plan.restore), inherit=self.env.inherit_msgs(),
            setup_ns=self.env.setup_ns_msgs(), probe_name=plan.probe[0] if plan.probe else ""), timeout=60)
        if hp.refusals:
            raise Refusal(f"the destination's policy refuses this migration: {hp.refusals[0].message}",
                          [r.message for r in hp.refusals[1:]])
        # the page channel is a unix socket (post-copy's lazy pages too): reached from any netns
        if plan.postcopy:
            # the lazy dump serves pages on our end of the page channel, the destination's lazy-pages
            # daemon asks on its end: nothing listens for the container's memory (issue #10)
            self._open_page_link(prep.page_socket, plan)
            plan.dump["lazy_pages"] = True
            self.info("post-copy: the destination's lazy-pages daemon asks for pages over the page channel")
        self.journal.write("options", dump=plan.dump, restore=plan.restore, inherit=self.env.inherit,
                           setup_ns=self.env.setup_ns, images=str(plan.images))
        self._check_abort()
        _fault("prepare", self.aborted)

    def _perform(self, c: Container, client: CriuClient, plan: Plan) -> Any:
        """Perform: freeze and dump; the handover happens inside CRIU's post-dump notify. Returns CRIU's result."""
        self.phase("perform", f"{self.strategy}: dumping pid {c.init_pid}")
        images, restore_opts, probe, postcopy = plan.images, plan.restore, plan.probe, plan.postcopy

        def on_notify(note: Any) -> bool:
            if note.script == "pre-dump":
                self.t_freeze = time.monotonic()
                return True
            if note.script != "post-dump":
                return True
            self.t_freeze = self.t_freeze or time.monotonic()
            self.mark("post-dump")
            self.tree_pids = process.descendants(c.init_pid)
            if postcopy:
                return self._start_postcopy(images, restore_opts)
            if self.mode == "handover":
                return self._handover(images, restore_opts, probe)
            # sequential: release the source only once the journal knows where the images are
            self.journal.write("source_released", images=str(images), tree=self.tree_pids)
            self.source_released = True
            return True

        # mark the freeze start just before the request: "pre-dump" comes before freezing
        self.t_freeze = time.monotonic()
        result: Any
        try:
            if plan.precopy:
                result = self._precopy(client, plan, on_notify)
            else:
                result = client.dump(plan.dump, images, on_notify=on_notify, timeout=self.req.timeout,
                                     ps_fd=self.page_link.fd if self.page_link else None)
        except CtError as exc:
            self._close_page_link()
            if postcopy:
                self._join_postcopy()
                if self.cause:
                    exc.details = [*self.cause, *exc.details]
                raise CtError("post-copy failed; CRIU resumed the source: " + exc.message, exc.details) from exc
            if self.mode == "handover" and self.dest_restored and process.exited(self.source_pid, self.source_start):
                # post-dump was acknowledged and the source is gone: the destination copy is the container
                self.info(f"CRIU reported an error after the handover: {exc.message}", "warning")
                result = None
            else:
                raise
        self._close_page_link()
        if postcopy:
            self._join_postcopy()
            if not self.dest_restored:
                raise CtError("post-copy: CRIU finished but the destination never reported the restore",
                              self.cause)
        self.mark("dump-returned")
        if self.mode == "handover":
            self.journal.write("acked", durable=False)
            self.source_released = True
            if not postcopy:
                self._commit(probe, postcopy)  # the held copy waits: commit before any bookkeeping
        return result

    def _finish(self, plan: Plan, result: Any) -> None:
        """Finish: account for the dump, restore now in sequential mode, commit the destination's copy."""
        if result is not None and result.stats is not None:
            st = result.stats
            self.frozen_seconds = st.frozen_time_us / 1e6
            self.journal.write("dump_stats", durable=False, **st.__dict__)
            self.emit(ev.FinalDump(self.rounds, st.pages_scanned, st.pages_written, st.pages_skipped_parent))
            self.emit(ev.FrozenTime(self.frozen_seconds))
            copied = st.pages_written * 4096 if plan.use_ps else 0
            if plan.postcopy:
                copied += st.pages_lazy * 4096
                self.details["pages_lazy"] = st.pages_lazy
                self.info(f"post-copy: {st.pages_lazy} pages were faulted in lazily on the destination")
            self.bytes_sent += copied
            if copied:  # pages CRIU wrote to the destination's page server (images sent are counted there)
                self.emit(ev.Transfer("copied", copied, copied))
        if self.mode == "sequential":
            self._sequential_restore(plan.images, plan.restore, plan.probe)
        if not self.committed:
            self._commit(plan.probe, plan.postcopy)
        self.phase("finish", f"restored pid {self.restored_pid} on {plan.dest}")

    def _confirm(self, c: Container, plan: Plan) -> ev.Done:
        """Confirm: the timeline, the downtime, and the journal's end record."""
        self.phase("confirm")
        downtime = (self.t_restored - self.t_freeze) if self.t_restored and self.t_freeze else None
        if downtime is not None:
            self.emit(ev.Downtime(downtime))
        self.details["timeline"] = tl = self.timeline()
        self.journal.write("timeline", durable=False, ms=tl, shared=self.shared)
        self.details.update(restored_pid=self.restored_pid, downtime=downtime, frozen=self.frozen_seconds,
                            bytes=self.bytes_sent, source="released")
        msg = f"{c.name} now runs on {plan.dest} as pid {self.restored_pid}"
        self.journal.write("end", result="migrated", message=msg, downtime=downtime, frozen=self.frozen_seconds)
        return self._done("migrated", msg, "released")

    #: CRIU log lines that explain a failure but are not logged as "Error (...)"
    HIDDEN_CAUSES = ("Can't connect to server", "The page server doesn't answer", "Connection refused")

    def _hidden_causes(self) -> list[str]:
        if self.work is None:
            return []
        text = ""
        # the final dump's log, and the pre-copy rounds' (a round reaches its own page server)
        for log in [self.work / "images" / "dump.log",
                    *sorted((self.work / "images").glob(f"{PRECOPY_DIR}/*/pre-dump.log"))]:
            with contextlib.suppress(OSError):
                text += log.read_text(errors="replace")
        out = [ln.strip() for ln in text.splitlines() if any(c in ln for c in self.HIDDEN_CAUSES)][:3]
        if any("connect to server" in ln for ln in out):
            out.append("  -> the dumping CRIU lost its page channel to the destination's page server "
                       "(the SSH connection or the destination's agent went away; --no-page-server "
                       "sends the pages over the agent channel instead)")
        return out

    def _kept_log_path(self, line: str) -> str:
        """'full CRIU log: WORK/images/dump.log' -> where _keep_logs() puts it."""
        if self.work is not None and line.startswith("full CRIU log: ") and str(self.work) in line:
            return f"full CRIU log: {self.journal.path.with_name(self._log_name(Path(line.split(': ', 1)[1])))}"
        return line

    def _log_name(self, log: Path) -> str:
        """ID.dump.log for the final dump, ID.round2.pre-dump.log for a pre-copy round's log."""
        assert self.work is not None
        rel = log.relative_to(self.work / "images") if log.is_relative_to(self.work / "images") else Path(log.name)
        if len(rel.parts) == 3 and rel.parts[0] == PRECOPY_DIR:
            return f"{self.id}.round{rel.parts[1]}.{log.name}"
        return f"{self.id}.{log.name}"

    def _keep_logs(self) -> None:
        """Keep CRIU's logs next to the journal (the work dir goes; error messages point here)."""
        if self.work is None or not (self.work / "images").is_dir():
            return
        logs = [*(self.work / "images").glob("*.log"), *(self.work / "images").glob(f"{PRECOPY_DIR}/*/*.log")]
        for log in logs:
            with contextlib.suppress(OSError):
                shutil.copy2(log, self.journal.path.with_name(self._log_name(log)))

    def _finish_refused(self, message: str, details: list[str]) -> ev.Done:
        if not any(r.get("kind") == "begin" for r in self.journal.records()):
            # refused before the container was even resolved: still say what was asked
            self.journal.write("begin", container=self.req.ref, dest=self.req.dest, strategy=self.req.strategy,
                               pid=os.getpid())
        if self.channel is not None:
            with contextlib.suppress(CtError):
                self.channel.call("abort", agent_pb2.AbortRequest(), timeout=30)
        self.journal.write("error", message=message, details=details)
        self.journal.write("end", result="failed", message=message)
        return self._done("failed", message, "untouched", details)

    def _commit(self, probe: list[str], postcopy: bool) -> None:
        """Finish: the destination keeps the tree (a held copy gets SIGCONT now)."""
        assert self.channel is not None
        self.committed = True
        try:
            facts = adopt.gather(self.container).to_json() if self.container is not None else ""
            note = self.channel.call("commit", agent_pb2.CommitRequest(runtime_facts=facts), timeout=150)
        except CtError as exc:
            # never "migrated" without the destination's word: a held copy there is still stopped, and
            # only its agent can continue it (recovery asks again: the journal stays open)
            self.journal.write("commit_unconfirmed", pid=self.restored_pid, error=exc.message)
            raise CtError(f"the destination did not confirm the commit: {exc.message}", exc.details) from exc
        self.commit_confirmed = True
        if not probe and not postcopy:
            self.t_restored = time.monotonic()  # the held copy runs from here on
        self.mark("committed")
        self.journal.write("committed", pid=self.restored_pid, note=note.journal_note, adoption=note.adoption)

    def _share_token(self, restore_opts: dict[str, Any]) -> str:
        """The token that lets a same-filesystem agent link our images (agent._open_shared); "" = never link.

        Not with ``auto_dedup`` on restore: it punches holes into the images it
        restored, which through hard links would be our copy, the one a
        sequential rollback restores from.
        """
        if not self.req.shared_images or restore_opts.get("auto_dedup") or self.work is None:
            return ""
        token = secrets.token_hex(24)
        fd = os.open(self.work / "share.token", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            os.write(fd, token.encode())
        finally:
            os.close(fd)
        return token

    def _own_cgroup_root(self, c: Container, restore_opts: dict[str, Any]) -> None:
        """Same kernel, so the same cgroup tree: restore under a cgroup root of ctconsole's own.

        Why: a runtime that manages its container's cgroup (libvirt_lxc, the LXC
        monitor, systemd-machined) removes it, killing what is inside, once the
        source init is gone; CRIU would restore the copy into that very cgroup
        and the migrated container would die a second later. Rules that set a
        cgroup root win.
        """
        if c.runtime not in RUNTIMES_OWNING_CGROUPS or restore_opts.get("cg_root"):
            return
        owned = [ctrls.split(",")[0] for ctrls in own_hierarchies([c.init_pid])]  # cg_root names one controller
        if not owned:
            return
        # one level below the root: CRIU creates missing parents empty, and an empty cgroup-v1
        # cpuset parent makes the child's cpuset.cpus/mems impossible to restore. The keeper removes
        # it once the tree ends, a rollback here (migrate/cgroups.py)
        path = cgroups.root_path(c.name or c.id, self.id)
        self.own_cgroup = path
        # per hierarchy, never a global root: in a hierarchy where the container sits at "/" (net_prio,
        # named ones nobody manages) CRIU dumps the whole tree below "/", and a new root would copy all
        # of it, our earlier roots included, so every migration doubled it until mkdir hit ENOSPC
        restore_opts["cg_root"] = [{"ctrl": ctrl, "path": path} for ctrl in owned]
        self.info(f"restoring under cgroup root {path}: the destination shares this kernel's cgroups, and "
                  f"{c.runtime} removes the source's cgroup (and what is in it) once the source is gone")

    # -- strategy --------------------------------------------------------------------------
    def _choose_strategy(self, local: Any, hello: Any) -> str:
        want = self.req.strategy
        mem_track = bool(local.mem_track and hello.mem_track)
        if want == "pre-copy":
            # fault-injection tests only: run the real rounds anyway, so CRIU's own refusal is exercised
            forced = "skip:memtrack" in os.environ.get("CTCONSOLE_FAULT", "")
            if not mem_track and not forced:
                where = "this host" if not local.mem_track else "the destination"
                raise Refusal(
                    f"pre-copy needs soft-dirty memory tracking, which {where} lacks "
                    "(CRIU FEATURE_CHECK mem_track=false)",
                    ["without it CRIU cannot pre-dump (track_mem is refused, PRE_DUMP aborts)",
                     "use --strategy stop-copy (or auto, which falls back to it)"])
            return "pre-copy"
        if want == "post-copy":
            if not (local.lazy_pages and hello.lazy_pages):
                raise Refusal("post-copy needs userfaultfd lazy pages (FEATURE_CHECK lazy_pages=false)")
            ok, reason = lazy_pages_works()
            forced = "skip:selftest" in os.environ.get("CTCONSOLE_FAULT", "")  # fault-injection tests only
            if not ok and not forced:
                raise Refusal("post-copy is not usable on this host: the lazy-pages self-test failed",
                              [reason, "CRIU's feature check says lazy_pages=true, but a real lazy migration "
                               "fails here; use --strategy stop-copy"])
            if hello.lazy_selftest_reason and not hello.lazy_selftest_ok and not forced:
                raise Refusal("post-copy is not usable on the destination: " + hello.lazy_selftest_reason)
            return "post-copy"
        if want == "auto":
            post = ("post-copy is never chosen automatically: the restored tree runs before its memory has "
                    "arrived, so a failed transfer leaves two copies that ran")
            if mem_track:
                # both hosts track dirty pages: copy memory while the source runs, freeze only for the rest
                self.info(f"auto: pre-copy (both hosts have soft-dirty tracking; {post})")
                return "pre-copy"
            self.info(f"auto: stop-copy (no soft-dirty tracking for pre-copy; {post})")
        return "stop-copy"

    # -- the page channel and carried storage (migrate/transport.py, migrate/storage.py) -------
    def _open_page_link(self, socket_path: str, plan: Plan) -> None:
        """Connect the page channel: the destination's root-only unix socket, over SSH when remote.

        The dumping CRIU gets the connected socket (``ps.fd``): no page server
        listens anywhere, on either host (issue #10).
        """
        assert self.channel is not None
        if not socket_path:
            raise CtError("the destination started no page channel")
        try:
            self.page_link = transport.open_page_link(socket_path, transport.mux_for(self.channel), name=self.id)
        except transport.TransportError as exc:
            raise Refusal(exc.message, exc.details) from exc
        if not plan.precopy:
            plan.dump["ps"] = {"fd": self.page_link.fd}
        self.info(f"pages stream to the destination's page server over {socket_path}"
                  + (" (through the SSH connection)" if self.page_link.via == "ssh" else ""))

    def _close_page_link(self) -> None:
        if self.page_link is not None:
            self.page_link.close()
            self.page_link = None

    def _carry_items(self, plan: Plan) -> list[storage.Item]:
        """The container's root (own mount namespace) and its carry = true mount sources, measured here."""
        root = plan.restore.get("root") or ""
        if not root and not self.carry_paths:
            return []
        try:
            return storage.items_for(str(root), self.carry_paths)
        except storage.StorageError as exc:
            raise Refusal(exc.message, exc.details) from exc

    def _carry(self, items: list[storage.Item], plan: Plan) -> None:
        """Before the freeze: the destination makes room, the full copy runs while the container does."""
        assert self.channel is not None
        self.carry = cp = storage.ask(self.channel, self.id, items, self.req.storage)
        if cp.problems:
            raise Refusal("the container's storage cannot follow it", cp.problems)
        for line in cp.summary():
            self.info(line)
        if not cp.carried:
            return
        plan.restore.update(storage.rewrite_restore_opts(plan.restore, cp.items, cp.targets))
        self.journal.write("carry", targets=[t.__dict__ for t in cp.targets], bytes=cp.carried_bytes)
        self.phase("prepare", f"copying the container's storage ({cp.carried_bytes >> 20} MiB) while it runs")
        self._sync_all(final=False)

    def _final_sync(self) -> None:
        """Frozen: the delta since the full copy (inside post-dump; a failure resumes the source)."""
        if self.carry is not None and self.carry.carried:
            _fault("final-sync", self.aborted)
            self._sync_all(final=True)

    def _sync_all(self, final: bool) -> None:
        assert self.channel is not None and self.carry is not None
        mux = transport.mux_for(self.channel)
        remote = None
        if mux is not None:
            remote = ([*mux.argv, "-o", f"ControlPath={mux.control_path}", "-o", "BatchMode=yes",
                       *mux.target[:-2]], mux.target[-1])
        total = self.carry.carried_bytes
        done_before = 0
        for item, target in self.carry.carried:
            base = done_before

            def progress(done: int, _total: int, rate: float, base: int = base) -> None:
                self.emit(ev.Transfer("storage", base + done, total, rate))

            r = storage.sync(item, target, remote, final=final, progress=None if final else progress,
                             timeout=self.req.timeout, should_abort=self.aborted)
            done_before += item.bytes
            self.bytes_sent += r.bytes_sent
            self.journal.write("carried", durable=False, key=item.key, path=target.path, final=final,
                               bytes=r.bytes_sent, seconds=round(r.seconds, 3))
            self.emit(ev.Transfer("storage", done_before, total, r.bytes_sent / max(r.seconds, 1e-6)))
        self.mark("storage-delta" if final else "storage-full")

    # -- perform helpers ---------------------------------------------------------------------
    def _precopy(self, client: CriuClient, plan: Plan, on_notify: Callable[[Any], bool]) -> Any:
        """Pre-copy: PRE_DUMP rounds while the source runs, then the final DUMP, on one ``criu swrk``.

        Why one connection: CRIU keeps the soft-dirty state of the tree
        between the rounds of one swrk session (libcriu's dump_iters). Round
        k writes into IMAGES/pre/k (``parent_img=../k-1``, ``track_mem``): only
        pages dirtied since the previous round. Its pages go to a page server
        the agent starts for that round in the same place on the destination
        (page-server mode), or over the agent channel right after the round;
        either way they move while the source still runs. The policy
        (:func:`precopy_should_stop`) decides when the rest is small enough to
        freeze for; the final DUMP (``parent_img=pre/N``) then goes through the
        same post-dump handover as stop-copy. A failed round raises: CRIU has
        already resumed the source (PRE_DUMP always does), the caller rolls back.
        """
        assert self.channel is not None
        ch = self.channel
        use_ps, images, dump_opts = plan.use_ps, plan.images, plan.dump
        written: list[int] = []

        def page_server(reply: Any) -> dict[str, Any] | None:
            """Every round's pages go down the one page channel (connected at round 1)."""
            if not use_ps:
                return None
            if reply.page_socket:
                self._open_page_link(reply.page_socket, plan)
            assert self.page_link is not None
            return {"fd": self.page_link.fd}

        k = self.rounds + 1
        rdir = precopy_round_dir(images, k)
        rdir.mkdir(mode=0o700, parents=True)
        first = ch.call("round", agent_pb2.RoundRequest(round=k, page_server=use_ps), timeout=90)
        ps = page_server(first)  # the swrk of the whole session inherits the page channel
        with client.iterative(timeout=self.req.timeout, ps_fd=self.page_link.fd if self.page_link else None) as it:
            while True:
                self._check_abort()
                k = self.rounds + 1
                rdir = precopy_round_dir(images, k)
                if first is None:
                    rdir.mkdir(mode=0o700, parents=True)
                    reply = ch.call("round", agent_pb2.RoundRequest(round=k, page_server=use_ps), timeout=90)
                    ps = page_server(reply)
                first = None
                opts = precopy_round_opts(dump_opts, k, ps)
                self.journal.write("round", round=k, options=opts)
                self.info(f"pre-copy round {k}" + (" (pages to the destination page server)" if use_ps else ""))
                st = it.pre_dump(opts, rdir).stats
                self.rounds = k
                written.append(st.pages_written if st is not None else 0)
                if st is not None:
                    self.journal.write("round_stats", round=k, **st.__dict__)
                    self.emit(ev.RoundProgress(k, st.pages_scanned, st.pages_written, st.pages_skipped_parent))
                if use_ps:
                    self.bytes_sent += written[-1] * 4096
                    self.emit(ev.Transfer("copied", written[-1] * 4096, written[-1] * 4096, round=k))
                else:
                    self._send_images(rdir, skip=("pre-dump.log",), round_no=k)
                stop, why = precopy_should_stop(self.req.policy, written)
                if stop:
                    self.info(f"pre-copy: final dump after round {k} ({why})")
                    break
            self._check_abort()
            reply = ch.call("round", agent_pb2.RoundRequest(round=0, parent=self.rounds, page_server=use_ps),
                            timeout=90)
            final = precopy_final_opts(dump_opts, self.rounds, page_server(reply))
            self.journal.write("round", round=0, parent=self.rounds, options=final)
            self.phase("perform", f"pre-copy: final dump after {self.rounds} round(s)")
            self.t_freeze = time.monotonic()  # downtime counts from the final freeze, not from round 1
            return it.dump(final, images, on_notify=on_notify)

    def _send_images(self, images: Path, skip: tuple[str, ...] = ("dump.log",), window: int = 8,
                     round_no: int = 0) -> None:
        """Stream image files to the agent, ``window`` chunks in flight (acks are read in order).

        ``round_no`` > 0: a pre-copy round's directory, mirrored into pre/N there.
        Sub-directories and symlinks (``parent``) are not sent: the agent makes its own links.
        """
        assert self.channel is not None
        ch = self.channel
        files = sorted(p for p in images.iterdir() if p.is_file() and not p.is_symlink() and p.name not in skip)
        total = sum(p.stat().st_size for p in files)
        t0 = time.monotonic()
        self._check_abort()
        if self.shared and self._link_images(files, round_no, t0):
            return
        pending: deque[int] = deque()
        try:
            sent = self._stream_files(files, total, pending, window, t0, round_no)
            while pending:
                ch.receive(pending.popleft(), "file", timeout=60)
        except CtError:
            # read the replies still in flight, so the conversation stays in step for the abort
            while pending:
                try:
                    ch.receive(pending.popleft(), "file", timeout=60)
                except AgentError:
                    continue
                except CtError:
                    break  # the channel itself is broken; the abort will find that out
            raise
        elapsed = time.monotonic() - t0
        self.emit(ev.Transfer("streamed", sent, total, sent / max(elapsed, 1e-6), 0.0, round=round_no))
        self.bytes_sent += sent
        self.journal.write("sent", durable=False, files=len(files), bytes=sent, seconds=elapsed, round=round_no)
        self.mark("sent" if not round_no else f"sent-round{round_no}")

    def _link_images(self, files: list[Path], round_no: int, t0: float) -> bool:
        """Same filesystem: one request, and the agent hard-links the files (True), else False (send bytes).

        Why: on a ``local`` or ``netns:`` destination the bytes need not move
        at all; the agent checked at prepare that our images dir is ours and on
        its filesystem. A refusal leaves nothing linked (the agent undoes its
        part), so the caller just streams as it always did.
        """
        assert self.channel is not None
        # not interruptible: it takes milliseconds, and an abort honoured while its reply is in flight
        # would leave that reply unread and the conversation out of step for the rollback's abort
        should_abort, self.channel.should_abort = self.channel.should_abort, lambda: False
        try:
            r = self.channel.call("link", agent_pb2.LinkRequest(round=round_no, names=[p.name for p in files]),
                                  timeout=60)
        except AgentError as exc:
            self.info(f"linking the images failed ({exc.message}); sending them instead", "warning")
            self.shared = False
            return False
        finally:
            self.channel.should_abort = should_abort
        elapsed = time.monotonic() - t0
        self.journal.write("sent", durable=False, files=int(r.files), bytes=0, linked=int(r.bytes),
                           seconds=elapsed, round=round_no)
        self.mark("linked" if not round_no else f"linked-round{round_no}")
        self.emit(ev.Transfer("linked", int(r.bytes), int(r.bytes), round=round_no))  # nothing moved
        return True

    def _stream_files(self, files: list[Path], total: int, pending: deque[int], window: int, t0: float,
                      round_no: int = 0) -> int:
        assert self.channel is not None
        ch = self.channel
        sent, last_emit = 0, 0.0
        for p in files:
            with open(p, "rb") as f:
                offset = 0
                while True:
                    self._check_abort()
                    data = f.read(CHUNK_SIZE)
                    last = len(data) < CHUNK_SIZE
                    pending.append(ch.send_file_chunk(p.name, offset, data, last, round_no))
                    while len(pending) > window:
                        ch.receive(pending.popleft(), "file", timeout=60)
                    offset += len(data)
                    sent += len(data)
                    now = time.monotonic()
                    if now - last_emit > 0.2:
                        last_emit = now
                        rate = sent / max(now - t0, 1e-6)
                        eta = (total - sent) / rate if rate else None
                        self.emit(ev.Transfer("streamed", sent, total, rate, eta, round=round_no))
                    if last:
                        break
        return sent

    def _restore_remote(self, restore_opts: dict[str, Any], probe: list[str], lazy: bool = False) -> None:
        assert self.channel is not None
        self.phase("restore", "restoring on the destination")
        reply = self.channel.call("restore", agent_pb2.RestoreRequest(
            options_json=json.dumps(restore_opts), probe_name=probe[0] if probe else "", probe_timeout=30.0,
            timeout=min(self.req.timeout, 60.0) if lazy else self.req.timeout, page_server_wait=60.0,
            inherit=self.env.inherit_msgs(), lazy=lazy, setup_ns=self.env.setup_ns_msgs(),
            hold=not probe and not lazy),
            timeout=self.req.timeout + 60)
        self.t_restored = time.monotonic()
        self.mark("restored")
        self.restored_pid = reply.pid
        self.dest_restored = True
        # durable: recovery commits or kills the destination copy by this record
        self.journal.write("restored", pid=reply.pid, elapsed=reply.elapsed, console=reply.console_socket,
                           timeline=reply.timeline)
        self.mark("journaled")
        if reply.console_socket:
            self.details["console_socket"] = reply.console_socket
        if reply.stats_restore:
            with contextlib.suppress(ImageError):
                self.restore_stats = parse_stats(reply.stats_restore, "stats-restore")
                self.journal.write("restore_stats", durable=False, **self.restore_stats.__dict__)
                self.emit(ev.RestoreTime(self.restore_stats.restore_time_us / 1e6))
        if probe:
            tail = reply.probe_output.strip().splitlines()[-1][:200] if reply.probe_output.strip() else ""
            self.info(f"probe passed ({tail})" if tail else "probe passed")

    def _handover(self, images: Path, restore_opts: dict[str, Any], probe: list[str]) -> bool:
        """Inside post-dump: images over, restore, probe. True = release the source."""
        try:
            self._transfer_and_restore(images, restore_opts, probe)
            return True
        except (CtError, OSError) as exc:
            self.info(f"handover failed: {exc}; resuming the source", "error")
            self.journal.write("error", message=str(exc), details=_details(exc))
            self.cause = [str(exc), *_details(exc)]
            self._clean_destination()
            return False

    def _start_postcopy(self, images: Path, restore_opts: dict[str, Any]) -> bool:
        """post-dump in post-copy: images over, then restore from a helper thread once CRIU serves pages.

        CRIU starts its lazy page server only after post-dump is acknowledged,
        and it resumes the source itself if the page transfer then fails
        (``pstree_switch_state(..., ret ? TASK_ALIVE : final_state)``), so the
        source is still safe; the helper's restore is cleaned up on failure.
        """
        try:
            self.phase("transfer", "sending images (pages follow on demand)")
            _fault("transfer", self.aborted)
            self._send_images(images)
            self._check_abort()
        except (CtError, OSError) as exc:
            self.cause = [str(exc), *_details(exc)]
            self._clean_destination()
            return False

        def helper() -> None:
            # no wait for a listener: the lazy-pages daemon's requests queue on the connected page
            # channel until CRIU's lazy page server (after this post-dump) answers them
            try:
                self._restore_remote(restore_opts, [], lazy=True)
            except (CtError, OSError) as exc:
                self.cause = [f"post-copy restore failed: {exc}", *_details(exc)]

        self.helper = threading.Thread(target=helper, name="postcopy-restore", daemon=True)
        self.helper.start()
        return True

    def _join_postcopy(self) -> None:
        if self.helper is not None:
            self.helper.join(timeout=self.req.timeout + 90)
            self.helper = None

    def _sequential_restore(self, images: Path, restore_opts: dict[str, Any], probe: list[str]) -> None:
        for pid in self.tree_pids:
            if not process.wait_free(pid, 20.0):
                raise CtError(f"pid {pid} of the source tree is still present after 20 s")
        self._transfer_and_restore(images, restore_opts, probe)

    def _transfer_and_restore(self, images: Path, restore_opts: dict[str, Any], probe: list[str]) -> None:
        """Images to the destination, restore there (+ probe): the step both modes share.

        The fault points (transfer, restore, ack) are where the fault-injection
        tests kill or abort; they sit at the same places in both modes.
        """
        self.phase("transfer", "sending images")
        _fault("transfer", self.aborted)
        # the storage delta and the images cross at the same time (both frozen-time; rsync's start-up
        # over a new SSH session would otherwise add to the downtime)
        delta = _Background(self._final_sync)
        try:
            self._send_images(images)
        except BaseException:
            delta.join(quiet=True)  # the first failure is the one to report
            raise
        delta.join()
        self._check_abort()
        _fault("restore", self.aborted)
        self._restore_remote(restore_opts, probe)
        self._check_abort()
        _fault("ack", self.aborted)

    def _clean_destination(self) -> list[str]:
        self._close_page_link()
        if self.channel is None:
            return []
        self.channel.should_abort = lambda: False  # an abort must not interrupt its own rollback
        try:
            r = self.channel.call("abort", agent_pb2.AbortRequest(), timeout=60)
            cleaned = list(r.cleaned)
        except CtError as exc:
            # a dead agent rolls back by itself when its stdin closes (agent.finish)
            self.channel.kill()
            cleaned = [f"agent unreachable ({exc.message}); it cleans up on exit"]
        self.journal.write("dest_cleaned", cleaned=cleaned)
        return cleaned

    def _done(self, result: ev.Result, message: str, source: str, errors: list[str] | None = None) -> ev.Done:
        """The last event: the typed facts the faces show (``source``: what became of the source);
        ``details`` keeps everything else (and errors/source, for --json readers)."""
        d = self.details
        errs = list(errors or [])
        return ev.Done(result, message, {**d, "errors": errs, "source": source}, source=source, errors=tuple(errs),
                       downtime=d.get("downtime"), frozen=d.get("frozen") or self.frozen_seconds or None,
                       restored_pid=int(d.get("restored_pid") or 0), journal=str(self.journal.path))

    # -- rollback -------------------------------------------------------------------------------
    def _rollback(self, exc: CtError) -> ev.Done:
        self.emit(ev.PhaseChanged("rollback", exc.message))
        self.journal.write("phase", phase="rollback", detail=exc.message)
        details = [*self._hidden_causes(), *(self._kept_log_path(d) for d in exc.details)]
        self.journal.write("error", message=exc.message, details=details)
        errors = [*self.cause, exc.message, *details]
        if self.cause:  # CRIU only says "post-dump refused"; say why we refused it
            exc = CtError(self.cause[0], exc.details)
        if self.dest_restored and self.source_released and self.mode == "handover" and not self.commit_confirmed:
            # the source is gone and the destination never confirmed the commit: its copy may still be
            # held (stopped). No "end": the journal stays open and recovery asks the destination again.
            msg = (f"{exc.message}; the source was released and the copy on the destination is not confirmed "
                   "running: the journal stays open, `ctconsole history` resolves it")
            self.journal.write("unresolved", reason="commit not confirmed", message=msg)
            return self._done("failed", msg, "released", errors)
        if self.dest_restored and self.source_released and self.mode == "handover":
            # the handover went through and the destination confirmed; a later failure does not undo it
            self.journal.write("end", result="migrated", message="migrated (with errors after the handover)")
            return self._done("migrated", "migrated, but: " + exc.message, "released", errors)
        if self.mode == "sequential" and self.source_released:
            self._clean_destination()
            try:
                self._restore_locally()
            except CtError as exc2:
                msg = f"rollback failed: {exc2.message}; images kept for manual restore"
                self.journal.write("end", result="failed", message=msg)
                self.work = None  # keep the images
                return self._done("failed", msg, "lost", [*errors, *exc2.details])
            msg = f"rolled back: {exc.message}; the container was restored here"
            self.journal.write("end", result="rolled-back", message=msg)
            return self._done("rolled-back", msg, "restored-locally", errors)
        refused = [c for c in self._clean_destination() if "(destination policy: " in c]
        if refused:  # e.g. the page server stopped at images.max_bytes: CRIU only saw a broken pipe
            exc = CtError(refused[0].removeprefix("stopped the page server: "), exc.details)
            errors = [*refused, *errors]
        if self.own_cgroup:  # what the destination's CRIU made for a copy that no longer exists
            cgroups.remove_empty(self.own_cgroup, self.id, wait=2.0)
        alive = process.alive(self.source_pid, self.source_start)
        if alive and clear_criu_netlock(self.source_pid):
            self.info("removed a leftover CRIU network-lock chain in the source's netns", "warning")
        msg = f"rolled back: {exc.message}; the source " + ("is running" if alive else "IS GONE")
        result: ev.Result = "rolled-back" if alive else "failed"
        self.journal.write("end", result=result, message=msg)
        return self._done(result, msg, "running" if alive else "lost", errors)

    def _restore_locally(self) -> None:
        assert self.work is not None
        recs = self.journal.records()
        opts: dict[str, Any] = next((r for r in reversed(recs) if r.get("kind") == "options"), {})
        restore_here(self.work / "images", dict(opts.get("restore", {})), self.tree_pids,
                     RestoreEnv.from_journal(opts))


#: a controller name no hierarchy has: CRIU dumps every controller when its list is empty
NO_CONTROLLER = "ctconsole-none"


def dump_controllers(pids: Iterable[int]) -> list[str]:
    """CRIU's ``cgroup_dump_controller`` for a tree: the hierarchies in which one of ``pids`` has a
    cgroup of its own (:func:`own_hierarchies`), or :data:`NO_CONTROLLER` when there is none.

    Why: CRIU dumps every cgroup below a task's own in each hierarchy. A tree that sits at "/" in a
    hierarchy (net_prio or a named one nobody manages for it; a plain process tree in all of them) made
    CRIU walk, log and dump everything anyone created there while the tree was frozen (a runc migration
    froze 63 s on ~370,000 leaked cgroups; 0.14 ms per unrelated cgroup), and on restore recreate this
    host's cgroup tree on the destination. Its processes are restored into the restoring CRIU's
    cgroups of those hierarchies instead: what a process started there would get.
    """
    return own_hierarchies(pids) or [NO_CONTROLLER]


def own_hierarchies(pids: Iterable[int]) -> list[str]:
    """Every hierarchy, named as /proc/PID/cgroup names it (which is what CRIU compares: ``cpu,cpuacct``,
    ``name=systemd``, "" for cgroup v2), in which one of ``pids`` sits below the root, i.e. where its
    runtime gave it a cgroup of its own."""
    out: list[str] = []
    for pid in pids:
        try:
            lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            _hid, ctrls, path = [*line.split(":", 2), "", ""][:3]
            if path not in ("", "/") and ctrls not in out:
                out.append(ctrls)
    return out


def _details(exc: BaseException) -> list[str]:
    """A CtError's detail lines ([] for an OSError)."""
    return list(exc.details) if isinstance(exc, CtError) else []


class _Background:
    """Run ``fn`` in a thread now; :meth:`join` waits and re-raises what it raised."""

    def __init__(self, fn: Callable[[], None]) -> None:
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(fn,), name="storage-delta", daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except BaseException as exc:  # handed to the caller's thread by join()
            self.error = exc

    def join(self, quiet: bool = False) -> None:
        self.thread.join()
        if self.error is not None and not quiet:
            raise self.error


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""
