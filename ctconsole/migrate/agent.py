"""The destination side of a migration: ``ctconsole agent --stdio``.

Why a separate process speaking a tiny protocol: the destination may be
another machine (reached with the operator's own ssh), a lab network
namespace, or this host. In every case the agent answers the console's
requests (proto/agent.proto) and does only destination-side work: a private
images directory, a CRIU page server, receiving image files, restoring, and
cleaning up. It never trusts the console blindly:

- every frame is size-limited and must parse as a ``Request``; anything else
  gets an ``Error`` reply and a log line (and a broken stream ends the session);
- image file names are plain names (no '/', no '..', a small character set),
  opened relative to the images directory with O_NOFOLLOW|O_EXCL;
- restore options are checked against an allow-list of ``criu_opts`` fields
  (no ``exec_cmd``, no config files, no directory fds from the console);
- no shell anywhere: probes run as an argv through nsenter;
- images directories are 0700 and removed after success or rollback;
- the page server listens only on loopback or on a lab namespace address.

Never-lose rule on this side: a restored tree is kept only after the console
sends ``commit``. If the console disappears before the restore reply reached
it, the restored tree is killed (the source is still there); if the reply was
delivered but no commit came, the tree is left running and a pending record
is written, because only the console's journal can tell whether the source
was released (``ctconsole`` resolves it at its next start: journal.recover()).
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import logging
import os
import platform
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, cast

from google.protobuf.message import DecodeError

from ctconsole import __version__
from ctconsole.config import private_dir, run_dir, state_dir
from ctconsole.errors import CtError
from ctconsole.migrate.channel import MAX_FRAME, PROTOCOL_VERSION, ChannelError, encode_frame, read_frame, write_all
from ctconsole.migrate.keeper import KeeperHandle
from ctconsole.proto import agent_pb2

log = logging.getLogger("ctconsole.agent")

NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
MIGRATION_ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
MAX_FILES = 20000
MAX_ROUNDS = 64  # pre-copy rounds per migration (the console's policy stops far earlier)
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


class Refused(CtError):
    """A request the agent will not carry out; becomes an Error reply with ``code``."""

    def __init__(self, code: str, message: str, details: list[str] | None = None) -> None:
        super().__init__(message, details)
        self.code = code


def check_name(name: str) -> str:
    """A plain file name inside the images dir, or Refused (path escape attempts included)."""
    if not NAME_RE.fullmatch(name) or ".." in name:
        raise Refused("bad-name", f"refusing file name {name!r}: only plain names are accepted")
    return name


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


# -- process helpers --------------------------------------------------------------
def proc_state(pid: int) -> str:
    """One-letter state of ``pid``, or "" when it does not exist."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def start_time(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return 0


