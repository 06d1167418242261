"""The agent's side of remap rules without CRIU: opening inherited fds, choosing VFs.

The fds and moves are real (files, sockets); only the netlink move is
recorded instead of done, because it needs root and a target netns (that part
runs for real in tests/integration/test_migrate_remap.py).
"""

from __future__ import annotations

import fcntl
import os
import socket
import stat
from pathlib import Path

import pytest

from ctconsole.errors import CtError
from ctconsole.migrate.restoreenv import Refused, open_inherited, setup_namespaces
from ctconsole.proto import agent_pb2


def test_open_file_creates_with_the_original_bits(tmp_path: Path) -> None:
    target = tmp_path / "new.log"
    old_umask = os.umask(0o077)  # the bits must not depend on the agent's umask
    try:
        fds = open_inherited([("file[2c:1f2]", "open-file", str(target), "append", 0o640)])
    finally:
        os.umask(old_umask)
    try:
        fd = fds["file[2c:1f2]"]
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o640
        os.write(fd, b"x")
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        assert flags & os.O_APPEND and flags & os.O_ACCMODE == os.O_WRONLY
    finally:
        for fd in fds.values():
            os.close(fd)
    # an existing file is opened as it is (no truncation, its own bits)
    target.chmod(0o600)
    fds = open_inherited([("file[2c:1f2]", "open-file", str(target), "append", 0o640)])
    try:
        os.write(fds["file[2c:1f2]"], b"y")
        assert stat.S_IMODE(target.stat().st_mode) == 0o600
    finally:
        os.close(fds["file[2c:1f2]"])
    assert target.read_bytes() == b"xy"


def test_inherited_fds_are_checked_and_closed_on_failure(tmp_path: Path) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "b.sock"))
    listener.listen(1)
    before = set(os.listdir("/proc/self/fd"))
    try:
        for bad in [("socket:[1]", "connect-unix", "relative.sock"),
                    ("socket:[1]", "exec", "/bin/sh"),
                    ("bad key with spaces", "connect-unix", "/x"),
                    ("file[1:2]", "open-file", str(tmp_path / "f"), "truncate", -1),
                    ("file[1:2]", "open-file", str(tmp_path / "f"), "append", 0o10000)]:
            with pytest.raises(Refused):
                open_inherited([bad])  # type: ignore[list-item]
        # the first fd is opened, the second fails: the first is closed again
        with pytest.raises(Refused, match="nope"):
            open_inherited([("socket:[1]", "connect-unix", str(tmp_path / "b.sock"), "", -1),
                            ("file[1:2]", "open-file", str(tmp_path / "nope" / "x.log"), "append", -1)])
        with pytest.raises(Refused, match="cannot connect"):
            open_inherited([("socket:[1]", "connect-unix", str(tmp_path / "missing.sock"))])
        assert set(os.listdir("/proc/self/fd")) == before
        ok = open_inherited([("socket:[1]", "connect-unix", str(tmp_path / "b.sock")),
                             ("file[1:2]", "open-file", str(tmp_path / "r.log"), "readwrite", 0o600)])
        assert set(ok) == {"socket:[1]", "file[1:2]"}
        for fd in ok.values():
            os.close(fd)
    finally:
        listener.close()


def _sysfs(root: Path, pf: str, vfs: dict[int, tuple[str, bool, str]]) -> str:
    for index, (netdev, up, master) in vfs.items():
        (root / "class/net" / pf / "device" / f"virtfn{index}" / "net" / netdev).mkdir(parents=True)
        nd = root / "class/net" / netdev
        nd.mkdir(parents=True, exist_ok=True)
        (nd / "flags").write_text("0x1003\n" if up else "0x1002\n")
        if master:
            os.symlink(f"../{master}", nd / "master")
    return str(root)


def test_setup_namespaces_picks_free_vfs_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ctconsole.remap import vf

    root = _sysfs(tmp_path, "pf0", {0: ("vf0", True, ""), 1: ("vf1", False, "br0"), 2: ("vf2", False, ""),
                                    3: ("vf3", False, ""), 5: ("vf5", False, "")})
    monkeypatch.setenv("CTCONSOLE_SYSFS_ROOT", root)
    moves: list[tuple[str, int, str | None]] = []
    monkeypatch.setattr(vf, "move_link_to_netns", lambda name, pid, new_name=None: moves.append((name, pid,
                                                                                                  new_name)))
    actions = [agent_pb2.SetupNsAction(action="move-vf", interface="data0", pf="pf0", any_vf=True),
               agent_pb2.SetupNsAction(action="move-vf", interface="data1", pf="pf0", vfs=[0, 1, 2, 5])]
    # VF 0 is up, VF 1 enslaved: data0 gets VF 2, data1 may not take VF 2 again (nor 3: not allowed) -> VF 5
    assert setup_namespaces(actions, 4242) == ["vf2->data0", "vf5->data1"]
    assert moves == [("vf2", 4242, "data0"), ("vf5", 4242, "data1")]
    with pytest.raises(CtError, match="no free VF on pf0"):
        setup_namespaces([agent_pb2.SetupNsAction(action="move-vf", interface="d", pf="pf0", vfs=[0, 1])], 4242)
    for bad in (agent_pb2.SetupNsAction(action="move-vf", interface="../x", pf="pf0", any_vf=True),
                agent_pb2.SetupNsAction(action="move-vf", interface="averyveryverylongname", pf="pf0", any_vf=True),
                agent_pb2.SetupNsAction(action="shell", interface="d", pf="pf0")):
        with pytest.raises(CtError):
            setup_namespaces([bad], 4242)
    with pytest.raises(CtError, match="root pid"):
        setup_namespaces(actions, 0)
