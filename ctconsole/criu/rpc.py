"""CRIU's RPC transport: one protobuf message per SOCK_SEQPACKET datagram.

Two transports, one :class:`Connection`:

- ``swrk``: we create a socketpair, spawn ``criu swrk <fd>`` holding the other
  end, and talk to that process alone. One conversation per process. It is the
  only mode in which CRIU accepts ``inherit_fd``, ``rst_sibling`` and ``ps.fd``,
  so it is the default.
- ``service``: connect to a running ``criu service --address PATH``; CRIU
  forks a worker per connection. :func:`start_service` runs one with its
  socket in a root-only directory, because CRIU chmods the socket 0666.

Why the care with receiving: a notification may carry a file descriptor by
SCM_RIGHTS (the orphan-pts-master), so every read uses ``recvmsg`` with room
for descriptors; a zero-byte read means CRIU closed the connection (a refused
request or a crashed worker), which must not be parsed as an empty message;
and bytes that are not a valid ``criu_resp`` become a clear error instead of
a protobuf traceback.
"""

from __future__ import annotations

import array
import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import DecodeError, EncodeError

from ctconsole.config import criu_binary, private_dir, run_dir
from ctconsole.errors import CtError
from ctconsole.proto import rpc_pb2

# Largest message we accept from CRIU; real replies are a few hundred bytes.
MAX_MESSAGE = 1 << 20
MAX_FDS_PER_MESSAGE = 16


class TransportError(CtError):
    """The conversation with CRIU broke: closed socket, garbage reply, dead process."""


@dataclass
class Received:
    resp: rpc_pb2.criu_resp
    fds: list[int]


class Connection:
    """A SEQPACKET conversation with one CRIU worker.

    ``proc`` is the ``criu swrk`` child when we spawned it (None for service
    connections); ``stderr_path`` collects its stderr so a crash can be
    explained.
    """

    def __init__(
        self,
        sock: socket.socket,
        proc: subprocess.Popen[bytes] | None = None,
        stderr_path: Path | None = None,
        label: str = "swrk",
    ) -> None:
        self.sock = sock
        self.proc = proc
        self.stderr_path = stderr_path
        self.label = label

    # -- sending / receiving -------------------------------------------------
    def send(self, req: rpc_pb2.criu_req) -> None:
        try:
            data = req.SerializeToString()
        except EncodeError as exc:  # a required field left unset: our bug, say so plainly
            raise TransportError(f"cannot encode the request for CRIU: {exc}") from exc
        try:
            self.sock.send(data)
        except OSError as exc:
            raise TransportError(
                f"CRIU ({self.label}) is not listening any more: {exc.strerror or exc}",
                self._stderr_tail(),
            ) from exc

    def recv(self, timeout: float | None = None) -> Received:
        self.sock.settimeout(timeout)
        try:
            size = len(self.sock.recv(1, socket.MSG_TRUNC | socket.MSG_PEEK))
            if size == 0:
                # a zero-length datagram is indistinguishable from EOF on SEQPACKET:
                # consume it and report the closed connection
                self.sock.recv(1)
                raise TransportError(self._closed_message(), self._stderr_tail())
            if size > MAX_MESSAGE:
                raise TransportError(f"CRIU sent an oversized message ({size} bytes); refusing it")
            data, anc, _flags, _addr = self.sock.recvmsg(
                size, socket.CMSG_SPACE(MAX_FDS_PER_MESSAGE * 4)
            )
        except TimeoutError as exc:
            raise TransportError(f"CRIU ({self.label}) did not answer within {timeout:.0f} s") from exc
        except ConnectionResetError as exc:
            raise TransportError(self._closed_message(), self._stderr_tail()) from exc
        finally:
            self.sock.settimeout(None)
        fds: list[int] = []
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                arr = array.array("i")
                arr.frombytes(payload[: len(payload) - (len(payload) % arr.itemsize)])
                fds.extend(arr)
        resp = rpc_pb2.criu_resp()
        try:
            resp.ParseFromString(data)
        except DecodeError as exc:
            for fd in fds:
                os.close(fd)
            raise TransportError(
                f"CRIU ({self.label}) sent a reply that is not a criu_resp message "
                f"({len(data)} bytes: {data[:16].hex()}...)"
            ) from exc
        if not resp.IsInitialized():
            for fd in fds:
                os.close(fd)
            raise TransportError(
                f"CRIU ({self.label}) sent an incomplete reply (missing "
                f"{', '.join(resp.FindInitializationErrors())})"  # type: ignore[attr-defined]
            )
        return Received(resp, fds)

    # -- lifecycle -------------------------------------------------------------
    def close(self, timeout: float = 10.0) -> int | None:
        """Close the socket and reap a spawned swrk (killing it if it hangs)."""
        with contextlib.suppress(OSError):
            self.sock.close()
        rc = None
        if self.proc is not None:
            try:
                rc = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                rc = self.proc.wait()
        if self.stderr_path is not None:
            with contextlib.suppress(OSError):
                self.stderr_path.unlink()
        return rc

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- diagnostics -----------------------------------------------------------
    def _closed_message(self) -> str:
        msg = f"CRIU ({self.label}) closed the connection without replying"
        if self.proc is not None:
            try:
                rc = self.proc.wait(timeout=2)
                if rc < 0:
                    msg += f" (criu was killed by signal {signal.Signals(-rc).name})"
                else:
                    msg += f" (criu exited with status {rc})"
            except (subprocess.TimeoutExpired, ValueError):
                pass
        return msg + "; the request was refused or the worker crashed"

    def _stderr_tail(self) -> list[str]:
        if self.stderr_path is None:
            return []
        try:
            lines = self.stderr_path.read_text(errors="replace").splitlines()
        except OSError:
            return []
        return [f"criu: {ln}" for ln in lines[-10:] if ln.strip()]


