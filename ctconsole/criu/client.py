"""Typed CRIU RPC calls: VERSION, FEATURE_CHECK, CHECK, DUMP, PRE_DUMP, RESTORE, PAGE_SERVER, CPUINFO.

Why a client of our own rather than pycriu: the migration engine must answer
notifications (acknowledge ``post-dump`` only once the destination runs; fail
it to roll back), keep the file descriptors CRIU passes by SCM_RIGHTS (the
orphan-pts-master keeps a restored console alive), hand our own descriptors
to ``criu swrk`` for ``inherit_fd``, and turn every failure into a
:class:`CriuError` carrying CRIU's own log lines with explanations.

Options are plain dicts keyed by ``criu_opts`` field names (see
``proto/rpc.proto``), so what feasibility and remap compute can be shown to
the operator and journaled exactly as sent.
"""

from __future__ import annotations

import contextlib
import errno as errno_mod
import os
import resource
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from ctconsole.criu import rpc
from ctconsole.criu.errors import explain
from ctconsole.criu.images import DumpStats, ImageError, RestoreStats, read_stats
from ctconsole.errors import CtError, UsageError
from ctconsole.proto import rpc_pb2

# The harmless line every run logs on hosts without CAP_SYS_RESOURCE; it even
# lands in cr_errmsg on success, so it is never an error by itself.
HARMLESS_PATTERNS = ("rlimit: Can't setup RLIMIT_NOFILE",)

REQ_NAMES = {v.number: v.name for v in rpc_pb2.DESCRIPTOR.enum_types_by_name["criu_req_type"].values}


@dataclass(frozen=True)
class CriuVersion:
    major: int
    minor: int
    sublevel: int = 0
    gitid: str = ""
    name: str = ""
    extra: int = 0

    @property
    def text(self) -> str:
        base = f"{self.major}.{self.minor}"
        if self.sublevel:
            base += f".{self.sublevel}"
        return base

    def as_tuple(self) -> tuple[int, int, int]:
        return (self.major, self.minor, self.sublevel)


@dataclass(frozen=True)
class Features:
    mem_track: bool
    lazy_pages: bool
    pidfd_store: bool


@dataclass(frozen=True)
class Notify:
    """A notification from CRIU; ``fds`` arrived by SCM_RIGHTS and now belong to the handler."""

    script: str
    pid: int | None = None
    fds: tuple[int, ...] = ()


@dataclass(frozen=True)
class NotifyReply:
    success: bool = True
    external: tuple[str, ...] = ()  # only honoured for query-ext-files


NotifyHandler = Callable[[Notify], "NotifyReply | bool | None"]


def error_lines(log_path: Path | None, limit: int = 40) -> list[str]:
    """The ``Error (...)`` lines of a CRIU log, without the harmless rlimit one."""
    if log_path is None:
        return []
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        if "Error (" in line and not any(p in line for p in HARMLESS_PATTERNS):
            out.append(line.strip())
    return out[:limit]


class CriuError(CtError):
    """A CRIU request that failed: what was asked, CRIU's errno and its own log lines, explained."""

    def __init__(
        self,
        request: str,
        message: str,
        cr_errno: int | None = None,
        log_path: Path | None = None,
        log_errors: list[str] | None = None,
        extra: list[str] | None = None,
    ) -> None:
        self.request = request
        self.cr_errno = cr_errno
        self.log_path = log_path
        self.log_errors = list(log_errors if log_errors is not None else error_lines(log_path))
        self.explanations = _explain_all(self.log_errors)
        details: list[str] = list(extra or [])
        for line in self.log_errors[:12]:
            details.append(line)
            why = _explain_one(line)
            if why:
                details.append(f"  -> {why}")
        if log_path is not None:
            details.append(f"full CRIU log: {log_path}")
        head = f"CRIU {request} failed: {message}"
        if cr_errno:
            head += f" ({errno_mod.errorcode.get(cr_errno, str(cr_errno))}: {os.strerror(cr_errno)})"
        super().__init__(head, details)


def _explain_one(line: str) -> str | None:
    return explain(line)


def _explain_all(lines: list[str]) -> list[str]:
    out = []
    for line in lines:
        why = _explain_one(line)
        if why and why not in out:
            out.append(why)
    return out


