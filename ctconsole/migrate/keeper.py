"""The restore parent: restores a tree as its own child, reaps it, and keeps what it needs.

Why a process of its own, and why it runs the restore itself:

- **A living parent.** CRIU restores a task's parent-death signal
  (``PR_SET_PDEATHSIG``; LXC sets SIGKILL on the container init, so the
  container dies with its monitor). A detached restore leaves the root a child
  of the ``criu swrk`` worker, which exits at once: the kernel sends the signal
  and the restored init dies right after the restore (CRIU even warns: "Root
  task has pdeath_sig configured, so it will receive one _right_after restore
  on CRIU exit"). With ``rst_sibling`` CRIU clones the root with CLONE_PARENT,
  so it becomes a child of whoever spawned ``criu swrk``; the signal is tied to
  the parent *thread*, so that process must stay, single-threaded, for as long
  as the tree lives. The agent session ends after a migration (and over ssh
  its session goes away), so the keeper is double-forked into its own session,
  spawns ``criu swrk`` from its main thread, reaps the root, and exits when the
  root does. Trees without a parent-death signal lose nothing by having it.
- **Kept descriptors.** CRIU hands the master of an orphaned pseudo-terminal
  (orphan-pts-master) to whoever asked for the restore; when the last copy
  closes, the restored tree gets a hangup. The keeper holds it and passes a
  duplicate by SCM_RIGHTS to root on its console socket (``ctconsole console``).
- **Re-created stdio pipes.** A container whose stdio are pipes held by its
  runtime (runc under containerd-shim or conmon) cannot get the old peer back
  on another host. The agent makes new pipes, CRIU plugs the container's end
  in (``inherit_fd pipe:[INO]``), and the keeper holds the other end: output is
  appended to a log file (nothing is lost, the writer never gets SIGPIPE),
  stdin stays open and silent (no EOF).

Every keeper writes ``RUN/keepers/PID.json`` while it lives (``ctconsole keepers``).
The older mode (``--pid``/``--socket``/``--fd``: only hold a PTY master for an
existing tree) is kept for callers that restored by themselves.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctconsole import process
from ctconsole.migrate import cgroups

#: biggest control message (restore options JSON); SOCK_SEQPACKET keeps message boundaries
MAX_MSG = 1 << 20
#: pipe relay directions, from the container's point of view (InheritFd.mode)
PIPE_WRITE = "write"  # the container writes (stdout/stderr): the keeper reads and logs
PIPE_READ = "read"  # the container reads (stdin): the keeper holds the write end open


def keepers_dir() -> Path:
    from ctconsole.config import private_dir, run_dir

    return private_dir(run_dir() / "keepers")


def logs_dir() -> Path:
    from ctconsole.config import private_dir, state_dir

    return private_dir(state_dir() / "container-logs")


def list_keepers() -> list[dict[str, Any]]:
    """Living keepers (their records); stale records (keeper gone or pid reused) are removed."""
    out = []
    for rec_path in sorted(keepers_dir().glob("*.json")):
        try:
            rec = json.loads(rec_path.read_text())
        except (OSError, ValueError):
            continue
        pid = int(rec.get("keeper", 0))
        if not (pid and process.alive(pid) and process.start_time(pid) == int(rec.get("keeper_start", -1))):
            with contextlib.suppress(OSError):
                rec_path.unlink()
            continue
        rec["root_running"] = process.alive(int(rec.get("root", 0)))
        out.append(rec)
    return out


# -- agent side ---------------------------------------------------------------------------
@dataclass
class ParentResult:
    """What a restore through a keeper gave: the root (a child of the keeper) and the keeper."""

    pid: int
    start: int
    keeper_pid: int
    keeper_start: int
    elapsed: float
    console_socket: str = ""
    logs: list[str] = field(default_factory=list)


class KeeperError(Exception):
    """The restore through the keeper failed; ``criu`` says whether CRIU itself refused."""

    def __init__(self, message: str, details: list[str], criu: bool) -> None:
        super().__init__(message)
        self.message, self.details, self.criu = message, details, criu


def _send(sock: socket.socket, obj: dict[str, Any], fds: list[int] | None = None) -> None:
    data = json.dumps(obj).encode()
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.send(data)


def _recv(sock: socket.socket, timeout: float | None) -> tuple[dict[str, Any] | None, list[int]]:
    sock.settimeout(timeout)
    data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MSG, 64)
    if not data:
        for fd in fds:
            os.close(fd)
        return None, []
    obj = json.loads(data)
    return (obj if isinstance(obj, dict) else None), fds


class KeeperHandle:
    """A keeper started ahead of its restore (the agent does it at ``prepare``, before the freeze).

    Why: the keeper is a Python process; its interpreter start, the double
    fork and the import of the CRIU client cost ~0.1 s (more on a loaded
    host), and a keeper started inside ``post-dump`` is that much more
    downtime. A started keeper only waits on its control socket: it restores
    nothing until it is sent a request, and it exits as soon as the socket
    closes (:meth:`close`, or the agent dying), so an aborted migration leaves
    nothing behind.
    """

    def __init__(self) -> None:
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            argv = [sys.executable, "-m", "ctconsole.migrate.keeper", "--parent", str(theirs.fileno())]
            self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
                argv, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
        except BaseException:
            self.sock.close()
            raise
        finally:
            theirs.close()
        self.pid = 0
        self.start = 0

    def ready(self, timeout: float = 30.0) -> tuple[int, int]:
        """Wait for the keeper's hello: (pid, start time). Raises KeeperError if it never came."""
        if self.pid:
            return self.pid, self.start
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)  # the middle process exits at once: the keeper is nobody's child
            self.proc = None
        try:
            hello, _ = _recv(self.sock, timeout)
        except (OSError, ValueError):
            hello = None
        if not hello or not hello.get("pid"):
            raise KeeperError("the restore parent (keeper) did not start", [], criu=False)
        self.pid, self.start = int(hello["pid"]), int(hello.get("start", 0))
        return self.pid, self.start

    def close(self, used: bool = False) -> None:
        """Let the keeper go: it exits when its control socket closes, unless it restored a tree (``used``).

        An unused keeper is waited for (bounded, then killed by pid and start
        time), so a rolled-back migration leaves no process of ours behind
        when the agent's session ends.
        """
        if not used:
            with contextlib.suppress(KeeperError):
                self.ready(10)
        with contextlib.suppress(OSError):
            self.sock.close()
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
            self.proc = None
        if used or not self.pid:
            return
        end = time.monotonic() + 5
        while process.alive(self.pid) and process.start_time(self.pid) == self.start and time.monotonic() < end:
            time.sleep(0.01)
        if process.alive(self.pid) and process.start_time(self.pid) == self.start:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


