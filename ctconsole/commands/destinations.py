"""Where a container can go: the destinations ctconsole already knows, for both faces.

Why one list: the operator should never have to remember that the lab host
called ``dst`` is ``netns:ctlab-dst``, or retype ``ssh://root@db1:2222``.
The console's migrate screen offers this list in its destination picker, and
``ctconsole destinations`` prints it (one DEST per line with ``--names``, for
shell completion of ``migrate --to`` and ``check --to``).

Sources, merged by DEST: lab hosts (:mod:`ctconsole.lab.hosts`), the
``--host`` values the console was started with, past migrations from the
journal (which also give "last used"), and the concrete ``Host`` entries of
``~/.ssh/config``. Reachability is cheap and local: a lab host's network
namespace exists; an ssh host accepts a TCP connection on its port within a
short timeout (probed in parallel; ``probe=False`` skips it).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

#: how long an ssh port may take to accept before the host is called unreachable
PROBE_TIMEOUT = 0.5
#: journals read for "last used" (newest first): enough for a session's history, cheap to read
JOURNALS_READ = 200


@dataclass(frozen=True)
class Destination:
    """One place a container can migrate to.

    ``dest`` is what ``migrate --to`` takes; ``kind`` where it came from
    (lab, host, journal, ssh-config); ``reachable`` None when not probed;
    ``last_used`` the epoch seconds of the latest migration there (0: never).
    """

    dest: str
    kind: str
    label: str = ""
    reachable: bool | None = None
    last_used: float = 0.0
    note: str = ""


def lab_destinations() -> list[Destination]:
    from ctconsole.lab import hosts as lab_hosts
    from ctconsole.lab.proc import LabError

    try:
        found = lab_hosts.list_hosts()
    except (LabError, OSError, ValueError):
        return []
    return [Destination(h.dest, "lab", h.name, note=f"{h.kind} {h.address}") for h in found]


def journal_destinations(limit: int = JOURNALS_READ) -> list[Destination]:
    """Past destinations, each with the time of its latest migration (and what became of it)."""
    from ctconsole.migrate import journal

    out: dict[str, Destination] = {}
    try:
        paths = journal.journals()[-limit:]
    except OSError:
        return []
    for path in paths:
        try:
            s = journal.summarize(path)
        except (OSError, ValueError, KeyError):
            continue
        if not s.dest or s.dest == "?":
            continue
        old = out.get(s.dest)
        if old is None or s.started > old.last_used:
            out[s.dest] = Destination(s.dest, "journal", last_used=s.started, note=f"last: {s.result}")
    return list(out.values())


def _parse_ssh_config(path: Path | None = None) -> dict[str, dict[str, str]]:
    """Concrete ``Host`` aliases of an OpenSSH config (no patterns) -> their hostname/port/user."""
    try:
        text = (path or Path.home() / ".ssh" / "config").read_text(errors="replace")
    except OSError:
        return {}
    current: list[str] = []
    info: dict[str, dict[str, str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.replace("=", " ", 1).partition(" ")
        key, value = key.lower(), value.strip()
        if key == "match":
            current = []
        elif key == "host":
            current = [h for h in value.split() if not any(ch in h for ch in "*?!")]
            for h in current:
                info.setdefault(h, {})
        elif key in ("hostname", "port", "user"):
            for h in current:
                info[h].setdefault(key, value)
    return info


def ssh_config_destinations(path: Path | None = None) -> list[Destination]:
    """The ssh config's hosts as ``ssh://alias``.

    Why the alias, not HostName: ssh reads the config again when it connects,
    so User, Port, IdentityFile and ProxyJump all apply as the operator set them.
    """
    return [
        Destination(f"ssh://{alias}", "ssh-config", alias, note=kv.get("hostname", ""))
        for alias, kv in _parse_ssh_config(path).items()
    ]


def _ssh_target(dest: str, ssh_info: dict[str, tuple[str, int]]) -> tuple[str, int] | None:
    rest = dest.removeprefix("ssh://").rstrip("/")
    rest = rest.rpartition("@")[2]
    if rest in ssh_info:
        return ssh_info[rest]
    host, port = rest, 22
    if rest.count(":") == 1:
        host, _, p = rest.partition(":")
        port = int(p) if p.isdigit() else 22
    elif rest.startswith("[") and "]:" in rest:
        host, _, p = rest[1:].partition("]:")
        port = int(p) if p.isdigit() else 22
    return (host.strip("[]"), port) if host else None


def _tcp_open(target: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(target, timeout=PROBE_TIMEOUT):
            return True
    except OSError:
        return False


def _ssh_hosts(path: Path | None = None) -> dict[str, tuple[str, int]]:
    """alias -> (HostName, Port) from the ssh config, for probing."""
    out = {}
    for alias, kv in _parse_ssh_config(path).items():
        port = kv.get("port", "22")
        out[alias] = (kv.get("hostname", alias), int(port) if port.isdigit() else 22)
    return out


def reachable(dest: str, ssh_info: dict[str, tuple[str, int]] | None = None) -> bool | None:
    """Cheap reachability: the netns exists; the ssh port answers; ``local`` always. None: cannot tell."""
    if dest == "local":
        return True
    if dest.startswith("netns:"):
        return os.path.exists(f"/run/netns/{dest[6:]}")
    if dest.startswith("ssh://"):
        target = _ssh_target(dest, ssh_info or {})
        return _tcp_open(target) if target else False
    return None


def merge(groups: Iterable[Iterable[Destination]]) -> list[Destination]:
    """One entry per DEST: the first source names it, the journal adds when it was last used."""
    out: dict[str, Destination] = {}
    for group in groups:
        for d in group:
            old = out.get(d.dest)
            if old is None:
                out[d.dest] = d
            else:
                out[d.dest] = replace(
                    old,
                    last_used=max(old.last_used, d.last_used),
                    note=old.note or d.note,
                    label=old.label or d.label,
                )
    return list(out.values())


def ordered(dests: Iterable[Destination]) -> list[Destination]:
    """Last used first; then never-used ones by kind (lab, host, ssh-config) and name."""
    rank = {"host": 0, "lab": 1, "journal": 2, "ssh-config": 3}
    return sorted(dests, key=lambda d: (-d.last_used, rank.get(d.kind, 9), d.dest))


def known_destinations(
    hosts: Sequence[str] = (), probe: bool = True, ssh_config: Path | None = None
) -> list[Destination]:
    """Every destination ctconsole knows, last used first (``local`` and the source itself excluded)."""
    given = [Destination(h, "host") for h in hosts if h and h != "local"]
    found = merge([given, lab_destinations(), journal_destinations(), ssh_config_destinations(ssh_config)])
    found = [d for d in found if d.dest != "local"]
    if probe and found:
        import concurrent.futures

        info = _ssh_hosts(ssh_config)
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(16, len(found))) as pool:
            answers = list(pool.map(lambda d: reachable(d.dest, info), found))
        found = [replace(d, reachable=r) for d, r in zip(found, answers, strict=True)]
    return ordered(found)


# ------------------------------------------------------------------ CLI
def register(sub: Any) -> None:
    p = sub.add_parser(
        "destinations",
        help="list the destinations ctconsole knows (lab hosts, past migrations, ~/.ssh/config)",
        description="List the places a container can migrate to, last used first: lab hosts, "
        "destinations of past migrations (from the journal) and the hosts of ~/.ssh/config, with "
        "their kind and whether they answer. --names prints one DEST per line for shell completion "
        "of `migrate --to` and `check --to`.",
    )
    p.add_argument("--names", action="store_true", help="only the DEST strings, one per line (completion)")
    p.add_argument("--no-probe", action="store_true", help="do not test reachability (faster)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run_destinations)


def run_destinations(args: argparse.Namespace) -> int:
    dests = known_destinations(probe=not (args.no_probe or args.names))
    if args.names:
        sys.stdout.write("".join(f"{d.dest}\n" for d in dests))
        return 0
    if args.json:
        print(json.dumps([asdict(d) for d in dests], indent=2))
        return 0
    sys.stdout.write(render(dests))
    return 0


def reach_word(d: Destination) -> str:
    return {True: "up", False: "DOWN", None: "?"}[d.reachable]


def render(dests: Sequence[Destination]) -> str:
    if not dests:
        return "no known destinations (add one: ctconsole lab host add NAME, or a Host in ~/.ssh/config)\n"
    import time

    lines = [f"{'DEST':<32} {'KIND':<10} {'REACH':<5} {'LAST USED':<16} NOTE"]
    for d in dests:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(d.last_used)) if d.last_used else "-"
        lines.append(f"{d.dest:<32} {d.kind:<10} {reach_word(d):<5} {used:<16} {d.note}")
    return "\n".join(lines) + "\n"
