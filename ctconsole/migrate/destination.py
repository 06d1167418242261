"""The destination side of a migration: ``ctconsole agent --stdio`` (:class:`DestinationServer`).

Not to be confused with :mod:`ctconsole.agent`, the console's way to *reach*
an agent (channel, handshake, host probe): this module is what answers on the
far side, and it restores, so it lives in the migrate layer with the keeper.

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
- no shell anywhere, and no command from the console: a probe is named
  (``probe_name``) and its argv comes from this host's policy;
- everything a restore asks for on this host (files, sockets, mounts,
  cgroups, LSM labels, devices, probes, image bytes) is checked against the
  destination's policy (ctconsole/agent/policy.py, docs/security.md) and a
  refusal names the policy key; files are opened without following symlinks
  (agent/safefs.py) and the ones created are removed on rollback;
- a migration id is locked by the session that prepared it: another session
  cannot abort, commit or prepare it while it is alive;
- images directories are 0700 and removed after success or rollback;
- the page server listens nowhere: it serves the one connection the console
  made to a unix socket in a root-only (0700) directory (migrate/transport.py),
  so ``--listen-net`` / ``CTCONSOLE_AGENT_LISTEN_NETS`` no longer matter to it;
- carried storage goes where this host decides (``STATE/storage/ID``), and a
  rollback removes it (migrate/storage.py).

Never-lose rule on this side: a restored tree is kept only after the console
sends ``commit``. If the console disappears before the restore reply reached
it, the restored tree is killed (the source is still there); if the reply was
delivered but no commit came, the tree is left running and a pending record
is written, because only the console's journal can tell whether the source
was released (``ctconsole`` resolves it at its next start: journal.recover()).
"""

from __future__ import annotations

import contextlib
import fcntl
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
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, cast

from google.protobuf.message import DecodeError

from ctconsole import __version__, feasibility, inventory, process
from ctconsole.agent import hostprobe, safefs
from ctconsole.agent import policy as agent_policy
from ctconsole.agent.channel import MAX_FRAME, PROTOCOL_VERSION, ChannelError, encode_frame, read_frame, write_all
from ctconsole.config import criu_binary, private_dir, run_dir, state_dir
from ctconsole.criu import selftest as lazy_selftest
from ctconsole.criu.client import CriuClient
from ctconsole.errors import CtError, UsageError
from ctconsole.migrate import pipes, storage, transport
from ctconsole.migrate.hostview import restore_cgroup_view
from ctconsole.migrate.keeper import KeeperError, KeeperHandle, restore_with_parent
from ctconsole.migrate.restoreenv import Refused, setup_namespaces
from ctconsole.model import to_dict
from ctconsole.proto import agent_pb2

log = logging.getLogger("ctconsole.agent")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
#: where a page server may listen when the destination says nothing: RFC 2544's benchmarking
#: range, which the lab's network-namespace hosts use (loopback is always allowed)
DEFAULT_LISTEN_NETS = "198.18.0.0/15"

NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
MIGRATION_ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
MAX_FILES = 20000
MAX_ROUNDS = 64  # pre-copy rounds per migration (the console's policy stops far earlier)
FRAME_REST_TIMEOUT = 120.0  # s for the rest of a request frame once its first byte arrived
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