def open_swrk(criu: str | None = None, inherit_fds: Iterable[int] = ()) -> Connection:
    """Spawn ``criu swrk`` on a fresh socketpair; ``inherit_fds`` are passed through to it.

    The inherited fds keep their numbers in the child (``pass_fds``), which is
    what CRIU's ``inherit_fd{fd}`` refers to.
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    binary = criu or criu_binary()
    err = tempfile.NamedTemporaryFile(prefix="ctconsole-swrk-", suffix=".stderr", delete=False)  # noqa: SIM115
    try:
        proc = subprocess.Popen(
            [binary, "swrk", str(theirs.fileno())],
            pass_fds=(theirs.fileno(), *inherit_fds),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            close_fds=True,
        )
    except FileNotFoundError as exc:
        ours.close()
        theirs.close()
        err.close()
        os.unlink(err.name)
        raise CtError(
            f"criu not found at '{binary}'",
            ["install it with scripts/install-criu (or set CTCONSOLE_CRIU)"],
        ) from exc
    except OSError as exc:
        ours.close()
        theirs.close()
        err.close()
        os.unlink(err.name)
        raise CtError(f"cannot start '{binary} swrk': {exc}") from exc
    finally:
        theirs.close()
    err.close()
    return Connection(ours, proc, Path(err.name), label="swrk")


def open_service(address: str | Path, timeout: float = 5.0) -> Connection:
    """Connect to a running ``criu service --address PATH``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.settimeout(timeout)
    try:
        sock.connect(str(address))
    except OSError as exc:
        sock.close()
        raise CtError(
            f"cannot connect to the CRIU service at {address}: {exc.strerror or exc}",
            ["start one with `criu service --address PATH`, or use the default swrk transport"],
        ) from exc
    sock.settimeout(None)
    return Connection(sock, None, None, label=f"service {address}")


@dataclass
class Service:
    """A ``criu service`` daemon that we started; its socket sits in a 0700 directory."""

    address: Path
    pid: int
    directory: Path

    def stop(self, timeout: float = 5.0) -> None:
        # CRIU's service ignores SIGTERM while it waits in accept(); SIGKILL after a grace period.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)
            end = time.monotonic() + (timeout if sig == signal.SIGTERM else 5.0)
            while time.monotonic() < end:
                if not _alive(self.pid):
                    break
                time.sleep(0.05)
            else:
                continue
            break
        with contextlib.suppress(OSError):
            self.address.unlink()
        for p in self.directory.glob("*"):
            with contextlib.suppress(OSError):
                p.unlink()
        with contextlib.suppress(OSError):
            self.directory.rmdir()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def start_service(criu: str | None = None, directory: Path | None = None, timeout: float = 10.0) -> Service:
    """Start ``criu service -d`` with its socket inside a root-only directory.

    CRIU makes the socket world-writable (any local user could then ask it to
    dump or restore as root), so the directory around it is 0700.
    """
    binary = criu or criu_binary()
    d = private_dir(directory or Path(tempfile.mkdtemp(prefix="criu-svc-", dir=private_dir(run_dir()))))
    address = d / "criu.sock"
    pidfile = d / "criu.pid"
    res = subprocess.run(
        [binary, "service", "--address", str(address), "-d", "--pidfile", str(pidfile),
         "-o", "service.log", "-W", str(d)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if res.returncode != 0:
        log = d / "service.log"
        tail = log.read_text(errors="replace").splitlines()[-5:] if log.exists() else []
        raise CtError(f"criu service failed to start (exit {res.returncode})", [*res.stderr.splitlines(), *tail])
    end = time.monotonic() + timeout
    while time.monotonic() < end and not (pidfile.exists() and pidfile.read_text().strip()):
        time.sleep(0.02)
    pid = int(pidfile.read_text().strip())
    return Service(address=address, pid=pid, directory=d)
