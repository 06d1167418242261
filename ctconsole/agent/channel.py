"""The console's side of the agent protocol: framing, and the ways to reach a destination.

Why one abstraction: the engine must not care whether the destination is this
host (``local``), a lab network namespace standing in for a host
(``netns:NAME``) or a real machine (``ssh://[user@]host[:port]``). Every form
starts ``ctconsole agent --stdio`` somewhere and talks length-prefixed
protobuf frames over its stdin/stdout (see proto/agent.proto).

Security notes:
- frames are size-limited both ways (:data:`MAX_FRAME`), so a broken or
  hostile peer cannot make us allocate unbounded memory;
- no shell is ever involved locally: argv lists only. For ssh the remote
  command is a fixed word list (``CTCONSOLE_REMOTE_CMD`` split with shlex and
  each word quoted), because OpenSSH joins the remote argv into one string;
- memory pages to a remote destination go through the agent's own SSH
  connection, from a unix socket in a 0700 directory to another (see
  ctconsole.migrate.transport); nothing listens on TCP on either host;
- the SSH connection to a destination is kept open for :func:`ssh_persist`
  seconds after the last use (OpenSSH ``ControlPersist``, as Ansible does by
  default), its control socket in a root-only directory, so ``check --to``
  followed by ``migrate``, or the console's probe followed by a migration,
  pay the SSH handshake once (~0.3 s here: benchmarks/migrate.py, "own").
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import re
import select
import shlex
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from google.protobuf.message import DecodeError

from ctconsole.errors import CtError, UsageError
from ctconsole.proto import agent_pb2

PROTOCOL_VERSION = 1
#: Largest frame either side accepts (a file chunk is at most CHUNK_SIZE + a little).
MAX_FRAME = 4 << 20
CHUNK_SIZE = 1 << 20
F_SETPIPE_SZ = 1031
_HEADER = struct.Struct(">I")


class ChannelError(CtError):
    """The agent could not be started, or the conversation with it broke."""


class AgentError(CtError):
    """The agent answered a request with an Error reply."""

    def __init__(self, code: str, message: str, details: list[str] | None = None) -> None:
        super().__init__(message, details)
        self.code = code


# -- framing -------------------------------------------------------------------
def encode_frame(payload: bytes) -> bytes:
    if len(payload) > MAX_FRAME:
        raise ChannelError(f"refusing to send a {len(payload)}-byte frame (limit {MAX_FRAME})")
    return _HEADER.pack(len(payload)) + payload


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def write_all(fd: int, data: bytes) -> None:
    """os.write until everything is out (pipes may take partial writes)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _waitable_fd(stream: IO[bytes]) -> int | None:
    """The fd to select() on before reading ``stream``, or None when select cannot tell (buffered, BytesIO)."""
    if isinstance(stream, (io.BufferedIOBase, io.TextIOBase)):
        return None
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None


def read_exact(stream: IO[bytes], n: int, deadline: float | None = None,
               rest_timeout: float | None = None) -> bytes | bytearray:
    """Read exactly ``n`` bytes; b"" means a clean EOF before the first byte.

    ``deadline`` (time.monotonic()) bounds the whole read; ``rest_timeout``
    bounds what follows the first byte (a peer that starts a frame must finish
    it). Either passing raises ChannelError: a half frame never blocks forever.
    """
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    readinto = getattr(stream, "readinto", None)
    fd = _waitable_fd(stream) if deadline is not None or rest_timeout is not None else None
    rest_deadline: float | None = None  # set once the first byte is in
    while got < n:
        if fd is not None:
            limit = deadline
            if rest_deadline is not None:
                limit = rest_deadline if limit is None else min(limit, rest_deadline)
            left = None if limit is None else limit - time.monotonic()
            if left is not None and (left <= 0 or not select.select([fd], [], [], left)[0]):
                raise ChannelError(f"no complete frame before the deadline ({got} of {n} bytes arrived)")
        if readinto is not None:
            k = readinto(view[got:])
        else:
            chunk = stream.read(n - got)
            k = len(chunk) if chunk else 0
            view[got : got + k] = chunk or b""
        if not k:
            if not got:
                return b""
            raise ChannelError(f"stream ended inside a frame ({got} of {n} bytes)")
        if not got and rest_timeout is not None:
            rest_deadline = time.monotonic() + rest_timeout
        got += k
    return bytes(buf) if n < 65536 else buf  # big frames: skip one copy, protobuf parses bytearrays


