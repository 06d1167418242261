"""Workloads for the feasibility matrix: a counter that holds one kind of resource.

Run as ``python -S feasibility_workloads.py TICKS KIND [ARG]``. The process
acquires the resource named KIND (keeping a reference so it stays open), then
appends an increasing counter to TICKS every 50 ms, like tests/support.py's
counter. Kept dependency-free (ctypes only) so CRIU dumps nothing but it.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
import sys
import time

libc = ctypes.CDLL(None, use_errno=True)
HOLD: list[object] = []


def _syscall(nr: int, *args: int) -> int:
    res = int(libc.syscall(nr, *[ctypes.c_long(a) for a in args]))
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return res


def acquire(kind: str, arg: str) -> None:
    if kind == "plain":
        return
    if kind == "fd":  # an fd inherited from the test (external socket, pty slave...)
        HOLD.append(int(arg))
    elif kind == "dgram-connect":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.connect(arg)
        HOLD.append(s)
    elif kind == "socketpair":
        HOLD.extend(socket.socketpair())
    elif kind == "tcp-connect":
        host, port = arg.rsplit(":", 1)
        HOLD.append(socket.create_connection((host, int(port))))
    elif kind == "tcp-listen":
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(4)
        HOLD.append(s)
    elif kind == "flock":
        fd = os.open(arg, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        HOLD.append(fd)
    elif kind == "deleted":
        size = int(arg.split(":")[1])
        path = arg.split(":")[0]
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        os.write(fd, os.urandom(size))
        os.unlink(path)
        HOLD.append(fd)
    elif kind == "io_uring":
        params = ctypes.create_string_buffer(120)
        HOLD.append(_syscall(425, 4, ctypes.addressof(params)))
    elif kind == "perf":
        # struct perf_event_attr: type=PERF_TYPE_SOFTWARE(1), size=128, config=CPU_CLOCK(0)
        attr = ctypes.create_string_buffer(128)
        struct.pack_into("IIQ", attr, 0, 1, 128, 0)
        HOLD.append(_syscall(298, ctypes.addressof(attr), 0, -1, -1, 0))
    elif kind == "device":
        HOLD.append(os.open(arg, os.O_RDWR))
    elif kind == "sysv-shm":
        libc.shmat.restype = ctypes.c_void_p
        shmid = libc.shmget(0, 1 << 16, 0o1600)  # IPC_PRIVATE | IPC_CREAT | 0600
        if shmid < 0:
            raise OSError(ctypes.get_errno(), "shmget")
        addr = libc.shmat(shmid, None, 0)
        libc.shmctl(shmid, 0, None)  # IPC_RMID: goes away with the last detach
        HOLD.append(addr)
    elif kind == "vsock":
        HOLD.append(socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM))
    elif kind == "memfd":
        fd = os.memfd_create("ctconsole-test")
        os.write(fd, b"x" * 4096)
        HOLD.append(fd)
    elif kind == "eventfd":
        HOLD.append(os.eventfd(0))
    else:
        raise SystemExit(f"unknown kind {kind}")


def main() -> None:
    path, kind = sys.argv[1], sys.argv[2]
    arg = sys.argv[3] if len(sys.argv) > 3 else ""
    acquire(kind, arg)
    out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    n = 0
    while True:
        n += 1
        os.write(out, b"%d %.6f\n" % (n, time.time()))
        time.sleep(0.05)


if __name__ == "__main__":
    main()
