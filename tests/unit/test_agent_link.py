"""Same-filesystem destinations: the agent links the console's images instead of receiving them.

Why these checks: linking lets a console name files the agent then owns, so
the agent must only ever link from the console's own private work dir (a path
it derives itself, proven by a token), only plain names of regular files it
owns, never through symlinks, all or nothing; and the restore parent started
ahead of the freeze must go away when nothing is restored. No root or CRIU
needed: the agent runs in-process over pipes (tests/unit/test_agent.py).
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctconsole.config import state_dir
from ctconsole.migrate.journal import Journal
from ctconsole.migrate.keeper import KeeperHandle
from ctconsole.proto import agent_pb2
from tests.unit.test_agent import Conn


@pytest.fixture
def conn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Conn]:
    c = Conn(tmp_path, monkeypatch)
    yield c
    c.close()


def console_images(mid: str, files: dict[str, bytes], token: str | None = None) -> tuple[Path, str]:
    """What the engine makes before prepare: STATE/work/ID (0700) with images/ and share.token."""
    work = state_dir() / "work" / mid
    (work / "images").mkdir(parents=True)
    os.chmod(work, 0o700)
    os.chmod(work / "images", 0o700)
    for name, data in files.items():
        (work / "images" / name).write_bytes(data)
    token = token or secrets.token_hex(24)
    (work / "share.token").write_text(token)
    return work, token


def test_link_images_same_filesystem(conn: Conn) -> None:
    work, token = console_images("m1", {"core-1.img": b"core", "pages-1.img": b"p" * 8192})
    r = conn.call("prepare", agent_pb2.PrepareRequest(migration_id="m1", shared_token=token, page_server=True))
    assert r.prepare.shared_fs
    assert r.prepare.page_server_port == 0  # shared: no page server was started
    d = Path(r.prepare.images_dir)
    r = conn.call("link", agent_pb2.LinkRequest(names=["core-1.img", "pages-1.img"]))
    assert (r.link.files, r.link.bytes) == (2, 8196)
    assert os.path.samefile(d / "pages-1.img", work / "images" / "pages-1.img")  # no copy
    # linked names count as received: neither a second link nor a chunk may replace them
    assert conn.call("link", agent_pb2.LinkRequest(names=["core-1.img"])).error.code == "state"
    assert conn.call("file", agent_pb2.FileChunk(name="core-1.img", data=b"x", last=True)).error.code == "state"
    # auto_dedup would punch holes into the console's copy through the links
    r = conn.call("restore", agent_pb2.RestoreRequest(options_json='{"auto_dedup": true}'))
    assert r.error.code == "bad-request" and "auto_dedup" in r.error.message
    # abort drops our links, never the console's files
    conn.call("abort", agent_pb2.AbortRequest())
    assert not d.exists()
    assert (work / "images" / "pages-1.img").read_bytes() == b"p" * 8192


@pytest.mark.parametrize("spoil", ["token", "mode", "symlink-dir", "short-token"])
def test_not_shared_unless_proven(conn: Conn, spoil: str) -> None:
    work, token = console_images("m2", {"core-1.img": b"core"})
    if spoil == "token":
        token = secrets.token_hex(24)  # another console's (or a stale) dir
    elif spoil == "mode":
        os.chmod(work / "images", 0o755)  # not private: not trusted
    elif spoil == "symlink-dir":
        os.rename(work, work.with_name("elsewhere"))
        os.symlink(work.with_name("elsewhere"), work)
    elif spoil == "short-token":
        (work / "share.token").write_text("abc")
        token = "abc"
    r = conn.call("prepare", agent_pb2.PrepareRequest(migration_id="m2", shared_token=token))
    assert not r.prepare.shared_fs
    assert conn.call("link", agent_pb2.LinkRequest(names=["core-1.img"])).error.code == "state"


def test_link_refuses_escapes_and_is_all_or_nothing(conn: Conn, tmp_path: Path) -> None:
    work, token = console_images("m3", {"a.img": b"a", "b.img": b"b"})
    outside = tmp_path / "secret"
    outside.write_text("not an image")
    os.symlink(outside, work / "images" / "sym.img")
    (work / "images" / "sub").mkdir()
    r = conn.call("prepare", agent_pb2.PrepareRequest(migration_id="m3", shared_token=token))
    assert r.prepare.shared_fs
    d = Path(r.prepare.images_dir)
    for evil in ("../share.token", "/etc/passwd", "sub/x", ".."):
        assert conn.call("link", agent_pb2.LinkRequest(names=[evil])).error.code == "bad-name", evil
    for bad in ("sym.img", "sub"):  # a symlink, a directory: not regular files
        assert conn.call("link", agent_pb2.LinkRequest(names=["a.img", bad])).WhichOneof("body") == "error"
        assert not (d / "a.img").exists()  # the link made before the bad name was undone
    r = conn.call("link", agent_pb2.LinkRequest(names=["a.img", "missing.img"]))
    assert r.error.code == "failed" and not (d / "a.img").exists()
    assert conn.call("link", agent_pb2.LinkRequest(names=["a.img", "b.img"])).link.files == 2
    assert conn.call("link", agent_pb2.LinkRequest(round=2, names=["a.img"])).error.code == "state"


def test_prestarted_keeper_exits_when_released(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTCONSOLE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("CTCONSOLE_RUN_DIR", str(tmp_path / "run"))
    k = KeeperHandle()
    pid, _start = k.ready(30)
    assert os.path.exists(f"/proc/{pid}")
    k.close()  # nothing to restore: the keeper sees EOF and exits (it is nobody's child here)
    end = time.monotonic() + 10
    while time.monotonic() < end and os.path.exists(f"/proc/{pid}"):
        time.sleep(0.02)
    assert not os.path.exists(f"/proc/{pid}")


def test_agent_session_end_releases_its_keeper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    c = Conn(tmp_path, monkeypatch)
    c.call("prepare", agent_pb2.PrepareRequest(migration_id="m5"))
    keeper = c.agent.keeper
    assert keeper is not None
    pid, _ = keeper.ready(30)
    c.close()
    end = time.monotonic() + 10
    while time.monotonic() < end and os.path.exists(f"/proc/{pid}"):
        time.sleep(0.02)
    assert not os.path.exists(f"/proc/{pid}")


def test_journal_progress_records_are_written_but_not_synced(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd))
    j = Journal("x", tmp_path / "x.jsonl")
    j.write("phase", durable=False, phase="transfer")
    assert not synced
    j.write("restored", pid=5)
    assert len(synced) == 1
    assert [r["kind"] for r in j.records()] == ["phase", "restored"]