def restore_with_parent(
    opts: Mapping[str, Any],
    images_dir: Path,
    inherit_fds: Mapping[str, int] | None = None,
    relays: list[tuple[str, str, int]] | None = None,
    migration_id: str = "",
    timeout: float = 120.0,
    on_note: Callable[[str, int], bool | None] | None = None,
    keeper: KeeperHandle | None = None,
) -> ParentResult:
    """RESTORE through a fresh keeper, which becomes (and stays) the root's parent.

    ``inherit_fds`` maps CRIU inherit keys to fds open here (sent to the keeper,
    which hands them to its ``criu swrk``); ``relays`` are ``(key, direction, fd)``
    peers of re-created stdio pipes the keeper keeps (direction PIPE_WRITE or
    PIPE_READ, as the container sees it). Our copies stay ours (close them).
    ``on_note(script, pid)`` sees CRIU's notifications as they come (a caller
    can kill a root that was announced but never reported); CRIU waits for its
    answer, and False or an exception fails that step (CRIU aborts the restore). Raises
    :class:`KeeperError` on failure (the keeper then exits by itself). ``keeper``:
    one started earlier (:class:`KeeperHandle`; used up by this call), else a
    new one is started here.
    """
    handle = keeper if keeper is not None else KeeperHandle()
    ours = handle.sock
    try:
        keeper_pid, keeper_start = handle.ready(30)
        inherit = dict(inherit_fds or {})
        relay_list = list(relays or [])
        req = {"opts": dict(opts), "images": str(images_dir), "id": migration_id, "timeout": timeout,
               "inherit": list(inherit), "relays": [[k, d] for k, d, _ in relay_list]}
        _send(ours, req, [*inherit.values(), *(fd for _, _, fd in relay_list)])
        end = time.monotonic() + timeout + 30
        while True:
            left = end - time.monotonic()
            if left <= 0:
                # a hung restore: stop the keeper (its CRIU sees the socket close); the caller kills
                # the root CRIU announced, if any
                if process.start_time(keeper_pid) == keeper_start:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(keeper_pid, signal.SIGKILL)
                raise KeeperError(f"the restore did not finish within {timeout:.0f} s", [], criu=False)
            try:
                msg, fds = _recv(ours, left)
            except TimeoutError:
                continue
            for fd in fds:
                os.close(fd)
            if msg is None:
                raise KeeperError(f"the restore parent (pid {keeper_pid}) exited without an answer", [],
                                  criu=False)
            if "note" in msg:
                # answered before CRIU goes on: a handler (setup-namespaces) may refuse the step
                answer: dict[str, Any] = {"ack": True}
                try:
                    if on_note is not None and on_note(str(msg["note"]), int(msg.get("pid") or 0)) is False:
                        answer = {"ack": False, "error": f"the {msg['note']} step was refused"}
                except Exception as exc:
                    answer = {"ack": False, "error": str(exc)}
                _send(ours, answer)
                continue
            if not msg.get("ok"):
                raise KeeperError(str(msg.get("message", "restore failed")), list(msg.get("details", [])),
                                  criu=bool(msg.get("criu")))
            return ParentResult(pid=int(msg["pid"]), start=int(msg.get("start", 0)), keeper_pid=keeper_pid,
                                keeper_start=keeper_start, elapsed=float(msg.get("elapsed", 0.0)),
                                console_socket=str(msg.get("console", "")), logs=list(msg.get("logs", [])))
    finally:
        handle.close(used=True)


