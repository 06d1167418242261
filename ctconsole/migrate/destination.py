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

- every frame is size-limited and must parse as a ``Request`` whose kind is
  in :data:`HANDLERS` (an explicit table: a request kind without an entry
  there is refused, never looked up by name); anything else gets an
  ``Error`` reply and a log line (and a broken stream ends the session);
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
- nothing listens on TCP: the page server (stop-copy, pre-copy) and the
  lazy-pages daemon (post-copy) use the one connection the console made to a
  unix socket in a root-only (0700) directory (migrate/transport.py);
- carried storage goes where this host decides (``STATE/storage/ID``), and a
  rollback removes it (migrate/storage.py).

The session's state and the requests that fill it live in
:mod:`ctconsole.migrate.destination_session`; restore, commit, abort and
rollback in :mod:`ctconsole.migrate.destination_restore`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, cast

from google.protobuf.message import DecodeError, Message

from ctconsole import __version__, feasibility, inventory
from ctconsole.agent import hostprobe
from ctconsole.agent import policy as agent_policy
from ctconsole.agent.channel import MAX_FRAME, PROTOCOL_VERSION, ChannelError, encode_frame, read_frame, write_all
from ctconsole.config import private_dir, state_dir
from ctconsole.criu import selftest as lazy_selftest
from ctconsole.criu.client import CriuClient, CriuError
from ctconsole.errors import CtError
from ctconsole.migrate.destination_restore import Restorer, bridges_needed, validate_restore_opts, veth_host_names
from ctconsole.migrate.destination_session import NAME_RE, check_name, images_root
from ctconsole.migrate.hostview import restore_cgroup_view
from ctconsole.migrate.restoreenv import Refused
from ctconsole.model import to_dict
from ctconsole.proto import agent_pb2

__all__ = ["HANDLERS", "DestinationServer", "Refused", "bridges_needed", "check_name", "run_stdio",
           "validate_restore_opts", "veth_host_names"]

log = logging.getLogger("ctconsole.agent")

FRAME_REST_TIMEOUT = 120.0  # s for the rest of a request frame once its first byte arrived


def global_ipv4() -> list[str]:
    """Global IPv4 addresses visible in this network namespace (shown by the console's hello)."""
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


class DestinationServer(Restorer):
    """One agent session: serves requests from ``inp`` and answers on ``out`` until EOF or bye."""

    def __init__(self, inp: IO[bytes], out: IO[bytes]) -> None:
        super().__init__()
        self.inp = inp
        self.out = out

    def serve(self) -> int:
        """Answer requests until EOF or bye; the session is finished (kept, pending or rolled back) at the end."""
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
                    handler = HANDLERS.get(kind)
                    if handler is None:
                        raise Refused("bad-request", f"request kind {kind!r} is not served by this agent")
                    body = handler(self, getattr(req, kind))
                    getattr(reply, kind).CopyFrom(body)
                except Refused as exc:
                    log.error("refused %s: %s", kind, exc.message)
                    reply.error.CopyFrom(agent_pb2.Error(code=exc.code, message=exc.message, details=exc.details))
                except CtError as exc:
                    log.error("%s failed: %s", kind, exc.message)
                    code = "criu" if isinstance(exc, CriuError) else "failed"
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

    def _send(self, reply: agent_pb2.Reply) -> bool:
        try:
            write_all(self.out.fileno(), encode_frame(reply.SerializeToString()))
            return True
        except OSError as exc:
            log.error("cannot answer the console: %s", exc)
            return False

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

    def on_bye(self, msg: agent_pb2.ByeRequest) -> agent_pb2.ByeReply:
        return agent_pb2.ByeReply()

#: every request kind the agent answers: Request.body field -> its handler (the reply goes into the
#: Reply.body field of the same name). A kind missing here is refused, never looked up by name.
HANDLERS: dict[str, Callable[[DestinationServer, Any], Message]] = {
    "hello": DestinationServer.on_hello,
    "inventory": DestinationServer.on_inventory,
    "check": DestinationServer.on_check,
    "preflight": DestinationServer.on_preflight,
    "host_probe": DestinationServer.on_host_probe,
    "prepare": DestinationServer.on_prepare,
    "carry": DestinationServer.on_carry,
    "link": DestinationServer.on_link,
    "round": DestinationServer.on_round,
    "file": DestinationServer.on_file,
    "restore": DestinationServer.on_restore,
    "commit": DestinationServer.on_commit,
    "status": DestinationServer.on_status,
    "abort": DestinationServer.on_abort,
    "bye": DestinationServer.on_bye,
}


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
    made = restore_cgroup_view()  # `ip netns exec` hid /sys/fs/cgroup (hostview.py says why)
    if made:
        log.info("mounted the host's cgroup hierarchies again: %s", " ".join(made))
    # stdout carries frames only: anything else printing there would corrupt the stream
    out_fd = os.dup(1)
    os.dup2(2, 1)
    with os.fdopen(0, "rb", buffering=0) as inp, os.fdopen(out_fd, "wb", buffering=0) as out:
        return DestinationServer(inp, out).serve()
