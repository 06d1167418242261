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
the same connection), and the lazy-pages transfer of post-copy when CRIU allows
it (see :func:`lazy_config`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import select
import shutil
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

from ctconsole.config import run_dir
from ctconsole.errors import CtError

SOCKET_NAME = "s"
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
    """``parent/name`` created fresh (never reused), root-owned, mode 0700, no symlink on the way."""
    parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = os.lstat(parent)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise TransportError(f"{parent} must be a directory owned by uid {os.geteuid()} and not "
                             "writable by others")
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
                conn, _ = sock.accept()
                uid = peer_uid(conn)
                if uid != os.geteuid():
                    self.refused.append(uid)
                    conn.close()
                    continue
                conn.setblocking(True)
                return conn
        finally:
            self.close()

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
        cmd = [*self.argv, "-o", f"ControlPath={self.control_path}", "-o", "BatchMode=yes", *args, *self.target]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False,
                              stdin=subprocess.DEVNULL)


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
        return PageLink(_connect(remote_path, timeout))
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


def _connect(path: str, timeout: float) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    s.settimeout(timeout)
    try:
        s.connect(path)
        # ssh accepts the local end before the far side connected: a refused remote
        # connect shows up as an immediate EOF, so make sure the peer is still there
        ready, _, _ = select.select([s], [], [], 0.05)
        if ready and not s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT):
            raise OSError("the far end closed the connection at once (no page socket there?)")
    except OSError as exc:
        s.close()
        raise TransportError(f"cannot connect the page channel ({path}): {exc.strerror or exc}") from exc
    s.settimeout(None)
    return s


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

    def __init__(self, migration_id: str, base: Path | None = None) -> None:
        self.migration_id = migration_id
        self.base = base
        self.listener: PageListener | None = None
        self.conn: socket.socket | None = None
        self.pid = 0  # the current page server's pid (0: none running)
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
        info, self._wait = self._stack.enter_context(
            CriuClient(timeout=30).page_server_child(images_dir, ps_fd=self.conn.fileno()))
        self.pid = info.pid

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
        self._join(timeout)
        if self._wait is None:
            return None
        try:
            return self._wait(timeout)
        finally:
            self._wait = None
            self.pid = 0
            self._stack.close()

    def stop(self) -> list[str]:
        """Rollback / end of session: kill a running page server, close the connection and the listener."""
        done: list[str] = []
        if self.listener is not None:
            self.listener.close()  # an accept still waiting gives up at its next poll
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            done.append(f"stopped page server {self.pid}")
            self.pid = 0
        self._wait = None
        with contextlib.suppress(Exception):
            self._stack.close()  # reaps the page server through its swrk
        if self.conn is not None:
            with contextlib.suppress(OSError):
                self.conn.close()
            self.conn = None
        if self._thread is not None:
            self._thread.join(2.0)
            self._thread = None
        self._error = None
        return done


def lazy_config(directory: Path, ps_fd: int) -> Path:
    """A CRIU config file that sets ``ps-socket`` for a lazy (post-copy) dump over RPC.

    Why a config file: over RPC, CRIU ignores ``ps.fd`` when ``lazy_pages`` is set
    (``cr-service.c`` reads ``ps`` only ``if (!opts.lazy_pages)``), so without
    this the source's lazy page server would listen on TCP, on every address.
    ``config_file`` is parsed after the request's options and may set
    ``ps-socket``; the lazy page server then reuses that socket
    (``cr_page_server``: "Reusing ps socket"). Written 0600 in our private dir.
    """
    path = directory / "lazy-ps.conf"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"ps-socket {ps_fd}\n")
    return path


def remove_tree(path: Path) -> None:
    """Best-effort removal of a directory we made (rollback)."""
    shutil.rmtree(path, ignore_errors=True)
