"""The agent protocol without CRIU: framing limits, request validation, image-name escapes.

The agent is driven in-process through pipes (no root needed): every frame
must be answered, malformed input gets an Error reply, file names cannot
leave the images directory, and restore options outside the allow-list are
refused.
"""

from __future__ import annotations

import io
import json
import os
import stat
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctconsole.agent.channel import (
    MAX_FRAME,
    ChannelError,
    encode_frame,
    parse_destination,
    read_frame,
)
from ctconsole.migrate import destination as agent_mod
from ctconsole.migrate import events as ev
from ctconsole.migrate.destination import DestinationServer, Refused, check_name, validate_restore_opts, veth_host_names
from ctconsole.migrate.precopy import PrecopyPolicy, precopy_should_stop
from ctconsole.proto import agent_pb2


# -- framing ------------------------------------------------------------------------------
def test_frame_roundtrip() -> None:
    buf = io.BytesIO(encode_frame(b"hello") + encode_frame(b""))
    assert read_frame(buf) == b"hello"
    assert read_frame(buf) == b""
    assert read_frame(buf) is None  # clean EOF


def test_oversized_frame_refused_before_reading() -> None:
    buf = io.BytesIO(struct.pack(">I", MAX_FRAME + 1) + b"x" * 10)
    with pytest.raises(ChannelError, match="limit"):
        read_frame(buf)
    with pytest.raises(ChannelError):
        encode_frame(b"x" * (MAX_FRAME + 1))


def test_truncated_frame() -> None:
    with pytest.raises(ChannelError, match="inside a frame"):
        read_frame(io.BytesIO(struct.pack(">I", 10) + b"abc"))
    with pytest.raises(ChannelError):
        read_frame(io.BytesIO(b"\x00\x00"))


# -- names and options ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../x", "..", ".", "a/b", "/etc/passwd", "", "x" * 300, "a\0b", "a..b",
                                  ".hidden", "sp ace", "nl\n", "ümlaut"])
def test_bad_names(name: str) -> None:
    with pytest.raises(Refused):
        check_name(name)


@pytest.mark.parametrize("name", ["core-123.img", "pages-1.img", "inventory.img", "stats-dump", "irmap-cache"])
def test_good_names(name: str) -> None:
    assert check_name(name) == name


def test_restore_options_allow_list() -> None:
    assert validate_restore_opts('{"root": "/x", "external": ["veth[eth0]:v0@br0"]}')["root"] == "/x"
    for bad in ('{"exec_cmd": ["/bin/sh"]}', '{"config_file": "/tmp/x"}', '{"images_dir": "/"}',
                '{"ps": {"port": 1}}', "[1]", "not json"):
        with pytest.raises(Refused):
            validate_restore_opts(bad)


def test_veth_names() -> None:
    opts = {"external": ["veth[eth0]:v0@br0", "veth[eth1]:v1", "mnt[x]:/y"]}
    assert veth_host_names(opts) == ["v0", "v1"]
    assert agent_mod.bridges_needed(opts) == ["br0"]


def test_destinations() -> None:
    assert str(parse_destination("netns:ctlab-a")) == "netns:ctlab-a"
    d = parse_destination("ssh://op@host.example:2222")
    assert (d.user, d.host, d.port) == ("op", "host.example", 2222)
    assert parse_destination("local").kind == "local"
    for bad in ("netns:../x", "netns:-x", "ssh://-oProxyCommand=x", "ssh://h:99999", "ftp://x", "netns:a b",
                "netns:x\n", "ssh://h\n"):
        with pytest.raises(Exception):  # noqa: B017 - UsageError
            parse_destination(bad)


# -- a live agent over pipes -----------------------------------------------------------------------
class Conn:
    def __init__(self, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("CTCONSOLE_STATE_DIR", str(tmp / "state"))
        monkeypatch.setenv("CTCONSOLE_RUN_DIR", str(tmp / "run"))
        r1, w1 = os.pipe()
        r2, w2 = os.pipe()
        self.to_agent = os.fdopen(w1, "wb", buffering=0)
        self.from_agent = os.fdopen(r2, "rb", buffering=0)
        self.agent = DestinationServer(os.fdopen(r1, "rb", buffering=0), os.fdopen(w2, "wb", buffering=0))
        self.thread = threading.Thread(target=self.agent.serve, daemon=True)
        self.thread.start()
        self.next = 1

    def raw(self, payload: bytes) -> agent_pb2.Reply:
        self.to_agent.write(encode_frame(payload))
        data = read_frame(self.from_agent)
        assert data is not None
        r = agent_pb2.Reply()
        r.ParseFromString(data)
        return r

    def call(self, field: str, msg: object) -> agent_pb2.Reply:
        req = agent_pb2.Request(id=self.next)
        self.next += 1
        getattr(req, field).CopyFrom(msg)
        return self.raw(req.SerializeToString())

    def close(self) -> None:
        self.to_agent.close()
        self.thread.join(timeout=10)


@pytest.fixture
def conn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Conn]:
    c = Conn(tmp_path, monkeypatch)
    yield c
    c.close()


def test_malformed_and_empty_requests_get_errors(conn: Conn) -> None:
    r = conn.raw(b"\xff\xff\xff garbage")
    assert r.WhichOneof("body") == "error" and r.error.code == "bad-request"
    r = conn.raw(agent_pb2.Request(id=7).SerializeToString())  # no body: unknown message type
    assert r.id == 7 and r.error.code == "bad-request"
    # still serving afterwards
    assert conn.call("status", agent_pb2.StatusRequest()).WhichOneof("body") == "status"


