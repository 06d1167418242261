"""Keeps the PTY master of a restored container open and lends it to ``ctconsole console``.

Why a process of its own: CRIU hands the master of an orphaned pseudo-terminal
(orphan-pts-master) to whoever asked for the restore; when the last copy of
that fd closes, the restored tree gets a hangup. The agent session ends after a
migration, so this small detached process holds the fd for as long as the
restored init lives, and passes a duplicate by SCM_RIGHTS to anyone connecting
to its unix socket (mode 0600 in a 0700 directory under run_dir: root only).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import socket
import sys
import time


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def serve(pid: int, path: str, fds: list[int]) -> int:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    old = os.umask(0o177)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    os.umask(old)
    os.chmod(path, 0o600)
    srv.listen(4)
    try:
        while _alive(pid):
            ready, _, _ = select.select([srv], [], [], 1.0)
            if not ready:
                continue
            conn, _ = srv.accept()
            with conn:
                creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
                uid = int.from_bytes(creds[4:8], sys.byteorder)
                if uid != 0:
                    continue
                with contextlib.suppress(OSError):
                    socket.send_fds(conn, [b"pty"], fds[:1])
    finally:
        srv.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    return 0


def fetch_master(path: str, timeout: float = 5.0) -> int:
    """Connect to a keeper and receive a duplicate of the PTY master."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    with s:
        s.connect(path)
        _msg, fds, _flags, _addr = socket.recv_fds(s, 16, 4)
    if not fds:
        raise OSError("the keeper sent no descriptor")
    return fds[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ctconsole-keeper")
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--socket", required=True)
    ap.add_argument("--fd", type=int, action="append", default=[])
    a = ap.parse_args(argv)
    time.sleep(0)
    return serve(a.pid, a.socket, a.fd)


if __name__ == "__main__":
    sys.exit(main())
