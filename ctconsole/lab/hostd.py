"""The lab's host-side UNIX stream listener: the "outside service" the ns container talks to.

Why it exists: real containers are often connected to a host daemon (a
logging agent, a metrics socket); CRIU must be told about such a connected
stream socket whose peer is outside the tree. This process stands in for that
daemon. It accepts connections, logs what it receives and keeps every
connection open until it is killed. Stdlib only: it runs as
``python -m ctconsole.lab.hostd SOCKET LOG``.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import sys
import time


def serve(path: str, log_path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    os.chmod(path, 0o600)
    srv.listen(16)
    sel = selectors.DefaultSelector()
    sel.register(srv, selectors.EVENT_READ)
    with open(log_path, "a", buffering=1) as log:
        log.write(f"{time.time():.3f} listening on {path} pid {os.getpid()}\n")
        while True:
            for key, _ in sel.select():
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is srv:
                    conn, _ = srv.accept()
                    sel.register(conn, selectors.EVENT_READ)
                    log.write(f"{time.time():.3f} connection fd {conn.fileno()}\n")
                    continue
                try:
                    data = sock.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(sock)
                    log.write(f"{time.time():.3f} closed fd {sock.fileno()}\n")
                    sock.close()
                    continue
                log.write(f"{time.time():.3f} fd {sock.fileno()}: {data.decode(errors='replace').rstrip()}\n")
                # echo, so a client can check the connection still works after a restore
                with contextlib.suppress(OSError):
                    sock.sendall(b"ack " + data)


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2])