def descendants(pid: int) -> list[int]:
    """``pid`` and every descendant (children files of every thread), parents first."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for t in os.listdir(f"/proc/{p}/task"):
                with contextlib.suppress(OSError), open(f"/proc/{p}/task/{t}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
    return out


def continue_tree(pid: int, started: int = 0) -> None:
    """SIGCONT a tree restored with leave_stopped (children first would not matter: all get it)."""
    if pid <= 1 or (started and start_time(pid) != started):
        return
    for p in descendants(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGCONT)


def kill_tree(pid: int, started: int = 0, timeout: float = 5.0) -> bool:
    """SIGKILL a restored tree we created (checked by start time against pid reuse)."""
    if pid <= 1 or not proc_state(pid):
        return False
    if started and start_time(pid) != started:
        return False
    pids = descendants(pid)
    for p in reversed(pids):
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc_state(pid) not in ("", "Z"):
        time.sleep(0.02)
    return True


def global_ipv4() -> list[str]:
    """Global IPv4 addresses visible in this network namespace (for the page server)."""
    try:
        res = subprocess.run(["ip", "-j", "-4", "addr", "show"], capture_output=True, text=True,
                             timeout=5, check=False)
        data = json.loads(res.stdout or "[]")
    except (OSError, json.JSONDecodeError, subprocess.TimeoutExpired):
        return []
    out = []
    for link in data:
        for a in link.get("addr_info", []):
            if a.get("scope") == "global" and a.get("local"):
                out.append(a["local"])
    return out


def link_exists(name: str) -> bool:
    return os.path.exists(f"/sys/class/net/{name}")


def pending_dir() -> Path:
    return private_dir(run_dir() / "agent-pending")


def images_root() -> Path:
    """Where received images go (``CTCONSOLE_IMAGES_DIR``, default <state_dir>/images)."""
    v = os.environ.get("CTCONSOLE_IMAGES_DIR")
    return private_dir(Path(v) if v else state_dir() / "images")


class Agent:
    """One agent session: serves requests from ``inp`` and answers on ``out`` until EOF or bye."""

    def __init__(self, inp: IO[bytes], out: IO[bytes]) -> None:
        self.inp = inp
        self.out = out
        self.migration_id = ""
        self.images_dir: Path | None = None
        self.dir_fd: int | None = None
        self.open_files: dict[str, tuple[int, int]] = {}  # name -> (fd, size)
        self.files_done: set[str] = set()
        self.page_server_pid = 0
        self.restored_pid = 0
        self.restored_start = 0
        self.restore_delivered = False
        self.committed = False
        self.created_links: list[str] = []
        self.keeper_pid = 0
        self.kept_fds: list[int] = []
        self.pending_root = 0  # root pid CRIU announced during a restore that has not returned yet
        self.held = False  # restored stopped; SIGCONT at commit
        self._ps_stack = contextlib.ExitStack()  # the PAGE_SERVER_CHLD conversation (WAIT_PID later)
        self._ps_wait: Callable[[float | None], int] | None = None
        self.lazy_proc: subprocess.Popen[bytes] | None = None
        self.rounds = 0  # pre-copy rounds announced (directories pre/1..N in the images dir)
        self.round_fds: dict[int, int] = {}  # round -> directory fd (0 = the images dir: dir_fd)
        self.keeper: KeeperHandle | None = None  # started at prepare, before the source freezes
        self.shared_fd: int | None = None  # the console's images dir, when it shares our filesystem
        self.linked = False  # some images are hard links to the console's files (never modify them)

    # -- main loop -----------------------------------------------------------------
    def serve(self) -> int:
        try:
            while True:
                try:
                    payload = read_frame(self.inp, MAX_FRAME)
                except ChannelError as exc:
                    log.error("broken stream from the console: %s", exc)
                    self._send(agent_pb2.Reply(id=0, error=agent_pb2.Error(code="too-large", message=str(exc))))
                    return 2
                if payload is None:
                    log.info("console closed the channel")
                    return 0
                req = agent_pb2.Request()
                try:
                    req.ParseFromString(cast(bytes, payload))  # upb parses any buffer; no extra copy
                except DecodeError:
                    log.error("malformed request (%d bytes) ignored", len(payload))
                    self._send(agent_pb2.Reply(id=0, error=agent_pb2.Error(
                        code="bad-request", message="malformed request: not an agent Request message")))
                    continue
                kind = req.WhichOneof("body")
                reply = agent_pb2.Reply(id=req.id)
                try:
                    if kind is None:
                        raise Refused("bad-request", "request without a body (unknown message type?)")
                    handler = getattr(self, f"on_{kind}")
                    body = handler(getattr(req, kind))
                    getattr(reply, kind).CopyFrom(body)
                except Refused as exc:
                    log.error("refused %s: %s", kind, exc.message)
                    reply.error.CopyFrom(agent_pb2.Error(code=exc.code, message=exc.message, details=exc.details))
                except CtError as exc:
                    log.error("%s failed: %s", kind, exc.message)
                    code = "criu" if type(exc).__name__ == "CriuError" else "failed"
                    reply.error.CopyFrom(agent_pb2.Error(code=code, message=exc.message, details=exc.details))
                except Exception as exc:  # the agent must answer, never die silently
                    log.exception("internal error in %s", kind)
                    reply.error.CopyFrom(agent_pb2.Error(code="internal", message=f"{type(exc).__name__}: {exc}"))
                delivered = self._send(reply)
                if kind == "restore" and reply.WhichOneof("body") == "restore":
                    self.restore_delivered = delivered
                if kind == "bye":
                    return 0
        finally:
            self.finish()

    def _send(self, reply: agent_pb2.Reply) -> bool:
        try:
            write_all(self.out.fileno(), encode_frame(reply.SerializeToString()))
            return True
        except OSError as exc:
            log.error("cannot answer the console: %s", exc)
            return False

    # -- handlers ------------------------------------------------------------------
    def on_hello(self, msg: agent_pb2.Hello) -> agent_pb2.HelloReply:
        r = agent_pb2.HelloReply(protocol=PROTOCOL_VERSION, ctconsole_version=__version__,
                                 kernel=platform.release(), hostname=socket.gethostname(), agent_pid=os.getpid())
        if msg.protocol != PROTOCOL_VERSION:
            raise Refused("version", f"protocol {msg.protocol} not supported (agent speaks {PROTOCOL_VERSION})")
        with contextlib.suppress(OSError):
            r.boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        r.pidns_inode = os.stat("/proc/self/ns/pid").st_ino
        r.netns_inode = os.stat("/proc/self/ns/net").st_ino
        r.addresses.extend(global_ipv4())
        from ctconsole.criu.client import CriuClient

        client = CriuClient(timeout=30)
        try:
            r.criu_version = client.version().text
            f = client.feature_check()
            r.mem_track, r.lazy_pages, r.pidfd_store = f.mem_track, f.lazy_pages, f.pidfd_store
        except CtError as exc:
            log.error("CRIU unusable here: %s", exc.message)
        if msg.cpuinfo_img:
            from ctconsole.migrate.hostprobe import cpuinfo_check_blob

            r.cpuinfo_ok, r.cpuinfo_detail = cpuinfo_check_blob(client, msg.cpuinfo_img)
        else:
            r.cpuinfo_ok, r.cpuinfo_detail = True, "not checked (no cpuinfo from the source)"
        from ctconsole.migrate.selftest import cached_result

        cached = cached_result()
        if cached is not None:
            r.lazy_selftest_ok, r.lazy_selftest_reason = cached
        return r

    def on_inventory(self, msg: agent_pb2.InventoryRequest) -> agent_pb2.InventoryReply:
        try:
            from ctconsole import inventory
            from ctconsole.model import to_dict

            items = inventory.scan(full=True)  # the console shows externals (detail, Ext column)
        except (ImportError, AttributeError) as exc:
            raise Refused("unsupported", f"inventory is not available on this host: {exc}") from exc
        return agent_pb2.InventoryReply(json=json.dumps([to_dict(c) for c in items]))

    def on_check(self, msg: agent_pb2.CheckRequest) -> agent_pb2.CheckReply:
        try:
            from ctconsole import feasibility, inventory
            from ctconsole.model import to_dict

            container = inventory.resolve(msg.ref)
            report = feasibility.check(container)
        except (ImportError, AttributeError) as exc:
            raise Refused("unsupported", f"checks are not available on this host: {exc}") from exc
        data = report.to_dict() if hasattr(report, "to_dict") else to_dict(report)
        return agent_pb2.CheckReply(verdict=str(getattr(report, "verdict", "")), json=json.dumps(data, default=str))

    def on_preflight(self, msg: agent_pb2.PreflightRequest) -> agent_pb2.PreflightReply:
        problems = []
        for br in msg.bridges:
            if not NAME_RE.fullmatch(br) or not os.path.isdir(f"/sys/class/net/{br}/bridge"):
                problems.append(f"bridge {br!r} does not exist on the destination")
        for p in msg.paths:
            if not os.path.isabs(p) or not os.path.exists(p):
                problems.append(f"path {p!r} does not exist on the destination")
        if msg.memory_bytes:
            free = shutil.disk_usage(images_root()).free
            if free < msg.memory_bytes * 2:
                problems.append(f"only {free >> 20} MiB free for about {msg.memory_bytes >> 20} MiB of images")
        return agent_pb2.PreflightReply(ok=not problems, problems=problems)

    def on_host_probe(self, msg: agent_pb2.HostProbeRequest) -> agent_pb2.HostProbeReply:
        """The destination half of ``ctconsole check --to DEST`` (read-only; see migrate/hostprobe.py)."""
        from ctconsole.migrate import hostprobe

        try:
            return hostprobe.answer(msg)
        except hostprobe.BadProbe as exc:
            raise Refused("bad-request", str(exc)) from exc

    def on_prepare(self, msg: agent_pb2.PrepareRequest) -> agent_pb2.PrepareReply:
        if not MIGRATION_ID_RE.fullmatch(msg.migration_id):
            raise Refused("bad-request", f"bad migration id {msg.migration_id!r}")
        if self.images_dir is not None:
            raise Refused("state", "this session already prepared a migration")
        self.migration_id = msg.migration_id
        d = images_root() / msg.migration_id
        try:
            d.mkdir(mode=0o700)
        except FileExistsError as exc:
            raise Refused("state", f"images directory for {msg.migration_id} already exists") from exc
        os.chmod(d, 0o700)
        self.images_dir = d
        self.dir_fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        reply = agent_pb2.PrepareReply(images_dir=str(d))
        # the restore parent is a Python process: start it now, while the source still runs
        try:
            self.keeper = KeeperHandle()
        except OSError as exc:  # the restore starts one itself then (slower, same result)
            log.warning("cannot start the restore parent ahead of time: %s", exc)
        _warm_imports()
        if msg.shared_token:
            self.shared_fd = self._open_shared(msg.migration_id, msg.shared_token)
            reply.shared_fs = self.shared_fd is not None
            if reply.shared_fs:
                log.info("the console's images are on this filesystem: they will be linked, not copied")
        if msg.page_server and not reply.shared_fs:
            reply.page_server_address, reply.page_server_port, reply.page_server_pid = self._start_page_server(
                d, msg.page_server_address)
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

    def _start_page_server(self, d: Path, address: str) -> tuple[str, int, int]:
        """A CRIU page server writing into ``d``: (address, port, pid). One dump (or round) per server."""
        addr = address or (global_ipv4() or ["127.0.0.1"])[0]
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError as exc:
            raise Refused("bad-request", f"bad page server address {addr!r}") from exc
        if not ip.is_loopback and addr not in global_ipv4():
            raise Refused("bad-request", f"{addr} is not an address of this host")
        if not ip.is_loopback and not _lab_address(ip):
            raise Refused("bad-request", f"refusing to expose a page server on {addr}: "
                          "use loopback behind an SSH forward, or a lab address (198.18.0.0/15)")
        from ctconsole.criu.client import CriuClient

        # PAGE_SERVER_CHLD, not PAGE_SERVER: its pid is real (the daemonised one reports 0 here)
        # and WAIT_PID tells us when every page is on disk
        info, self._ps_wait = self._ps_stack.enter_context(
            CriuClient(timeout=30).page_server_child(d, address=addr, port=0))
        self.page_server_pid = info.pid
        log.info("page server pid %d on %s:%d (into %s)", info.pid, addr, info.port, d)
        return addr, info.port, info.pid

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
            reply.page_server_address, reply.page_server_port, reply.page_server_pid = self._start_page_server(
                d, msg.page_server_address)
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
        write_all(fd, msg.data)
        size += len(msg.data)
        self.open_files[name] = (fd, size)
        if msg.last:
            os.close(fd)
            del self.open_files[name]
            self.files_done.add(name)
        return agent_pb2.FileAck(name=name, size=size)

    def on_restore(self, msg: agent_pb2.RestoreRequest) -> agent_pb2.RestoreReply:
        if self.images_dir is None:
            raise Refused("state", "prepare first")
        if self.restored_pid:
            raise Refused("state", "already restored")
        if self.open_files:
            raise Refused("state", f"files still open: {', '.join(sorted(self.open_files))}")
        opts = validate_restore_opts(msg.options_json)
        if self.linked and opts.get("auto_dedup"):
            # it punches holes into the pages it restored: into the console's own copy, through the links
            raise Refused("bad-request", "auto_dedup cannot be used on images linked from the console's copy")
        t0 = time.monotonic()
        marks: list[str] = []

        def mark(what: str) -> None:
            marks.append(f"{what}@{(time.monotonic() - t0) * 1000:.0f}ms")

        self._wait_page_server(msg.page_server_wait or 60.0)
        if self.page_server_pid or msg.page_server_wait:
            mark("page-server-done")
        for name in veth_host_names(opts):
            if link_exists(name):
                raise Refused("state", f"network device {name} already exists on the destination")
        self.created_links = veth_host_names(opts)
        opts.setdefault("notify_scripts", True)
        if msg.lazy:
            opts["lazy_pages"] = True
            self._start_lazy_daemon(msg.lazy_address, msg.lazy_port)
        if msg.hold and not msg.lazy:
            opts["leave_stopped"] = True  # CRIU SIGSTOPs every task before letting go of it
            self.held = True
        from ctconsole.migrate import pipes

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
            if script == "setup-namespaces" and msg.setup_ns:
                # raising here makes CRIU abort the restore (the handler's reason is in the error)
                moved = setup_namespaces(list(msg.setup_ns), pid)
                marks.append("moved " + ",".join(moved))
            return True

        # the restore runs in a detached keeper that stays the root's parent (keeper.py: a
        # parent-death signal would kill a root whose parent exits), holds the PTY master
        # and the re-created stdio pipes, and reaps the root
        from ctconsole.migrate.keeper import KeeperError, restore_with_parent

        keeper, self.keeper = self.keeper, None
        try:
            res = restore_with_parent(opts, self.images_dir, inherit, relays, self.migration_id,
                                      timeout=msg.timeout or 120.0, on_note=on_note, keeper=keeper)
        except KeeperError as exc:
            details = [d for d in exc.details if not d.startswith("full CRIU log:")]
            kept = self._keep_log("restore.log")
            if kept:
                details.append(f"full CRIU log (on the destination): {kept}")
            raise CtError(exc.message, details) from exc
        finally:
            pipes.close_all([*inherit.values(), *(fd for _, _, fd in relays)])
        mark("restored")
        self.restored_pid, self.restored_start = res.pid, res.start or start_time(res.pid)
        self.keeper_pid = res.keeper_pid
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
        if proc_state(res.pid) in ("", "Z", "X"):
            raise CtError(f"the restored tree (pid {res.pid}) exited right after the restore")
        mark("alive")
        if msg.probe_argv:
            reply.probe_output = self._probe(list(msg.probe_argv), msg.probe_timeout or 10.0)
            mark("probe")
        reply.console_socket = res.console_socket
        self._write_pending()
        mark("pending-written")
        reply.timeline = " ".join(marks)
        log.info("restore timeline: %s", reply.timeline)
        return reply

    def _start_lazy_daemon(self, address: str, port: int) -> None:
        """``criu lazy-pages`` (no RPC exists for it): serves the restored tree's page faults."""
        assert self.images_dir is not None
        try:
            ipaddress.ip_address(address)
        except ValueError as exc:
            raise Refused("bad-request", f"bad lazy page server address {address!r}") from exc
        if not 0 < port < 65536:
            raise Refused("bad-request", f"bad lazy page server port {port}")
        from ctconsole.config import criu_binary

        self.lazy_proc = subprocess.Popen(
            [criu_binary(), "lazy-pages", "--page-server", "--address", address, "--port", str(port),
             "-D", str(self.images_dir), "-o", "lazy-pages.log", "-v4"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, close_fds=True)
        sock = self.images_dir / "lazy-pages.socket"
        end = time.monotonic() + 10
        while not sock.exists():
            if self.lazy_proc.poll() is not None or time.monotonic() > end:
                lines = self._log_errors("lazy-pages.log")
                raise CtError("the lazy-pages daemon did not start", lines)
            time.sleep(0.01)

    def _log_errors(self, name: str) -> list[str]:
        if self.images_dir is None:
            return []
        try:
            text = (self.images_dir / name).read_text(errors="replace")
        except OSError:
            return []
        return [ln.strip() for ln in text.splitlines() if "Error (" in ln and "RLIMIT" not in ln][:8]

    def _stop_lazy(self) -> None:
        if self.lazy_proc is not None and self.lazy_proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.lazy_proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.lazy_proc.wait(timeout=5)
        self.lazy_proc = None

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
            if proc_state(self.restored_pid) in ("", "Z", "X"):
                raise CtError(f"the restored tree (pid {self.restored_pid}) died while its pages arrived")
        if msg.migration_id and msg.migration_id != self.migration_id:
            rec = self._pending_record(msg.migration_id)
            if not rec:
                raise Refused("state", f"no pending restore for {msg.migration_id}")
            if rec.get("held"):
                continue_tree(int(rec["pid"]), int(rec.get("start", 0)))
            with contextlib.suppress(OSError):
                (pending_dir() / f"{msg.migration_id}.json").unlink()
            return agent_pb2.CommitReply(journal_note=f"pid {rec['pid']} kept (recovered)")
        if not self.restored_pid:
            raise Refused("state", "nothing restored to commit")
        if self.held:
            continue_tree(self.restored_pid, self.restored_start)
            self.held = False
        self.committed = True
        self._drop_pending()
        return agent_pb2.CommitReply(journal_note=f"pid {self.restored_pid} kept")

    def on_status(self, msg: agent_pb2.StatusRequest) -> agent_pb2.StatusReply:
        rec = self._pending_record(msg.migration_id) if msg.migration_id else None
        pid = int(rec["pid"]) if rec else self.restored_pid
        started = int(rec.get("start", 0)) if rec else self.restored_start
        state = proc_state(pid) if pid and (not started or start_time(pid) == started) else ""
        return agent_pb2.StatusReply(state=state or "gone", pid=pid, running=state not in ("", "Z", "X"))

    def on_abort(self, msg: agent_pb2.AbortRequest) -> agent_pb2.AbortReply:
        cleaned: list[str] = []
        if msg.migration_id and msg.migration_id != self.migration_id:
            # another session's leftovers (recovery after a console crash)
            if not MIGRATION_ID_RE.fullmatch(msg.migration_id):
                raise Refused("bad-request", "bad migration id")
            rec = self._pending_record(msg.migration_id)
            if rec:
                if kill_tree(int(rec["pid"]), int(rec.get("start", 0))):
                    cleaned.append(f"killed restored pid {rec['pid']}")
                for name in rec.get("links", []):
                    if _del_link(name):
                        cleaned.append(f"deleted {name}")
                if rec.get("keeper"):
                    kill_tree(int(rec["keeper"]), int(rec.get("keeper_start", 0)))
                with contextlib.suppress(OSError):
                    (pending_dir() / f"{msg.migration_id}.json").unlink()
            d = images_root() / msg.migration_id
            if d.is_dir():
                shutil.rmtree(d, ignore_errors=True)
                cleaned.append(f"removed {d}")
            return agent_pb2.AbortReply(cleaned=cleaned)
        cleaned.extend(self.rollback())
        return agent_pb2.AbortReply(cleaned=cleaned)

    def on_bye(self, msg: agent_pb2.ByeRequest) -> agent_pb2.ByeReply:
        return agent_pb2.ByeReply()

    # -- helpers -------------------------------------------------------------------
    def _open_inherited(self, specs: list[agent_pb2.InheritFd]) -> dict[str, int]:
        return open_inherited([(x.key, x.how, x.path, x.mode, x.perm if x.mode else -1) for x in specs])

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

    def _wait_page_server(self, timeout: float) -> None:
        """The page server exits after the dump closed its connection; wait so every page is on disk."""
        if self._ps_wait is None:
            return
        try:
            status = self._ps_wait(timeout)
        except CtError as exc:
            raise CtError(f"the page server (pid {self.page_server_pid}) did not finish within {timeout:.0f} s",
                          exc.details) from exc
        finally:
            self._ps_wait = None
            self._ps_stack.close()
        self.page_server_pid = 0
        if status != 0:
            raise CtError(f"the page server failed (wait status {status:#x})", self._log_errors("page-server.log"))

    def _probe(self, argv: list[str], timeout: float) -> str:
        cmd = ["nsenter", "-t", str(self.restored_pid), "-a", "--", *argv]
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
               "keeper": self.keeper_pid, "keeper_start": start_time(self.keeper_pid) if self.keeper_pid else 0,
               "time": time.time()}
        p = pending_dir() / f"{self.migration_id}.json"
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(rec))
        os.replace(tmp, p)

    def _drop_pending(self) -> None:
        with contextlib.suppress(OSError):
            (pending_dir() / f"{self.migration_id}.json").unlink()

    def rollback(self) -> list[str]:
        """Undo everything this session did on the destination."""
        cleaned = []
        self._stop_lazy()
        if self.restored_pid and kill_tree(self.restored_pid, self.restored_start):
            cleaned.append(f"killed restored pid {self.restored_pid}")
        if self.pending_root and self.pending_root != self.restored_pid and kill_tree(self.pending_root):
            cleaned.append(f"killed partly restored pid {self.pending_root}")
        self.restored_pid = self.pending_root = 0
        if self.keeper_pid:
            kill_tree(self.keeper_pid)
            self.keeper_pid = 0
        for fd in self.kept_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.kept_fds = []
        for name in self.created_links:
            if _del_link(name):
                cleaned.append(f"deleted {name}")
        self.created_links = []
        if self.page_server_pid and proc_state(self.page_server_pid) not in ("", "Z"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.page_server_pid, signal.SIGKILL)
            cleaned.append(f"stopped page server {self.page_server_pid}")
        self.page_server_pid = 0
        self._ps_wait = None
        with contextlib.suppress(Exception):
            self._ps_stack.close()  # reaps the page server through its swrk
        self._drop_pending()
        self._remove_images()
        return cleaned

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

    def finish(self) -> None:
        """End of session: keep a committed tree, resolve an uncommitted one (see module doc)."""
        if self.committed:
            with contextlib.suppress(Exception):
                self._ps_stack.close()
            self._remove_images()
            return
        if self.restored_pid and self.restore_delivered:
            log.warning("session ended without commit; restored pid %d left pending for recovery",
                        self.restored_pid)
            if self.page_server_pid and proc_state(self.page_server_pid) not in ("", "Z"):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.page_server_pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                self._ps_stack.close()
            self._stop_lazy()
            self._remove_images()
            return
        if self.restored_pid:
            log.warning("session ended before the console learned of the restore; rolling back")
        self.rollback()