def test_file_transfer_and_escapes(conn: Conn, tmp_path: Path) -> None:
    assert conn.call("file", agent_pb2.FileChunk(name="x.img", data=b"1")).error.code == "state"  # no prepare
    r = conn.call("prepare", agent_pb2.PrepareRequest(migration_id="m1"))
    d = Path(r.prepare.images_dir)
    assert d.is_dir() and (d.stat().st_mode & 0o777) == 0o700
    assert conn.call("prepare", agent_pb2.PrepareRequest(migration_id="m2")).error.code == "state"
    for evil in ("../evil", "/tmp/evil", "a/b", ".."):
        r = conn.call("file", agent_pb2.FileChunk(name=evil, data=b"x", last=True))
        assert r.error.code == "bad-name", evil
    assert not (d.parent / "evil").exists()
    # a symlink planted in the images dir is not followed
    os.symlink("/tmp/should-not-exist", d / "link.img")
    assert conn.call("file", agent_pb2.FileChunk(name="link.img", data=b"x", last=True)).WhichOneof("body") == "error"
    assert not Path("/tmp/should-not-exist").exists()
    r = conn.call("file", agent_pb2.FileChunk(name="core-1.img", offset=0, data=b"abc"))
    assert r.file.size == 3
    assert conn.call("file", agent_pb2.FileChunk(name="core-1.img", offset=1, data=b"d")).error.code == "bad-request"
    assert conn.call("file", agent_pb2.FileChunk(name="core-1.img", offset=3, data=b"de", last=True)).file.size == 5
    assert (d / "core-1.img").read_bytes() == b"abcde"
    assert conn.call("file", agent_pb2.FileChunk(name="core-1.img", data=b"x")).error.code == "state"
    # restore with forbidden options is refused before CRIU is involved
    r = conn.call("restore", agent_pb2.RestoreRequest(options_json=json.dumps({"exec_cmd": ["/bin/sh"]})))
    assert r.error.code == "bad-request"
    # abort removes the images
    assert conn.call("abort", agent_pb2.AbortRequest()).WhichOneof("body") == "abort"
    assert not d.exists()


def test_page_server_listens_on_no_address(conn: Conn) -> None:
    """Whatever address the console names, the page channel is a unix socket in a private directory."""
    r = conn.call("prepare", agent_pb2.PrepareRequest(migration_id="m3", page_server=True,
                                                      page_server_address="8.8.8.8"))
    assert r.WhichOneof("body") == "prepare", r
    sock = Path(r.prepare.page_socket)
    assert r.prepare.page_server_port == 0 and not r.prepare.page_server_address
    assert stat.S_ISSOCK(os.stat(sock).st_mode)
    assert os.stat(sock.parent).st_mode & 0o777 == 0o700
    conn.call("abort", agent_pb2.AbortRequest())
    assert not sock.parent.exists(), "the abort removes the listener and its directory"


def test_session_end_removes_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    c = Conn(tmp_path, monkeypatch)
    d = Path(c.call("prepare", agent_pb2.PrepareRequest(migration_id="m4")).prepare.images_dir)
    c.call("file", agent_pb2.FileChunk(name="a.img", data=b"x", last=True))
    c.close()
    assert not d.exists()


# -- engine pieces that need no CRIU -----------------------------------------------------------------
def test_precopy_policy() -> None:
    p = PrecopyPolicy(max_rounds=4, min_pages=100, max_growth=1.0)
    assert precopy_should_stop(p, [5000]) == (False, "")
    assert precopy_should_stop(p, [5000, 2000])[0] is False
    assert precopy_should_stop(p, [5000, 50])[0] is True  # small enough to freeze for
    assert "converging" in precopy_should_stop(p, [5000, 6000])[1]
    assert "rounds" in precopy_should_stop(p, [5000, 4000, 3000, 2000])[1]


def test_event_json() -> None:
    assert ev.to_json(ev.PhaseChanged("perform", "x")) == {"event": "phase_changed", "phase": "perform",
                                                           "detail": "x"}
    d = ev.to_json(ev.Done("migrated", "ok", {"a": 1}))
    assert d["event"] == "done" and d["result"] == "migrated"
    assert ev.to_json(ev.RoundProgress(1, 10, 5, 5))["event"] == "round_progress"


# -- journal and lock ----------------------------------------------------------------------------
def test_journal_and_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ctconsole.errors import CtError
    from ctconsole.migrate.journal import Journal, MigrationLock, journals, lock_free, summarize, unfinished

    monkeypatch.setenv("CTCONSOLE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("CTCONSOLE_RUN_DIR", str(tmp_path / "run"))
    lock = MigrationLock("tree:42").acquire()
    with pytest.raises(CtError, match="another migration"):
        MigrationLock("tree:42").acquire()
    j = Journal("m1")
    j.write("begin", container="tree:42", dest="netns:x", strategy="auto", source_pid=42, lock=str(lock.path))
    j.write("plan", strategy="stop-copy", mode="handover")
    j.write("phase", phase="perform")
    with open(j.path, "a") as f:
        f.write('{"torn": ')  # a crash mid-line
    assert [r["kind"] for r in j.records()] == ["begin", "plan", "phase"]
    assert unfinished() == []  # its owner (us) still holds the lock
    assert not lock_free(lock.path)
    lock.release()
    assert [p.stem for p in unfinished()] == ["m1"]
    j.write("end", result="migrated", message="ok", downtime=0.2)
    s = summarize(j.path)
    assert (s.result, s.strategy, s.downtime, s.phases) == ("migrated", "stop-copy/handover", 0.2, ["perform"])
    assert unfinished() == [] and [p.stem for p in journals()] == ["m1"]
    assert (tmp_path / "state" / "journal").stat().st_mode & 0o777 == 0o700