@dataclass
class DumpResult:
    log_path: Path
    stats: DumpStats | None
    elapsed: float
    notifications: list[str] = field(default_factory=list)


@dataclass
class RestoreResult:
    pid: int
    log_path: Path
    stats: RestoreStats | None
    elapsed: float
    kept_fds: list[int] = field(default_factory=list)
    notifications: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PageServerInfo:
    pid: int
    port: int
    address: str


def build_opts(opts: Mapping[str, Any] | None) -> rpc_pb2.criu_opts:
    """Turn a dict of ``criu_opts`` field names into the message (enum names or ints accepted)."""
    msg = rpc_pb2.criu_opts(images_dir_fd=-1)
    if not opts:
        return msg
    try:
        json_format.ParseDict(dict(opts), msg, ignore_unknown_fields=False)
    except json_format.ParseError as exc:
        raise UsageError(f"invalid CRIU option: {exc}") from exc
    return msg


def opts_to_dict(msg: rpc_pb2.criu_opts) -> dict[str, Any]:
    """The inverse of :func:`build_opts`, for journals and previews."""
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


class _DirFd:
    """An open directory fd CRIU reaches through /proc/<our pid>/fd/N."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise CtError(f"cannot open directory {path}: {exc.strerror or exc}") from exc

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


class CriuClient:
    """One object per CRIU installation; each call opens its own conversation.

    ``transport`` is ``"swrk"`` (default: spawn ``criu swrk``) or ``"service"``
    (connect to ``address``). ``timeout`` bounds how long we wait for any one
    message from CRIU (None = forever); on expiry the swrk is killed.
    """

    def __init__(
        self,
        transport: str = "swrk",
        address: str | Path | None = None,
        criu: str | None = None,
        timeout: float | None = None,
    ) -> None:
        if transport not in ("swrk", "service"):
            raise UsageError(f"unknown CRIU transport '{transport}' (use swrk or service)")
        if transport == "service" and not address:
            raise UsageError("the service transport needs the service socket address")
        self.transport = transport
        self.address = address
        self.criu = criu
        self.timeout = timeout

    # -- plumbing ----------------------------------------------------------------
    def connect(self, inherit_fds: tuple[int, ...] = ()) -> rpc.Connection:
        if self.transport == "service":
            if inherit_fds:
                raise UsageError("inherit_fd needs the swrk transport (CRIU refuses it over a service)")
            assert self.address is not None
            return rpc.open_service(self.address)
        return rpc.open_swrk(self.criu, inherit_fds)

    def _exchange(
        self,
        conn: rpc.Connection,
        req: rpc_pb2.criu_req,
        on_notify: NotifyHandler | None,
        log_path: Path | None,
        received_fds: list[int],
        notifications: list[str],
        timeout: float | None = None,
    ) -> rpc_pb2.criu_resp:
        """Send ``req`` and run the notify loop until the final reply."""
        name = REQ_NAMES.get(req.type, str(req.type))
        handler_errors: list[str] = []
        conn.send(req)
        while True:
            try:
                got = conn.recv(timeout if timeout is not None else self.timeout)
            except rpc.TransportError as exc:
                if conn.proc is not None and conn.proc.poll() is None:
                    conn.proc.kill()
                raise CriuError(name, exc.message, log_path=log_path, extra=[*handler_errors, *exc.details]) from exc
            resp = got.resp
            if resp.type != rpc_pb2.NOTIFY:
                for fd in got.fds:  # fds on a final reply are unexpected; do not leak them
                    os.close(fd)
                if handler_errors and not resp.success:
                    raise CriuError(
                        name, "rolled back because " + "; ".join(handler_errors), log_path=log_path,
                        log_errors=error_lines(log_path),
                    )
                return resp
            received_fds.extend(got.fds)
            note = Notify(
                script=resp.notify.script,
                pid=resp.notify.pid if resp.notify.HasField("pid") else None,
                fds=tuple(got.fds),
            )
            notifications.append(note.script)
            reply = NotifyReply()
            if on_notify is not None:
                try:
                    answer = on_notify(note)
                except Exception as exc:  # a handler failure must answer CRIU, never strand it
                    handler_errors.append(f"{note.script} handler failed: {exc}")
                    answer = False
                if answer is False:
                    if not handler_errors:
                        handler_errors.append(f"the {note.script} step was refused")
                    reply = NotifyReply(success=False)
                elif isinstance(answer, NotifyReply):
                    reply = answer
                    if not answer.success and not handler_errors:
                        handler_errors.append(f"the {note.script} step was refused")
            ack = rpc_pb2.criu_req(type=rpc_pb2.NOTIFY, notify_success=reply.success)
            if reply.external and note.script == "query-ext-files":
                ack.opts.images_dir_fd = -1
                ack.opts.external.extend(reply.external)
            conn.send(ack)

    @staticmethod
    def _check(resp: rpc_pb2.criu_resp, name: str, log_path: Path | None) -> None:
        if resp.type == rpc_pb2.EMPTY and not resp.success:
            raise CriuError(name, "CRIU rejected the request (bad options or sequence)",
                            cr_errno=resp.cr_errno or None, log_path=log_path)
        if not resp.success:
            msg = "see the log lines below" if error_lines(log_path) else (
                resp.cr_errmsg if resp.cr_errmsg and not any(p in resp.cr_errmsg for p in HARMLESS_PATTERNS)
                else "CRIU reported failure")
            raise CriuError(name, msg, cr_errno=resp.cr_errno or None, log_path=log_path)

    def _simple(self, req: rpc_pb2.criu_req, log_path: Path | None = None) -> rpc_pb2.criu_resp:
        with self.connect() as conn:
            resp = self._exchange(conn, req, None, log_path, [], [])
        self._check(resp, REQ_NAMES.get(req.type, "?"), log_path)
        return resp

    # -- probes --------------------------------------------------------------------
    def version(self) -> CriuVersion:
        resp = self._simple(rpc_pb2.criu_req(type=rpc_pb2.VERSION))
        v = resp.version
        return CriuVersion(v.major_number, v.minor_number, v.sublevel, v.gitid, v.name, v.extra)

    def feature_check(self) -> Features:
        req = rpc_pb2.criu_req(type=rpc_pb2.FEATURE_CHECK)
        req.features.mem_track = True
        req.features.lazy_pages = True
        req.features.pidfd_store = True
        f = self._simple(req).features
        return Features(bool(f.mem_track), bool(f.lazy_pages), bool(f.pidfd_store))

    def check(self, work_dir: Path | None = None) -> None:
        """Run CRIU's own ``check``; raises :class:`CriuError` with the log lines on failure."""
        with _maybe_tmpdir(work_dir) as wd:
            d = _DirFd(wd)
            try:
                req = rpc_pb2.criu_req(type=rpc_pb2.CHECK)
                req.opts.images_dir_fd = d.fd
                req.opts.log_file = "check.log"
                req.opts.log_level = 4
                self._simple(req, wd / "check.log")
            finally:
                d.close()

    def cpuinfo_dump(self, images_dir: Path) -> Path:
        """Write ``cpuinfo.img`` for this CPU into ``images_dir`` (sent to the destination)."""
        self._cpuinfo(rpc_pb2.CPUINFO_DUMP, images_dir, "cpuinfo-dump.log")
        return images_dir / "cpuinfo.img"

    def cpuinfo_check(self, images_dir: Path) -> None:
        """Check ``images_dir/cpuinfo.img`` against this CPU; CriuError(cr_errno=ENOTSUP) if incompatible."""
        self._cpuinfo(rpc_pb2.CPUINFO_CHECK, images_dir, "cpuinfo-check.log")

    def _cpuinfo(self, kind: rpc_pb2.criu_req_type, images_dir: Path, log: str) -> None:
        d = _DirFd(images_dir)
        try:
            req = rpc_pb2.criu_req(type=kind)
            req.opts.images_dir_fd = d.fd
            req.opts.log_file = log
            req.opts.log_level = 4
            self._simple(req, images_dir / log)
        finally:
            d.close()

    # -- dump / restore ----------------------------------------------------------
    def _prepare(
        self,
        kind: rpc_pb2.criu_req_type,
        opts: Mapping[str, Any] | None,
        images: _DirFd,
        work: _DirFd | None,
        log_file: str,
    ) -> tuple[rpc_pb2.criu_req, Path]:
        req = rpc_pb2.criu_req(type=kind)
        req.opts.CopyFrom(build_opts(opts))
        req.opts.images_dir_fd = images.fd
        if work is not None:
            req.opts.work_dir_fd = work.fd
        if not req.opts.HasField("log_file"):
            req.opts.log_file = log_file
        if not req.opts.HasField("log_level"):
            req.opts.log_level = 4
        if not req.opts.HasField("notify_scripts"):
            req.opts.notify_scripts = True
        log_path = (work.path if work is not None else images.path) / req.opts.log_file
        return req, log_path

    def dump(
        self,
        opts: Mapping[str, Any],
        images_dir: Path,
        work_dir: Path | None = None,
        on_notify: NotifyHandler | None = None,
        timeout: float | None = None,
        ps_fd: int | None = None,
    ) -> DumpResult:
        """DUMP the tree rooted at ``opts['pid']``. With notify handlers, ``post-dump``
        answered False resumes the tasks and raises :class:`CriuError`.

        ``ps_fd``: an already-connected stream socket to the destination's page
        server (see :meth:`page_server_child`); the pages go down it while the
        dump runs, and nothing listens anywhere (CRIU's ``--ps-socket``). With
        ``opts['lazy_pages']`` (post-copy) the dump's lazy page server serves
        the destination's ``criu lazy-pages`` on that socket instead
        (:func:`lazy_ps_config`: over RPC only a config file can say so).
        """
        if not opts.get("pid"):
            raise UsageError("a DUMP needs opts['pid'] (self-dump is not supported)")
        images, work = _DirFd(images_dir), (_DirFd(work_dir) if work_dir else None)
        t0 = time.monotonic()
        notes: list[str] = []
        fds: list[int] = []
        stack = contextlib.ExitStack()
        try:
            req, log_path = self._prepare(rpc_pb2.DUMP, opts, images, work, "dump.log")
            if opts.get("lazy_pages") and ps_fd is not None:
                # not in the images dir: everything there is sent to the destination
                cfg_dir = stack.enter_context(_maybe_tmpdir(work.path if work else None))
                req.opts.ClearField("ps")
                req.opts.config_file = str(lazy_ps_config(cfg_dir, ps_fd))
            else:
                _set_ps_fd(req, ps_fd)
            with self.connect(_fds(ps_fd)) as conn:
                resp = self._exchange(conn, req, on_notify, log_path, fds, notes, timeout)
            self._check(resp, "DUMP", log_path)
        finally:
            stack.close()
            images.close()
            if work:
                work.close()
        return DumpResult(log_path, _stats(log_path.parent / "stats-dump"), time.monotonic() - t0, notes)

    def restore(
        self,
        opts: Mapping[str, Any],
        images_dir: Path,
        work_dir: Path | None = None,
        on_notify: NotifyHandler | None = None,
        inherit_fds: Mapping[str, int] | None = None,
        timeout: float | None = None,
    ) -> RestoreResult:
        """RESTORE from ``images_dir``; ``inherit_fds`` maps CRIU keys to fds open here.

        Descriptors CRIU sends (orphan-pts-master) are returned in ``kept_fds``:
        the caller must keep them open as long as the restored tree needs them.
        """
        images, work = _DirFd(images_dir), (_DirFd(work_dir) if work_dir else None)
        inherit = dict(inherit_fds or {})
        t0 = time.monotonic()
        notes: list[str] = []
        fds: list[int] = []
        try:
            req, log_path = self._prepare(rpc_pb2.RESTORE, opts, images, work, "restore.log")
            for key, fd in inherit.items():
                req.opts.inherit_fd.add(key=key, fd=fd)
            with self.connect(tuple(inherit.values())) as conn:
                try:
                    resp = self._exchange(conn, req, on_notify, log_path, fds, notes, timeout)
                    self._check(resp, "RESTORE", log_path)
                except CriuError:
                    for fd in fds:
                        with contextlib.suppress(OSError):
                            os.close(fd)
                    raise
        finally:
            images.close()
            if work:
                work.close()
        return RestoreResult(
            pid=resp.restore.pid if resp.HasField("restore") else -1,
            log_path=log_path,
            stats=_stats(log_path.parent / "stats-restore"),
            elapsed=time.monotonic() - t0,
            kept_fds=fds,
            notifications=notes,
        )

    @contextlib.contextmanager
    def iterative(self, timeout: float | None = None, ps_fd: int | None = None) -> Iterator[IterativeDump]:
        """PRE_DUMP rounds then the final DUMP on one connection (libcriu's dump_iters).

        Needs soft-dirty tracking (FEATURE_CHECK mem_track); CRIU aborts otherwise.
        ``ps_fd``: one connected page-server socket for every round (the swrk
        inherits it once; each round ends with ``PS_IOV_FORCE_CLOSE``, so the
        destination starts the next round's page server on the same connection).
        """
        conn = self.connect(_fds(ps_fd))
        try:
            yield IterativeDump(self, conn, timeout, ps_fd)
        finally:
            conn.close()

    def page_server(self, images_dir: Path, address: str = "127.0.0.1", port: int = 0,
                    opts: Mapping[str, Any] | None = None) -> PageServerInfo:
        """Start a daemonised page server writing into ``images_dir``; it exits after one dump."""
        images = _DirFd(images_dir)
        try:
            req, log_path = self._prepare(rpc_pb2.PAGE_SERVER, opts, images, None, "page-server.log")
            req.opts.ClearField("notify_scripts")
            req.opts.ps.address = address
            req.opts.ps.port = port
            resp = self._simple(req, log_path)
        finally:
            images.close()
        return PageServerInfo(pid=resp.ps.pid, port=resp.ps.port, address=address)

    @contextlib.contextmanager
    def page_server_child(self, images_dir: Path, address: str = "127.0.0.1", port: int = 0,
                          ps_fd: int | None = None, max_file_bytes: int = 0,
                          ) -> Iterator[tuple[PageServerInfo, Callable[[float | None], int]]]:
        """PAGE_SERVER_CHLD with keep_open: yields (info, wait) where wait() is WAIT_PID on it.

        ``ps_fd``: serve the one already-accepted connection on this socket
        instead of listening on ``address:port`` (CRIU's ``--ps-socket``; the
        fd is inherited by the ``criu swrk`` child, which is the only RPC
        mode CRIU accepts it in). ``info.port`` is then 0. Our copy of the fd
        can be closed once this returns: the page server holds its own.

        ``max_file_bytes``: ``RLIMIT_FSIZE`` of the ``criu swrk`` (and so of the
        page server it forks): no file it writes grows past it, the write
        that would is refused and the page server ends (SIGXFSZ, no core).
        The destination's image quota uses it as a hard stop per file.
        """
        images = _DirFd(images_dir)
        conn = self.connect(_fds(ps_fd))
        try:
            if max_file_bytes > 0 and conn.proc is not None:  # (a service's workers are not ours to limit)
                _limit_files(conn.proc.pid, max_file_bytes)
            req, log_path = self._prepare(rpc_pb2.PAGE_SERVER_CHLD, None, images, None, "page-server.log")
            req.opts.ClearField("notify_scripts")
            if ps_fd is None:
                req.opts.ps.address = address
                req.opts.ps.port = port
            else:
                _set_ps_fd(req, ps_fd)
                address = ""
            req.keep_open = True
            resp = self._exchange(conn, req, None, log_path, [], [])
            self._check(resp, "PAGE_SERVER_CHLD", log_path)
            info = PageServerInfo(pid=resp.ps.pid, port=resp.ps.port, address=address)

            def wait(timeout: float | None = None) -> int:
                wreq = rpc_pb2.criu_req(type=rpc_pb2.WAIT_PID, pid=info.pid)
                wresp = self._exchange(conn, wreq, None, log_path, [], [], timeout)
                self._check(wresp, "WAIT_PID", log_path)
                return int(wresp.status)

            yield info, wait
        finally:
            images.close()
            conn.close()


