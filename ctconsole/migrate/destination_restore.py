"""The destination's restore, commit, abort and rollback (on top of :class:`destination_session.Session`).

Never-lose rule on this side: a restored tree is kept only after the console
sends ``commit``. If the console disappears before the restore reply reached
it, the restored tree is killed (the source is still there); if the reply was
delivered but no commit came, the tree is left running and a pending record
is written, because only the console's journal can tell whether the source
was released (``ctconsole`` resolves it at its next start: journal.recover()).

Every wait inside a restore is bounded by the restore's own deadline
(``RestoreRequest.timeout``): the page server's last pages, CRIU, the probe;
the keeper gets a fixed 30 s more to report a CRIU that hung before it is stopped.
A page channel the console never connected fails at once (no pages can have
arrived), rather than waiting out a timeout while the keeper idles.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from ctconsole import process
from ctconsole.agent import policy as agent_policy
from ctconsole.agent import safefs
from ctconsole.config import criu_binary, run_dir
from ctconsole.errors import CtError
from ctconsole.migrate import pipes, storage, transport
from ctconsole.migrate.destination_session import (
    MIGRATION_ID_RE,
    Session,
    continue_tree,
    del_link,
    images_root,
    kill_tree,
    link_exists,
    pending_dir,
)
from ctconsole.migrate.keeper import KeeperError, restore_with_parent
from ctconsole.migrate.restoreenv import Refused, setup_namespaces
from ctconsole.proto import agent_pb2

log = logging.getLogger("ctconsole.agent")

#: criu_opts fields a console may set for a restore. Anything that names files,
#: runs programs or hands over fds of the agent itself is missing on purpose.
RESTORE_OPTS_ALLOWED = frozenset({
    "root", "shell_job", "file_locks", "ext_unix_sk", "tcp_established", "tcp_close", "tcp_skip_in_flight",
    "link_remap", "evasive_devices", "force_irmap", "irmap_scan_paths", "manage_cgroups", "manage_cgroups_mode",
    "cg_root", "cgroup_props", "cgroup_yard", "cgroup_dump_controller", "freeze_cgroup", "auto_dedup",
    "external", "veths", "ext_mnt", "auto_ext_mnt", "ext_sharing", "ext_masters", "ghost_limit",
    "weak_sysctls", "skip_file_rwx_check", "mntns_compat_mode", "orphan_pts_master", "network_lock",
    "empty_ns", "join_ns", "enable_fs", "skip_mnt", "lsm_profile", "lsm_mount_context", "log_level",
    "timeout", "rst_sibling", "notify_scripts", "cpu_cap", "display_stats", "unprivileged",
})


def validate_restore_opts(text: str) -> dict[str, Any]:
    """Parse and check the console's restore options (JSON object of criu_opts fields)."""
    try:
        opts = json.loads(text) if text else {}
    except json.JSONDecodeError as exc:
        raise Refused("bad-request", f"restore options are not valid JSON: {exc}") from exc
    if not isinstance(opts, dict):
        raise Refused("bad-request", "restore options must be a JSON object")
    bad = sorted(k for k in opts if k not in RESTORE_OPTS_ALLOWED)
    if bad:
        raise Refused("bad-request", f"restore option(s) not allowed from the console: {', '.join(bad)}")
    return opts


def veth_host_names(opts: dict[str, Any]) -> list[str]:
    """Host-side device names CRIU will create for ``veth[IF]:NAME[@BR]`` externals (cleaned on rollback)."""
    out = []
    for ext in opts.get("external", []) or []:
        m = re.match(r"^veth\[[^\]]+\]:([^@]+)(?:@.*)?$", str(ext))
        if m:
            out.append(m.group(1))
    for v in opts.get("veths", []) or []:
        if isinstance(v, dict) and v.get("if_out"):
            out.append(str(v["if_out"]))
    return out


def bridges_needed(opts: dict[str, Any]) -> list[str]:
    out = []
    for ext in opts.get("external", []) or []:
        m = re.match(r"^veth\[[^\]]+\]:[^@]+@(.+)$", str(ext))
        if m:
            out.append(m.group(1))
    return out


#: the longest wait a console may ask for (restore, page server, probe): finite, whatever it sends
MAX_WAIT = 86400.0


