"""One agent session's state on the destination, and what arrives before the restore.

Split out of :mod:`ctconsole.migrate.destination` (which dispatches the
requests) so each part reads in one sitting: this module holds the
session (:class:`Session`: its migration id and lock, its private images
directory, the page channel, the pending record) and the requests that fill
it: ``prepare``, ``link`` (same filesystem), ``file`` (chunks over the
channel), ``round`` (pre-copy) and ``carry`` (storage).
:mod:`ctconsole.migrate.destination_restore` builds the restore, commit and
rollback on top of it.

Why the checks sit where the data arrives: image names are plain names
created ``O_EXCL|O_NOFOLLOW`` in the session's own 0700 directory; bytes are
counted against the policy's ``images.max_bytes`` as they arrive, chunks and
page-server pages alike (:class:`ctconsole.migrate.transport.PagePort` stops a
page server of ours that writes past it); a migration id is flocked by the
session that prepared it, so no other session can abort, commit or prepare it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hmac
import json
import logging
import os
import re
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ctconsole import process
from ctconsole.agent import policy as agent_policy
from ctconsole.agent import safefs
from ctconsole.agent.channel import write_all
from ctconsole.config import private_dir, run_dir, state_dir
from ctconsole.errors import CtError
from ctconsole.migrate import storage, transport
from ctconsole.migrate.keeper import KeeperHandle
from ctconsole.migrate.restoreenv import Refused
from ctconsole.proto import agent_pb2

log = logging.getLogger("ctconsole.agent")

NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
MIGRATION_ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
MAX_FILES = 20000
MAX_ROUNDS = 64  # pre-copy rounds per migration (the console's policy stops far earlier)


def check_name(name: str) -> str:
    """A plain file name inside the images dir, or Refused (path escape attempts included)."""
    if not NAME_RE.fullmatch(name) or ".." in name:
        raise Refused("bad-name", f"refusing file name {name!r}: only plain names are accepted")
    return name


def continue_tree(pid: int, started: int = 0) -> None:
    """SIGCONT a tree restored with leave_stopped (children first would not matter: all get it)."""
    if pid <= 1 or not started or process.start_time(pid) != started:
        return
    for p in process.descendants(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGCONT)


def kill_tree(pid: int, started: int = 0, timeout: float = 5.0) -> bool:
    """SIGKILL a restored tree we created (checked by start time against pid reuse)."""
    if pid <= 1 or process.pid_free(pid):
        return False
    if not started or process.start_time(pid) != started:
        return False  # without a matching start time the pid may belong to someone else now
    pids = process.descendants(pid)
    for p in reversed(pids):
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    process.wait_exited(pid, timeout)
    return True


def link_exists(name: str) -> bool:
    return os.path.exists(f"/sys/class/net/{name}")


def pending_dir() -> Path:
    return private_dir(run_dir() / "agent-pending")


def images_root() -> Path:
    """Where received images go (``CTCONSOLE_IMAGES_DIR``, default <state_dir>/images)."""
    v = os.environ.get("CTCONSOLE_IMAGES_DIR")
    return private_dir(Path(v) if v else state_dir() / "images")


def del_link(name: str) -> bool:
    if not NAME_RE.fullmatch(name) or not link_exists(name):
        return False
    res = subprocess.run(["ip", "link", "del", "dev", name], capture_output=True, timeout=10, check=False)
    return res.returncode == 0


class Session:
    """What one agent session holds: its id and lock, images dir, page channel, received files."""

    def __init__(self) -> None:
        self.migration_id = ""
        self.images_dir: Path | None = None
        self.dir_fd: int | None = None
        self.open_files: dict[str, tuple[int, int]] = {}  # name -> (fd, size)
        self.files_done: set[str] = set()
        self.restored_pid = 0
        self.restored_start = 0
        self.restored_root = ""  # the root the tree was restored into (runtime adoption, adopt.py)
        self.restore_delivered = False
        self.committed = False
        self.created_links: list[str] = []
        self.keeper_pid = 0
        self.kept_fds: list[int] = []
        self.pending_root = 0  # root pid CRIU announced during a restore that has not returned yet
        self.held = False  # restored stopped; SIGCONT at commit
        self.restore_tried = False  # a restore started processes (one per session: destination_restore.py)
        # the page channel: one unix socket in a 0700 dir, one accepted connection, a CRIU page
        # server per dump (or pre-copy round) on it (migrate/transport.py); nothing listens on TCP
        self.pages: transport.PagePort | None = None
        self.carried = False  # storage was carried into STATE/storage/ID (removed on rollback)
        self.lazy_proc: subprocess.Popen[bytes] | None = None
        self.lazy_channel = False  # post-copy: self.pages holds the lazy-pages connection, no page server
        self.rounds = 0  # pre-copy rounds announced (directories pre/1..N in the images dir)
        self.round_fds: dict[int, int] = {}  # round -> directory fd (0 = the images dir: dir_fd)
        self.keeper: KeeperHandle | None = None  # started at prepare, before the source freezes
        self.shared_fd: int | None = None  # the console's images dir, when it shares our filesystem
        self.linked = False  # some images are hard links to the console's files (never modify them)
        self.keeper_start = 0
        self.pending_start = 0
        self.ledger = safefs.Ledger()  # files created for inherited fds: removed on rollback
        self.image_bytes = 0  # bytes received as FileChunks (images.max_bytes)
        self.lock_fd: int | None = None  # flock on RUN/agent-locks/ID while this session owns the id
        self.policy = agent_policy.Policy()
        self.policy_error: agent_policy.PolicyError | None = None
        try:
            self.policy = agent_policy.load()
        except agent_policy.PolicyError as exc:
            self.policy_error = exc
            log.error("agent policy unusable, refusing every request: %s %s", exc.message, "; ".join(exc.details))
        self.connect_refusals = [] if self.policy_error else agent_policy.check_connect(self.policy)

    @staticmethod
    def _enforce(refusals: Sequence[agent_policy.Refusal]) -> None:
        if refusals:
            raise Refused("policy", str(refusals[0]), [str(r) for r in refusals[1:]])

    def on_prepare(self, msg: agent_pb2.PrepareRequest) -> agent_pb2.PrepareReply:
        if not MIGRATION_ID_RE.fullmatch(msg.migration_id):
            raise Refused("bad-request", f"bad migration id {msg.migration_id!r}")
        if self.images_dir is not None:
            raise Refused("state", "this session already prepared a migration")
        # the lock first, then the checks: a refused prepare leaves no lock (nor fd) behind, and no
        # session can write the pending record between the look and the lock
        lock = self._lock_id(msg.migration_id)
        d = images_root() / msg.migration_id
        try:
            if (pending_dir() / f"{msg.migration_id}.json").exists():
                raise Refused("state", f"a pending restore for {msg.migration_id} exists: recover or abort it first")
            try:
                d.mkdir(mode=0o700)
            except FileExistsError as exc:
                raise Refused("state", f"images directory for {msg.migration_id} already exists") from exc
        except BaseException:
            os.close(lock)
            raise
        self.lock_fd, self.migration_id = lock, msg.migration_id
        os.chmod(d, 0o700)
        self.images_dir = d
        self.dir_fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        reply = agent_pb2.PrepareReply(images_dir=str(d))
        # the restore parent is a Python process: start it now, while the source still runs
        try:
            self.keeper = KeeperHandle()
        except OSError as exc:  # the restore starts one itself then (slower, same result)
            log.warning("cannot start the restore parent ahead of time: %s", exc)
        if msg.shared_token:
            self.shared_fd = self._open_shared(msg.migration_id, msg.shared_token)
            reply.shared_fs = self.shared_fd is not None
            if reply.shared_fs:
                log.info("the console's images are on this filesystem: they will be linked, not copied")
        if msg.lazy_pages:
            reply.page_socket = self._open_lazy_channel()
        elif msg.page_server and not reply.shared_fs:
            reply.page_socket = self._start_page_server(d)
            reply.page_server_pid = self.pages.pid if self.pages else 0  # 0 until the console connected
        return reply

    def _open_shared(self, mid: str, token: str) -> int | None:
        """The console's images dir as an fd, if it is on our filesystem and proven to be the console's.

        Why derived, not sent: the console only names its migration; the
        path is this agent's own ``STATE/work/ID``, so a console cannot point
        the agent at any other directory. It must be a directory (no symlink)
        owned by us and private (0700, like every images dir), hold the token
        the console sent (so a same-named dir on another host, or a stale one,
        never matches), and sit on the device of our images dir (hard links
        cannot cross filesystems).
        """
        if len(token) < 32 or self.images_dir is None:
            return None
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            wfd = os.open(state_dir() / "work" / mid, flags)
        except OSError:
            return None
        try:
            ifd = os.open("images", flags, dir_fd=wfd)
            try:
                dev = os.stat(self.images_dir).st_dev
                for st in (os.fstat(wfd), os.fstat(ifd)):
                    if st.st_uid != os.geteuid() or st.st_mode & 0o077 or st.st_dev != dev:
                        raise OSError("not a private directory of ours on this filesystem")
                tfd = os.open("share.token", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=wfd)
                try:
                    tst = os.fstat(tfd)
                    got = os.read(tfd, 256) if stat.S_ISREG(tst.st_mode) and tst.st_uid == os.geteuid() else b""
                finally:
                    os.close(tfd)
                if not hmac.compare_digest(got.strip(), token.encode()):
                    raise OSError("token mismatch")
            except OSError:
                os.close(ifd)
                return None
            return ifd
        except OSError:
            return None
        finally:
            os.close(wfd)

    def on_link(self, msg: agent_pb2.LinkRequest) -> agent_pb2.LinkReply:
        """Hard-link the console's image files into our images dir (same filesystem: no bytes move).

        Why this keeps the rules: names are checked like FileChunk names and
        created O_EXCL-style (link fails on an existing name) in our own 0700
        dir; only regular files of ours are linked, never symlinks; the
        console's copy stays intact for its rollback (CRIU only reads images
        on restore; ``auto_dedup``, which punches holes, is refused at restore
        while links exist). All or nothing: a failure removes this request's
        links, and the console then sends the bytes instead.
        """
        if self.shared_fd is None or self.dir_fd is None:
            raise Refused("state", "the console's images are not shared with this agent")
        if self.restored_pid:
            raise Refused("state", "already restored")
        dir_fd = self.dir_fd if not msg.round else self.round_fds.get(msg.round)
        if dir_fd is None:
            raise Refused("state", f"round {msg.round} was not announced")
        src_fd = self.shared_fd
        made: list[str] = []
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            if msg.round:
                pre = os.open("pre", flags, dir_fd=self.shared_fd)
                try:
                    src_fd = os.open(str(msg.round), flags, dir_fd=pre)
                finally:
                    os.close(pre)
            total = 0
            for raw in msg.names:
                base = check_name(raw)
                name = base if not msg.round else f"pre/{msg.round}/{base}"
                if name in self.files_done or name in self.open_files:
                    raise Refused("state", f"{name} was already received")
                if len(self.files_done) + len(self.open_files) >= MAX_FILES:
                    raise Refused("too-large", "too many files")
                st = os.stat(base, dir_fd=src_fd, follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                    raise Refused("bad-name", f"{name} is not a regular image file of ours")
                try:
                    os.link(base, base, src_dir_fd=src_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
                except FileExistsError as exc:
                    raise Refused("state", f"{name} already exists in the images directory") from exc
                made.append(base)
                self.files_done.add(name)
                total += st.st_size
        except BaseException as exc:
            for base in made:
                with contextlib.suppress(OSError):
                    os.unlink(base, dir_fd=dir_fd)
                self.files_done.discard(base if not msg.round else f"pre/{msg.round}/{base}")
            if isinstance(exc, OSError):
                raise Refused("failed", f"cannot link the images: {exc}") from exc
            raise
        finally:
            if src_fd != self.shared_fd:
                os.close(src_fd)
        self.linked = self.linked or bool(made)
        return agent_pb2.LinkReply(files=len(made), bytes=total)

    def _start_page_server(self, d: Path) -> str:
        """A CRIU page server writing into ``d`` on the migration's own connection; the socket to connect to.

        Why no TCP: a listening page server serves whoever connects first (any
        local user). The console reaches this socket in a root-only directory
        directly or through its SSH master (migrate/transport.py); "" means the
        connection of an earlier pre-copy round carries this one too.
        """
        if self.lazy_channel:
            raise Refused("state", "this migration's page channel carries lazy pages (post-copy)")
        if self.pages is None:
            self.pages = transport.PagePort(self.migration_id, quota=self._quota())
        try:
            path = self.pages.serve(d)
        except (transport.TransportError, OSError) as exc:
            raise Refused("failed", f"cannot set up the page channel: {exc}") from exc
        log.info("page server into %s on %s", d, path or "the existing page connection")
        return path

    def _quota(self) -> transport.Quota | None:
        """``images.max_bytes`` while page servers write into this session's images dir (transport.Quota)."""
        if self.images_dir is None:
            return None
        policy = self.policy

        def why(total: int) -> str:
            return "; ".join(str(r) for r in agent_policy.check_image_bytes(policy, total))

        return transport.Quota(self.images_dir, policy.max_image_bytes, why)

    def _open_lazy_channel(self) -> str:
        """Post-copy: the socket the console connects once; the connection goes to ``criu lazy-pages``.

        Why the same channel as the page server: the source's lazy page server
        hands out the container's memory to whoever asks, so it must not
        listen anywhere; the console gives its end of this connection to the
        lazy dump (migrate/transport.py, criu/client.py lazy_ps_config).
        """
        self.pages = transport.PagePort(self.migration_id)
        self.lazy_channel = True
        try:
            path = self.pages.accept_only()
        except (transport.TransportError, OSError) as exc:
            raise Refused("failed", f"cannot set up the page channel for the lazy pages: {exc}") from exc
        log.info("lazy-pages channel on %s", path)
        return path

    def on_round(self, msg: agent_pb2.RoundRequest) -> agent_pb2.RoundReply:
        """Pre-copy: a directory per PRE_DUMP round, then the final dump's, with CRIU's ``parent`` links.

        Why the agent makes the links: CRIU follows ``parent`` when a pagemap
        entry says "in parent" (on restore, and in the page server that
        dedups against the previous round), and the symlinks themselves are
        not sent. The previous round's page server is waited for first, so
        its pages are on disk before they become a parent.
        """
        if self.images_dir is None or self.dir_fd is None:
            raise Refused("state", "prepare first")
        if self.restored_pid:
            raise Refused("state", "already restored")
        self._wait_page_server(60.0)
        if msg.round:
            if msg.round != self.rounds + 1 or msg.round > MAX_ROUNDS:
                raise Refused("state", f"round {msg.round} announced after round {self.rounds}")
            pre = self.images_dir / "pre"
            with contextlib.suppress(FileExistsError):
                pre.mkdir(mode=0o700)
            d = pre / str(msg.round)
            d.mkdir(mode=0o700)
            if msg.round > 1:
                os.symlink(f"../{msg.round - 1}", d / "parent")
            self.round_fds[msg.round] = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
            self.rounds = msg.round
        else:
            if not self.rounds or msg.parent != self.rounds:
                raise Refused("state", f"final dump on round {msg.parent}, but {self.rounds} round(s) were made")
            d = self.images_dir
            with contextlib.suppress(FileExistsError):
                os.symlink(f"pre/{self.rounds}", d / "parent")
        reply = agent_pb2.RoundReply(images_dir=str(d))
        if msg.page_server:
            reply.page_socket = self._start_page_server(d)
            reply.page_server_pid = self.pages.pid if self.pages else 0  # 0 until the console connected
        return reply

    def on_file(self, msg: agent_pb2.FileChunk) -> agent_pb2.FileAck:
        if self.dir_fd is None:
            raise Refused("state", "prepare first")
        dir_fd = self.dir_fd if not msg.round else self.round_fds.get(msg.round)
        if dir_fd is None:
            raise Refused("state", f"round {msg.round} was not announced")
        base = check_name(msg.name)
        name = base if not msg.round else f"pre/{msg.round}/{base}"  # key of open_files / files_done
        if name in self.files_done:
            raise Refused("state", f"{name} was already received")
        if name not in self.open_files:
            if len(self.files_done) + len(self.open_files) >= MAX_FILES:
                raise Refused("too-large", "too many files")
            if msg.offset != 0:
                raise Refused("bad-request", f"{name}: first chunk must start at offset 0")
            try:
                fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                             dir_fd=dir_fd)
            except FileExistsError as exc:
                raise Refused("state", f"{name} already exists in the images directory") from exc
            self.open_files[name] = (fd, 0)
        fd, size = self.open_files[name]
        if msg.offset != size:
            raise Refused("bad-request", f"{name}: chunk at offset {msg.offset}, expected {size}")
        over = agent_policy.check_image_bytes(self.policy, self.image_bytes + len(msg.data))
        if over:
            os.close(fd)
            del self.open_files[name]
            with contextlib.suppress(OSError):
                os.unlink(base, dir_fd=dir_fd)
            self._enforce(over)
        self.image_bytes += len(msg.data)
        write_all(fd, msg.data)
        size += len(msg.data)
        self.open_files[name] = (fd, size)
        if msg.last:
            os.close(fd)
            del self.open_files[name]
            self.files_done.add(name)
        return agent_pb2.FileAck(name=name, size=size)

    def on_carry(self, msg: agent_pb2.CarryRequest) -> agent_pb2.CarryReply:
        """Storage that follows the container: this host decides where each item goes (migrate/storage.py).

        A real (not dry-run) request belongs to the prepared migration and
        creates its fresh ``STATE/storage/ID``; rollback removes it again.
        """
        if not msg.dry_run:
            if self.images_dir is None or msg.migration_id != self.migration_id:
                raise Refused("state", "carry belongs to the prepared migration: prepare first")
            if self.restored_pid:
                raise Refused("state", "already restored")
        try:
            reply = storage.answer(msg)
        except storage.StorageError as exc:
            raise Refused("bad-request", exc.message, exc.details) from exc
        if not msg.dry_run and not reply.problems:
            self.carried = self.carried or any(t.action == "carry" for t in reply.targets)
        return reply

    def _wait_page_server(self, timeout: float) -> bool:
        """The page server exits after the dump's last page; wait so every page is on disk (True if one ran)."""
        if self.pages is None or not self.pages.active or self.lazy_channel:
            return False
        pid = self.pages.pid
        try:
            status = self.pages.wait(timeout)
        except transport.TransportError as exc:  # nobody connected, or the server could not start
            if self.pages.over:
                raise Refused("policy", self.pages.over) from exc
            raise CtError(f"the page server{f' (pid {pid})' if pid else ''} got no pages: {exc.message}",
                          exc.details) from exc
        except CtError as exc:
            raise CtError(f"the page server{f' (pid {pid})' if pid else ''} did not finish within {timeout:.0f} s: "
                          f"{exc.message}", exc.details) from exc
        if self.pages.over:  # stopped by the quota while the dump wrote
            raise Refused("policy", self.pages.over)
        if status:
            raise CtError(f"the page server failed (wait status {status:#x})", self._log_errors("page-server.log"))
        return True

    def _log_errors(self, name: str) -> list[str]:
        if self.images_dir is None:
            return []
        try:
            text = (self.images_dir / name).read_text(errors="replace")
        except OSError:
            return []
        return [ln.strip() for ln in text.splitlines() if "Error (" in ln and "RLIMIT" not in ln][:8]

    def _keep_log(self, name: str) -> str:
        """Copy a CRIU log out of the images dir before rollback removes it."""
        if self.images_dir is None or not (self.images_dir / name).is_file():
            return ""
        dest = private_dir(state_dir() / "agent-logs") / f"{self.migration_id}.{name}"
        try:
            shutil.copy2(self.images_dir / name, dest)
        except OSError:
            return ""
        return str(dest)

    def _pending_record(self, mid: str) -> dict[str, Any] | None:
        if not MIGRATION_ID_RE.fullmatch(mid):
            return None
        try:
            data = json.loads((pending_dir() / f"{mid}.json").read_text())
            return data if isinstance(data, dict) else None
        except (OSError, json.JSONDecodeError):
            return None

    def _write_pending(self) -> None:
        rec = {"pid": self.restored_pid, "start": self.restored_start, "links": self.created_links,
               "held": self.held,
               "keeper": self.keeper_pid, "keeper_start": self.keeper_start,
               "files": [list(f) for f in self.ledger.files], "time": time.time()}
        p = pending_dir() / f"{self.migration_id}.json"
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(rec))
        os.replace(tmp, p)

    def _drop_pending(self) -> None:
        with contextlib.suppress(OSError):
            (pending_dir() / f"{self.migration_id}.json").unlink()

    def _lock_id(self, mid: str) -> int:
        """Take the migration id's lock (flock, non-blocking) or refuse: a live session owns it."""
        path = private_dir(run_dir() / "agent-locks") / f"{mid}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise Refused("state", f"migration {mid} is in use by a live agent session") from None
        return fd

    def _remove_images(self) -> None:
        if self.keeper is not None:  # started at prepare, never used: it exits when its socket closes
            self.keeper.close()
            self.keeper = None
        if self.shared_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.shared_fd)
            self.shared_fd = None
        for fd, _ in self.open_files.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.open_files.clear()
        for fd in self.round_fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.round_fds.clear()
        if self.dir_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.dir_fd)
            self.dir_fd = None
        if self.images_dir is not None:
            shutil.rmtree(self.images_dir, ignore_errors=True)
            self.images_dir = None