class DestinationServer:
    """One agent session: serves requests from ``inp`` and answers on ``out`` until EOF or bye.

    ``listen_nets``: kept for the command line; page servers no longer listen at all (the
    destination decides, never the console: :func:`listen_networks`).
    """

    def __init__(self, inp: IO[bytes], out: IO[bytes], listen_nets: Sequence[IPNetwork] = ()) -> None:
        self.inp = inp
        self.out = out
        self.listen_nets = tuple(listen_nets)
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
        # the page channel: one unix socket in a 0700 dir, one accepted connection, a CRIU page
        # server per dump (or pre-copy round) on it (migrate/transport.py); nothing listens on TCP
        self.pages: transport.PagePort | None = None
        self.carried = False  # storage was carried into STATE/storage/ID (removed on rollback)
        self.lazy_proc: subprocess.Popen[bytes] | None = None
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

    # -- main loop -----------------------------------------------------------------
    def serve(self) -> int:
        try:
            while True:
                try:
                    # no deadline for the next request, but one for the rest of a frame that started
                    payload = read_frame(self.inp, MAX_FRAME, rest_timeout=FRAME_REST_TIMEOUT)
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
                    if kind != "bye":
                        self._gate()
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

    def _gate(self) -> None:
        """Fail closed: a broken policy, or a user the policy does not admit, gets nothing done."""
        if self.policy_error is not None:
            raise Refused("policy", f"{self.policy_error.message} (destination policy: file)",
                          self.policy_error.details)
        self._enforce(self.connect_refusals)

    @staticmethod
    def _enforce(refusals: Sequence[agent_policy.Refusal]) -> None:
        if refusals:
            raise Refused("policy", str(refusals[0]), [str(r) for r in refusals[1:]])

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
        client = CriuClient(timeout=30)
        try:
            r.criu_version = client.version().text
            f = client.feature_check()
            r.mem_track, r.lazy_pages, r.pidfd_store = f.mem_track, f.lazy_pages, f.pidfd_store
        except CtError as exc:
            log.error("CRIU unusable here: %s", exc.message)
        if msg.cpuinfo_img:
            r.cpuinfo_ok, r.cpuinfo_detail = hostprobe.cpuinfo_check_blob(client, msg.cpuinfo_img)
        else:
            r.cpuinfo_ok, r.cpuinfo_detail = True, "not checked (no cpuinfo from the source)"
        cached = lazy_selftest.cached_result()
        if cached is not None:
            r.lazy_selftest_ok, r.lazy_selftest_reason = cached
        return r

    def on_inventory(self, msg: agent_pb2.InventoryRequest) -> agent_pb2.InventoryReply:
        items = inventory.scan(full=True)  # the console shows externals (detail, Ext column)
        return agent_pb2.InventoryReply(json=json.dumps([to_dict(c) for c in items]))

    def on_check(self, msg: agent_pb2.CheckRequest) -> agent_pb2.CheckReply:
        report = feasibility.check(inventory.resolve(msg.ref))
        return agent_pb2.CheckReply(verdict=report.verdict, json=json.dumps(report.to_dict(), default=str))

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
        """The destination half of ``ctconsole check --to DEST`` (read-only; see agent/hostprobe.py)."""
        try:
            reply = hostprobe.answer(msg)
        except hostprobe.BadProbe as exc:
            raise Refused("bad-request", str(exc)) from exc
        if msg.policy:
            reply.policy_lines.extend(self.policy.summary())
        try:
            opts = validate_restore_opts(msg.restore_options_json) if msg.restore_options_json else {}
        except Refused as exc:  # the restore itself would be refused: a finding, not a broken probe
            reply.refusals.append(agent_pb2.PolicyRefusal(key="restore.options", message=exc.message))
            opts = {}
        refusals = agent_policy.check_restore(
            self.policy, opts, [agent_policy.InheritAsk(x.how, x.path, x.mode, x.perm if x.mode else -1)
                                for x in msg.inherit],
            probe_name=msg.probe_name, setup_ns=[(a.action, a.interface, a.pf) for a in msg.setup_ns])
        refusals += agent_policy.check_image_bytes(self.policy, msg.image_bytes)
        reply.refusals.extend(agent_pb2.PolicyRefusal(key=r.key, message=str(r)) for r in refusals)
        return reply

    def on_prepare(self, msg: agent_pb2.PrepareRequest) -> agent_pb2.PrepareReply:
        if not MIGRATION_ID_RE.fullmatch(msg.migration_id):
            raise Refused("bad-request", f"bad migration id {msg.migration_id!r}")
        if self.images_dir is not None:
            raise Refused("state", "this session already prepared a migration")
        if (pending_dir() / f"{msg.migration_id}.json").exists():
            raise Refused("state", f"a pending restore for {msg.migration_id} exists: recover or abort it first")
        self.lock_fd = self._lock_id(msg.migration_id)
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
        if msg.shared_token:
            self.shared_fd = self._open_shared(msg.migration_id, msg.shared_token)
            reply.shared_fs = self.shared_fd is not None
            if reply.shared_fs:
                log.info("the console's images are on this filesystem: they will be linked, not copied")
        if msg.page_server and not reply.shared_fs:
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
        if self.pages is None:
            self.pages = transport.PagePort(self.migration_id)
        try:
            path = self.pages.serve(d)
        except (transport.TransportError, OSError) as exc:
            raise Refused("failed", f"cannot set up the page channel: {exc}") from exc
        log.info("page server into %s on %s", d, path or "the existing page connection")
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

    def on_restore(self, msg: agent_pb2.RestoreRequest) -> agent_pb2.RestoreReply:
        if self.images_dir is None:
            raise Refused("state", "prepare first")
        if self.restored_pid:
            raise Refused("state", "already restored")
        if self.open_files:
            raise Refused("state", f"files still open: {', '.join(sorted(self.open_files))}")
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
        marks: list[str] = []

        def mark(what: str) -> None:
            marks.append(f"{what}@{(time.monotonic() - t0) * 1000:.0f}ms")

        if self._wait_page_server(msg.page_server_wait or 60.0) or msg.page_server_wait:
            mark("page-server-done")
        self._enforce(agent_policy.check_image_bytes(self.policy, _tree_bytes(self.images_dir)))
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
            reply.probe_output = self._probe(msg.probe_name, msg.probe_timeout or 10.0)
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
            if process.exited(self.restored_pid):
                raise CtError(f"the restored tree (pid {self.restored_pid}) died while its pages arrived")
        if "fail:agent-commit" in os.environ.get("CTCONSOLE_FAULT", ""):  # fault-injection tests only
            raise CtError("commit failed (injected fault: fail:agent-commit)")
        if msg.migration_id and msg.migration_id != self.migration_id:
            rec = self._pending_record(msg.migration_id)
            if not rec:
                raise Refused("state", f"no pending restore for {msg.migration_id}")
            lock = self._lock_id(msg.migration_id)  # not while a live session owns it
            os.close(lock)
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
        state = process.state(pid) if pid and (not started or process.start_time(pid) == started) else ""
        return agent_pb2.StatusReply(state=state or "gone", pid=pid, running=process.alive(pid, started))

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
                if _del_link(name):
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

    def on_bye(self, msg: agent_pb2.ByeRequest) -> agent_pb2.ByeReply:
        return agent_pb2.ByeReply()

    # -- helpers -------------------------------------------------------------------
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

    def _wait_page_server(self, timeout: float) -> bool:
        """The page server exits after the dump's last page; wait so every page is on disk (True if one ran)."""
        if self.pages is None or not self.pages.active:
            return False
        pid = self.pages.pid
        try:
            status = self.pages.wait(timeout)
        except CtError as exc:
            raise CtError(f"the page server{f' (pid {pid})' if pid else ''} did not finish within {timeout:.0f} s: "
                          f"{exc.message}", exc.details) from exc
        if status:
            raise CtError(f"the page server failed (wait status {status:#x})", self._log_errors("page-server.log"))
        return True

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
            if _del_link(name):
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
        try:
            self._finish()
        finally:
            if self.lock_fd is not None:
                os.close(self.lock_fd)  # the id is free for recovery (or a new session) now
                self.lock_fd = None

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