def read_frame(stream: IO[bytes], limit: int = MAX_FRAME, deadline: float | None = None,
               rest_timeout: float | None = None) -> bytes | bytearray | None:
    """One frame's payload, or None at a clean EOF. Oversized frames raise before reading them.

    ``deadline`` bounds the whole frame; ``rest_timeout`` what follows its
    first byte (the agent waits for requests without a deadline, but not for
    the end of one that started).
    """
    start = time.monotonic()
    header = read_exact(stream, _HEADER.size, deadline, rest_timeout)
    if not header:
        return None
    (size,) = _HEADER.unpack(header)
    if size > limit:
        raise ChannelError(f"peer announced a {size}-byte frame (limit {limit}); closing")
    if not size:
        return b""
    if rest_timeout is not None:
        rest = start + rest_timeout if deadline is None else min(deadline, start + rest_timeout)
        deadline = max(rest, time.monotonic() + 1.0)
    body = read_exact(stream, size, deadline)
    if not body:
        raise ChannelError(f"stream ended inside a frame (0 of {size} bytes)")
    return body


# -- destinations ----------------------------------------------------------------
_NETNS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SSH_RE = re.compile(
    r"^ssh://(?:(?P<user>[A-Za-z0-9_][A-Za-z0-9_.-]{0,31})@)?"
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]{0,252})(?::(?P<port>[0-9]{1,5}))?/?$"
)


@dataclass(frozen=True)
class Destination:
    """A parsed DEST: ``kind`` is local, netns or ssh."""

    kind: str
    name: str = ""  # netns name
    user: str = ""
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        if self.kind == "netns":
            return f"netns:{self.name}"
        if self.kind == "ssh":
            user = f"{self.user}@" if self.user else ""
            port = f":{self.port}" if self.port else ""
            return f"ssh://{user}{self.host}{port}"
        return "local"


def parse_destination(text: str) -> Destination:
    """Parse ``local``, ``netns:NAME`` or ``ssh://[user@]host[:port]`` (strictly: no options smuggled)."""
    if text == "local":
        return Destination("local")
    if text.startswith("netns:"):
        name = text[6:]
        if not _NETNS_RE.fullmatch(name):
            raise UsageError(f"bad network namespace name in '{text}'")
        return Destination("netns", name=name)
    m = _SSH_RE.fullmatch(text)
    if m:
        port = int(m.group("port") or 0)
        if port > 65535:
            raise UsageError(f"bad port in '{text}'")
        return Destination("ssh", user=m.group("user") or "", host=m.group("host"), port=port)
    raise UsageError(
        f"unknown destination '{text}'", ["use local, netns:NAME or ssh://[user@]host[:port]"]
    )


def remote_command() -> list[str]:
    """The ctconsole command on the far side of ssh (``CTCONSOLE_REMOTE_CMD``, default ``ctconsole``)."""
    return shlex.split(os.environ.get("CTCONSOLE_REMOTE_CMD", "ctconsole")) or ["ctconsole"]


def ssh_options() -> list[str]:
    """Extra ssh client options from ``CTCONSOLE_SSH_OPTS`` (split with shlex; tests pass -i/-o here)."""
    return shlex.split(os.environ.get("CTCONSOLE_SSH_OPTS", ""))


def ssh_persist() -> int:
    """Seconds an idle SSH connection to a destination stays open for the next command
    (``CTCONSOLE_SSH_PERSIST``, default 60; 0 = one connection per channel, closed with it)."""
    v = os.environ.get("CTCONSOLE_SSH_PERSIST", "60").strip()
    return int(v) if v.isdigit() else 60


def shared_control_path(dest: Destination) -> Path:
    """The control socket of the kept-open SSH connection to ``dest``: one per user@host:port, in a
    root-only directory under the run dir, named by a digest so the path stays short (sun_path)."""
    import hashlib

    from ctconsole.config import private_dir, run_dir

    key = f"{dest.user}@{dest.host}:{dest.port or 22}".encode()
    name = hashlib.sha256(key).hexdigest()[:20]
    base = run_dir() / "ssh"
    if len(str(base)) + len(name) + 19 > 104:  # ssh adds ".<16 random>" while it binds; sun_path is 108
        tag = hashlib.sha256(str(base).encode()).hexdigest()[:8]
        base = Path(tempfile.gettempdir()) / f"ctconsole-ssh-{os.getuid()}-{tag}"
    return private_dir(base) / name


def close_shared(dest: Destination) -> None:
    """End the kept-open SSH connection to ``dest`` now, if there is one (lab host removal, a broken link)."""
    if dest.kind != "ssh":
        return
    path = shared_control_path(dest)
    if not path.exists():
        return
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        subprocess.run(["ssh", "-o", f"ControlPath={path}", "-O", "exit", "x"],
                       capture_output=True, timeout=5, check=False)


def _local_agent_argv() -> list[str]:
    return [sys.executable, "-m", "ctconsole", "agent", "--stdio"]