def _warm_imports() -> None:
    """Import now what the restore needs, so the import is not paid while the source is frozen.

    Why: ``on_restore`` runs inside the source's post-dump window, and these
    modules (the remap compiler above all) took ~25-30 ms to import there.
    """
    import ctconsole.criu.images
    import ctconsole.migrate.pipes
    import ctconsole.remap.compile  # noqa: F401


def open_inherited(specs: list[tuple[str, str, str]] | list[tuple[str, str, str, str, int]]) -> dict[str, int]:
    """Open the fds a restore inherits: ``(key, how, path[, mode, perm])``.

    Why here: the other end of an external socket (a host daemon) and the
    file a ``file`` rule names are on the destination, so the destination
    opens them: ``connect-unix`` connects a fresh stream socket to ``path``
    (CRIU plugs it in where the container's old socket was); ``open-file``
    opens ``path`` with ``mode`` (remap.compile.FILE_OPEN_FLAGS; a file it
    creates gets ``perm``, CRIU compares the bits with the original's).
    """
    from ctconsole.remap.compile import FILE_OPEN_FLAGS, OPEN_FILE, InheritSpec, open_inherit_fds

    out: dict[str, int] = {}
    try:
        for spec in specs:
            key, how, path = spec[0], spec[1], spec[2]
            mode, perm = (str(spec[3]), int(spec[4])) if len(spec) > 3 else ("", -1)
            if not re.fullmatch(r"[A-Za-z0-9_:\[\]./-]{1,200}", key):
                raise Refused("bad-request", f"bad inherit_fd key {key!r}")
            if how not in ("connect-unix", OPEN_FILE):
                raise Refused("unsupported", f"inherit_fd {key}: cannot provide {how!r}")
            if not os.path.isabs(path):
                raise Refused("bad-request", f"inherit_fd {key}: path must be absolute")
            if how == OPEN_FILE:
                if (mode or "append") not in FILE_OPEN_FLAGS or not -1 <= perm <= 0o7777:
                    raise Refused("bad-request", f"inherit_fd {key}: bad open mode {mode!r} / perm {perm}")
                try:
                    out[key] = open_inherit_fds([InheritSpec(key=key, how=how, path=path, mode=mode or "append",
                                                             perm=perm)])[key]
                except CtError as exc:
                    raise Refused("failed", exc.message) from exc
                continue
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            try:
                s.connect(path)
            except OSError as exc:
                s.close()
                raise Refused("failed", f"cannot connect to {path} for {key}: {exc}") from exc
            fd = s.detach()
            os.set_inheritable(fd, True)
            out[key] = fd
    except BaseException:
        for fd in out.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        raise
    return out


