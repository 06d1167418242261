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
``setup-namespaces`` notify (:func:`compile_options`).

Every step is written to a journal first (journal.py), so a crash of
ctconsole itself is resolved by :func:`recover_one` at the next start.
Progress goes out as plain events (events.py) through one callback.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import json
import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ctconsole.config import private_dir, state_dir
from ctconsole.errors import CtError, UsageError
from ctconsole.migrate import events as ev
from ctconsole.migrate.agent import descendants, proc_state, start_time
from ctconsole.migrate.channel import CHUNK_SIZE, PROTOCOL_VERSION, AgentChannel, AgentError, parse_destination
from ctconsole.migrate.journal import Journal, MigrationLock, new_id
from ctconsole.model import Container, Process
from ctconsole.proto import agent_pb2

STRATEGIES = ("auto", "stop-copy", "pre-copy", "post-copy")
Emit = Callable[[object], None]


class Refusal(CtError):
    """The migration was refused before anything was frozen."""


@dataclass(frozen=True)
class PrecopyPolicy:
    """When to stop iterating pre-copy rounds and do the final (frozen) dump.

    Stop after ``max_rounds``; or when a round wrote fewer than ``min_pages``
    (what is left is small enough to freeze for); or when the dirty set grows
    by more than ``max_growth`` times the previous round (the workload dirties
    memory faster than we copy it: more rounds would not converge).
    """

    max_rounds: int = 5
    min_pages: int = 1024
    max_growth: float = 1.0


def precopy_should_stop(policy: PrecopyPolicy, written: list[int]) -> tuple[bool, str]:
    """Decide after each pre-copy round (``written`` = pages written per round so far)."""
    if not written:
        return False, ""
    if len(written) >= policy.max_rounds:
        return True, f"reached {policy.max_rounds} rounds"
    if written[-1] < policy.min_pages:
        return True, f"last round wrote {written[-1]} pages (< {policy.min_pages})"
    if len(written) >= 2 and written[-2] > 0 and written[-1] / written[-2] > policy.max_growth:
        return True, f"not converging ({written[-2]} -> {written[-1]} pages)"
    return False, ""


#: pre-copy rounds live in IMAGES/pre/1, IMAGES/pre/2, ... on both sides; the final dump goes to IMAGES
PRECOPY_DIR = "pre"


def precopy_round_dir(images: Path, k: int) -> Path:
    """Where PRE_DUMP round ``k`` (1-based) writes, on the source and (mirrored) on the destination.

    Why inside the final images dir: the agent removes one directory on
    rollback and success, and ``parent`` links stay relative
    (``pre/k/parent -> ../k-1``, ``IMAGES/parent -> pre/N``), so the same
    tree resolves wherever it is copied.
    """
    return images / PRECOPY_DIR / str(k)


def precopy_round_opts(base: dict[str, Any], k: int, ps: dict[str, Any] | None = None) -> dict[str, Any]:
    """The PRE_DUMP options of round ``k``: the dump's own options, ``track_mem``, ``parent_img`` from round 2.

    ``ps`` (page-server mode) sends this round's pages to the destination
    page server started for it; otherwise they stay local and go over the
    agent channel. ``lazy_pages`` and a stale ``ps``/``parent_img`` from the
    base are dropped: they describe the final dump, not a round.
    """
    opts = {key: v for key, v in base.items() if key not in ("ps", "parent_img", "lazy_pages")}
    opts["track_mem"] = True
    if k > 1:
        opts["parent_img"] = f"../{k - 1}"
    if ps:
        opts["ps"] = dict(ps)
    return opts


def precopy_final_opts(base: dict[str, Any], rounds: int, ps: dict[str, Any] | None = None) -> dict[str, Any]:
    """The final DUMP after ``rounds`` pre-dumps: only pages dirtied since the last round are written."""
    opts = {key: v for key, v in base.items() if key not in ("ps", "parent_img", "lazy_pages")}
    opts["track_mem"] = True
    opts["parent_img"] = f"{PRECOPY_DIR}/{rounds}"
    if ps:
        opts["ps"] = dict(ps)
    return opts


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
    extra_dump: dict[str, Any] = field(default_factory=dict)
    extra_restore: dict[str, Any] = field(default_factory=dict)
    preflight: bool = True
    #: network namespace to run the dumping CRIU in (it must reach the page server); "" = ours,
    #: except that a lab host (``ctconsole lab host add``) is reached from its ``ctlab-src``
    source_netns: str = ""
    #: stream pages to the destination's CRIU page server during the dump (handover mode);
    #: False dumps locally and sends every image over the agent channel inside post-dump
    page_server: bool = True
    #: when the destination agent shares this filesystem (``local``, a ``netns:`` lab host), dump
    #: locally and hard-link the images into its images dir: no bytes move and no page server runs
    #: (``page_server`` is then moot). False: always send the bytes (benchmarks, tests)
    shared_images: bool = True


# -- container resolution (inventory when present, a minimal tree otherwise) ----------
def _ns_inode(pid: int | str, kind: str) -> int:
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino
    except OSError:
        return 0


