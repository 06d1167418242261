"""Where a container can go: the destinations ctconsole already knows, for both faces.

Why one list: the operator should never have to remember that the lab host
called ``dst`` is ``netns:ctlab-dst``, or retype ``ssh://root@db1:2222``.
The console's migrate screen offers this list in its destination picker, and
``ctconsole destinations`` prints it (one DEST per line with ``--names``, for
shell completion of ``migrate --to`` and ``check --to``).

Sources, merged by DEST: lab hosts (:mod:`ctconsole.lab.hosts`), the
``--host`` values the console was started with, past migrations from the
journal (which also give "last used"), and the concrete ``Host`` entries of
``~/.ssh/config``. Reachability is cheap and local (probed in parallel;
``probe=False`` skips it):

- a lab host answers the lab's own way (:func:`ctconsole.lab.hosts.answers`:
  its netns exists; an isolated host's sshd answers from its edge namespace);
- an address in the lab's network that no lab host has now (a past lab
  host in the journal) is never probed: from this namespace it would go
  to the default gateway, out of the lab, and may be answered by a stranger;
- an ssh host is resolved by OpenSSH itself (``ssh -G``: HostName, Port,
  ProxyCommand/ProxyJump as the operator configured them); one reached
  through a proxy or bastion is not probed (a direct TCP connect cannot
  tell), the rest must accept a TCP connection on their port within a
  short timeout.
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
    ``last_used`` the epoch seconds of the latest migration there (0: never);
    ``why`` what the reachability probe found when it is not reachable.
    """

    dest: str
    kind: str
    label: str = ""
    reachable: bool | None = None
    last_used: float = 0.0
    note: str = ""
    why: str = ""


def _lab_hosts_by_dest() -> dict[str, Any]:
    """DEST -> LabHost for the lab hosts there are now (empty without a lab)."""
    from ctconsole.lab import hosts as lab_hosts
    from ctconsole.lab.proc import LabError

    try:
        return {h.dest: h for h in lab_hosts.list_hosts()}
    except (LabError, OSError, ValueError):
        return {}


def lab_destinations(lab: dict[str, Any]) -> list[Destination]:
    """The lab hosts there are now (``lab``: :func:`_lab_hosts_by_dest`, also used to probe them)."""
    return [Destination(h.dest, "lab", h.name, note=f"{h.kind} {h.address}") for h in lab.values()]


def journal_destinations(limit: int = JOURNALS_READ) -> list[Destination]:
    """Past destinations, each with the time of its latest migration (and what became of it).

    A DEST that ``migrate --to`` refuses (a typo that failed, e.g. ``bogus://x``) is not offered again.
    """
    from ctconsole.agent.channel import parse_destination
    from ctconsole.errors import UsageError
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
        try:
            parse_destination(s.dest)
        except UsageError:
            continue
        old = out.get(s.dest)
        if old is None or s.started > old.last_used:
            out[s.dest] = Destination(s.dest, "journal", last_used=s.started, note=f"last: {s.result}")
    return list(out.values())


def ssh_config_path() -> Path:
    """The client config our ssh commands read: ``-F FILE`` from ``CTCONSOLE_SSH_OPTS``, else the one in the
    home directory of the user we run as (ssh reads the passwd entry's home, not ``$HOME``: under
    ``sudo`` with HOME kept, ``$HOME/.ssh/config`` names hosts root's ssh does not know)."""
    import pwd

    from ctconsole.agent.channel import ssh_options

    opts = ssh_options()
    for i, w in enumerate(opts):
        if w == "-F" and i + 1 < len(opts):
            return Path(opts[i + 1])
        if w.startswith("-F") and len(w) > 2:
            return Path(w[2:])
    return Path(pwd.getpwuid(os.geteuid()).pw_dir) / ".ssh" / "config"


def _parse_ssh_config(path: Path | None = None) -> dict[str, dict[str, str]]:
    """Concrete ``Host`` aliases of an OpenSSH config (no patterns) -> their hostname/port/user."""
    try:
        text = (path or ssh_config_path()).read_text(errors="replace")
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


def _tcp_answer(target: tuple[str, int]) -> str:
    """"" when ``host:port`` accepts a TCP connection, else why not, in a few words."""
    try:
        with socket.create_connection(target, timeout=PROBE_TIMEOUT):
            return ""
    except socket.gaierror:
        return f"{target[0]}: unknown host"
    except TimeoutError:
        return f"{target[0]}:{target[1]}: no answer in {PROBE_TIMEOUT:g} s"
    except ConnectionRefusedError:
        return f"{target[0]}:{target[1]}: connection refused"
    except OSError as exc:
        return f"{target[0]}:{target[1]}: {exc.strerror or exc}"


