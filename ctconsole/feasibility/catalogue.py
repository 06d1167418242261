"""The rule catalogue: every static rule registers itself here.

Why a registry: docs, the TUI's rule list and the unit tests enumerate the
same catalogue, so adding a rule is one decorated function and nothing else.
A rule gets a :class:`Context` and yields :class:`Finding` objects.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ctconsole.feasibility.findings import SEVERITIES, Finding
from ctconsole.model import Container, Process


@dataclass(frozen=True)
class HostFacts:
    """Facts the model does not carry, gathered from /proc for a local container.

    Empty when the container lives elsewhere; rules then skip those checks
    (the trial dump still catches them).
    """

    sysv_shm_pids: tuple[int, ...] = ()  # tasks with a /SYSV mapping
    device_map_pids: tuple[tuple[int, str], ...] = ()  # (pid, mapping) of io/pf device mappings
    vfork_parents: tuple[int, ...] = ()  # parents blocked in vfork (share mm with a child)
    shared_mm: tuple[tuple[int, int, str], ...] = ()  # (pid, pid, kind) non-thread sharing
    # (pid, fd, path, mnt_id, inode) of fds opened on mounts outside the container's mount ns
    foreign_mount_fds: tuple[tuple[int, int, str, int, int], ...] = ()
    linkdown_routes: tuple[str, ...] = ()  # routes flagged linkdown in the container's own netns
    # (pid, "uid U gid G") of tasks whose credentials differ from CRIU's (root) while CRIU lacks
    # CAP_SYS_RESOURCE: prlimit() on them is EPERM ("Can't get rlimit")
    foreign_creds: tuple[tuple[int, str], ...] = ()
    corked_udp: tuple[int, ...] = ()  # inodes of UDP/UDPlite sockets with UDP_CORK set
    # (pid, fd, target pid (-1: exited), is a thread pidfd (PIDFD_THREAD)) of every pidfd
    pidfds: tuple[tuple[int, int, int, bool], ...] = ()
    timens_for_children: tuple[int, ...] = ()  # pids whose time_for_children differs from their time ns
    breaking_leases: tuple[tuple[int, int], ...] = ()  # (pid, inode) of file leases being broken right now
    # inodes of TCP sockets no diag reports (closed, e.g. reset by the peer) that still have a peer address
    closed_tcp_peers: tuple[int, ...] = ()
    rss_bytes: int = 0  # resident memory of the whole tree
    anon_bytes: int = 0  # anonymous memory (what lands in pages-*.img)


@dataclass(frozen=True)
class Context:
    container: Container
    criu_version: tuple[int, int, int] = (4, 2, 1)
    kernel: tuple[int, int] = (0, 0)
    facts: HostFacts = field(default_factory=HostFacts)
    dest_local: bool = True

    @property
    def root(self) -> Process | None:
        for p in self.container.processes:
            if p.pid == self.container.init_pid:
                return p
        return self.container.processes[0] if self.container.processes else None

    @property
    def pids(self) -> set[int]:
        return {p.pid for p in self.container.processes}


RuleFn = Callable[[Context], Iterable[Finding]]


@dataclass(frozen=True)
class Check:
    id: str
    severity: str  # the usual severity (a rule may emit others, e.g. info when harmless)
    title: str
    fn: RuleFn
    remedy: str = ""

    def run(self, ctx: Context) -> Iterator[Finding]:
        yield from self.fn(ctx)


CATALOGUE: dict[str, Check] = {}


def rule(rule_id: str, severity: str, title: str, remedy: str = "") -> Callable[[RuleFn], RuleFn]:
    """Register a rule function under ``rule_id`` (decorator)."""
    if severity not in SEVERITIES:
        raise ValueError(severity)

    def deco(fn: RuleFn) -> RuleFn:
        if rule_id in CATALOGUE:
            raise ValueError(f"duplicate rule id {rule_id}")
        CATALOGUE[rule_id] = Check(rule_id, severity, title, fn, remedy)
        return fn

    return deco


def run_all(ctx: Context) -> list[Finding]:
    """Run every registered rule; a rule that crashes becomes an info finding, not a crash."""
    from ctconsole.feasibility import checks as _checks  # noqa: F401  (registers the checks)

    out: list[Finding] = []
    for r in CATALOGUE.values():
        try:
            out.extend(r.run(ctx))
        except Exception as exc:  # a broken rule must not hide the others' findings
            out.append(
                Finding(
                    rule=r.id,
                    severity="info",
                    subject="checker",
                    message=f"rule {r.id} could not run: {type(exc).__name__}: {exc}",
                    remedy="report this; the trial dump (--trial) still checks it",
                )
            )
    return out


def describe() -> list[dict[str, Any]]:
    """The catalogue as rows (id, severity, title, remedy) for docs and the UI."""
    from ctconsole.feasibility import checks as _checks  # noqa: F401

    return [{"id": r.id, "severity": r.severity, "title": r.title, "remedy": r.remedy} for r in CATALOGUE.values()]
