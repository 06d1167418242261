"""Page traffic over a channel only the migration can use: no listener anyone else can reach.

Why: a CRIU page server that listens on TCP (even on 127.0.0.1) serves
whoever connects first. Any local user on the destination could connect
before the dump and break the migration (verified with uid 65534), an
``ssh -L`` forward on the source is the same open door, and a lazy-pages
server would hand the container's memory to any local user.

CRIU can work on an already-connected socket instead (``--ps-socket``, RPC
``criu_page_server_info.fd``; swrk only, see :mod:`ctconsole.criu.client`),
on both sides. So:

- **destination**: the agent makes a unix socket in a fresh root-owned 0700
  directory (:class:`PageListener`, ``RUN/pages/H/s``, H a short hash of the id), accepts exactly
  one connection whose peer is root (``SO_PEERCRED``), hands it to its CRIU
  page server and removes the socket and the directory at once. The path is
  the agent's own, derived from the migration id: the console never names it.
- **source**: for ``local`` and ``netns:`` destinations (same filesystem) the
  console connects to that path directly. For ``ssh://`` the agent's control
  master forwards a unix socket in a fresh 0700 directory to it (OpenSSH
  stream-local forwarding: no TCP port on either host, no second login), the
  console connects once and the forward is cancelled and removed at once
  (:func:`open_page_link`). The connected socket goes to the dumping CRIU.

The same connected socket serves every pre-copy round (each ends with
``PS_IOV_FORCE_CLOSE``; the destination starts the next round's page server on
the same connection). Post-copy uses the same channel the other way round
(:meth:`PagePort.accept_only`): the source's lazy dump serves pages on its end
(a CRIU config file with ``ps-socket N``, :mod:`ctconsole.criu.client`) and
the destination's ``criu lazy-pages --page-server --ps-socket N`` asks for them
on the accepted end, so nothing listens for the container's memory either.

While a page server of ours writes, :class:`Quota` watches the migration's
images directory: past the destination policy's ``images.max_bytes`` the page
server is killed (by pid, start time checked) and the connection shut down,
so the dump fails and the source resumes, with the directory holding about
the quota (the watch polls every :data:`QUOTA_POLL` seconds).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import select
import signal
import socket
import stat
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctconsole import process
from ctconsole.config import run_dir
from ctconsole.errors import CtError

SOCKET_NAME = "s"
QUOTA_POLL = 0.01  # s between two looks at the bytes a page server wrote (it writes ~600 MiB/s at most here)
#: sun_path holds 108 bytes with its NUL: a longer path cannot be bound or connected
MAX_SOCKET_PATH = 107


def short_name(text: str) -> str:
    """A short, stable directory name for ``text`` (socket paths must stay under 108 bytes)."""
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _check_length(path: Path) -> None:
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise TransportError(f"the socket path {path} is too long for a unix socket ({MAX_SOCKET_PATH} bytes max)",
                             ["use a shorter run directory (CTCONSOLE_RUN_DIR)"])
_UCRED = struct.Struct("3i")  # pid, uid, gid


class TransportError(CtError):
    """The page channel could not be set up, or its peer was not who it must be."""


def _private_subdir(parent: Path, name: str) -> Path:
    """``parent/name`` created fresh (never reused), root-owned, mode 0700, no symlink on the way
    (``parent`` through :func:`ctconsole.config.private_dir`, the one safe-directory walk)."""
    from ctconsole.config import private_dir

    try:
        parent = private_dir(parent)
    except CtError as exc:
        raise TransportError(exc.message, exc.details) from exc
    d = parent / name
    os.mkdir(d, 0o700)  # FileExistsError: someone else's (or a stale) directory; never reuse it
    os.chmod(d, 0o700)
    st = os.lstat(d)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise TransportError(f"{d} is not our own directory")
    return d


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process that connected ``sock`` (``SO_PEERCRED``; -1 if unknown)."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except OSError:
        return -1
    return int(_UCRED.unpack(raw)[1])


class PageListener:
    """The destination's end: one unix socket in a 0700 directory, one accepted root connection."""

    def __init__(self, migration_id: str, base: Path | None = None) -> None:
        self.path = (base or (run_dir() / "pages")) / short_name(migration_id) / SOCKET_NAME
        _check_length(self.path)
        self.directory = _private_subdir(self.path.parent.parent, self.path.parent.name)
        self.refused: list[int] = []  # uids of peers turned away (a 0700 dir should make this impossible)
        self.connected = False  # a root peer was accepted (see has_peer)
        self._lock = threading.Lock()  # accept vs has_peer: a connection is never "in neither place"
        self._sock: socket.socket | None = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            self._sock.bind(str(self.path))
            os.chmod(self.path, 0o600)
            self._sock.listen(1)
        except OSError as exc:
            self.close()
            raise TransportError(f"cannot listen on {self.path}: {exc.strerror or exc}") from exc

    def accept(self, timeout: float) -> socket.socket:
        """The console's connection (peer uid must be ours); closes the listener once it is there."""
        if self._sock is None:
            raise TransportError("the page listener is closed")
        sock = self._sock
        end = time.monotonic() + timeout
        try:
            while True:
                left = end - time.monotonic()
                if left <= 0:
                    raise TransportError(f"no page connection from the console within {timeout:.0f} s")
                if self._sock is None:  # closed by another thread (rollback)
                    raise TransportError("the page listener was closed")
                ready, _, _ = select.select([sock], [], [], min(left, 0.2))
                if not ready:
                    continue
                with self._lock:
                    conn, _ = sock.accept()
                    uid = peer_uid(conn)
                    if uid != os.geteuid():
                        self.refused.append(uid)
                        conn.close()
                        continue
                    self.connected = True
                conn.setblocking(True)
                return conn
        finally:
            self.close()

    def has_peer(self) -> bool:
        """Did the console connect (accepted, or waiting in the backlog)? Never blocks.

        Why: the dump cannot finish without its page server, so when the
        console asks for the restore (or the next round) and nobody ever
        connected, no pages can have arrived; waiting for the accept would
        only idle until a timeout (the slow fuzz draw of issue #10: each
        restore after a ``prepare`` with a page server sat 60 s in this wait).
        """
        with self._lock:
            if self.connected:
                return True
            if self._sock is None:
                return False
            with contextlib.suppress(OSError, ValueError):
                ready, _, _ = select.select([self._sock], [], [], 0)
                return bool(ready)
            return False

    def close(self) -> None:
        """Stop listening and remove the socket and its directory (idempotent)."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
        with contextlib.suppress(OSError):
            self.path.unlink()
        with contextlib.suppress(OSError):
            self.directory.rmdir()


@dataclass
class PageLink:
    """The source's end: a connected socket for CRIU (``fd``)."""

    sock: socket.socket
    via: str = "direct"  # or "ssh": through a stream-local forward of the agent's control master

    @property
    def fd(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


@dataclass(frozen=True)
class SshMux:
    """How to reach the agent's ssh control master: base argv (ssh + options), socket, target args."""

    argv: list[str]
    control_path: Path
    target: list[str]

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """One ``ssh -O ...`` control command; a client that cannot run or hangs is a failed result, not a raise.

        Why: a ``TimeoutExpired`` or ``OSError`` escaping here skipped the caller's TransportError
        handling (an error without the page channel's words) and, from the cancel in
        :func:`open_page_link`'s ``finally``, lost the socket that had just connected.
        """
        cmd = [*self.argv, "-o", f"ControlPath={self.control_path}", "-o", "BatchMode=yes", *args, *self.target]
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False,
                                  stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return subprocess.CompletedProcess(cmd, 255, "", f"ssh {' '.join(args)}: {exc}")


def mux_for(channel: Any) -> SshMux | None:
    """The :class:`SshMux` of an agent channel (``AgentChannel.ssh_mux``), None for local/netns."""
    got = channel.ssh_mux()
    return SshMux(*got) if got is not None else None


def ssh_target_args(user: str, host: str, port: int) -> list[str]:
    """``[-p PORT] -- [user@]host`` as ssh wants it (brackets of an IPv6 literal removed)."""
    target = host.replace("[", "").replace("]", "")
    return [*(["-p", str(port)] if port else []), "--", f"{user}@{target}" if user else target]


def open_page_link(remote_path: str, mux: SshMux | None = None, name: str = "", timeout: float = 20.0) -> PageLink:
    """Connect to the destination's page socket: directly (same filesystem) or through the ssh master.

    Over ssh the control master forwards a unix socket made for this one
    connect (``-O forward -L HERE:THERE``) in a fresh 0700 directory of ours
    (``RUN/pages-out/H``); as soon as we are connected the forward is
    cancelled and the socket and directory removed, so the window in which
    it exists is milliseconds long and only root could have used it.
    (``ssh -W PATH`` would need no listener at all, but OpenSSH 9.2's mux
    client turns a ``-W`` to a unix path into a shell session.)
    """
    if mux is None:
        return PageLink(_connect(remote_path, timeout, check_far_end=False))
    local = run_dir() / "pages-out" / short_name(name or f"{os.getpid()}-{time.monotonic_ns()}") / SOCKET_NAME
    _check_length(local)
    d = _private_subdir(local.parent.parent, local.parent.name)
    spec = f"{local}:{remote_path}"
    try:
        res = mux.ctl("-O", "forward", "-L", spec)
        if res.returncode != 0:
            raise TransportError("cannot forward the page channel over SSH",
                                 [*res.stderr.strip().splitlines()[-5:],
                                  "the destination's sshd must allow stream-local forwarding "
                                  "(AllowStreamLocalForwarding yes, the default)"])
        try:
            return PageLink(_connect(str(local), timeout), via="ssh")
        finally:
            mux.ctl("-O", "cancel", "-L", spec)
    finally:
        with contextlib.suppress(OSError):
            local.unlink()
        with contextlib.suppress(OSError):
            d.rmdir()


def _connect(path: str, timeout: float, check_far_end: bool = True) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    s.settimeout(timeout)
    try:
        s.connect(path)
        # ssh accepts the local end before the far side connected: a refused remote
        # connect shows up as an immediate EOF, so make sure the peer is still there
        # (a direct connect to the agent's own socket has no far side to wait for)
        ready, _, _ = select.select([s], [], [], 0.05) if check_far_end else ([], [], [])
        if ready and not s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT):
            raise OSError("the far end closed the connection at once (no page socket there?)")
    except OSError as exc:
        s.close()
        raise TransportError(f"cannot connect the page channel ({path}): {exc.strerror or exc}") from exc
    s.settimeout(None)
    return s