def setup_namespaces(actions: list[agent_pb2.SetupNsAction], pid: int) -> list[str]:
    """Carry out remap setup-namespaces actions for the restored root ``pid``; returns "VF->IF" notes.

    Why in the notify: only then does the restored netns exist while still
    empty (criu-digest §5.2), and a VF pool names no device in advance:
    whichever VF is free *now* on this host is taken. ``CTCONSOLE_SYSFS_ROOT``
    (tests only) points the VF scan at a fake sysfs tree whose "VF" netdev is
    a veth: moving a link is the same netlink request for any link kind.
    """
    from ctconsole.remap import vf

    if pid <= 0:
        raise CtError("setup-namespaces came without the restored root pid")
    sys_root = os.environ.get("CTCONSOLE_SYSFS_ROOT", "/sys")
    moved: list[str] = []
    taken: list[str] = []
    for a in actions:
        if a.action != "move-vf":
            raise CtError(f"unknown setup-namespaces action {a.action!r}")
        if not NAME_RE.fullmatch(a.interface) or len(a.interface) > 15 or not NAME_RE.fullmatch(a.pf):
            raise CtError(f"bad interface or PF name in move-vf ({a.interface!r}, {a.pf!r})")
        pool = vf.VfPool(pf=a.pf, vfs=None if a.any_vf else tuple(a.vfs))
        chosen = vf.pick_free_vf(pool, sys_root=sys_root, exclude=tuple(taken))
        vf.move_link_to_netns(chosen.netdev, pid, new_name=a.interface)
        taken.append(chosen.netdev)
        moved.append(f"{chosen.netdev}->{a.interface}")
        log.info("moved VF %d of %s (%s) into pid %d's netns as %s", chosen.index, a.pf, chosen.netdev, pid,
                 a.interface)
    return moved


