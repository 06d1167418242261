"""CLI rendering, JSON shape, registration and import hygiene of the inventory (no root needed)."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys

from ctconsole.commands import inventory as cmd
from ctconsole.model import (
    Container,
    Device,
    External,
    FdRef,
    Mount,
    Namespace,
    NetIface,
    Process,
    Socket,
    SpecialFd,
    Tty,
    to_dict,
)


def _sample() -> Container:
    ext = External("a reason that is long enough to need wrapping " * 3, "a remedy " * 12, "x[1]")
    return Container(
        id="ns-4026532999-a-very-long-identifier",
        name="a-container-with-a-long-name",
        runtime="libvirt-lxc",
        init_pid=4242,
        namespaces=(Namespace("pid", 1, False), Namespace("user", 2, True)),
        own_namespaces=("pid",),
        controller="libvirt_lxc[4241]",
        controller_pid=4241,
        root_path="/var/lib/" + "deep/" * 30,
        processes=(Process(4242, 4241, 1, "sh", "/bin/sh -c " + "x" * 200, "S", 0, 4242, 4242),),
        sockets=(
            Socket(
                "unix", "stream", 11, "ESTABLISHED", path="/run/" + "s" * 90, peer_holder="libvirtd[1]", external=ext
            ),
        ),
        ttys=(Tty("/dev/pts/0", "pts", 34816, 0, "libvirt_lxc[4241]", (FdRef(4242, 0),), ext),),
        devices=(Device("/dev/null", "char", 1, 3, True, (FdRef(4242, 1),)),),
        fds=(SpecialFd("eventfd", "anon_inode:[eventfd]", (FdRef(4242, 5),)),),
        mounts=(Mount(1, 0, "/proc/" + "m" * 80, "/meminfo", "fuse", "libvirt", external=ext),),
        interfaces=(
            NetIface(
                "eth0",
                "veth",
                2,
                addresses=("198.18.0.2/24", "fe80::1/64"),
                peer_ifname="vlv1",
                bridge="br0",
                external=ext,
            ),
        ),
    )


def test_human_output_fits_80_columns() -> None:
    c = _sample()
    for text in (cmd.render_list([c, c]), cmd.render_show(c)):
        for line in text.splitlines():
            assert len(line) <= 80, repr(line)
    show = cmd.render_show(c)
    assert "Ties to the outside (4)" in show and show.count("remedy:") == 4
    assert "No containers found" in cmd.render_list([])


def test_json_has_external_flags_and_reasons() -> None:
    d = to_dict(_sample())
    for key in ("id", "name", "runtime", "init_pid", "processes", "sockets", "ttys", "devices", "interfaces", "mounts"):
        assert key in d
    sock = d["sockets"][0]
    assert sock["external"] is True and sock["reason"] and sock["remedy"] and sock["holder"] == "x[1]"
    dev = d["devices"][0]
    assert dev["external"] is False and "reason" not in dev
    json.dumps(d)  # serialisable as is


def test_register_sets_handlers() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    cmd.register(sub)
    args = parser.parse_args(["list", "--json"])
    assert args.func is cmd.run_list and args.json
    args = parser.parse_args(["show", "pid:1"])
    assert args.func is cmd.run_show and args.ref == "pid:1"


def test_core_imports_no_ui_and_no_pyroute2() -> None:
    """The inventory and its command stay UI-free and never pay pyroute2's import cost."""
    code = (
        "import sys, ctconsole.cli, ctconsole.inventory, ctconsole.inventory.scanner;"
        "from ctconsole import inventory; inventory.scan(full=True);"
        "bad=[m for m in ('textual','rich','pyroute2') if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_list_json_runs_for_anyone() -> None:
    r = subprocess.run([sys.executable, "-m", "ctconsole", "list", "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert isinstance(json.loads(r.stdout), list)


def test_show_bad_refs_exit_2() -> None:
    for ref in ("pid:notanumber", "tree:999999999", "surely-no-such-container"):
        r = subprocess.run([sys.executable, "-m", "ctconsole", "show", ref], capture_output=True, text=True)
        assert r.returncode == 2, (ref, r.stderr)
        assert "Traceback" not in r.stderr and r.stderr.startswith("ctconsole: error:")


def test_tree_of_ourselves_sees_our_socketpair_as_internal() -> None:
    from ctconsole import inventory

    a, b = socket.socketpair()
    try:
        c = inventory.resolve(f"tree:{os.getpid()}")
        mine = {s.inode: s for s in c.sockets}
        ia, ib = os.fstat(a.fileno()).st_ino, os.fstat(b.fileno()).st_ino
        assert mine[ia].peer_inode == ib and mine[ia].external is None
        assert c.runtime == "tree" and c.init_pid == os.getpid()
        assert os.getpid() in {p.pid for p in c.processes}
    finally:
        a.close()
        b.close()


def test_json_default_matches_to_dict() -> None:
    from ctconsole.model import json_default

    c = _sample()
    assert json.loads(json.dumps(c, default=json_default)) == json.loads(json.dumps(to_dict(c)))
