"""``RemoteProbe``: the :class:`~ctconsole.feasibility.host.HostProbe` of a destination reached through the agent.

Why the migration channel: a ``netns:NAME`` or ``ssh://`` destination is
exactly where ``ctconsole migrate`` would start its agent, so the check asks
that same agent (same transport, same ssh keys, same ``CTCONSOLE_REMOTE_CMD``)
and the answer is about the host the restore would really run on. ``hello``
brings CRIU's version, FEATURE_CHECK and the kernel; the read-only
``host_probe`` request (ctconsole/agent/hostprobe.py) runs ``criu check``,
CPUINFO_CHECK of the source's ``cpuinfo.img``, and looks up free space for
the images, paths and network interfaces.

Every answer is cached for the life of the probe (one check), and recorded
in :meth:`RemoteProbe.summary`, which becomes the ``destination`` section of
``ctconsole check --json``. Failures to reach the agent raise :class:`~ctconsole.agent.connect.Unreachable`
(later ones ``ChannelError`` / ``AgentError``; all are
:class:`~ctconsole.errors.CtError`); the checker turns them into a
``destination-unreachable`` finding.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from ctconsole.agent.channel import AgentChannel, parse_destination
from ctconsole.agent.connect import connect
from ctconsole.agent.hostprobe import LINK_RE, MAX_ITEMS, MAX_PATH
from ctconsole.feasibility.host import ProbeResult, parse_version
from ctconsole.proto import agent_pb2

Connector = Callable[..., tuple[AgentChannel, Any]]
#: how long one request may take on the far side (criu check is the slowest: ~1 s)
REQUEST_TIMEOUT = 90.0


class RemoteProbe:
    """A destination host (``netns:NAME``, ``ssh://[user@]host[:port]``, or ``local``) asked through its agent.

    ``name`` is the destination as written (``netns:lab1``). The agent is
    started on first use (:meth:`connect`); :meth:`close` (or ``with``) ends it.
    """

    def __init__(self, dest: str, timeout: float = REQUEST_TIMEOUT, connector: Connector = connect) -> None:
        self.dest = parse_destination(dest)  # UsageError (exit 2) for a malformed DEST
        self.name = str(self.dest)
        self.timeout = timeout
        self._connect = connector  # tests hand in a fake agent here
        self._ch: AgentChannel | None = None
        self._hello: Any = None
        self._check: Any = None
        self._cpu: ProbeResult | None = None
        self._paths: dict[str, str] = {}
        self._links: dict[str, str] = {}
        self._conflicts: dict[str, Any] | None = None
        self._policy: list[str] = []  # the destination's agent policy in force (agent/policy.py summary)

    # -- lifecycle --------------------------------------------------------------
    def connect(self) -> None:
        """Start the agent and say hello (idempotent). Raises Unreachable (a CtError) when it cannot."""
        if self._hello is not None:
            return
        self._ch, self._hello = self._connect(self.dest, timeout=self.timeout)

    @property
    def channel(self) -> AgentChannel:
        """The open agent session (connected on first use), for other read-only questions such as
        the storage preview of ``check --to`` (commands/check.py)."""
        self.connect()
        assert self._ch is not None
        return self._ch

    def close(self) -> None:
        """End the agent session (bye, reap; kill it if it hangs)."""
        if self._ch is not None:
            ch, self._ch = self._ch, None
            ch.close(timeout=10)

    def __enter__(self) -> RemoteProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, req: agent_pb2.HostProbeRequest) -> Any:
        self.connect()
        assert self._ch is not None
        return self._ch.call("host_probe", req, timeout=self.timeout)

    # -- HostProbe ----------------------------------------------------------------
    def version(self) -> tuple[tuple[int, int, int], str]:
        self.connect()
        text = str(self._hello.criu_version)
        return (parse_version(text) if text else (0, 0, 0)), text

    def kernel(self) -> str:
        self.connect()
        return str(self._hello.kernel)

    def features(self) -> dict[str, bool]:
        self.connect()
        h = self._hello
        return {"mem_track": bool(h.mem_track), "lazy_pages": bool(h.lazy_pages), "pidfd_store": bool(h.pidfd_store)}

    def check(self) -> ProbeResult:
        """``criu check`` on the destination (and, in the same round trip, the images dir's free space)."""
        if self._check is None:
            self._check = self._call(agent_pb2.HostProbeRequest(criu_check=True, images_space=True))
        return ProbeResult(bool(self._check.criu_check_ok), str(self._check.criu_check_detail))

    def cpuinfo_dump(self) -> bytes | None:
        """Never the source of a migration: nothing to dump here."""
        return None

    def cpuinfo_check(self, blob: bytes) -> ProbeResult:
        if self._cpu is None:
            r = self._call(agent_pb2.HostProbeRequest(cpuinfo_img=blob))
            self._cpu = ProbeResult(bool(r.cpuinfo_ok), str(r.cpuinfo_detail))
        return self._cpu

    def images_dir(self) -> str:
        """Where the destination agent would write the images (``CTCONSOLE_IMAGES_DIR`` or its state dir)."""
        self.check()
        return str(self._check.images_dir)

    def free_space(self, path: str) -> int:
        """Free bytes for the images on the destination; ``path`` (a local hint) is ignored: the agent knows."""
        self.check()
        return int(self._check.images_free)

    def path_exists(self, path: str) -> bool:
        return bool(self.path_kind(path))

    # -- destination resources (optional HostProbe extras) -------------------------
    def lookup(self, paths: Sequence[str] = (), links: Sequence[str] = ()) -> None:
        """Ask for several paths and interfaces at once (one round trip per 64 of each)."""
        todo_p = [p for p in dict.fromkeys(paths) if p not in self._paths]
        todo_l = [n for n in dict.fromkeys(links) if n not in self._links]
        # what the agent would refuse (and so fail the whole request) counts as missing there
        bad_p = [p for p in todo_p if not p.startswith("/") or "\0" in p or len(p.encode()) > MAX_PATH]
        bad_l = [n for n in todo_l if not LINK_RE.fullmatch(n) or n in (".", "..")]
        self._paths.update(dict.fromkeys(bad_p, ""))
        self._links.update(dict.fromkeys(bad_l, ""))
        todo_p = [p for p in todo_p if p not in bad_p]
        todo_l = [n for n in todo_l if n not in bad_l]
        while todo_p or todo_l:
            chunk_p, todo_p = todo_p[:MAX_ITEMS], todo_p[MAX_ITEMS:]
            chunk_l, todo_l = todo_l[:MAX_ITEMS], todo_l[MAX_ITEMS:]
            r = self._call(agent_pb2.HostProbeRequest(paths=chunk_p, links=chunk_l))
            self._paths.update({x.path: x.kind for x in r.paths})
            self._links.update({x.name: x.kind for x in r.links})

    def path_kind(self, path: str) -> str:
        """ "" (missing), dir, file, socket, char, block, fifo or other, on the destination."""
        self.lookup(paths=[path])
        return self._paths.get(path, "")

    def link_kind(self, name: str) -> str:
        """ "" (missing), bridge or link: a network interface in the destination's namespace."""
        self.lookup(links=[name])
        return self._links.get(name, "")

    def conflicts(
        self, pids: Sequence[int] = (), ports: Sequence[tuple[str, str, int]] = (), cgroups: Sequence[str] = ()
    ) -> dict[str, Any]:
        """What the restore would collide with there (feasibility/conflicts.py): ``busy_pids``,
        ``busy_ports`` ((proto, address, port) bound there) and ``cgroups`` (path -> (exists, tasks))."""
        from ctconsole.agent.hostprobe import MAX_PIDS, MAX_PORTS

        req = agent_pb2.HostProbeRequest(
            pids=list(pids)[:MAX_PIDS],
            ports=[agent_pb2.PortQuery(proto=p, address=a, port=n) for p, a, n in list(ports)[:MAX_PORTS]],
            cgroups=list(cgroups)[:MAX_ITEMS],
        )
        r = self._call(req)
        self._conflicts = {
            "busy_pids": sorted(int(x) for x in r.busy_pids),
            "busy_ports": [(x.proto, x.address, int(x.port)) for x in r.busy_ports],
            "cgroups": {c.path: (bool(c.exists), int(c.procs)) for c in r.cgroups},
        }
        return self._conflicts

    def policy_refusals(self, restore: dict[str, Any], inherit: Sequence[agent_pb2.InheritFd] = (),
                        setup_ns: Sequence[agent_pb2.SetupNsAction] = ()) -> list[tuple[str, str]]:
        """What the destination's policy (agent/policy.py) refuses in this restore: ``(key, message)``.

        The agent runs the very checks its restore runs, so a refusal shows
        here, before anything is frozen.
        """
        r = self._call(agent_pb2.HostProbeRequest(restore_options_json=json.dumps(restore), inherit=list(inherit),
                                                  setup_ns=list(setup_ns), policy=True))
        self._policy = list(r.policy_lines)
        return [(x.key, x.message) for x in r.refusals]

    # -- report ----------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """What the destination said, for the report's ``destination`` section (JSON-ready)."""
        out: dict[str, Any] = {"dest": self.name, "reachable": self._hello is not None}
        h = self._hello
        if h is None:
            return out
        out.update(version=h.criu_version, kernel=h.kernel, hostname=h.hostname, features=self.features())
        checks: dict[str, Any] = {}
        if self._check is not None:
            checks["criu_check"] = {"ok": bool(self._check.criu_check_ok), "detail": self._check.criu_check_detail}
            checks["images"] = {"dir": self._check.images_dir, "free": int(self._check.images_free)}
        if self._cpu is not None:
            checks["cpuinfo"] = {"ok": self._cpu.ok, "detail": self._cpu.message}
        if self._paths:
            checks["paths"] = {p: (k or "missing") for p, k in self._paths.items()}
        if self._links:
            checks["links"] = {n: (k or "missing") for n, k in self._links.items()}
        if self._conflicts is not None:
            checks["conflicts"] = self._conflicts
        if self._policy:
            checks["policy"] = self._policy
        out["checks"] = checks
        return out