class IterativeDump:
    """State of a PRE_DUMP ... DUMP sequence on one swrk connection."""

    def __init__(self, client: CriuClient, conn: rpc.Connection, timeout: float | None,
                 ps_fd: int | None = None) -> None:
        self.client = client
        self.conn = conn
        self.timeout = timeout
        self.ps_fd = ps_fd
        self.rounds = 0

    def pre_dump(self, opts: Mapping[str, Any], images_dir: Path) -> DumpResult:
        images = _DirFd(images_dir)
        t0 = time.monotonic()
        try:
            req, log_path = self.client._prepare(rpc_pb2.PRE_DUMP, opts, images, None, "pre-dump.log")
            req.opts.ClearField("notify_scripts")  # PRE_DUMP sends no notifications
            _set_ps_fd(req, self.ps_fd)
            resp = self.client._exchange(self.conn, req, None, log_path, [], [], self.timeout)
            self.client._check(resp, "PRE_DUMP", log_path)
        finally:
            images.close()
        self.rounds += 1
        return DumpResult(log_path, _stats(log_path.parent / "stats-dump"), time.monotonic() - t0)

    def dump(self, opts: Mapping[str, Any], images_dir: Path, on_notify: NotifyHandler | None = None,
             ) -> DumpResult:
        """The final DUMP (pages down the session's ``ps_fd`` when it has one)."""
        images = _DirFd(images_dir)
        t0 = time.monotonic()
        notes: list[str] = []
        try:
            req, log_path = self.client._prepare(rpc_pb2.DUMP, opts, images, None, "dump.log")
            _set_ps_fd(req, self.ps_fd)
            resp = self.client._exchange(self.conn, req, on_notify, log_path, [], notes, self.timeout)
            self.client._check(resp, "DUMP", log_path)
        finally:
            images.close()
        return DumpResult(log_path, _stats(log_path.parent / "stats-dump"), time.monotonic() - t0, notes)


