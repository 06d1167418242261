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
        "(each appends a counter to a file every 0.1 s), and network namespaces that stand in for "
        "destination hosts. `lab down` removes exactly what the lab created.",
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

    host = sub.add_parser("host", help="network namespaces standing in for destination hosts")
    host.set_defaults(func=lambda a: (host.print_help(), 0)[1])
    hsub = host.add_subparsers(dest="host_command", metavar="ACTION")
    ha = hsub.add_parser("add", help="create lab host NAME (netns ctlab-NAME)")
    ha.add_argument("name", metavar="NAME")
    ha.add_argument("--json", action="store_true")
    ha.set_defaults(func=_host_add)
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
    out["hosts"] = [dataclasses.asdict(h) for h in lab.host_list()]
    return out


def _print_status(data: dict[str, Any]) -> None:
    rows = [("NAME", "RUNTIME", "STATE", "PID", "COUNTER", "ADDRESS", "COUNTER FILE")]
    for c in data["containers"]:
        rows.append(
            (
                c["name"],
                c["runtime"],
                c["state"],
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
        print(
            f"host {h['name']}: netns {h['netns']} address {h['address']} (source end {h['src_address']} "
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
    import dataclasses

    from ctconsole import lab

    _need_root()
    h = lab.host_add(args.name)
    if args.json:
        print(json.dumps(dataclasses.asdict(h), indent=2))
    else:
        print(
            f"lab host {h.name}: netns {h.netns}, address {h.address}, bridge {h.bridge}; "
            f"source end {h.src_address} in netns {h.src_netns}"
        )
    return 0


def _host_del(args: argparse.Namespace) -> int:
    from ctconsole import lab
    from ctconsole.errors import NotFound

    _need_root()
    if not lab.host_del(args.name):
        raise NotFound(f"no lab host named {args.name!r}")
    print(f"removed lab host {args.name}")
    return 0


def _host_list(args: argparse.Namespace) -> int:
    import dataclasses

    from ctconsole import lab

    hosts = lab.host_list()
    if args.json:
        print(json.dumps([dataclasses.asdict(h) for h in hosts], indent=2))
    elif not hosts:
        print("no lab hosts (create one with `ctconsole lab host add NAME`)")
    else:
        for h in hosts:
            print(f"{h.name}\tnetns {h.netns}\t{h.address}\tsource {h.src_address}@{h.src_netns}")
    return 0
