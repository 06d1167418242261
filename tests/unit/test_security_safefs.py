"""Files and sockets the agent opens for a restore (ctconsole/agent/safefs.py), on the real file system.

Both resolvers are exercised: openat2 (RESOLVE_NO_SYMLINKS) and the O_NOFOLLOW
walk used where openat2 is missing. Needs root: the parent of a file the agent
creates must be root-owned.
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctconsole.agent import safefs
from ctconsole.agent.safefs import Ledger, UnsafePath
from ctconsole.config import UnsafeDirectory, private_dir


@pytest.fixture(params=["openat2", "walk"])
def resolver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setattr(safefs, "_have_openat2", request.param == "openat2")
    yield request.param


@pytest.fixture
def area(tmp_path: Path, needs_root: None) -> Path:
    os.chmod(tmp_path, 0o755)
    d = tmp_path / "logs"
    d.mkdir(mode=0o755)
    return d


APPEND = os.O_WRONLY | os.O_APPEND | os.O_CREAT


def test_create_masks_bits_and_rollback_removes_it(area: Path, resolver: str) -> None:
    ledger = Ledger()
    fd = safefs.open_file(str(area / "app.log"), APPEND, 0o6777, ledger)
    os.close(fd)
    st = os.lstat(area / "app.log")
    assert stat.S_IMODE(st.st_mode) == 0o755 and st.st_uid == 0  # no set-id, no group/other write
    assert ledger.rollback() == [str(area / "app.log")] and not (area / "app.log").exists()


def test_existing_file_is_opened_not_recorded(area: Path, resolver: str) -> None:
    (area / "old.log").write_text("keep")
    os.chmod(area / "old.log", 0o640)
    ledger = Ledger()
    os.close(safefs.open_file(str(area / "old.log"), APPEND, 0o777, ledger))
    assert ledger.files == [] and stat.S_IMODE(os.stat(area / "old.log").st_mode) == 0o640
    assert ledger.rollback() == [] and (area / "old.log").read_text() == "keep"


def test_rollback_leaves_a_replaced_file(area: Path, resolver: str) -> None:
    ledger = Ledger()
    os.close(safefs.open_file(str(area / "x"), APPEND, 0o644, ledger))
    os.rename(area / "x", area / "x.old")  # kept: its inode number cannot be reused by the new file
    (area / "x").write_text("someone else's")
    assert ledger.rollback() == [] and (area / "x").read_text() == "someone else's"


def test_symlinks_are_never_followed(area: Path, tmp_path: Path, resolver: str) -> None:
    target = tmp_path / "target"
    target.write_text("")
    (area / "link").symlink_to(target)
    (tmp_path / "dirlink").symlink_to(area)
    ledger = Ledger()
    with pytest.raises(UnsafePath, match="symbolic link"):
        safefs.open_file(str(area / "link"), APPEND, 0o644, ledger)
    with pytest.raises(UnsafePath, match="symbolic link"):
        safefs.open_file(str(tmp_path / "dirlink" / "new"), APPEND, 0o644, ledger)
    assert not (area / "new").exists() and ledger.files == []
    with pytest.raises(UnsafePath):
        safefs.open_file(str(area / ".." / "x"), APPEND, 0o644, ledger)


def test_parent_must_be_root_owned_and_private(area: Path, resolver: str) -> None:
    os.chmod(area, 0o777)
    with pytest.raises(UnsafePath, match="not group/world-writable"):
        safefs.open_file(str(area / "x"), APPEND, 0o644, Ledger())
    os.chmod(area, 0o755)
    os.chown(area, 65534, 65534)
    with pytest.raises(UnsafePath, match="owned by root"):
        safefs.open_file(str(area / "x"), APPEND, 0o644, Ledger())
    assert not (area / "x").exists()


def test_only_regular_files(area: Path, resolver: str) -> None:
    os.mkfifo(area / "fifo")
    with pytest.raises(UnsafePath, match="not a regular file"):
        safefs.open_file(str(area / "fifo"), APPEND, 0o644, Ledger())


def test_connect_unix_without_symlinks(area: Path, tmp_path: Path, resolver: str) -> None:
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(area / "d.sock"))
    srv.listen(4)
    try:
        fd = safefs.connect_unix(str(area / "d.sock"))
        os.close(fd)
        (tmp_path / "sl").symlink_to(area)
        with pytest.raises(UnsafePath, match="symbolic link"):
            safefs.connect_unix(str(tmp_path / "sl" / "d.sock"))
        (area / "plain").write_text("")
        with pytest.raises(UnsafePath, match="not a unix socket"):
            safefs.connect_unix(str(area / "plain"))
    finally:
        srv.close()


def test_dir_problem(area: Path, tmp_path: Path, resolver: str) -> None:
    assert safefs.dir_problem(str(area), root_owned=True, no_write=0o022) == ""
    (tmp_path / "l").symlink_to(area)
    assert "symbolic link" in safefs.dir_problem(str(tmp_path / "l"), root_owned=True, no_write=0o022)
    assert "not a directory" in safefs.dir_problem("/etc/hostname", root_owned=True, no_write=0o022)


# -- config.private_dir: CTCONSOLE_*_DIR in shared places -------------------------------------
def test_private_dir_refuses_symlinks_and_foreign_dirs(tmp_path: Path, needs_root: None) -> None:
    os.chmod(tmp_path, 0o755)
    made = private_dir(tmp_path / "a" / "b")
    assert stat.S_IMODE(os.stat(made).st_mode) == 0o700
    (tmp_path / "evil").symlink_to("/etc")
    with pytest.raises(UnsafeDirectory, match="symbolic link"):
        private_dir(tmp_path / "evil" / "ctconsole")
    assert not Path("/etc/ctconsole-never").exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    os.chown(foreign, 65534, 65534)
    with pytest.raises(UnsafeDirectory, match="owned by uid 65534"):
        private_dir(foreign / "state")
    with pytest.raises(UnsafeDirectory, match="owned by uid 65534"):
        private_dir(foreign)
    assert not (foreign / "state").exists()
    sticky = tmp_path / "shared"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    assert private_dir(sticky / "mine") == sticky / "mine"  # like /tmp: sticky and world-writable is fine above
