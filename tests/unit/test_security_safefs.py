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


def test_the_whole_way_must_be_roots(area: Path, tmp_path: Path, resolver: str) -> None:
    """StrictModes: a root-owned private directory is not enough when someone else owns a directory above it."""
    alice = tmp_path / "alice"
    (alice / "logs").mkdir(parents=True, mode=0o755)
    os.chmod(alice, 0o755)
    assert safefs.ancestors_problem(str(alice / "logs" / "x")) == ""
    assert safefs.dir_problem(str(alice / "logs"), root_owned=True, no_write=0o022) == ""
    os.chown(alice, 65534, 65534)  # alice could rename logs away and put her own in its place
    why = safefs.ancestors_problem(str(alice / "logs" / "x"))
    assert f"{alice} (on the way to" in why and "owned by uid 65534" in why
    assert "owned by uid 65534" in safefs.dir_problem(str(alice / "logs"), root_owned=True, no_write=0o022)
    with pytest.raises(UnsafePath, match="owned by uid 65534"):
        safefs.open_file(str(alice / "logs" / "x"), APPEND, 0o644, Ledger())
    assert not (alice / "logs" / "x").exists()
    os.chown(alice, 0, 0)
    os.chmod(alice, 0o777)  # world-writable, not sticky: anyone may rename what is in it
    assert "writable by others and not sticky" in safefs.ancestors_problem(str(alice / "logs" / "x"))
    os.chmod(alice, 0o1777)  # sticky, like /tmp: others cannot rename or remove root's entries
    assert safefs.ancestors_problem(str(alice / "logs" / "x")) == ""
    os.close(safefs.open_file(str(alice / "logs" / "x"), APPEND, 0o644, Ledger()))


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


def test_the_kernels_dev_files_open_as_they_are_never_created() -> None:
    """/dev/null, /dev/zero, /dev/full (what `rules suggest` hands over for stdio left on them) are opened as
    the kernel's devices, never created, never recorded for removal; the rules side allows the same set."""
    import stat as _stat

    from ctconsole.agent import policy as pol
    from ctconsole.remap.safety import SAFE_DEV_FILES

    assert set(safefs.DEV_FILES) == set(SAFE_DEV_FILES)
    ledger = safefs.Ledger()
    fd = safefs.open_file("/dev/null", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666, ledger)
    try:
        st = os.fstat(fd)
        assert _stat.S_ISCHR(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == (1, 3)
    finally:
        os.close(fd)
    assert ledger.files == []
    assert pol.check_inherit(pol.Policy(), "open-file", "/dev/null", 0o666) == []
    assert pol.check_inherit(pol.Policy(), "open-file", "/dev/tty", 0o666)  # any other device: refused
