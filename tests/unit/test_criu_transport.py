"""The transport never leaks a protobuf traceback: garbage, EOF and fds from a fake peer."""

from __future__ import annotations

import os
import socket

import pytest

from ctconsole.criu.rpc import Connection, TransportError
from ctconsole.proto import rpc_pb2


def pair() -> tuple[Connection, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    return Connection(a, label="fake"), b


def test_garbage_reply_is_a_clear_error() -> None:
    conn, peer = pair()
    peer.send(b"\xff\xff\xff\xff garbage")
    with pytest.raises(TransportError) as ei:
        conn.recv(timeout=2)
    assert "not a criu_resp" in str(ei.value)
    conn.close()
    peer.close()


def test_incomplete_reply_is_a_clear_error() -> None:
    conn, peer = pair()
    peer.send(b"\x08\x0a")  # type=VERSION but no required 'success'
    with pytest.raises(TransportError) as ei:
        conn.recv(timeout=2)
    assert "incomplete" in str(ei.value)


def test_closed_connection_is_a_clear_error() -> None:
    conn, peer = pair()
    peer.close()
    with pytest.raises(TransportError) as ei:
        conn.recv(timeout=2)
    assert "closed the connection without replying" in str(ei.value)


def test_timeout_is_a_clear_error() -> None:
    conn, _peer = pair()
    with pytest.raises(TransportError) as ei:
        conn.recv(timeout=0.1)
    assert "did not answer" in str(ei.value)


def test_scm_rights_fds_are_received_and_stay_open() -> None:
    conn, peer = pair()
    r, w = os.pipe()
    resp = rpc_pb2.criu_resp(type=rpc_pb2.NOTIFY, success=True)
    resp.notify.script = "orphan-pts-master"
    peer.sendmsg([resp.SerializeToString()], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, r.to_bytes(4, "little"))])
    got = conn.recv(timeout=2)
    assert got.resp.notify.script == "orphan-pts-master"
    assert len(got.fds) == 1
    os.write(w, b"x")
    assert os.read(got.fds[0], 1) == b"x"
    for fd in (r, w, *got.fds):
        os.close(fd)