def _ssh_resolved(d: Any, ssh_config: Path | None = None) -> dict[str, str] | None:
    """What OpenSSH will do for the parsed ssh DEST ``d`` (``ssh -G`` with our own options: hostname, port,
    proxycommand, proxyjump), without connecting. None when ssh is missing or refuses the target."""
    import subprocess

    from ctconsole.agent.channel import ssh_options

    host = d.host.replace("[", "").replace("]", "")
    argv = ["ssh", *ssh_options(), "-G"] + (["-F", str(ssh_config)] if ssh_config else [])
    argv += (["-p", str(d.port)] if d.port else []) + ["--", f"{d.user}@{host}" if d.user else host]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=2, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    conf: dict[str, str] = {}
    for line in out.stdout.splitlines():
        k, _, v = line.partition(" ")
        conf.setdefault(k.lower(), v.strip())
    return conf


def _in_lab_network(host: str) -> bool:
    import ipaddress

    from ctconsole.lab.netns import LAB_NETWORK

    try:
        return ipaddress.ip_address(host) in ipaddress.ip_network(LAB_NETWORK)
    except ValueError:
        return False


def reach(dest: str, lab: dict[str, Any] | None = None, ssh_config: Path | None = None) -> tuple[bool | None, str]:
    """Cheap reachability and, when down, why (see the module docstring for each kind).

    ``lab``: DEST -> LabHost of the lab hosts there are now. None: cannot tell (an unknown scheme, a
    host behind a proxy).
    """
    from ctconsole.agent.channel import parse_destination
    from ctconsole.errors import UsageError

    if lab and dest in lab:
        from ctconsole.lab import hosts as lab_hosts

        if lab_hosts.answers(lab[dest]):
            return True, ""
        return False, f"lab host {lab[dest].name} does not answer (ctconsole lab host list)"
    try:
        d = parse_destination(dest)
    except UsageError:
        return None, ""
    if d.kind == "local":
        return True, ""
    if d.kind == "netns":
        if os.path.exists(f"/run/netns/{d.name}"):
            return True, ""
        return False, f"no network namespace {d.name} (ip netns list)"
    conf = _ssh_resolved(d, ssh_config)
    if conf is not None:
        if conf.get("proxycommand", "none") != "none" or conf.get("proxyjump", "none") != "none":
            return None, "reached through a proxy: not probed"
        port = conf.get("port", "22")
        target = (conf.get("hostname", ""), int(port) if port.isdigit() else 22)
    else:  # no usable ssh here: what the DEST itself says
        target = (d.host.strip("[]"), d.port or 22)
    if not target[0]:
        return False, "no host name in it"
    if _in_lab_network(target[0]):
        return False, f"{target[0]}: no lab host has this address now (lab addresses are not probed from here)"
    why = _tcp_answer(target)
    return not why, why


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


def is_here(dest: str) -> bool:
    """``dest`` is where ctconsole runs: ``local``, or ``netns:NAME`` when this process is in that namespace.

    Why: a console started in a lab host's namespace (``ip netns exec ctlab-x ctconsole``) would
    otherwise offer that very host first (it was used last) as where to move a container that is there.
    """
    if dest == "local":
        return True
    if not dest.startswith("netns:"):
        return False
    try:
        there, here = os.stat(f"/run/netns/{dest[6:]}"), os.stat("/proc/self/ns/net")
    except OSError:
        return False
    return (there.st_dev, there.st_ino) == (here.st_dev, here.st_ino)


def reach_rank(d: Destination) -> int:
    """Reachable first, then the ones not probed, then the ones that do not answer."""
    return {True: 0, None: 1, False: 2}[d.reachable]


def ordered(dests: Iterable[Destination]) -> list[Destination]:
    """Reachable first (a host that is down is never the first offer, even if used last); in each group
    last used first, then never-used ones by kind (host, lab, journal, ssh-config) and name."""
    rank = {"host": 0, "lab": 1, "journal": 2, "ssh-config": 3}
    return sorted(dests, key=lambda d: (reach_rank(d), -d.last_used, rank.get(d.kind, 9), d.dest))


def known_destinations(
    hosts: Sequence[str] = (), probe: bool = True, ssh_config: Path | None = None
) -> list[Destination]:
    """Every destination ctconsole knows, reachable ones first, last used first among them (``local`` and the
    source itself excluded)."""
    given = [Destination(h, "host") for h in hosts if h and h != "local"]
    lab = _lab_hosts_by_dest()
    found = merge([given, lab_destinations(lab), journal_destinations(), ssh_config_destinations(ssh_config)])
    found = [d for d in found if not is_here(d.dest)]
    if probe and found:
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(max_workers=min(16, len(found))) as pool:
            answers = list(pool.map(lambda d: reach(d.dest, lab, ssh_config), found))
        found = [replace(d, reachable=r, why=why) for d, (r, why) in zip(found, answers, strict=True)]
    return ordered(found)


# ------------------------------------------------------------------ CLI
def register(sub: Any) -> None:
    p = sub.add_parser(
        "destinations",
        help="list the destinations ctconsole knows (lab hosts, past migrations, ~/.ssh/config)",
        description="List the places a container can migrate to, the ones that answer first (last used "
        "first among them), then the ones that do not, with why: lab hosts, "
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
        note = "; ".join(x for x in (d.why, d.note) if x)
        lines.append(f"{d.dest:<32} {d.kind:<10} {reach_word(d):<5} {used:<16} {note}")
    return "\n".join(lines) + "\n"