def bounded_wait(seconds: float, default: float) -> float:
    """A wait the console asked for, in (0, MAX_WAIT]; ``default`` when unset, negative, NaN or infinite.

    Why: the peer's number ends up in ``settimeout``/``select``, which raise
    (OverflowError, ValueError) on infinity or 1e300: an "internal" error
    after the keeper already had the request, so a restore could go on
    there that this session no longer tracked.
    """
    if not math.isfinite(seconds) or seconds <= 0:
        return default
    return min(seconds, MAX_WAIT)


def lazy_daemon_argv(criu: str, ps_fd: int, images_dir: Path) -> list[str]:
    """``criu lazy-pages`` asking for pages on the connected socket ``ps_fd`` (inherited), never on TCP."""
    return [criu, "lazy-pages", "--page-server", "--ps-socket", str(ps_fd), "-D", str(images_dir),
            "-o", "lazy-pages.log", "-v4"]


class Restorer(Session):
    """The restore and everything that ends a session: commit, status, abort, rollback, finish."""

    def on_restore(self, msg: agent_pb2.RestoreRequest) -> agent_pb2.RestoreReply:
        if self.images_dir is None:
            raise Refused("state", "prepare first")
        if self.restored_pid:
            raise Refused("state", "already restored")
        if self.restore_tried:
            # a second try would start a second lazy daemon and keeper while the first attempt's
            # partly restored root (pending_root) is what rollback kills: one restore per session
            raise Refused("state", "a restore already ran in this session: abort, then prepare again")
        if self.open_files:
            raise Refused("state", f"files still open: {', '.join(sorted(self.open_files))}")
        if msg.lazy_address or msg.lazy_port:
            raise Refused("bad-request", "lazy pages never travel over TCP here: no lazy page server address is "
                          "accepted (prepare with lazy_pages: they use the page channel)")
        opts = validate_restore_opts(msg.options_json)
        self._enforce(agent_policy.check_restore(
            self.policy, opts, [agent_policy.InheritAsk(x.how, x.path, x.mode, x.perm if x.mode else -1)
                                for x in msg.inherit],
            probe_name=msg.probe_name, probe_argv=msg.probe_argv,
            setup_ns=[(a.action, a.interface, a.pf) for a in msg.setup_ns]))
        if self.linked and opts.get("auto_dedup"):
            # it punches holes into the pages it restored: into the console's own copy, through the links
            raise Refused("bad-request", "auto_dedup cannot be used on images linked from the console's copy")
        t0 = time.monotonic()
        deadline = t0 + bounded_wait(msg.timeout, 120.0)  # every wait below ends by then

        def left() -> float:
            return max(deadline - time.monotonic(), 0.1)

        marks: list[str] = []

        def mark(what: str) -> None:
            marks.append(f"{what}@{(time.monotonic() - t0) * 1000:.0f}ms")

        if self._wait_page_server(min(bounded_wait(msg.page_server_wait, 60.0), left())) or msg.page_server_wait:
            mark("page-server-done")
        self._enforce(agent_policy.check_image_bytes(self.policy, transport.tree_bytes(self.images_dir)))
        for name in veth_host_names(opts):
            if link_exists(name):
                raise Refused("state", f"network device {name} already exists on the destination")
        self.created_links = veth_host_names(opts)
        self.restore_tried = True  # from here on, processes start (lazy daemon, keeper's CRIU)
        opts.setdefault("notify_scripts", True)
        if msg.lazy:
            opts["lazy_pages"] = True
            self._start_lazy_daemon(left())
        if msg.hold and not msg.lazy:
            opts["leave_stopped"] = True  # CRIU SIGSTOPs every task before letting go of it
            self.held = True
        relay_specs = [(x.key, x.mode) for x in msg.inherit if x.how == pipes.HOW]
        inherit = self._open_inherited([x for x in msg.inherit if x.how != pipes.HOW])
        try:
            pipe_ends, relays = pipes.open_relays(relay_specs)
        except BaseException:
            pipes.close_all(inherit.values())
            raise
        inherit.update(pipe_ends)
        mark("fds")

        def on_note(script: str, pid: int) -> bool:
            mark(script)
            if pid and not self.pending_root:
                self.pending_root = pid  # killable even if the restore never returns
                self.pending_start = process.start_time(pid)
            if script == "setup-namespaces" and msg.setup_ns:
                # raising here makes CRIU abort the restore (the handler's reason is in the error)
                moved = setup_namespaces(list(msg.setup_ns), pid)
                marks.append("moved " + ",".join(moved))
            return True

        # the restore runs in a detached keeper that stays the root's parent (keeper.py: a
        # parent-death signal would kill a root whose parent exits), holds the PTY master
        # and the re-created stdio pipes, and reaps the root
        keeper, self.keeper = self.keeper, None
        try:
            res = restore_with_parent(opts, self.images_dir, inherit, relays, self.migration_id,
                                      timeout=left(), on_note=on_note, keeper=keeper)
        except KeeperError as exc:
            details = [d for d in exc.details if not d.startswith("full CRIU log:")]
            kept = self._keep_log("restore.log")
            if kept:
                details.append(f"full CRIU log (on the destination): {kept}")
            raise CtError(exc.message, details) from exc
        finally:
            pipes.close_all([*inherit.values(), *(fd for _, _, fd in relays)])
        mark("restored")
        self.restored_pid, self.restored_start = res.pid, res.start or process.start_time(res.pid)
        self.restored_root = str(opts.get("root") or "")
        self.keeper_pid = res.keeper_pid
        self.keeper_start = res.keeper_start
        log.info("restored pid %d in %.3f s (parent: keeper %d%s)", res.pid, res.elapsed, res.keeper_pid,
                 f", console {res.console_socket}" if res.console_socket else "")
        reply = agent_pb2.RestoreReply(pid=res.pid, elapsed=res.elapsed, lazy=msg.lazy)
        stats = self.images_dir / "stats-restore"
        if stats.exists():
            reply.stats_restore = stats.read_bytes()
        # the restored tree must be alive, not a zombie that died right after restore; a held tree is
        # stopped (leave_stopped) and cannot exit on its own before commit, so it is only looked at
        if not self.held:
            time.sleep(0.05)
        if process.exited(res.pid):
            raise CtError(f"the restored tree (pid {res.pid}) exited right after the restore")
        mark("alive")
        if msg.probe_name:
            reply.probe_output = self._probe(msg.probe_name, min(bounded_wait(msg.probe_timeout, 10.0), left()))
            mark("probe")
        reply.console_socket = res.console_socket
        self._write_pending()
        mark("pending-written")
        reply.timeline = " ".join(marks)
        log.info("restore timeline: %s", reply.timeline)
        return reply

    def _open_inherited(self, specs: list[agent_pb2.InheritFd]) -> dict[str, int]:
        """The fds a restore inherits, opened without following symlinks (agent/safefs.py).

        Already allowed by the policy (on_restore); a file created here is
        recorded in the session's ledger so rollback removes it again.
        """
        from ctconsole.remap.compile import CONNECT_UNIX, FILE_OPEN_FLAGS, OPEN_FILE

        out: dict[str, int] = {}
        try:
            for x in specs:
                if not re.fullmatch(r"[A-Za-z0-9_:\[\]./-]{1,200}", x.key):
                    raise Refused("bad-request", f"bad inherit_fd key {x.key!r}")
                try:
                    if x.how == OPEN_FILE:
                        mode = x.mode or "append"
                        if mode not in FILE_OPEN_FLAGS:
                            raise Refused("bad-request", f"inherit_fd {x.key}: bad open mode {mode!r}")
                        out[x.key] = safefs.open_file(x.path, FILE_OPEN_FLAGS[mode], x.perm if x.mode else -1,
                                                      self.ledger)
                    elif x.how == CONNECT_UNIX:
                        fd = safefs.connect_unix(x.path)
                        os.set_inheritable(fd, True)
                        out[x.key] = fd
                    else:
                        raise Refused("unsupported", f"inherit_fd {x.key}: cannot provide {x.how!r}")
                except safefs.UnsafePath as exc:
                    raise Refused("unsafe-path", f"inherit_fd {x.key}: {exc.message}") from exc
        except BaseException:
            for fd in out.values():
                with contextlib.suppress(OSError):
                    os.close(fd)
            raise
        return out

    def _start_lazy_daemon(self, timeout: float) -> None:
        """``criu lazy-pages`` (no RPC exists for it) on the page channel prepare opened: the page faults' server.

        Why ``--ps-socket``: the daemon asks the source's lazy dump for pages
        on the one connection the console made to our root-only socket
        (migrate/transport.py); with ``--address``/``--port`` it would have to
        reach a page server that listens, which any local user could read
        the container's memory from.
        """
        assert self.images_dir is not None
        if not self.lazy_channel or self.pages is None:
            raise Refused("state", "post-copy needs the lazy-pages channel: prepare with lazy_pages first")
        try:
            conn = self.pages.take(timeout)
        except transport.TransportError as exc:
            raise CtError(f"no lazy-pages connection: {exc.message}", exc.details) from exc
        fd = conn.fileno()
        self.lazy_proc = subprocess.Popen(
            lazy_daemon_argv(criu_binary(), fd, self.images_dir),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, close_fds=True, pass_fds=(fd,))
        sock = self.images_dir / "lazy-pages.socket"
        end = time.monotonic() + min(timeout, 10.0)
        while not sock.exists():
            if self.lazy_proc.poll() is not None or time.monotonic() > end:
                lines = self._log_errors("lazy-pages.log")
                raise CtError("the lazy-pages daemon did not start", lines)
            time.sleep(0.01)

    def _stop_lazy(self) -> None:
        if self.lazy_proc is not None and self.lazy_proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.lazy_proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.lazy_proc.wait(timeout=5)
        self.lazy_proc = None

    def _probe(self, name: str, timeout: float) -> str:
        """Run probe ``name`` from this host's policy in the restored tree's namespaces (all, or net only)."""
        spec, refused = agent_policy.check_probe(self.policy, name)
        self._enforce(refused)
        ns, argv = spec[0], list(spec[1:])
        cmd = ["nsenter", "-t", str(self.restored_pid), "-n" if ns == "net" else "-a", "--", *argv]
        try:
            res = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                 timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise Refused("probe", f"probe {argv[0]!r} did not finish within {timeout:.0f} s") from exc
        except OSError as exc:
            raise Refused("probe", f"cannot run the probe: {exc}") from exc
        out = (res.stdout + res.stderr).strip()
        if res.returncode != 0:
            raise Refused("probe", f"probe {' '.join(argv)!r} failed with status {res.returncode}",
                          out.splitlines()[-5:])
        return out[-2000:]

    def on_commit(self, msg: agent_pb2.CommitRequest) -> agent_pb2.CommitReply:
        if self.lazy_proc is not None:
            # post-copy: the tree is only whole once the daemon has pulled every page
            try:
                rc = self.lazy_proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                rc = -1
            errs = self._log_errors("lazy-pages.log")
            self.lazy_proc = None
            if rc != 0 or errs:
                raise CtError(f"the lazy-pages daemon failed (status {rc})", errs)
            if process.exited(self.restored_pid):
                raise CtError(f"the restored tree (pid {self.restored_pid}) died while its pages arrived")
        if "fail:agent-commit" in os.environ.get("CTCONSOLE_FAULT", ""):  # fault-injection tests only
            raise CtError("commit failed (injected fault: fail:agent-commit)")
        if msg.migration_id and msg.migration_id != self.migration_id:
            rec = self._pending_record(msg.migration_id)
            if not rec:
                raise Refused("state", f"no pending restore for {msg.migration_id}")
            lock = self._lock_id(msg.migration_id)  # not while a live session owns it; held to the end
            try:
                if rec.get("held"):
                    continue_tree(int(rec["pid"]), int(rec.get("start", 0)))
                with contextlib.suppress(OSError):
                    (pending_dir() / f"{msg.migration_id}.json").unlink()
            finally:
                os.close(lock)
            return agent_pb2.CommitReply(journal_note=f"pid {rec['pid']} kept (recovered)")
        if not self.restored_pid:
            raise Refused("state", "nothing restored to commit")
        if self.held:
            continue_tree(self.restored_pid, self.restored_start)
            self.held = False
        self.committed = True
        self.ledger.forget()  # the files now belong to the restored container
        self._drop_pending()
        adoption = self._adopt(msg.runtime_facts) if msg.runtime_facts else ""
        return agent_pb2.CommitReply(journal_note=f"pid {self.restored_pid} kept", adoption=adoption)

    def _adopt(self, facts_json: str) -> str:
        """Hand the kept tree to its runtime here (migrate/adopt.py); bookkeeping only, never fatal."""
        from ctconsole.migrate import adopt

        try:
            a = adopt.adopt_restored(facts_json, self.restored_pid, self.restored_root,
                                     str(run_dir() / "adopted"))
        except CtError as exc:
            log.warning("runtime adoption skipped: %s", exc.message)
            return f"not adopted: {exc.message}"
        return a.note or f"{a.runtime} container {a.name}"

    def on_status(self, msg: agent_pb2.StatusRequest) -> agent_pb2.StatusReply:
        rec = self._pending_record(msg.migration_id) if msg.migration_id else None
        pid = int(rec["pid"]) if rec else self.restored_pid
        started = int(rec.get("start", 0)) if rec else self.restored_start
        # no start time recorded: we cannot tell it is still ours, so it is "gone", never "any process there"
        ours = bool(pid and started and process.start_time(pid) == started)
        state = process.state(pid) if ours else ""
        return agent_pb2.StatusReply(state=state or "gone", pid=pid, running=ours and process.alive(pid, started))

    def on_abort(self, msg: agent_pb2.AbortRequest) -> agent_pb2.AbortReply:
        cleaned: list[str] = []
        if msg.migration_id and msg.migration_id != self.migration_id:
            # another session's leftovers (recovery after a console crash)
            if not MIGRATION_ID_RE.fullmatch(msg.migration_id):
                raise Refused("bad-request", "bad migration id")
            lock = self._lock_id(msg.migration_id)  # refused while a live session owns the id
            try:
                return agent_pb2.AbortReply(cleaned=self._abort_other(msg.migration_id))
            finally:
                os.close(lock)
        cleaned.extend(self.rollback())
        return agent_pb2.AbortReply(cleaned=cleaned)

    def _abort_other(self, mid: str) -> list[str]:
        """Clean what a dead session left for ``mid`` (pending record, images), checked by start times."""
        cleaned: list[str] = []
        rec = self._pending_record(mid)
        if rec:
            if kill_tree(int(rec["pid"]), int(rec.get("start", 0))):
                cleaned.append(f"killed restored pid {rec['pid']}")
            for name in rec.get("links", []):
                if del_link(name):
                    cleaned.append(f"deleted {name}")
            if rec.get("keeper"):
                kill_tree(int(rec["keeper"]), int(rec.get("keeper_start", 0)))
            files = safefs.Ledger([(str(f[0]), int(f[1]), int(f[2])) for f in rec.get("files", [])
                                   if isinstance(f, list) and len(f) == 3])
            cleaned.extend(f"removed {f}" for f in files.rollback())
            with contextlib.suppress(OSError):
                (pending_dir() / f"{mid}.json").unlink()
        d = images_root() / mid
        if d.is_dir():
            shutil.rmtree(d, ignore_errors=True)
            cleaned.append(f"removed {d}")
        if storage.discard(mid):
            cleaned.append(f"removed the carried storage {storage.storage_root() / mid}")
        return cleaned

    def rollback(self) -> list[str]:
        """Undo everything this session did on the destination."""
        cleaned = []
        self._stop_lazy()
        if self.restored_pid and kill_tree(self.restored_pid, self.restored_start):
            cleaned.append(f"killed restored pid {self.restored_pid}")
        if (self.pending_root and self.pending_root != self.restored_pid
                and kill_tree(self.pending_root, self.pending_start)):
            cleaned.append(f"killed partly restored pid {self.pending_root}")
        self.restored_pid = self.pending_root = 0
        if self.keeper_pid:
            kill_tree(self.keeper_pid, self.keeper_start)
            self.keeper_pid = 0
        cleaned.extend(f"removed {f}" for f in self.ledger.rollback())
        for fd in self.kept_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.kept_fds = []
        for name in self.created_links:
            if del_link(name):
                cleaned.append(f"deleted {name}")
        self.created_links = []
        if self.pages is not None:
            cleaned.extend(self.pages.stop())
        if self.carried and storage.discard(self.migration_id):
            cleaned.append(f"removed the carried storage {storage.storage_root() / self.migration_id}")
        self.carried = False
        self._drop_pending()
        self._remove_images()
        return cleaned

    def finish(self) -> None:
        """End of session: keep a committed tree, resolve an uncommitted one (see module doc)."""
        try:
            self._finish()
        finally:
            if self.lock_fd is not None:
                os.close(self.lock_fd)  # the id is free for recovery (or a new session) now
                self.lock_fd = None

    def _finish(self) -> None:
        if self.committed:
            if self.pages is not None:
                self.pages.stop()
            self._remove_images()
            return
        if self.restored_pid and self.restore_delivered:
            log.warning("session ended without commit; restored pid %d left pending for recovery",
                        self.restored_pid)
            if self.pages is not None:
                self.pages.stop()
            self._stop_lazy()
            self._remove_images()
            return
        if self.restored_pid:
            log.warning("session ended before the console learned of the restore; rolling back")
        self.rollback()