def _limit_files(pid: int, max_bytes: int) -> None:
    """RLIMIT_FSIZE (and no core files) for ``pid``, before it forks the process that writes."""
    resource.prlimit(pid, resource.RLIMIT_CORE, (0, 0))
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (max_bytes, max_bytes))


def _fds(fd: int | None) -> tuple[int, ...]:
    return () if fd is None else (fd,)


def _set_ps_fd(req: rpc_pb2.criu_req, fd: int | None) -> None:
    """Point the request's page-server transfer at an already-connected socket.

    Why a connected socket: a page server that listens (on TCP, even on
    loopback) serves whoever connects first, so any local user could break a
    migration or, for a lazy page server, read the container's memory. CRIU
    takes the fd number as it is in the ``criu swrk`` child (``pass_fds``
    keeps numbers) and ignores address and port (``cr-service.c``:
    ``opts.ps_socket = req->ps->fd``, swrk only; ``page-xfer.c`` then never
    calls ``setup_tcp_server``/``setup_tcp_client``).
    """
    if fd is None:
        return
    if fd <= 2:
        raise UsageError(f"page-server socket fd {fd} would clash with CRIU's stdio")
    req.opts.ps.ClearField("address")
    req.opts.ps.ClearField("port")
    req.opts.ps.fd = fd


