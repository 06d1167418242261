"""The source end of an isolated lab host's link lives in a namespace the lab made: reach it from here.

Why: lab addresses (198.18.0.0/15) belong only in namespaces the lab
creates, so this machine's own network namespace gets none. The veth's
source end (``cti-NAME``, 198.18.N.1/30) sits in ``ctsrc-NAME``, the
source host's "edge". Processes here reach the isolated host through it
without any relay in the data path, because a socket keeps the network
namespace it was created in:

- **ssh** (and so rsync and the CRIU page channel, which ride the agent's
  ssh control master): the lab's ssh config entry for the host has
  ``ProxyCommand python -S edge.py NETNS %h %p`` with ``ProxyUseFdpass yes``.
  This script enters the edge namespace, connects, hands the connected socket
  to ssh over its stdout (``SCM_RIGHTS``, what OpenSSH's fd passing expects:
  one byte with the descriptor) and exits. ssh then talks straight over a TCP
  socket of the edge namespace: the kernel's path, no copy through a relay.
- **anything else** (a health check, a test's listener that the isolated host
  connects back to): :func:`socket_in` makes a socket in the edge namespace
  from a short-lived thread (``setns`` changes only the calling thread's
  namespace); the socket is then used from any thread here.

The ``tc`` shaping and a cut link (``ip link set down``) apply as before:
every packet still crosses the one veth, only its source end moved.

Stdlib only: the ProxyCommand runs it as a plain script (``python -S``, no
site-packages) on every ssh connection, so its start-up stays small.
"""

from __future__ import annotations

import ctypes
import os
import socket
import sys
import threading

CLONE_NEWNET = 0x40000000


def _setns(path: str) -> None:
    """Move the calling thread into the network namespace at ``path`` (a /run/netns file)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def socket_in(netns_path: str, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A new socket that belongs to the network namespace at ``netns_path``.

    Made in a thread of its own, so this process's other threads never change
    namespace; bind, connect and listen work on it from anywhere afterwards.
    """
    out: list[socket.socket | BaseException] = []

    def make() -> None:
        try:
            _setns(netns_path)
            out.append(socket.socket(family, kind))
        except BaseException as exc:  # handed to the caller below
            out.append(exc)

    t = threading.Thread(target=make, name="lab-edge-socket")
    t.start()
    t.join()
    got = out[0]
    if isinstance(got, BaseException):
        raise got
    return got


def connect_in(netns_path: str, address: str, port: int, timeout: float = 5.0) -> socket.socket:
    """A TCP connection to ``address:port`` made from the namespace at ``netns_path``."""
    s = socket_in(netns_path)
    s.settimeout(timeout)
    try:
        s.connect((address, port))
    except BaseException:
        s.close()
        raise
    s.settimeout(None)
    return s


def listening_in(netns_path: str, address: str, port: int, timeout: float = 0.2) -> bool:
    """True when something accepts TCP connections on ``address:port`` as seen from that namespace."""
    try:
        connect_in(netns_path, address, port, timeout).close()
    except OSError:
        return False
    return True


def proxy_command(netns_path: str) -> str:
    """The ssh ``ProxyCommand`` (with ``ProxyUseFdpass yes``) that connects from the edge namespace."""
    return f"{sys.executable} -S {os.path.abspath(__file__)} {netns_path} %h %p"


def main(argv: list[str]) -> int:
    """ProxyCommand: connect from the namespace, pass the socket to ssh on stdout, exit."""
    if len(argv) != 3:
        print("usage: edge.py NETNS_PATH HOST PORT", file=sys.stderr)
        return 2
    path, host, port = argv
    _setns(path)  # single-threaded here: the whole process moves
    try:
        conn = socket.create_connection((host, int(port)), timeout=10)
    except OSError as exc:
        print(f"lab edge: cannot connect to {host}:{port} from {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    conn.settimeout(None)  # blocking again: ssh gets the descriptor as a plain connected socket
    with socket.socket(fileno=os.dup(1)) as out:
        socket.send_fds(out, [b"\0"], [conn.fileno()])
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
