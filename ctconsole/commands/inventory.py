"""``ctconsole list`` and ``ctconsole show REF``: the inventory on the command line.

Why this shape: ``register`` only declares arguments (cli.py builds every
parser at start-up); the handlers import the inventory when they run, and
the inventory itself never imports pyroute2, so ``list --json`` starts fast.
Human output is compact tables that fit 80 columns; ``--json`` is
``ctconsole.model.to_dict`` of the same objects, for scripts.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ctconsole.model import Container

WIDTH = 80


def register(sub: Any) -> None:
    p = sub.add_parser(
        "list",
        help="list the containers on this host",
        description="List containers found from the kernel's pid namespaces, named by their runtime "
        "(libvirt-lxc, LXC, runc/docker/containerd/podman, systemd-nspawn, plain namespaces). "
        "EXT counts items that tie a container to the outside (see `ctconsole show`).",
    )
    p.add_argument("--json", action="store_true", help="print JSON (one list of containers)")
    p.add_argument("--quick", action="store_true", help="skip fds, sockets, mounts and interfaces (faster)")
    p.add_argument("--host", dest="list_host", default="", metavar="DEST",
                   help="list the containers of another host through its agent (ssh://..., netns:NAME)")
    p.set_defaults(func=run_list)
    s = sub.add_parser(
        "show",
        help="show one container and what ties it to the outside",
        description="Show a container's processes, sockets, terminals, devices, other fds, files, "
        "mounts and interfaces; items that tie it to the outside are marked '!' and listed "
        "with the reason and the remedy.",
    )
    s.add_argument("ref", metavar="REF", help="container id, name, pid:N (container holding pid N) or tree:N")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=run_show)


# ------------------------------------------------------------------ handlers


def remote_containers(dest: str) -> list[Container]:
    """The containers of ``dest`` as its own agent sees them (the same inventory, run there)."""
    from ctconsole.agent.connect import connect
    from ctconsole.errors import CtError
    from ctconsole.model import Container, from_dict
    from ctconsole.proto import agent_pb2

    ch, _ = connect(dest)
    try:
        reply = ch.call("inventory", agent_pb2.InventoryRequest(), timeout=120)
    finally:
        ch.close()
    try:
        return [from_dict(Container, d) for d in json.loads(reply.json)]
    except (ValueError, TypeError, KeyError) as exc:
        raise CtError(f"the agent on {dest} sent an inventory this console cannot read: {exc}") from exc


def run_list(args: argparse.Namespace) -> int:
    from ctconsole import inventory

    if getattr(args, "list_host", ""):
        remote = remote_containers(args.list_host)
        if args.json:
            _print_json([_json(c) for c in remote])
        else:
            sys.stdout.write(render_list(remote, full=True))
        return 0
    if args.json:
        sys.stdout.write(inventory.scan_json(full=not args.quick))
        sys.stdout.write("\n")
        return 0
    containers = inventory.scan(full=not args.quick)
    sys.stdout.write(render_list(containers, full=not args.quick))
    return 0


def run_show(args: argparse.Namespace) -> int:
    from ctconsole import inventory

    c = inventory.resolve(args.ref)
    if args.json:
        _print_json(_json(c))
        return 0
    sys.stdout.write(render_show(c))
    return 0


def _json(c: Container) -> dict[str, Any]:
    from ctconsole.model import to_dict

    d: dict[str, Any] = to_dict(c)
    d["external_count"] = len(c.externals())
    return d


def _print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=1)
    sys.stdout.write("\n")


# ------------------------------------------------------------------ rendering


def _cut(text: str, width: int) -> str:
    text = str(text)
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def table(
    headers: Sequence[str], rows: Iterable[Sequence[Any]], widths: Sequence[int], width: int = WIDTH
) -> list[str]:
    """Fixed-width columns; the last column takes what is left of ``width`` and is cut with an ellipsis."""
    lines = []
    used = sum(w + 1 for w in widths[:-1])
    last = max(width - used, 8)
    ws = [*widths[:-1], last]
    for row in [headers, *rows]:
        cells = [_cut(str(v), w).ljust(w) for v, w in zip(row, ws, strict=False)]
        lines.append(" ".join(cells).rstrip())
    return lines


def render_list(containers: Sequence[Container], full: bool = True) -> str:
    if not containers:
        return "No containers found (a container is a process tree in its own pid namespace).\n"
    rows = []
    for c in containers:
        ext = str(len(c.externals())) if full else "-"
        rows.append((c.id, c.name, c.runtime, c.init_pid, len(c.processes), ext, " ".join(c.own_namespaces)))
    head = ("ID", "NAME", "RUNTIME", "INIT", "PROCS", "EXT", "OWN NAMESPACES")
    return "\n".join(table(head, rows, (14, 16, 11, 7, 5, 3, 20))) + "\n"


def _refs(holders: Sequence[Any]) -> str:
    pids = sorted({h.pid for h in holders})
    text = ",".join(str(p) for p in pids[:3])
    return text + ("+" if len(pids) > 3 else "")


def _mark(item: Any) -> str:
    return "!" if item.external is not None else " "


def render_show(c: Container) -> str:
    out: list[str] = []
    add = out.append
    add(_cut(f"{c.name}  ({c.runtime}, id {c.id})", WIDTH))
    add(f"  init pid    {c.init_pid}" + (f"    controller {c.controller}" if c.controller else ""))
    if c.runtime_note:
        out.extend(textwrap.wrap(c.runtime_note, WIDTH, initial_indent="  note        ", subsequent_indent=" " * 14))
    if c.root_path:
        add(f"  root        {_cut(c.root_path, WIDTH - 14)}")
    if c.lsm_label:
        add(f"  lsm label   {_cut(c.lsm_label, WIDTH - 14)}")
    shared = [n.kind for n in c.namespaces if n.shared_with_host]
    add(f"  namespaces  own: {' '.join(c.own_namespaces) or '-'}; shared with host: {' '.join(shared) or '-'}")
    cg = sorted(set(c.cgroups.values()))
    if cg:
        add(f"  cgroup      {_cut(', '.join(cg), WIDTH - 14)}")

    def section(title: str, items: Sequence[Any], headers: Sequence[str], widths: Sequence[int], rows: list) -> None:
        if not items:
            return
        add("")
        add(f"{title} ({len(items)})")
        out.extend("  " + line for line in table(headers, rows, (1, *widths), width=WIDTH - 2))

    section(
        "Processes",
        c.processes,
        ("", "PID", "NSPID", "PPID", "S", "NAME", "COMMAND"),
        (7, 6, 7, 1, 15, 30),
        [(_mark(p), p.pid, p.nspid, p.ppid, p.state, p.name, p.cmdline) for p in c.processes],
    )
    section(
        "Sockets",
        c.sockets,
        ("", "INODE", "FAMILY", "TYPE", "STATE", "ADDRESS / PATH", "PEER"),
        (9, 7, 9, 11, 20, 16),
        [
            (
                _mark(s),
                s.inode,
                s.family,
                s.type,
                s.state,
                s.path or s.local or s.protocol or "-",
                s.peer_holder or s.remote or (f"socket:[{s.peer_inode}]" if s.peer_inode else "-"),
            )
            for s in c.sockets
        ],
    )
    section(
        "Terminals",
        c.ttys,
        ("", "PATH", "KIND", "MASTER HELD BY", "PIDS"),
        (18, 8, 24, 25),
        [(_mark(t), t.path, t.kind, t.master_holder or "-", _refs(t.holders)) for t in c.ttys],
    )
    section(
        "Devices",
        c.devices,
        ("", "PATH", "KIND", "MAJ:MIN", "SUPPORTED", "PIDS"),
        (24, 6, 9, 10, 25),
        [
            (_mark(d), d.path, d.kind, f"{d.major}:{d.minor}", "yes" if d.supported else "NO", _refs(d.holders))
            for d in c.devices
        ],
    )
    section(
        "Other fds",
        c.fds,
        ("", "KIND", "TARGET", "FDS", "PIDS"),
        (12, 34, 4, 25),
        [(_mark(f), f.kind, f.target, len(f.holders), _refs(f.holders)) for f in c.fds],
    )
    section(
        "Files",
        c.files,
        ("", "PATH", "SIZE", "FLAGS", "PIDS"),
        (40, 10, 12, 15),
        [
            (
                _mark(f),
                f.path,
                f.size,
                ",".join(x for x, on in (("deleted", f.deleted), ("locked", f.locked)) if on) or "-",
                _refs(f.holders),
            )
            for f in c.files
        ],
    )
    section(
        "Mounts",
        c.mounts,
        ("", "MOUNTPOINT", "FSTYPE", "SOURCE", "ROOT"),
        (28, 9, 14, 26),
        [(_mark(m), m.mountpoint, m.fstype, m.source, m.root) for m in c.mounts],
    )
    section(
        "Interfaces",
        c.interfaces,
        ("", "NAME", "KIND", "STATE", "ADDRESSES", "PEER"),
        (12, 9, 5, 24, 26),
        [
            (
                _mark(i),
                i.name,
                i.kind,
                "up" if i.up else "down",
                " ".join(i.addresses) or "-",
                (f"{i.peer_ifname}@{i.bridge}" if i.bridge else i.peer_ifname) or i.parent or "-",
            )
            for i in c.interfaces
        ],
    )
    ext = c.externals()
    add("")
    if not ext:
        add("Nothing ties this container to the outside.")
    else:
        add(f"Ties to the outside ({len(ext)})")
        for cat, item in ext:
            label = _label(cat, item)
            reason = f"! {label}: {item.external.reason}"
            out.extend(textwrap.wrap(reason, WIDTH, subsequent_indent="    ", break_on_hyphens=False))
            remedy = f"remedy: {item.external.remedy}"
            out.extend(
                textwrap.wrap(remedy, WIDTH, initial_indent="    ", subsequent_indent="      ", break_on_hyphens=False)
            )
    return "\n".join(out) + "\n"


def _label(cat: str, item: Any) -> str:
    if cat == "processes":
        return f"process {item.pid}"
    if cat == "sockets":
        return f"socket {item.inode}"
    if cat in ("ttys", "devices", "files"):
        return item.path
    if cat == "fds":
        return item.target
    if cat == "mounts":
        return f"mount {item.mountpoint}"
    if cat == "interfaces":
        return f"interface {item.name}"
    return cat