class AgentChannel:
    """A running agent and the request/reply conversation with it.

    ``should_abort`` is polled while waiting for a reply so Ctrl-C or an abort
    request can interrupt a long restore; the wait then raises ChannelError and
    the engine rolls back.
    """

    def __init__(self, dest: Destination, log_dir: Path | None = None) -> None:
        self.dest = dest
        self.proc: subprocess.Popen[bytes] | None = None
        self._next_id = 1
        self._stderr_path: Path | None = None
        self._forward: subprocess.Popen[bytes] | None = None
        self._control_path: Path | None = None
        self._log_dir = log_dir
        self._persist = ssh_persist() if dest.kind == "ssh" else 0
        self.should_abort: Callable[[], bool] = lambda: False

    # -- lifecycle --------------------------------------------------------------
    def argv(self) -> list[str]:
        """The command that starts the agent for this destination (argv, no shell)."""
        d = self.dest
        if d.kind == "local":
            return _local_agent_argv()
        if d.kind == "netns":
            return ["ip", "netns", "exec", d.name, *_local_agent_argv()]
        target = f"{d.user}@{d.host}" if d.user else d.host
        target = target.replace("[", "").replace("]", "")
        # keepalives: the source may be frozen waiting on this link; a dead link must end ssh in ~15 s
        opts = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=15",
                "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"]
        if self._persist:
            opts += ["-o", "ControlMaster=auto", "-o", f"ControlPersist={self._persist}s",
                     "-o", f"ControlPath={self._ssh_control()}"]
        else:
            opts += ["-o", "ControlMaster=yes", "-o", f"ControlPath={self._ssh_control()}"]
        if d.port:
            opts += ["-p", str(d.port)]
        remote = " ".join(shlex.quote(w) for w in [*remote_command(), "agent", "--stdio"])
        return ["ssh", *ssh_options(), *opts, "-T", "--", target, remote]

    def _ssh_control(self) -> Path:
        if self._control_path is None and self._persist:
            self._control_path = shared_control_path(self.dest)
        if self._control_path is None:
            d = Path(tempfile.mkdtemp(prefix="ctconsole-ssh-"))
            os.chmod(d, 0o700)
            self._control_path = d / "ctl"
        return self._control_path

    def ssh_mux(self) -> tuple[list[str], Path, list[str]] | None:
        """How to ride this agent's SSH connection (page channel, rsync): ssh argv with the operator's
        options, the control socket, and ``[-p PORT] -- [user@]host``; None when not over ssh."""
        d = self.dest
        if d.kind != "ssh":
            return None
        target = d.host.replace("[", "").replace("]", "")
        return (["ssh", *ssh_options()], self._ssh_control(),
                [*(["-p", str(d.port)] if d.port else []), "--", f"{d.user}@{target}" if d.user else target])

    def start(self) -> None:
        fd, name = tempfile.mkstemp(prefix="ctconsole-agent-", suffix=".stderr", dir=self._log_dir)
        self._stderr_path = Path(name)
        try:
            self.proc = subprocess.Popen(
                self.argv(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=fd,
                close_fds=True,
                bufsize=0,  # raw pipes: select() must see every byte we have not read yet
                start_new_session=True,  # Ctrl-C at the console must not kill the agent mid-rollback
            )
        except OSError as exc:
            raise ChannelError(f"cannot start the agent for {self.dest}: {exc}") from exc
        finally:
            os.close(fd)
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):  # bigger pipe: fewer wake-ups while images stream
                fcntl.fcntl(self.proc.stdin.fileno(), F_SETPIPE_SZ, 1 << 20)

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0

    def close(self, timeout: float = 10.0) -> None:
        """Say bye, then reap the agent (killing it if it hangs) and any ssh forward."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(CtError, OSError):
                self.call("bye", agent_pb2.ByeRequest(), timeout=5)
            with contextlib.suppress(OSError):
                if self.proc.stdin:
                    self.proc.stdin.close()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._forward is not None:
            with contextlib.suppress(ProcessLookupError):
                self._forward.kill()
            self._forward.wait()
            self._forward = None
        if self._control_path is not None and self._persist:
            self._control_path = None  # kept open for the next command; ControlPersist ends it
        if self._control_path is not None:
            with contextlib.suppress(OSError):
                subprocess.run(
                    ["ssh", "-o", f"ControlPath={self._control_path}", "-O", "exit", "x"],
                    capture_output=True, timeout=5, check=False,
                )
            with contextlib.suppress(OSError):
                self._control_path.unlink()
            with contextlib.suppress(OSError):
                self._control_path.parent.rmdir()
            self._control_path = None
        if self._stderr_path is not None:
            with contextlib.suppress(OSError):
                self._stderr_path.unlink()

    def kill(self) -> None:
        """Hard stop (used when the conversation is already broken); a kept-open SSH connection that may
        be the broken part is ended too, so the next command starts a fresh one."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        if self._persist:
            close_shared(self.dest)

    def stderr_tail(self, n: int = 10) -> list[str]:
        if self._stderr_path is None:
            return []
        try:
            lines = self._stderr_path.read_text(errors="replace").splitlines()
        except OSError:
            return []
        return [f"agent: {ln}" for ln in lines[-n:] if ln.strip()]

    # -- request / reply -------------------------------------------------------------
    def call(self, field: str, msg: Any, timeout: float = 60.0) -> Any:
        """Send one request (``field`` names the oneof member) and return the matching reply body.

        Raises AgentError for an Error reply and ChannelError when the agent
        dies, stalls past ``timeout`` or sends garbage.
        """
        rid = self.send(field, msg)
        return self.receive(rid, field, timeout)

    def send(self, field: str, msg: Any) -> int:
        """Send a request without waiting (pipelined file chunks); pair with :meth:`receive` in order."""
        if self.proc is None or self.proc.stdin is None or self.proc.stdout is None:
            raise ChannelError("the agent is not running")
        req = agent_pb2.Request(id=self._next_id)
        self._next_id += 1
        getattr(req, field).CopyFrom(msg)
        try:
            write_all(self.proc.stdin.fileno(), encode_frame(req.SerializeToString()))
        except (BrokenPipeError, OSError) as exc:
            raise ChannelError(f"the agent on {self.dest} went away", self.stderr_tail()) from exc
        return int(req.id)

    def send_file_chunk(self, name: str, offset: int, data: bytes, last: bool, round_no: int = 0) -> int:
        """Send a FileChunk request without copying ``data`` through protobuf.

        Why: image data dominates the transfer and each protobuf copy of it
        costs as much as the pipe itself. The bytes on the wire are exactly
        what ``Request(id, file=FileChunk(name, offset, last, data))`` would
        serialize to (fields may come in any order), so the agent parses them
        with the ordinary generated code. ``round_no`` (pre-copy) names the round
        directory the file belongs to (0 = the images dir itself).
        """
        if self.proc is None or self.proc.stdin is None:
            raise ChannelError("the agent is not running")
        rid = self._next_id
        self._next_id += 1
        nb = name.encode()
        chunk_head = b"\x0a" + _varint(len(nb)) + nb + b"\x10" + _varint(offset)
        if last:
            chunk_head += b"\x20\x01"
        if round_no:
            chunk_head += b"\x28" + _varint(round_no)
        chunk_head += b"\x1a" + _varint(len(data))
        chunk_len = len(chunk_head) + len(data)
        req_head = b"\x08" + _varint(rid) + b"\x7a" + _varint(chunk_len)
        size = len(req_head) + chunk_len
        if size > MAX_FRAME:
            raise ChannelError(f"refusing to send a {size}-byte frame (limit {MAX_FRAME})")
        try:
            write_all(self.proc.stdin.fileno(), _HEADER.pack(size) + req_head + chunk_head)
            write_all(self.proc.stdin.fileno(), data)
        except (BrokenPipeError, OSError) as exc:
            raise ChannelError(f"the agent on {self.dest} went away", self.stderr_tail()) from exc
        return rid

    def receive(self, rid: int, field: str, timeout: float = 60.0) -> Any:
        """The reply to request ``rid`` (replies come in request order)."""
        payload = self._read_reply(timeout)
        reply = agent_pb2.Reply()
        try:
            reply.ParseFromString(bytes(payload))
        except DecodeError as exc:
            raise ChannelError(f"the agent on {self.dest} sent a malformed reply") from exc
        kind = reply.WhichOneof("body")
        if kind == "error":
            raise AgentError(reply.error.code, reply.error.message, list(reply.error.details))
        if reply.id != rid:
            raise ChannelError(f"the agent answered request {reply.id}, expected {rid}")
        if kind != field:
            raise ChannelError(f"the agent answered '{kind}' to a '{field}' request")
        return getattr(reply, field)

    def _read_reply(self, timeout: float) -> bytes | bytearray:
        assert self.proc is not None and self.proc.stdout is not None
        out = self.proc.stdout
        deadline = time.monotonic() + timeout
        fd = out.fileno()
        # wait (in short slices, to honour aborts) until the first byte is there
        while True:
            if self.should_abort():
                raise ChannelError("aborted by the operator while waiting for the agent")
            left = deadline - time.monotonic()
            if left <= 0:
                raise ChannelError(f"the agent on {self.dest} did not answer within {timeout:.0f} s")
            ready, _, _ = select.select([fd], [], [], min(0.2, left))
            if ready:
                break
        payload = read_frame(out, deadline=deadline)  # the whole frame, not just its first byte
        if payload is None:
            self.proc.poll()
            raise ChannelError(f"the agent on {self.dest} exited (status {self.proc.returncode})",
                               self.stderr_tail())
        return payload