# -- keeper side ----------------------------------------------------------------------------
def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:60] or "x"


def _run_parent(ctl_fd: int) -> int:
    """The keeper: double fork, restore as the root's parent, then keep/relay/reap until it exits."""
    if os.fork() > 0:
        os._exit(0)  # the middle process: reaped by the agent, so the keeper is re-parented away
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the ssh session of the agent may hang up
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.chdir("/")  # pin no directory (the agent's cwd, an images dir) while the tree lives
    # imported before the hello: a keeper started ahead of the freeze (KeeperHandle) has paid for
    # them when the restore request comes
    from ctconsole.criu.client import CriuClient
    from ctconsole.errors import CtError

    ctl = socket.socket(fileno=ctl_fd)
    _send(ctl, {"pid": os.getpid(), "start": process.start_time(os.getpid())})
    try:
        # no timeout: a keeper started at prepare waits out the whole dump; it exits when the
        # agent closes the socket (EOF) or dies
        req, fds = _recv(ctl, None)
    except (OSError, ValueError):
        return 2
    if not req:
        return 2
    keys = list(req.get("inherit", []))
    relays = [(str(k), str(d)) for k, d in req.get("relays", [])]
    inherit = dict(zip(keys, fds[: len(keys)], strict=True))
    peers = fds[len(keys):]
    mid = _safe(str(req.get("id", ""))) or str(os.getpid())

    def note(n: Any) -> bool:
        _send(ctl, {"note": n.script, "pid": n.pid or 0})
        answer, extra = _recv(ctl, float(req.get("timeout", 120.0)))
        for fd in extra:
            os.close(fd)
        if not answer:
            raise CtError("the agent went away during the restore")
        if not answer.get("ack"):
            raise CtError(str(answer.get("error", f"the {n.script} step was refused")))
        return True

    opts = dict(req.get("opts", {}))
    opts["rst_sibling"] = True  # the root is cloned with CLONE_PARENT: our child
    try:
        res = CriuClient(timeout=float(req.get("timeout", 120.0))).restore(
            opts, Path(req["images"]), on_notify=note, inherit_fds=inherit)
    except CtError as exc:
        with contextlib.suppress(OSError):
            _send(ctl, {"ok": False, "message": exc.message, "details": list(exc.details),
                        "criu": type(exc).__name__ == "CriuError"})
        return 1
    except Exception as exc:  # the agent must get an answer, never a silent EOF
        with contextlib.suppress(OSError):
            _send(ctl, {"ok": False, "message": f"restore parent: {type(exc).__name__}: {exc}", "details": []})
        return 1
    finally:
        for fd in inherit.values():
            with contextlib.suppress(OSError):
                os.close(fd)
    root = res.pid
    console = ""
    if res.kept_fds:
        from ctconsole.config import private_dir, run_dir

        console = str(private_dir(run_dir() / "consoles") / f"{mid}.sock")
    logs = []
    out_log = logs_dir() / f"{mid}.out"
    if any(d == PIPE_WRITE for _, d in relays):
        logs.append(str(out_log))
    srv = _listen(console) if console else None
    rec_path = keepers_dir() / f"{os.getpid()}.json"
    rec = {"keeper": os.getpid(), "keeper_start": process.start_time(os.getpid()), "root": root,
           "root_start": process.start_time(root), "migration_id": req.get("id", ""), "console": console,
           "logs": logs, "pipes": [k for k, _ in relays], "since": time.time()}
    with contextlib.suppress(OSError):
        rec_path.write_text(json.dumps(rec))
    with contextlib.suppress(OSError):
        _send(ctl, {"ok": True, "pid": root, "start": rec["root_start"], "elapsed": res.elapsed,
                    "console": console, "logs": logs})
    ctl.close()
    try:
        _keep(root, srv, res.kept_fds, list(zip(relays, peers, strict=False)), out_log)
    finally:
        if srv is not None:
            srv.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(console)
        with contextlib.suppress(OSError):
            rec_path.unlink()
        # the tree is gone: the empty cgroup root a same-kernel migration made for it goes too
        for cg in {str(r.get("path", "")) for r in opts.get("cg_root") or [] if isinstance(r, dict)}:
            cgroups.remove_empty(cg, str(req.get("id", "")), wait=2.0)
    return 0