def minimal_container(pid: int) -> Container:
    """A Container for a bare process tree, from /proc only (no inventory needed)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError as exc:
        raise UsageError(f"no process {pid}") from exc
    name = stat[stat.index("(") + 1 : stat.rindex(")")]
    rest = stat.rsplit(")", 1)[1].split()
    own = tuple(k for k in ("pid", "net", "mnt", "uts", "ipc", "user", "cgroup", "time")
                if _ns_inode(pid, k) and _ns_inode(pid, k) != _ns_inode(1, k))
    root = ""
    if "mnt" in own:
        with contextlib.suppress(OSError):
            root = os.readlink(f"/proc/{pid}/root")
    proc = Process(pid=pid, ppid=int(rest[1]), nspid=pid, name=name, cmdline="", state=rest[0],
                   uid=0, sid=int(rest[3]), pgid=int(rest[2]))
    return Container(id=f"tree:{pid}", name=f"{name}[{pid}]", runtime="tree", init_pid=pid,
                     processes=(proc,), own_namespaces=own, root_path=root if root != "/" else "")


def resolve_container(ref: str) -> Container:
    try:
        from ctconsole import inventory

        resolver = getattr(inventory, "resolve", None)
    except ImportError:
        resolver = None
    if resolver is not None:
        c: Container = resolver(ref)
        return c
    text = ref.split(":", 1)[1] if ref.startswith(("tree:", "pid:")) else ref
    if not text.isdigit():
        raise UsageError(f"cannot resolve '{ref}' (inventory not available: use tree:PID)")
    return minimal_container(int(text))


def _feasibility(container: Container, req: MigrationRequest, notes: list[str]) -> Any:
    """The static feasibility report (remedies become options); refuses blockers before freezing.

    Host probes are skipped here: the engine asks both CRIUs itself (FEATURE_CHECK
    here, hello on the destination), and CRIU's own dump is the final word.
    """
    try:
        from ctconsole import feasibility
    except ImportError:
        return None
    check = getattr(feasibility, "check", None)
    if check is None:
        return None
    try:
        report = check(container, rules=req.rules, hosts=False)  # dest probes: the agent does them
    except TypeError:
        report = check(container)
    except CtError as exc:
        notes.append(f"feasibility check unavailable: {exc.message}")
        return None
    verdict = str(getattr(report, "verdict", ""))
    findings = list(getattr(report, "findings", ()))
    blocking = [f for f in findings if getattr(f, "severity", "") == "blocker"
                or (getattr(f, "severity", "") == "needs-rule" and not getattr(f, "satisfied", False))]
    lines = [f"{getattr(f, 'subject', '')}: {getattr(f, 'message', '')} -> {getattr(f, 'remedy', '')}"
             for f in blocking]
    if verdict == "infeasible":
        raise Refusal("CRIU cannot checkpoint this container (feasibility: infeasible)", lines)
    if verdict == "needs-rules":
        raise Refusal("this container needs remap rules before it can move (feasibility: needs-rules)",
                      [*lines, f"see: ctconsole check {req.ref}; ctconsole rules suggest {req.ref}"])
    return report


def _merge(base: dict[str, Any], more: dict[str, Any]) -> None:
    for k, v in more.items():
        if isinstance(v, list) and isinstance(base.get(k), list):
            base[k] = base[k] + [x for x in v if x not in base[k]]
        else:
            base[k] = v


def compile_options(
    container: Container, req: MigrationRequest, inherit: list[dict[str, Any]] | None = None,
    setup_ns: list[dict[str, Any]] | None = None,
) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """Dump and restore options: engine base, then feasibility remedies, remap rules, explicit extras.

    ``inherit`` (when given) receives the fds the destination must open for the
    restore (``{"key", "how", "path"[, "mode", "perm"]}``); the agent opens
    them on its host just before RESTORE. ``setup_ns`` receives the rules'
    setup-namespaces actions (VF moves), done by the agent in that notify.
    """
    root = container.processes[0] if container.processes else None
    shell_job = bool(root and root.sid != container.init_pid)
    dump: dict[str, Any] = {"pid": container.init_pid, "log_level": 4}
    restore: dict[str, Any] = {"log_level": 4}
    notes: list[str] = []
    if shell_job:
        dump["shell_job"] = restore["shell_job"] = True
    if container.has_own("mnt") and container.root_path:
        restore["root"] = container.root_path
    report = _feasibility(container, req, notes)
    if report is not None:
        opts = getattr(report, "options", None) or {}
        _merge(dump, dict(opts.get("dump", {})))
        _merge(restore, dict(opts.get("restore", {})))
    if req.rules:
        from ctconsole.remap.compile import KEEP_PTY_MASTER, compile_rules
        from ctconsole.remap.parse import load

        comp = compile_rules(load(req.rules), container, req.dest)
        _merge(dump, comp.dump)
        _merge(restore, comp.restore)
        notes.extend(comp.notes)
        from ctconsole.remap.compile import CONNECT_UNIX, MOVE_VF, OPEN_FILE

        unsupported = [i.key for i in comp.inherit if i.how not in (KEEP_PTY_MASTER, CONNECT_UNIX, OPEN_FILE)]
        unsupported += [f"{a.action} {a.interface}" for a in comp.setup_ns_actions if a.action != MOVE_VF]
        if unsupported:
            raise Refusal("the rules need inherited fds or actions the agent cannot provide: "
                          + ", ".join(unsupported))
        if inherit is not None:
            for i in comp.inherit:
                if i.how == CONNECT_UNIX:
                    inherit.append({"key": i.key, "how": i.how, "path": i.path})
                elif i.how == OPEN_FILE:
                    inherit.append({"key": i.key, "how": i.how, "path": i.path, "mode": i.mode or "append",
                                    "perm": i.perm})
        if setup_ns is not None:
            setup_ns.extend({"action": a.action, "interface": a.interface, "pf": a.pf,
                             "vfs": list(a.vfs or ()), "any_vf": a.vfs is None} for a in comp.setup_ns_actions)
        if comp.setup_ns_actions:
            restore["notify_scripts"] = True  # the VF moves happen in the setup-namespaces notify
    if inherit is not None:
        # stdio pipes held by a runtime outside the tree (runc's descriptors.json case): new pipes
        # on the destination, kept by the restore parent (migrate/pipes.py)
        from ctconsole.migrate.pipes import external_pipes

        have = {i["key"] for i in inherit}
        for xp in external_pipes([p.pid for p in container.processes] or descendants(container.init_pid)):
            if xp.key not in have:
                inherit.append(xp.spec())
                notes.append(f"{xp.key} (pid {xp.holders[0][0]} fd {xp.holders[0][1]}): its other end is "
                             "outside the container; a new pipe is made on the destination and its other "
                             + ("end is logged by the restore parent" if xp.direction == "write"
                                else "end is held open by the restore parent"))
    _merge(dump, req.extra_dump)
    _merge(restore, req.extra_restore)
    dump["pid"] = container.init_pid
    if dump.get("orphan_pts_master"):
        restore["orphan_pts_master"] = True
    return dump, restore, notes


CLONE_NEWNET = 0x40000000
# runtimes whose controller deletes the container's cgroup (killing its tasks) when the container stops
RUNTIMES_OWNING_CGROUPS = frozenset({"libvirt-lxc", "lxc", "nspawn"})


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run this thread (and the processes it starts, e.g. ``criu swrk``) in netns ``name``.

    Why: a lab host is reachable only from the lab's source namespace, and the
    dumping CRIU must connect to the destination's page server. setns() moves
    only the calling thread; the previous namespace is restored on exit.
    """
    if not name:
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    orig = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        os.close(orig)
        raise CtError(f"cannot open network namespace {name}: {exc.strerror}") from exc
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise CtError(f"cannot enter network namespace {name}: {os.strerror(err)}")
        try:
            yield
        finally:
            if libc.setns(orig, CLONE_NEWNET) != 0:
                raise CtError("cannot return to the original network namespace")
    finally:
        os.close(target)
        os.close(orig)


