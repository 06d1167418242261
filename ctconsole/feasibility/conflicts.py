"""Destination conflicts found before the freeze: what the restore would collide with there.

Why here and not in the migration: before this, ``check --to DEST`` said
FEASIBLE for a destination where the veth rule's host name already existed;
the migration froze the container, failed in ``post-dump`` ("network device
... already exists on the destination") and rolled back. Everything the
destination can be asked without changing it belongs in the check:

- the host end name of every ``veth[IF]:NAME[@BR]`` restore external: CRIU
  creates that device, so it must not exist there (``Can't restore link: -17``);
- for a tree in the host pid namespace, its pids: CRIU restores every task
  with its own pid (``Can't fork for N: File exists``);
- for a tree in the host network namespace, the ports its listening TCP and
  bound UDP sockets restore (``bind: Address already in use``);
- the cgroup (v2) the tasks are restored into: one that exists there *with
  tasks in it* would mix the container with another workload (CRIU's soft
  mode reuses existing cgroups); a ``cgroup`` rule (``cgroup_root``) moves it.

Pids and cgroups are not asked of a destination on this same kernel (a
``netns:`` host, or one whose hostname is ours): there they are the source's
own, still running until the restore has succeeded.
"""

from __future__ import annotations

import os
import re
from typing import Any

from ctconsole.feasibility.findings import BLOCKER, NEEDS_RULE, Finding
from ctconsole.model import Container

_VETH = re.compile(r"^veth\[(?P<ifname>[^\]]+)\]:(?P<host>[^@]+)(?:@(?P<br>.+))?$")
_WILD = ("0.0.0.0", "::", "*", "")


def veth_host_names(restore: dict[str, Any]) -> list[tuple[str, str]]:
    """(container interface, host end name) of every ``veth[IF]:NAME[@BR]`` restore external."""
    out = []
    for ext in restore.get("external", []) or []:
        m = _VETH.match(str(ext))
        if m:
            out.append((m.group("ifname"), m.group("host")))
    return out


def _split_addr(local: str) -> tuple[str, int]:
    host, _, port = local.rpartition(":")
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        return host, 0


def bound_ports(container: Container) -> list[tuple[str, str, int]]:
    """(proto, address, port) the restored sockets bind in the host netns (listeners, bound UDP)."""
    out: list[tuple[str, str, int]] = []
    for s in container.sockets:
        if s.family not in ("inet", "inet6"):
            continue
        if s.type == "stream" and s.state.upper() == "LISTEN":
            proto = "tcp"
        elif s.type == "dgram" and s.protocol in ("udp", "udplite", ""):
            proto = "udp"
        else:
            continue
        addr, port = _split_addr(s.local)
        if port:
            out.append((proto, addr, port))
    return list(dict.fromkeys(out))


def same_kernel(dest: str, dst: Any) -> bool:
    """A destination on this very kernel (its pids and cgroups are the source's own)."""
    if dest.startswith("netns:"):
        return True
    summary = getattr(dst, "summary", None)
    host = summary().get("hostname") if callable(summary) else None
    return bool(host) and host == os.uname().nodename


def shared_locks(container: Container, dest: str, subject: str) -> list[Finding]:
    """A lock the container holds on a file the destination sees as the very same inode.

    CRIU takes every dumped lock again on restore and *waits* for it (file-lock.c: ``F_SETLKW`` for
    POSIX locks, a blocking ``flock`` for BSD ones; ``F_OFD_SETLK`` fails at once for OFD locks).
    ctconsole's handover keeps the frozen source, and so its locks, until the destination reports
    the restored tree alive: on a destination that shares this kernel and filesystem (a ``netns:``
    host) the restore waits on the source, the source on the restore, until the timeout rolls the
    migration back (seen with sqlite3 holding a write transaction). A destination with its own
    filesystems (an isolated host, another machine) gets a copy of the file and no such conflict.
    """
    if not dest.startswith("netns:"):
        return []
    locked = [f for f in container.files if f.locked]
    if not locked:
        return []
    more = f" (and {len(locked) - 1} more)" if len(locked) > 1 else ""
    return [
        Finding(
            "dest-lock-shared",
            BLOCKER,
            subject,
            f"The container holds a lock on {locked[0].path}{more}, and {dest} shares this kernel and filesystem: "
            "CRIU's restore takes the lock again and waits for it (file-lock.c F_SETLKW / flock) while the "
            "frozen source keeps holding it until the restore has succeeded, so the restore hangs until the "
            "timeout and the migration rolls back.",
            "Release the lock before migrating (end the transaction, stop the writer), or migrate to a host "
            "with its own filesystems (`ctconsole lab host add NAME --isolated`, another machine).",
            source="host",
        )
    ]