def _listen(path: str) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    old = os.umask(0o177)
    try:
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    srv.listen(4)
    return srv


def _lend(srv: socket.socket, fds: list[int]) -> None:
    conn, _ = srv.accept()
    with conn:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        if int.from_bytes(creds[4:8], sys.byteorder) != 0:
            return
        with contextlib.suppress(OSError):
            socket.send_fds(conn, [b"pty"], fds[:1])


def _keep(root: int, srv: socket.socket | None, kept: list[int], relays: list[tuple[tuple[str, str], int]],
          out_log: Path) -> None:
    """Until the root exits: lend the PTY master, log what the container writes, then reap the root."""
    try:
        pidfd = os.pidfd_open(root)
    except OSError:  # already gone (or never ours): reap what is there
        with contextlib.suppress(ChildProcessError):
            os.waitpid(root, os.WNOHANG)
        return
    readers = [fd for (_k, d), fd in relays if d == PIPE_WRITE]
    log_fd = -1
    if readers:
        try:
            log_fd = os.open(out_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        except OSError:  # still drain the pipe, so the writer never blocks or gets SIGPIPE
            log_fd = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    try:
        while True:
            watch: list[Any] = [pidfd, *readers, *([srv] if srv is not None else [])]
            ready, _, _ = select.select(watch, [], [], 5.0)
            for r in ready:
                if r is srv and srv is not None:
                    with contextlib.suppress(OSError):  # a bad client must not end the keeper (and the tree)
                        _lend(srv, kept)
                elif r in readers:
                    data = b""
                    with contextlib.suppress(OSError):
                        data = os.read(r, 65536)
                    if data:
                        with contextlib.suppress(OSError):  # a full disk loses output, not the tree
                            os.write(log_fd, data)
                    else:  # every writer closed it: nothing more will come
                        readers.remove(r)
            if pidfd in ready:
                break
        for r in readers:  # what the tree wrote just before it exited
            os.set_blocking(r, False)
            with contextlib.suppress(OSError):
                while data := os.read(r, 65536):
                    os.write(log_fd, data)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(root, 0)
    finally:
        os.close(pidfd)
        if log_fd >= 0:
            os.close(log_fd)


# -- the PTY-only mode (a tree restored by someone else) -------------------------------------
def serve(pid: int, path: str, fds: list[int]) -> int:
    srv = _listen(path)
    try:
        while process.alive(pid):
            ready, _, _ = select.select([srv], [], [], 1.0)
            if ready:
                _lend(srv, fds)
    finally:
        srv.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    return 0


def fetch_master(path: str, timeout: float = 5.0) -> int:
    """Connect to a keeper and receive a duplicate of the PTY master."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    with s:
        s.connect(path)
        _msg, fds, _flags, _addr = socket.recv_fds(s, 16, 4)
    if not fds:
        raise OSError("the keeper sent no descriptor")
    return fds[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ctconsole-keeper")
    ap.add_argument("--parent", type=int, help="restore-parent mode: control socket fd (from restore_with_parent)")
    ap.add_argument("--pid", type=int)
    ap.add_argument("--socket")
    ap.add_argument("--fd", type=int, action="append", default=[])
    a = ap.parse_args(argv)
    if a.parent is not None:
        return _run_parent(a.parent)
    if a.pid is None or not a.socket:
        ap.error("--pid and --socket are needed without --parent")
    return serve(a.pid, a.socket, a.fd)


if __name__ == "__main__":
    sys.exit(main())
