"""``ctconsole lab up|down|status|restart|host add|del|list``: real demo and test containers.

Why a subcommand: operators use the lab to try the console on real containers
(namespaces, runc, LXC, libvirt-lxc) and network-namespace "hosts" without
touching their own; tests use the same code through ``ctconsole.lab``.
Everything heavy is imported inside the handlers so ``ctconsole --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "lab",
        help="demo/test containers (namespaces, runc, LXC, libvirt-lxc) and netns hosts",
        description="Build and run the lab containers ctlab-ns, ctlab-runc, ctlab-lxc and ctlab-lv "
        "(each appends a counter to a file every 0.1 s), and hosts to migrate them to: network namespaces "
        "(netns:ctlab-NAME) or isolated hosts sharing only the kernel (ssh://root@198.18.N.2). "
        "`lab down` removes exactly what the lab created.",
    )
    p.set_defaults(func=lambda a: (p.print_help(), 0)[1])
    sub = p.add_subparsers(dest="lab_command", metavar="ACTION")

    up = sub.add_parser("up", help="start the lab containers (running ones are kept)")
    up.add_argument("names", nargs="*", metavar="NAME", help="only these (ns, runc, lxc, lv or ctlab-*)")
    up.add_argument("--require-all", action="store_true", help="exit non-zero if any container could not start")
    up.add_argument("--json", action="store_true", help="print the lab status as JSON")
    up.set_defaults(func=_up)

    down = sub.add_parser("down", help="stop the lab and remove everything it created")
    down.set_defaults(func=_down)

    st = sub.add_parser("status", help="show each lab container and host")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(func=_status)

    rs = sub.add_parser("restart", help="restart one lab container fresh (counter from 1)")
    rs.add_argument("name", metavar="NAME")
    rs.set_defaults(func=_restart)

    host = sub.add_parser("host", help="destination hosts: network namespaces, or --isolated ones reached over ssh")
    host.set_defaults(func=lambda a: (host.print_help(), 0)[1])
    hsub = host.add_subparsers(dest="host_command", metavar="ACTION")
    ha = hsub.add_parser(
        "add",
        help="create lab host NAME (netns ctlab-NAME; --isolated: own filesystems and sshd)",
        description="A netns host shares this machine's filesystem and is reached as netns:ctlab-NAME. "
        "An --isolated host shares only the kernel: own network and mount namespaces (/var/lib, /run, /tmp, "
        "/var/tmp, /srv private, the rest read-only), its own sshd on 198.18.N.2, reached as ssh://root@198.18.N.2.",
    )
    ha.add_argument("name", metavar="NAME")
    ha.add_argument("--isolated", action="store_true", help="share only the kernel (reached over ssh)")
    ha.add_argument("--rate", default="", metavar="RATE", help="shape the link (tc tbf), e.g. 1gbit, 100mbit")
    ha.add_argument("--delay", default="", metavar="DELAY", help="one-way delay (tc netem), e.g. 5ms")
    ha.add_argument("--json", action="store_true")
    ha.set_defaults(func=_host_add)
    hs = hsub.add_parser("shape", help="change (or remove) the rate and delay of an isolated host's link")
    hs.add_argument("name", metavar="NAME")
    hs.add_argument("--rate", default="", metavar="RATE", help="tc tbf rate (omit: unlimited)")
    hs.add_argument("--delay", default="", metavar="DELAY", help="tc netem one-way delay (omit: none)")
    hs.set_defaults(func=_host_shape)
    hx = hsub.add_parser(
        "exec",
        help="run a command inside a lab host (isolated: its mount and network namespaces)",
        description="Runs COMMAND inside lab host NAME (isolated: nsenter into its namespaces, no ssh; "
        "netns: ip netns exec); stdin/stdout/stderr and the exit status are the command's.",
    )
    hx.add_argument("name", metavar="NAME")
    hx.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND")
    hx.set_defaults(func=_host_exec)
    hd = hsub.add_parser("del", help="remove lab host NAME")
    hd.add_argument("name", metavar="NAME")
    hd.set_defaults(func=_host_del)
    hl = hsub.add_parser("list", help="list lab hosts")
    hl.add_argument("--json", action="store_true")
    hl.set_defaults(func=_host_list)


def _need_root() -> None:
    import os

    from ctconsole.errors import CtError

    if os.geteuid() != 0:
        raise CtError("the lab needs root (namespaces, bridges, container runtimes)")


def _status_dict() -> dict[str, Any]:
    import dataclasses

    from ctconsole import lab

    st = lab.status()
    out: dict[str, Any] = {"root": st.root, "bridge": st.bridge, "containers": [], "hosts": []}
    for c in st.containers.values():
        d = dataclasses.asdict(c)
        d["init_pid"] = c.init_pid
        d["state"] = "running" if c.init else ("failed" if c.error else "stopped")
        d["counter"] = lab.last_counter(c.counter_file)
        out["containers"].append(d)
    out["hosts"] = [host_dict(h) for h in lab.host_list()]
    return out


def host_dict(h: Any) -> dict[str, Any]:
    """A lab host as JSON: its record plus ``dest`` (the exact ``--to`` string)."""
    import dataclasses

    d = dataclasses.asdict(h)
    d["dest"] = h.dest
    if h.kind == "isolated":
        d["private_dirs"] = list(h.private_dirs)
        d["running"] = bool(h.sshd is not None and h.sshd.alive())
    return d


def _print_status(data: dict[str, Any]) -> None:
    rows = [("NAME", "RUNTIME", "STATE", "PID", "COUNTER", "ADDRESS", "COUNTER FILE")]
    for c in data["containers"]:
        rows.append(
            (
                c["name"],
                c["runtime"],
                c["state"] + (f" on {c['host']}" if c.get("host") else ""),
                str(c["init_pid"] or "-"),
                str(c["counter"]),
                c["address"] or "-",
                c["counter_file"],
            )
        )
    if len(rows) == 1:
        print("lab: nothing is up (run `ctconsole lab up`)")
    else:
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    for c in data["containers"]:
        if c["error"]:
            print(f"{c['name']}: {c['error']}")
        if c.get("note"):
            print(f"{c['name']}: note: {c['note']}")
    for h in data["hosts"]:
        print(_host_line(h))


def _host_line(h: dict[str, Any]) -> str:
    if h["kind"] == "isolated":
        shaped = ", ".join(x for x in (h["rate"], f"{h['delay']} delay" if h["delay"] else "") if x) or "unshaped"
        state = "up" if h.get("running") else "DOWN (sshd gone: `lab host add --isolated` rebuilds it)"
        return (
            f"host {h['name']}: isolated, --to {h['dest']}, netns {h['netns']}, source end {h['src_address']} "
            f"on {h['src_link']} (netns {h['src_netns'] or 'of this host'}), link {shaped}, {state}"
        )
    return (
        f"host {h['name']}: --to {h['dest']}, address {h['address']} (source end {h['src_address']} "
        f"in netns {h['src_netns']}), bridge {h['bridge']}"
    )


def _up(args: argparse.Namespace) -> int:
    import time

    from ctconsole import lab

    _need_root()
    t0 = time.monotonic()
    rep = lab.up(args.names or None)
    took = time.monotonic() - t0
    if args.json:
        data = _status_dict()
        data.update(started=rep.started, kept=rep.kept, failed=rep.failed, seconds=round(took, 3))
        print(json.dumps(data, indent=2))
    else:
        for n in rep.started:
            print(f"started {n}")
        for n in rep.kept:
            print(f"kept    {n} (already running)")
        for n, why in rep.failed.items():
            print(f"FAILED  {n}: {why}", file=sys.stderr)
        print(f"lab up took {took:.2f} s")
    if rep.failed and args.require_all:
        return 1
    return 0


def _down(args: argparse.Namespace) -> int:
    from ctconsole import lab

    _need_root()
    removed = lab.down()
    for r in removed:
        print(f"removed {r}")
    if not removed:
        print("lab: nothing to remove")
    return 0


def _status(args: argparse.Namespace) -> int:
    data = _status_dict()
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        _print_status(data)
    return 0


def _restart(args: argparse.Namespace) -> int:
    from ctconsole import lab

    _need_root()
    c = lab.restart(args.name)
    print(f"restarted {c.name}: init pid {c.init_pid}, counter file {c.counter_file}")
    return 0


def _host_add(args: argparse.Namespace) -> int:
    from ctconsole import lab

    _need_root()
    h = lab.host_add(args.name, isolated=args.isolated, rate=args.rate, delay=args.delay)
    if args.json:
        print(json.dumps(host_dict(h), indent=2))
    else:
        print(f"lab {_host_line(host_dict(h))}")
    return 0


def _host_shape(args: argparse.Namespace) -> int:
    from ctconsole.lab import hosts

    _need_root()
    h = hosts.shape(args.name, args.rate, args.delay)
    print(f"lab {_host_line(host_dict(h))}")
    return 0


def _host_exec(args: argparse.Namespace) -> int:
    import os
    import subprocess

    from ctconsole import lab
    from ctconsole.errors import NotFound, UsageError
    from ctconsole.lab import isolated

    _need_root()
    h = next((x for x in lab.host_list() if x.name == args.name), None)
    if h is None:
        raise NotFound(f"no lab host named {args.name!r}")
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        raise UsageError("no command given", [f"e.g. ctconsole lab host exec {args.name} -- ls /var/lib"])
    argv = [*isolated.nsenter_argv(h), *cmd] if h.kind == "isolated" else ["ip", "netns", "exec", h.netns, *cmd]
    try:
        return subprocess.run(argv, check=False, env=dict(os.environ)).returncode
    except OSError as exc:
        raise UsageError(f"cannot run {cmd[0]}: {exc}") from exc


def _host_del(args: argparse.Namespace) -> int:
    from ctconsole import lab
    from ctconsole.errors import NotFound

    _need_root()
    if not lab.host_del(args.name):
        raise NotFound(f"no lab host named {args.name!r}")
    print(f"removed lab host {args.name}")
    return 0


def _host_list(args: argparse.Namespace) -> int:
    from ctconsole import lab

    hosts = lab.host_list()
    if args.json:
        print(json.dumps([host_dict(h) for h in hosts], indent=2))
    elif not hosts:
        print("no lab hosts (create one with `ctconsole lab host add NAME [--isolated]`)")
    else:
        for h in hosts:
            src = f"{h.src_address}@{h.src_netns or 'host'}"
            print(f"{h.name}\t{h.kind}\t{h.dest}\tnetns {h.netns}\t{h.address}\tsource {src}")
    return 0