def _lab_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return ip.version == 4 and ip in ipaddress.ip_network("198.18.0.0/15")


def _del_link(name: str) -> bool:
    if not NAME_RE.fullmatch(name) or not link_exists(name):
        return False
    res = subprocess.run(["ip", "link", "del", "dev", name], capture_output=True, timeout=10, check=False)
    return res.returncode == 0


def run_stdio() -> int:
    """Entry point of ``ctconsole agent --stdio``: protocol on fds 0/1, log lines on stderr."""
    fmt = "%(asctime)s agent[%(process)d] %(levelname)s %(message)s"
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=fmt)
    # a lasting record on this host too: the console's copy of our stderr is temporary
    with contextlib.suppress(OSError):
        path = private_dir(state_dir()) / "agent.log"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        os.close(fd)
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter(fmt))
        logging.getLogger().addHandler(handler)
    from ctconsole.migrate.hostview import restore_cgroup_view

    made = restore_cgroup_view()  # `ip netns exec` hid /sys/fs/cgroup (hostview.py says why)
    if made:
        log.info("mounted the host's cgroup hierarchies again: %s", " ".join(made))
    # stdout carries frames only: anything else printing there would corrupt the stream
    out_fd = os.dup(1)
    os.dup2(2, 1)
    with os.fdopen(0, "rb", buffering=0) as inp, os.fdopen(out_fd, "wb", buffering=0) as out:
        return Agent(inp, out).serve()
