"""Page traffic without a listener: real CRIU on already-connected sockets, real ssh, a real other user.

- CRIU's page server and dump on the two ends of one connection (``ps.fd``):
  nothing listens, the counter continues after the restore;
- the destination's page socket (a unix socket in a 0700 directory): uid
  65534 cannot connect, root can, and the directory is gone once accepted;
- the same through the SSH control master's stream-local forward (a throwaway
  sshd on loopback), as an ``ssh://`` migration sends its pages.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctconsole.criu.client import CriuClient
from ctconsole.migrate import transport
from tests.support import restore_after_page_server, spawn_counter
from tests.support_hosts import ssh_control_master, throwaway_sshd

pytestmark = pytest.mark.criu

NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
CONNECT_AS_NOBODY = ("import socket,sys\ns=socket.socket(socket.AF_UNIX)\n"
                     "try:\n s.connect(sys.argv[1]); print('connected')\n"
                     "except OSError as e: print(type(e).__name__, e.errno)\n")


def connect_as_nobody(path: Path | str) -> str:
    """What an unprivileged local user gets when connecting to ``path``."""
    res = subprocess.run([*NOBODY, "/usr/bin/python3", "-c", CONNECT_AS_NOBODY, str(path)], capture_output=True,
                         text=True, timeout=20)
    return res.stdout.strip() or res.stderr.strip()


@pytest.fixture
def client(criu_bin: str) -> CriuClient:
    return CriuClient(criu=criu_bin, timeout=60)


def _migrate_pages(client: CriuClient, workdir: Path, src_end: int, dst_end: socket.socket) -> None:
    """Dump a counter with its pages down ``src_end`` into a page server on ``dst_end``; restore; check."""
    w = spawn_counter(workdir)
    try:
        src, dst = workdir / "src", workdir / "dst"
        src.mkdir()
        dst.mkdir()
        with client.page_server_child(dst, ps_fd=dst_end.fileno()) as (info, wait):
            dst_end.close()  # the page server holds its own copy
            assert info.port == 0 and info.pid > 0, "no port: the server listens nowhere"
            res = client.dump({"pid": w.pid}, src, ps_fd=src_end)
            assert wait(30) == 0
        restore_after_page_server(client, w, res, src, dst)
    finally:
        w.kill()


def test_dump_into_page_server_over_a_socketpair(client: CriuClient, workdir: Path) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        _migrate_pages(client, workdir, a.fileno(), b)
    finally:
        a.close()


@pytest.fixture
def open_base() -> Iterator[Path]:
    """A directory every user may traverse: only our own 0700 directory can keep them out."""
    d = Path(tempfile.mkdtemp(prefix="ctc-f2-", dir="/tmp"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_page_socket_refuses_other_users(needs_root: None, open_base: Path) -> None:
    # the probe works: an open socket in an open directory is reachable by uid 65534
    control = socket.socket(socket.AF_UNIX)
    control.bind(str(open_base / "open.sock"))
    os.chmod(open_base / "open.sock", 0o777)
    control.listen(1)
    assert connect_as_nobody(open_base / "open.sock") == "connected"
    control.close()
    listener = transport.PageListener("mig-x", base=open_base / "pages")
    try:
        assert (listener.directory.stat().st_mode & 0o777) == 0o700
        assert connect_as_nobody(listener.path) == "PermissionError 13"
        got: list[socket.socket] = []
        t = threading.Thread(target=lambda: got.append(listener.accept(10)))
        t.start()
        link = transport.open_page_link(str(listener.path))
        t.join()
        assert got and transport.peer_uid(got[0]) == 0
        assert not listener.directory.exists(), "the socket and its directory go as soon as it is used"
        link.sock.sendall(b"ping")
        assert got[0].recv(4) == b"ping"
        link.close()
        got[0].close()
    finally:
        listener.close()


def test_listener_times_out_and_cleans_up(needs_root: None, tmp_path: Path) -> None:
    listener = transport.PageListener("mig-t", base=tmp_path / "pages")
    with pytest.raises(transport.TransportError, match="no page connection"):
        listener.accept(0.3)
    assert not listener.directory.exists()
    # a second listener for the same id is a fresh directory, never a reused one
    again = transport.PageListener("mig-t", base=tmp_path / "pages")
    again.close()


@pytest.fixture
def mux(tmp_path: Path, needs_root: None) -> Iterator[transport.SshMux]:
    ctl = tmp_path / "ctl"
    with throwaway_sshd(tmp_path, "127.0.0.1") as sshd, ssh_control_master(sshd, ctl) as opts:
        yield transport.SshMux(["ssh", *opts], ctl, transport.ssh_target_args("root", "127.0.0.1", sshd.port))


def test_pages_through_the_ssh_master(client: CriuClient, workdir: Path, mux: transport.SshMux,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTCONSOLE_RUN_DIR", str(workdir / "run"))
    listener = transport.PageListener("mig-ssh", base=workdir / "dest-pages")
    accepted: list[socket.socket] = []
    t = threading.Thread(target=lambda: accepted.append(listener.accept(20)))
    t.start()
    link = transport.open_page_link(str(listener.path), mux, name="mig-ssh")
    t.join()
    assert link.via == "ssh" and accepted
    assert not list((workdir / "run" / "pages-out").iterdir()), "the source's forward socket is gone"
    try:
        _migrate_pages(client, workdir, link.fd, accepted[0])
    finally:
        link.close()


def test_forward_to_a_missing_socket_fails_clearly(needs_root: None, tmp_path: Path, mux: transport.SshMux,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTCONSOLE_RUN_DIR", str(tmp_path / "run"))
    with pytest.raises(transport.TransportError):
        transport.open_page_link(str(tmp_path / "no-such.sock"), mux, name="gone")
    assert not list((tmp_path / "run" / "pages-out").iterdir())