def lazy_ps_config(directory: Path, ps_fd: int) -> Path:
    """A CRIU config file saying ``ps-socket FD``: the lazy (post-copy) dump serves pages on that socket.

    Why a config file: over RPC, CRIU ignores ``ps`` (address, port and fd)
    when ``lazy_pages`` is set (``cr-service.c`` reads it only ``if
    (!opts.lazy_pages)``), so without this the lazy page server would listen
    on TCP, on every address, for anyone. ``config_file`` is parsed after the
    request's options and may set ``ps-socket``; ``cr_page_server`` then
    reuses that socket ("Reusing ps socket") and never calls
    ``setup_tcp_server``. Written 0600 into the dump's own private directory;
    the fd number is the same in the ``criu swrk`` child (``pass_fds``).
    """
    if ps_fd <= 2:
        raise UsageError(f"page-server socket fd {ps_fd} would clash with CRIU's stdio")
    path = directory / "lazy-ps.conf"
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"ps-socket {ps_fd}\n")
    return path


def _stats(path: Path) -> Any:
    try:
        return read_stats(path) if path.exists() else None
    except ImageError:
        return None


@contextlib.contextmanager
def _maybe_tmpdir(path: Path | None) -> Iterator[Path]:
    if path is not None:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="ctconsole-criu-") as d:
        yield Path(d)