def tree_bytes(d: Path) -> int:
    """Bytes of the files under ``d`` (pages a page server wrote count too), symlinks not followed."""
    total = 0
    for root, _dirs, files in os.walk(d):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, f)).st_size
    return total


@dataclass(frozen=True)
class Quota:
    """A byte budget for one migration's images directory while page servers write into it."""

    directory: Path
    max_bytes: int
    message: Callable[[int], str]  # why the page server was stopped, naming the policy key (agent/policy.py)


class PagePort:
    """The destination's page channel for one migration: the listener, the connection, its page servers.

    :meth:`serve` returns the socket path the console must connect to (the
    first time) and starts a CRIU page server on the connection as soon as it
    is accepted, from a helper thread (the console connects, then dumps; the
    agent's request loop is not waiting for either). Pre-copy rounds call
    :meth:`serve` again: the connection exists, the next round's server gets
    it at once and the console keeps its end. :meth:`wait` is ``WAIT_PID`` on
    the current server (every page on disk); :meth:`stop` undoes everything.
    """

    def __init__(self, migration_id: str, base: Path | None = None, quota: Quota | None = None) -> None:
        self.migration_id = migration_id
        self.base = base
        self.quota = quota
        self.over = ""  # set when the quota stopped a page server: the reason, naming the policy key
        self._watch_stop = threading.Event()
        self.listener: PageListener | None = None
        self.conn: socket.socket | None = None
        self.pid = 0  # the current page server's pid (0: none running)
        self.pid_start = 0  # its start time: stop() kills it only while the pid is still that process
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._stack = contextlib.ExitStack()
        self._wait: Callable[[float | None], int] | None = None

    def serve(self, images_dir: Path, accept_timeout: float = 120.0) -> str:
        """Start a page server into ``images_dir``; the socket path to connect to, or "" (connected already)."""
        self._join(accept_timeout)
        if self.conn is not None:
            self._start(images_dir)
            return ""
        self.listener = PageListener(self.migration_id, self.base)
        path = str(self.listener.path)
        self._thread = threading.Thread(target=self._accept_then_start, args=(images_dir, accept_timeout),
                                        name="page-accept", daemon=True)
        self._thread.start()
        return path

    def _accept_then_start(self, images_dir: Path, timeout: float) -> None:
        try:
            assert self.listener is not None
            self.conn = self.listener.accept(timeout)
            self._start(images_dir)
        except BaseException as exc:  # reported by wait(); the dump fails on its own (no answer)
            self._error = exc
            if self.conn is not None:
                with contextlib.suppress(OSError):
                    self.conn.shutdown(socket.SHUT_RDWR)  # the dumping CRIU must not wait forever

    def _start(self, images_dir: Path) -> None:
        from ctconsole.criu.client import CriuClient

        assert self.conn is not None
        if self.over:
            raise TransportError(self.over)
        # each file the page server writes stops just past what is left of the quota (RLIMIT_FSIZE);
        # the watch below catches the sum of several files
        left = self.quota.max_bytes - tree_bytes(self.quota.directory) + 1 if self.quota is not None else 0
        info, self._wait = self._stack.enter_context(
            CriuClient(timeout=30).page_server_child(images_dir, ps_fd=self.conn.fileno(),
                                                     max_file_bytes=max(left, 1) if self.quota is not None else 0))
        self.pid, self.pid_start = info.pid, process.start_time(info.pid)
        if self.quota is not None:
            self._watch_stop = threading.Event()
            threading.Thread(target=self._watch, args=(info.pid, self.pid_start, self._watch_stop),
                             name="page-quota", daemon=True).start()

    def _watch(self, pid: int, started: int, stop: threading.Event) -> None:
        """Stop the page server ``pid`` (ours: start time checked) once the images outgrow the quota."""
        assert self.quota is not None
        while True:
            stopped = stop.wait(QUOTA_POLL)
            total = tree_bytes(self.quota.directory)  # once more after the end: what it last wrote counts
            if total > self.quota.max_bytes:
                self.over = self.quota.message(total)
                if started and process.start_time(pid) == started:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                conn = self.conn
                if conn is not None:  # the dumping CRIU gets EPIPE at once, not a full socket buffer
                    with contextlib.suppress(OSError):
                        conn.shutdown(socket.SHUT_RDWR)
                return
            if stopped or not process.alive(pid, started):
                return  # done (a zombie until WAIT_PID): what it wrote is counted again at restore

    def accept_only(self, accept_timeout: float = 120.0) -> str:
        """Post-copy: the socket path to connect to; the connection is kept for :meth:`take`, no page server.

        The lazy-pages daemon (``criu lazy-pages``, which has no RPC) gets the
        accepted socket as ``--ps-socket``; the source's lazy dump serves
        pages on the console's end of the same connection.
        """
        if self.listener is not None or self.conn is not None or self._thread is not None:
            raise TransportError("the page channel of this migration is already in use")
        self.listener = PageListener(self.migration_id, self.base)
        self._thread = threading.Thread(target=self._accept_only, args=(accept_timeout,), name="lazy-accept",
                                        daemon=True)
        self._thread.start()
        return str(self.listener.path)

    def _accept_only(self, timeout: float) -> None:
        try:
            assert self.listener is not None
            self.conn = self.listener.accept(timeout)
        except BaseException as exc:  # reported by take()
            self._error = exc

    def take(self, timeout: float) -> socket.socket:
        """The accepted connection (post-copy); fails at once when the console never connected."""
        if (self._thread is not None and self.conn is None and self.listener is not None
                and not self.listener.has_peer()):
            self.stop()
            raise TransportError("the console never connected to the page channel: no pages can be asked for")
        self._join(timeout)
        if self.conn is None:
            raise TransportError("no page connection from the console")
        return self.conn

    def _join(self, timeout: float | None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TransportError("the page connection was not accepted in time")
            self._thread = None
        if self._error is not None:
            exc, self._error = self._error, None
            if isinstance(exc, CtError):
                raise exc
            raise TransportError(f"the page server could not start: {exc}")

    @property
    def active(self) -> bool:
        return self._thread is not None or self._wait is not None

    def wait(self, timeout: float) -> int | None:
        """Wait for the current page server to exit (it does once the dump sent its last page).

        Returns its wait status, or None when no server was started. Raises
        :class:`TransportError` when the console never connected, or the
        server could not start.
        """
        if (self._thread is not None and self.conn is None and self.listener is not None
                and not self.listener.has_peer()):
            self.stop()
            raise TransportError("the console never connected to the page channel: no pages can have arrived")
        self._join(timeout)
        if self._wait is None:
            return None
        try:
            return self._wait(timeout)
        finally:
            self._watch_stop.set()
            self._wait = None
            self.pid = self.pid_start = 0
            self._stack.close()

    def stop(self) -> list[str]:
        """Rollback / end of session: kill a running page server, close the connection and the listener."""
        done: list[str] = []
        self._watch_stop.set()
        if self.listener is not None:
            self.listener.close()  # an accept still waiting gives up at its next poll
        if self._thread is not None:
            # first: a page server it is starting must not start on a connection closed (or reused) below
            self._thread.join(2.0)
            self._thread = None
        if self.over:
            done.append(f"stopped the page server: {self.over}")
        if self.pid:
            if self.pid_start and process.start_time(self.pid) == self.pid_start:  # not a reused pid
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                done.append(f"stopped page server {self.pid}")
            self.pid = self.pid_start = 0
        self._wait = None
        with contextlib.suppress(Exception):
            self._stack.close()  # reaps the page server through its swrk
        if self.conn is not None:
            with contextlib.suppress(OSError):
                self.conn.close()
            self.conn = None
        self._error = None
        return done