def destination_conflicts(
    container: Container, restore: dict[str, Any], dst: Any, dest: str, subject: str
) -> list[Finding]:
    """Blockers (and a needs-rule for an occupied cgroup) for what already exists on the destination."""
    findings: list[Finding] = []
    link_kind = getattr(dst, "link_kind", None)
    if callable(link_kind):
        veths = veth_host_names(restore)
        lookup = getattr(dst, "lookup", None)
        if callable(lookup) and veths:
            lookup([], [h for _i, h in veths])
        for ifname, host in veths:
            if link_kind(host):
                findings.append(
                    Finding(
                        "dest-veth-name",
                        BLOCKER,
                        subject,
                        f"The veth host end {host} (for {ifname}) already exists on the destination; CRIU would "
                        "fail to create it after the container was frozen ('Can't restore link: -17').",
                        f"Pick another host_name in the veth rule, or remove the stale {host} there "
                        f"(ip link del {host}) if nothing uses it.",
                        source="host",
                    )
                )
    conflicts = getattr(dst, "conflicts", None)
    if not callable(conflicts):
        return findings
    local_kernel = same_kernel(dest, dst)
    pids = [p.pid for p in container.processes] if not container.has_own("pid") and not local_kernel else []
    ports = bound_ports(container) if not container.has_own("net") else []
    cg_path = container.cgroups.get("unified", "")
    cgroups = (
        [cg_path] if cg_path and cg_path != "/" and not restore.get("cgroup_root") and not local_kernel else []
    )
    if not (pids or ports or cgroups):
        return findings
    got = conflicts(pids=pids, ports=ports, cgroups=cgroups)
    busy = got.get("busy_pids") or []
    if busy:
        findings.append(
            Finding(
                "dest-pid-busy",
                BLOCKER,
                subject,
                f"The container shares the host pid namespace and pid(s) {', '.join(map(str, busy[:8]))}"
                f"{' ...' if len(busy) > 8 else ''} are in use on the destination; CRIU restores every task "
                "with its pid ('Can't fork for N: File exists').",
                "Stop what uses those pids there, or run the container in its own pid namespace.",
                source="host",
            )
        )
    for proto, addr, port in got.get("busy_ports") or []:
        findings.append(
            Finding(
                "dest-port-busy",
                BLOCKER,
                subject,
                f"{proto.upper()} port {port} is already bound on the destination ({addr or '*'}), and the "
                "container shares the host network namespace: its restored socket could not bind it.",
                f"Free port {port} on the destination, or give the container its own network namespace.",
                source="host",
            )
        )
    for path, (exists, tasks) in (got.get("cgroups") or {}).items():
        if exists and tasks:
            findings.append(
                Finding(
                    "dest-cgroup-busy",
                    NEEDS_RULE,
                    subject,
                    f"cgroup {path} exists on the destination with {tasks} task(s) in it; CRIU would restore "
                    "the container into it, next to another workload.",
                    "Add a 'cgroup' rule (a cgroup root of its own on the destination), or empty that cgroup there.",
                    needs=("cgroup_root",),
                    needs_on="restore",
                    rule_kind="cgroup",
                    source="host",
                )
            )
    return findings