def lab_source_netns(dest_netns: str) -> str:
    """The namespace a lab host is reached from (``ctlab-src``), or "" when DEST is not a lab host."""
    try:
        from ctconsole.lab import hosts

        for h in hosts.list_hosts():
            if h.netns == dest_netns:
                return str(h.src_netns)
    except Exception:  # no lab here: nothing to adapt
        return ""
    return ""


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
        self.details: dict[str, Any] = {"id": self.id}
        self.inherit: list[dict[str, Any]] = []
        self.setup_ns: list[dict[str, Any]] = []  # remap setup-namespaces actions (VF moves) for the agent
        self.rounds = 0  # pre-copy rounds done
        self.cause: list[str] = []  # why the handover refused post-dump (the real reason for a rollback)
        self.lazy: tuple[str, int, str, int] = ("", 0, "", 0)
        self.helper: threading.Thread | None = None
        self.shared = False  # the agent links our images (same filesystem) instead of receiving them
        self.marks: list[tuple[str, float]] = []  # (what, monotonic time): the frozen window's timeline

    # -- plumbing -------------------------------------------------------------------
    def emit(self, e: object) -> None:
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
            self.container = c = resolve_container(self.req.ref)
            lock = MigrationLock(c.id).acquire()
            self.source_pid, self.source_start = c.init_pid, start_time(c.init_pid)
            dump_opts, restore_opts, notes = compile_options(c, self.req, self.inherit, self.setup_ns)
            self.journal.write("begin", container=c.id, name=c.name, dest=self.req.dest,
                               strategy=self.req.strategy, source_pid=self.source_pid,
                               source_start=self.source_start, lock=str(lock.path), pid=os.getpid())
            for n in notes:
                self.info(n, "warning")
            done = self._run(c, dump_opts, restore_opts)
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
                                             or done.details.get("source") == "untouched")
                if safe or not self.source_released:
                    shutil.rmtree(self.work, ignore_errors=True)
            if lock is not None:
                lock.release()
        self.emit(done)
        return done

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
            out.append("  -> the dumping CRIU cannot reach the destination's page server "
                       "(use --source-netns, or --no-page-server)")
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
        return ev.Done("failed", message, {**self.details, "source": "untouched", "errors": details})

    def _run(self, c: Container, dump_opts: dict[str, Any], restore_opts: dict[str, Any]) -> ev.Done:
        from ctconsole.criu.client import CriuClient

        client = CriuClient(timeout=self.req.timeout)
        local = client.feature_check()
        self.work = private_dir(state_dir() / "work" / self.id)
        cpu_dir = private_dir(self.work / "cpu")
        cpuinfo = b""
        with contextlib.suppress(CtError, OSError):
            cpuinfo = client.cpuinfo_dump(cpu_dir).read_bytes()

        # -- Begin: reach the destination, learn what it can do --------------------------
        dest = parse_destination(self.req.dest)
        self.channel = ch = AgentChannel(dest, log_dir=self.work)
        ch.should_abort = self.aborted
        ch.start()
        self.journal.write("agent", agent_pid=ch.pid)
        hello = ch.call("hello", agent_pb2.Hello(protocol=PROTOCOL_VERSION, cpuinfo_img=cpuinfo), timeout=60)
        self.details["destination"] = {"host": hello.hostname, "criu": hello.criu_version, "kernel": hello.kernel}
        if not hello.criu_version:
            raise Refusal(f"CRIU is not usable on {dest}")
        if not hello.cpuinfo_ok:
            raise Refusal(f"the destination CPU is not compatible: {hello.cpuinfo_detail}")
        self.strategy = self._choose_strategy(local, hello)
        same_kernel = (hello.boot_id == _boot_id() and hello.pidns_inode == os.stat("/proc/self/ns/pid").st_ino)
        self.mode = "handover" if (not same_kernel or c.has_own("pid")) else "sequential"
        if hello.boot_id == _boot_id():
            self._own_cgroup_root(c, restore_opts)
        if self.strategy == "post-copy" and self.mode != "handover":
            raise Refusal("post-copy cannot restore while the source keeps its pids (same kernel, shared pid "
                          "namespace): the source stays frozen until every page has moved",
                          ["use --strategy stop-copy"])
        self.details.update(strategy=self.strategy, mode=self.mode)
        self.journal.write("plan", strategy=self.strategy, mode=self.mode, dest=str(dest))
        self.info(f"strategy {self.strategy}, {self.mode} mode"
                  + (" (same kernel, shared pid namespace: restore after the source is released)"
                     if self.mode == "sequential" else ""))

        # -- Prepare: destination checks, images dir, page server -------------------------
        self.phase("prepare", str(dest))
        if self.req.preflight and os.environ.get("CTCONSOLE_FAULT", "").find("skip:preflight") < 0:
            from ctconsole.migrate.agent import bridges_needed

            paths = [restore_opts["root"]] if restore_opts.get("root") else []
            pf = ch.call("preflight", agent_pb2.PreflightRequest(
                bridges=bridges_needed(restore_opts), paths=paths), timeout=60)
            if not pf.ok:
                raise Refusal("the destination is not ready", list(pf.problems))
        postcopy = self.strategy == "post-copy"
        precopy = self.strategy == "pre-copy"
        use_ps = self.mode == "handover" and self.req.page_server and not postcopy
        ps_addr = "" if dest.kind == "netns" else "127.0.0.1"
        images = private_dir(self.work / "images")
        token = self._share_token(restore_opts)
        # pre-copy: one page server per round (and one for the final dump), asked for round by round
        prep = ch.call("prepare", agent_pb2.PrepareRequest(
            migration_id=self.id, page_server=use_ps and not precopy, page_server_address=ps_addr,
            shared_token=token), timeout=60)
        if prep.shared_fs:
            # same filesystem: a local dump and hard links beat any transfer (CRIU's page server
            # over TCP was the slowest path here); the agent started no page server
            self.shared, use_ps = True, False
            self.info(f"{dest} shares this filesystem: the images are linked there, not copied")
        if use_ps and not precopy:
            port = ch.forward_port(prep.page_server_port)
            addr = "127.0.0.1" if dest.kind == "ssh" else prep.page_server_address
            dump_opts["ps"] = {"address": addr, "port": port}
            self.info(f"page server on the destination: {prep.page_server_address}:{prep.page_server_port}"
                      + (f" (forwarded from 127.0.0.1:{port})" if dest.kind == "ssh" else ""))
        src_ns = self.req.source_netns or (
            lab_source_netns(dest.name) if dest.kind == "netns" and (use_ps or postcopy) else "")
        if postcopy:
            self.lazy = self._setup_lazy(dest, src_ns, list(hello.addresses))
            dump_opts["lazy_pages"] = True
            dump_opts["ps"] = {"address": self.lazy[0], "port": self.lazy[1]}
            self.info(f"post-copy: the source serves pages on {self.lazy[0]}:{self.lazy[1]}; the destination's "
                      f"lazy-pages daemon pulls them from {self.lazy[2]}:{self.lazy[3]}")
        self.journal.write("options", dump=dump_opts, restore=restore_opts, inherit=self.inherit,
                           setup_ns=self.setup_ns, images=str(self.work / "images"))
        self._check_abort()
        _fault("prepare", self.aborted)

        # -- Perform: freeze, dump, hand over inside post-dump ---------------------------
        self.phase("perform", f"{self.strategy}: dumping pid {c.init_pid}")
        probe = shlex.split(self.req.probe) if self.req.probe else []

        def on_notify(note: Any) -> bool:
            if note.script == "pre-dump":
                self.t_freeze = time.monotonic()
                return True
            if note.script != "post-dump":
                return True
            self.t_freeze = self.t_freeze or time.monotonic()
            self.mark("post-dump")
            self.tree_pids = descendants(c.init_pid)
            if postcopy:
                return self._start_postcopy(images, restore_opts, src_ns)
            if self.mode == "handover":
                return self._handover(images, restore_opts, probe)
            # sequential: release the source only once the journal knows where the images are
            self.journal.write("source_released", images=str(images), tree=self.tree_pids)
            self.source_released = True
            return True

        if src_ns:
            self.info(f"dumping from network namespace {src_ns} (it reaches the destination's page server)")
        # mark the freeze start just before the request: "pre-dump" comes before freezing
        self.t_freeze = time.monotonic()
        try:
            with in_netns(src_ns):
                if precopy:
                    result = self._precopy(client, dump_opts, images, (use_ps, ps_addr, dest), on_notify)
                else:
                    result = client.dump(dump_opts, images, on_notify=on_notify, timeout=self.req.timeout)
        except CtError as exc:
            if postcopy:
                self._join_postcopy()
                if self.cause:
                    exc.details = [*self.cause, *exc.details]
                raise CtError("post-copy failed; CRIU resumed the source: " + exc.message, exc.details) from exc
            if self.mode == "handover" and self.dest_restored and not _alive(self.source_pid, self.source_start):
                # post-dump was acknowledged and the source is gone: the destination copy is the container
                self.info(f"CRIU reported an error after the handover: {exc.message}", "warning")
                result = None
            else:
                raise
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
        if result is not None and result.stats is not None:
            st = result.stats
            self.frozen_seconds = st.frozen_time_us / 1e6
            self.journal.write("dump_stats", durable=False, **st.__dict__)
            self.emit(ev.RoundProgress(self.rounds + 1, st.pages_scanned, st.pages_written, st.pages_skipped_parent,
                                       final=True))
            self.emit(ev.FrozenTime(self.frozen_seconds))
            self.bytes_sent += st.pages_written * 4096 if use_ps else 0
            if postcopy:
                self.bytes_sent += st.pages_lazy * 4096
                self.details["pages_lazy"] = st.pages_lazy
                self.info(f"post-copy: {st.pages_lazy} pages were faulted in lazily on the destination")
            self.emit(ev.BytesSent(self.bytes_sent, self.bytes_sent))

        if self.mode == "sequential":
            self._sequential_restore(images, restore_opts, probe)

        if not self.committed:
            self._commit(probe, postcopy)
        self.phase("finish", f"restored pid {self.restored_pid} on {dest}")

        # -- Confirm -----------------------------------------------------------------------
        self.phase("confirm")
        downtime = (self.t_restored - self.t_freeze) if self.t_restored and self.t_freeze else None
        if downtime is not None:
            self.emit(ev.Downtime(downtime))
        self.details["timeline"] = tl = self.timeline()
        self.journal.write("timeline", durable=False, ms=tl, shared=self.shared)
        self.details.update(restored_pid=self.restored_pid, downtime=downtime, frozen=self.frozen_seconds,
                            bytes=self.bytes_sent, source="released")
        msg = f"{c.name} now runs on {dest} as pid {self.restored_pid}"
        self.journal.write("end", result="migrated", message=msg, downtime=downtime, frozen=self.frozen_seconds)
        return ev.Done("migrated", msg, self.details)

    def _commit(self, probe: list[str], postcopy: bool) -> None:
        """Finish: the destination keeps the tree (a held copy gets SIGCONT now)."""
        assert self.channel is not None
        self.committed = True
        try:
            note = self.channel.call("commit", agent_pb2.CommitRequest(), timeout=150)
            if not probe and not postcopy:
                self.t_restored = time.monotonic()  # the held copy runs from here on
            self.mark("committed")
            self.journal.write("committed", pid=self.restored_pid, note=note.journal_note)
        except CtError as exc:
            if postcopy:
                raise
            self.journal.write("committed", pid=self.restored_pid, warning=exc.message)

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
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", c.name or c.id)[:40]
        # one level below the root: CRIU creates missing parents empty, and an empty cgroup-v1
        # cpuset parent makes the child's cpuset.cpus/mems impossible to restore
        path = f"/ctconsole-{safe}-{self.id}"
        restore_opts["cg_root"] = [{"path": path}]
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
            from ctconsole.migrate.selftest import lazy_pages_works

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

    # -- perform helpers ---------------------------------------------------------------------
    def _precopy(self, client: Any, dump_opts: dict[str, Any], images: Path, ps: tuple[bool, str, Any],
                 on_notify: Callable[[Any], bool]) -> Any:
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
        use_ps, ps_addr, dest = ps
        written: list[int] = []

        def page_server(reply: Any) -> dict[str, Any] | None:
            if not use_ps:
                return None
            port = ch.forward_port(reply.page_server_port)
            return {"address": "127.0.0.1" if dest.kind == "ssh" else reply.page_server_address, "port": port}

        with client.iterative(timeout=self.req.timeout) as it:
            while True:
                self._check_abort()
                k = self.rounds + 1
                rdir = precopy_round_dir(images, k)
                rdir.mkdir(mode=0o700, parents=True)
                reply = ch.call("round", agent_pb2.RoundRequest(round=k, page_server=use_ps,
                                                                page_server_address=ps_addr), timeout=90)
                opts = precopy_round_opts(dump_opts, k, page_server(reply))
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
                    self.emit(ev.BytesSent(self.bytes_sent, self.bytes_sent))
                else:
                    self._send_images(rdir, skip=("pre-dump.log",), round_no=k)
                stop, why = precopy_should_stop(self.req.policy, written)
                if stop:
                    self.info(f"pre-copy: final dump after round {k} ({why})")
                    break
            self._check_abort()
            reply = ch.call("round", agent_pb2.RoundRequest(round=0, parent=self.rounds, page_server=use_ps,
                                                            page_server_address=ps_addr), timeout=90)
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
        self.emit(ev.BytesSent(self.bytes_sent + sent, self.bytes_sent + total))
        self.emit(ev.Rate(sent / max(elapsed, 1e-6)))
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
                        self.emit(ev.BytesSent(self.bytes_sent + sent, self.bytes_sent + total))
                        self.emit(ev.Rate(rate))
                        self.emit(ev.Eta((total - sent) / rate if rate else 0.0))
                    if last:
                        break
        return sent

    def _restore_remote(self, restore_opts: dict[str, Any], probe: list[str],
                        lazy: tuple[str, int] | None = None) -> None:
        assert self.channel is not None
        from ctconsole.criu.images import ImageError, parse_stats

        self.phase("restore", "restoring on the destination")
        reply = self.channel.call("restore", agent_pb2.RestoreRequest(
            options_json=json.dumps(restore_opts), probe_argv=probe, probe_timeout=30.0,
            timeout=min(self.req.timeout, 60.0) if lazy else self.req.timeout, page_server_wait=60.0,
            inherit=[agent_pb2.InheritFd(**i) for i in self.inherit], lazy=lazy is not None,
            setup_ns=[agent_pb2.SetupNsAction(**a) for a in self.setup_ns],
            hold=not probe and lazy is None,
            lazy_address=lazy[0] if lazy else "", lazy_port=lazy[1] if lazy else 0),
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
            self.journal.write("error", message=str(exc), details=getattr(exc, "details", []))
            self.cause = [str(exc), *getattr(exc, "details", [])]
            self._clean_destination()
            return False

    def _setup_lazy(self, dest: Any, src_ns: str, dest_addrs: list[str]) -> tuple[str, int, str, int]:
        """(listen address, port) of the source's lazy page server and how the destination reaches it."""
        port = _free_port()
        if dest.kind == "ssh":
            assert self.channel is not None
            rport = self.channel.reverse_forward(port)
            return "127.0.0.1", port, "127.0.0.1", rport
        if dest.kind == "local":
            return "127.0.0.1", port, "127.0.0.1", port
        local = _local_ipv4(src_ns)
        for addr, net in local:
            for d in dest_addrs:
                with contextlib.suppress(ValueError):
                    if ipaddress.ip_address(d) in net:
                        return addr, port, addr, port
        raise Refusal(f"post-copy: no address in {'netns ' + src_ns if src_ns else 'this namespace'} shares a "
                      f"network with the destination ({', '.join(dest_addrs) or 'no addresses'})",
                      ["the destination's lazy-pages daemon must reach the source; use --source-netns"])

    def _start_postcopy(self, images: Path, restore_opts: dict[str, Any], src_ns: str) -> bool:
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
            self.cause = [str(exc), *getattr(exc, "details", [])]
            self._clean_destination()
            return False
        _listen, port, daddr, dport = self.lazy

        def helper() -> None:
            try:
                with in_netns(src_ns):
                    _wait_listen(port, 30.0)
                self._restore_remote(restore_opts, [], lazy=(daddr, dport))
            except (CtError, OSError) as exc:
                self.cause = [f"post-copy restore failed: {exc}", *getattr(exc, "details", [])]

        self.helper = threading.Thread(target=helper, name="postcopy-restore", daemon=True)
        self.helper.start()
        return True

    def _join_postcopy(self) -> None:
        if self.helper is not None:
            self.helper.join(timeout=self.req.timeout + 90)
            self.helper = None

    def _sequential_restore(self, images: Path, restore_opts: dict[str, Any], probe: list[str]) -> None:
        for pid in self.tree_pids:
            _wait_gone(pid, 20.0)
        self._transfer_and_restore(images, restore_opts, probe)

    def _transfer_and_restore(self, images: Path, restore_opts: dict[str, Any], probe: list[str]) -> None:
        """Images to the destination, restore there (+ probe): the step both modes share.

        The fault points (transfer, restore, ack) are where the fault-injection
        tests kill or abort; they sit at the same places in both modes.
        """
        self.phase("transfer", "sending images")
        _fault("transfer", self.aborted)
        self._send_images(images)
        self._check_abort()
        _fault("restore", self.aborted)
        self._restore_remote(restore_opts, probe)
        self._check_abort()
        _fault("ack", self.aborted)

    def _clean_destination(self) -> list[str]:
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

    # -- rollback -------------------------------------------------------------------------------
    def _rollback(self, exc: CtError) -> ev.Done:
        self.emit(ev.PhaseChanged("rollback", exc.message))
        self.journal.write("phase", phase="rollback", detail=exc.message)
        details = [*self._hidden_causes(), *(self._kept_log_path(d) for d in exc.details)]
        self.journal.write("error", message=exc.message, details=details)
        errors = [*self.cause, exc.message, *details]
        if self.cause:  # CRIU only says "post-dump refused"; say why we refused it
            exc = CtError(self.cause[0], exc.details)
        if self.dest_restored and self.source_released and self.mode == "handover":
            # the handover went through; a later failure (commit) does not undo it
            self.journal.write("end", result="migrated", message="migrated (with errors after the handover)")
            return ev.Done("migrated", "migrated, but: " + exc.message, {**self.details, "errors": errors})
        if self.mode == "sequential" and self.source_released:
            self._clean_destination()
            try:
                self._restore_locally()
            except CtError as exc2:
                msg = f"rollback failed: {exc2.message}; images kept for manual restore"
                self.journal.write("end", result="failed", message=msg)
                self.work = None  # keep the images
                return ev.Done("failed", msg, {**self.details, "errors": [*errors, *exc2.details]})
            msg = f"rolled back: {exc.message}; the container was restored here"
            self.journal.write("end", result="rolled-back", message=msg)
            return ev.Done("rolled-back", msg, {**self.details, "errors": errors, "source": "restored-locally"})
        self._clean_destination()
        alive = _alive(self.source_pid, self.source_start)
        if alive and clear_criu_netlock(self.source_pid):
            self.info("removed a leftover CRIU network-lock chain in the source's netns", "warning")
        msg = f"rolled back: {exc.message}; the source " + ("is running" if alive else "IS GONE")
        result = "rolled-back" if alive else "failed"
        self.journal.write("end", result=result, message=msg)
        return ev.Done(result, msg, {**self.details, "errors": errors, "source": "running" if alive else "lost"})

    def _restore_locally(self) -> None:
        assert self.work is not None
        recs = self.journal.records()
        opts: dict[str, Any] = next((r for r in reversed(recs) if r.get("kind") == "options"), {})
        restore_here(self.work / "images", dict(opts.get("restore", {})), self.tree_pids, opts.get("inherit", []),
                     opts.get("setup_ns", []))


def restore_here(images: Path, restore: dict[str, Any], tree: list[int],
                 inherit: list[dict[str, Any]] | None = None, setup_ns: list[dict[str, Any]] | None = None) -> int:
    """Restore a released tree back on this host from its kept images (sequential rollback).

    The rules' inherited fds and VF moves are provided here exactly as the
    agent would on the destination (the same helpers), so a rolled-back
    container gets its sockets, files and devices back.
    """
    from ctconsole.migrate.agent import open_inherited, setup_namespaces

    actions = [agent_pb2.SetupNsAction(**a) for a in setup_ns or []]

    def on_notify(note: Any) -> bool:
        if note.script == "setup-namespaces" and actions:
            setup_namespaces(actions, int(note.pid or 0))
        return True

    for pid in tree:
        _wait_gone(pid, 20.0)
    for name in ("restore.log", "stats-restore"):
        with contextlib.suppress(OSError):
            (images / name).unlink()
    from ctconsole.migrate import pipes
    from ctconsole.migrate.keeper import KeeperError, restore_with_parent

    fds = open_inherited([(i["key"], i["how"], i["path"], str(i.get("mode", "")), int(i.get("perm", -1)))
                          for i in inherit or [] if i["how"] != pipes.HOW])
    relays: list[tuple[str, str, int]] = []
    try:
        ends, relays = pipes.open_relays([(i["key"], str(i.get("mode", ""))) for i in inherit or []
                                          if i["how"] == pipes.HOW])
        fds.update(ends)
        # through a keeper, like the agent: it stays the root's parent (parent-death signals)
        res = restore_with_parent(dict(restore), images, fds, relays, images.parent.name, timeout=120,
                                  on_note=lambda script, pid: on_notify(SimpleNamespace(script=script, pid=pid)))
    except KeeperError as exc:
        raise CtError(exc.message, exc.details) from exc
    finally:
        pipes.close_all([*fds.values(), *(fd for _, _, fd in relays)])
    return res.pid


def clear_criu_netlock(pid: int) -> bool:
    """Remove CRIU's iptables network lock left in a resumed tree's own netns.

    Why: CRIU locks a dumped netns with a ``CRIU`` chain (DROP all but its
    marked packets) and unlocks it when it resumes the tree. If CRIU itself
    dies while the tree is frozen (ctconsole killed mid-migration), the tree
    resumes when ptrace lets go but the lock stays: the container runs with no
    network. With iptables-nft the unlock can also leave an empty chain and
    its jumps behind (harmless, but noise). Only touches a netns that is not
    the host's.
    """
    if not pid or _ns_inode(pid, "net") in (0, _ns_inode(1, "net"), _ns_inode("self", "net")):
        return False
    changed = False
    for tool in ("iptables", "ip6tables"):
        base = ["nsenter", "-t", str(pid), "-n", tool, "-w"]
        try:
            if subprocess.run([*base, "-S", "CRIU"], capture_output=True, timeout=10).returncode != 0:
                continue
            for chain in ("INPUT", "OUTPUT"):
                for _ in range(10):
                    if subprocess.run([*base, "-D", chain, "-j", "CRIU"], capture_output=True,
                                      timeout=10).returncode != 0:
                        break
            subprocess.run([*base, "-F", "CRIU"], capture_output=True, timeout=10)
            subprocess.run([*base, "-X", "CRIU"], capture_output=True, timeout=10)
            changed = True
        except (OSError, subprocess.TimeoutExpired):
            continue
    return changed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _local_ipv4(netns: str) -> list[tuple[str, ipaddress.IPv4Network | ipaddress.IPv6Network]]:
    """Global IPv4 addresses (with their networks) in ``netns`` ("" = ours)."""
    argv = ["ip", *(["-n", netns] if netns else []), "-j", "-4", "addr", "show"]
    try:
        data = json.loads(subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout or "[]")
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return []
    out = []
    for link in data:
        for a in link.get("addr_info", []):
            if a.get("scope") == "global" and a.get("local"):
                out.append((a["local"], ipaddress.ip_network(f"{a['local']}/{a.get('prefixlen', 32)}", strict=False)))
    return out


def _wait_listen(port: int, timeout: float) -> None:
    """Wait until something listens on TCP ``port`` in this thread's netns (CRIU's lazy page server).

    Reads /proc/thread-self/net/tcp{,6} instead of connecting: the page server
    accepts exactly one connection, which must be the lazy-pages daemon's.
    """
    end = time.monotonic() + timeout
    want = f":{port:04X}"
    while time.monotonic() < end:
        for name in ("tcp", "tcp6"):
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/thread-self/net/{name}").read_text().splitlines()[1:]:
                    f = line.split()
                    if len(f) > 3 and f[1].endswith(want) and f[3] == "0A":
                        return
        time.sleep(0.01)
    raise CtError(f"CRIU's lazy page server did not start listening on port {port}")


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _alive(pid: int, started: int) -> bool:
    return bool(pid) and proc_state(pid) not in ("", "Z", "X") and (not started or start_time(pid) == started)


def _wait_gone(pid: int, timeout: float) -> None:
    """PID 1 reaps slowly here: CRIU cannot reuse a pid until the old task is fully gone."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        st = proc_state(pid)
        if not st:
            return
        if st == "Z":
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
        time.sleep(0.01)
    raise CtError(f"pid {pid} of the source tree is still present after {timeout:.0f} s")


# -- recovery after a crash of ctconsole ---------------------------------------------------
def recover_one(journal: Journal) -> str:
    """Resolve one migration whose ctconsole died (see journal.recover)."""
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
    while time.monotonic() < end and proc_state(src) in ("t", "T", "D") and _alive(src, started):
        time.sleep(0.1)
    source_alive = _alive(src, started)
    unlocked = source_alive and clear_criu_netlock(src)

    def agent_call(field: str, msg: Any) -> Any:
        ch = AgentChannel(parse_destination(dest))
        ch.start()
        try:
            ch.call("hello", agent_pb2.Hello(protocol=PROTOCOL_VERSION), timeout=60)
            return ch.call(field, msg, timeout=60)
        finally:
            ch.close()

    work = state_dir() / "work" / mid
    if source_alive and released is None:
        with contextlib.suppress(CtError):
            agent_call("abort", agent_pb2.AbortRequest(migration_id=mid))
        msg = "recovered: the source kept running; destination cleaned"
        result = "rolled-back"
    else:
        dest_running = False
        if restored is not None:
            with contextlib.suppress(CtError):
                st = agent_call("status", agent_pb2.StatusRequest(migration_id=mid))
                dest_running = bool(st.running and st.pid == int(restored.get("pid", 0)))
        if dest_running:
            with contextlib.suppress(CtError):
                agent_call("commit", agent_pb2.CommitRequest(migration_id=mid))
            msg, result = f"recovered: the container runs on {dest} (pid {restored and restored['pid']})", "migrated"
        elif released is not None and (work / "images").is_dir() and not source_alive:
            with contextlib.suppress(CtError):
                agent_call("abort", agent_pb2.AbortRequest(migration_id=mid))
            pid = restore_here(work / "images", dict(options.get("restore", {})), list(released.get("tree", [])),
                               options.get("inherit", []), options.get("setup_ns", []))
            msg, result = f"recovered: restored here from the kept images as pid {pid}", "rolled-back"
        elif source_alive:
            with contextlib.suppress(CtError):
                agent_call("abort", agent_pb2.AbortRequest(migration_id=mid))
            msg, result = "recovered: the source is running; destination cleaned", "rolled-back"
        else:
            msg, result = "recovery could not find the container on either side", "failed"
    if unlocked:
        msg += "; removed the network lock CRIU left in the source's netns"
    journal.write("end", result=result, message=msg, recovered=True, mode=plan.get("mode"))
    shutil.rmtree(work, ignore_errors=True)
    return f"{mid}: {msg}"