def _tree_bytes(d: Path) -> int:
    """Bytes of the files under ``d`` (pages a page server wrote count too), symlinks not followed."""
    total = 0
    for root, _dirs, files in os.walk(d):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, f)).st_size
    return total


def _del_link(name: str) -> bool:
    if not NAME_RE.fullmatch(name) or not link_exists(name):
        return False
    res = subprocess.run(["ip", "link", "del", "dev", name], capture_output=True, timeout=10, check=False)
    return res.returncode == 0


def listen_networks(given: Sequence[str] = ()) -> tuple[IPNetwork, ...]:
    """The networks a page server may listen in besides loopback, as this destination decides.

    ``given`` (``ctconsole agent --listen-net CIDR``), else
    ``CTCONSOLE_AGENT_LISTEN_NETS`` (comma-separated), else
    :data:`DEFAULT_LISTEN_NETS` (the benchmarking range the lab's network
    namespaces use). "none" allows loopback only. Malformed entries raise UsageError.
    """
    words = list(given) or os.environ.get("CTCONSOLE_AGENT_LISTEN_NETS", DEFAULT_LISTEN_NETS).split(",")
    out: list[IPNetwork] = []
    for w in (w.strip() for w in words):
        if not w or w == "none":
            continue
        try:
            out.append(ipaddress.ip_network(w, strict=False))
        except ValueError as exc:
            raise UsageError(f"bad listen network {w!r}: {exc}") from exc
    return tuple(out)


def run_stdio(listen_nets: Sequence[str] = ()) -> int:
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
    made = restore_cgroup_view()  # `ip netns exec` hid /sys/fs/cgroup (hostview.py says why)
    if made:
        log.info("mounted the host's cgroup hierarchies again: %s", " ".join(made))
    # stdout carries frames only: anything else printing there would corrupt the stream
    out_fd = os.dup(1)
    os.dup2(2, 1)
    with os.fdopen(0, "rb", buffering=0) as inp, os.fdopen(out_fd, "wb", buffering=0) as out:
        return DestinationServer(inp, out, listen_networks(listen_nets)).serve()
