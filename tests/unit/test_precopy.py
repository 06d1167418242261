"""Pre-copy planning without CRIU: convergence, directory/parent layout, the options of every round.

What CRIU does with these options is tested against real CRIU in
tests/integration/test_migrate_precopy.py (on this host: its refusal without
soft-dirty tracking). Here a fake ``IterativeDump`` only records what the
engine *asks* for and feeds back page counts, which is pure planning logic;
the agent's side of the layout is a real in-process agent.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from ctconsole.agent.channel import AgentChannel, parse_destination
from ctconsole.cli import build_parser
from ctconsole.criu.images import DumpStats
from ctconsole.migrate import events as ev
from ctconsole.migrate.engine import Migration, MigrationRequest, Plan
from ctconsole.migrate.precopy import (
    PrecopyPolicy,
    precopy_final_opts,
    precopy_round_dir,
    precopy_round_opts,
    precopy_should_stop,
)
from ctconsole.proto import agent_pb2
from tests.unit.test_agent import Conn

BASE = {"pid": 4242, "log_level": 4, "external": ["unix[77]"], "shell_job": True}


# -- convergence policy ------------------------------------------------------------------------------
def rounds_until_stop(policy: PrecopyPolicy, series: list[int]) -> tuple[int, str]:
    """How many rounds run when round k writes series[k-1] pages (the engine's loop, reduced)."""
    written: list[int] = []
    for w in series:
        written.append(w)
        stop, why = precopy_should_stop(policy, written)
        if stop:
            return len(written), why
    raise AssertionError("never stopped")


@pytest.mark.parametrize(("policy", "series", "rounds", "why"), [
    (PrecopyPolicy(5, 1024, 1.0), [90000, 30000, 8000, 900], 4, "< 1024"),  # converged under the threshold
    (PrecopyPolicy(5, 1024, 1.0), [90000, 60000, 40000, 30000, 20000, 10000], 5, "reached 5 rounds"),
    (PrecopyPolicy(5, 1024, 1.0), [90000, 30000, 31000], 3, "not converging (30000 -> 31000"),
    (PrecopyPolicy(5, 1024, 1.5), [90000, 30000, 31000, 40000, 500], 5, "reached 5 rounds"),  # growth tolerated
    (PrecopyPolicy(5, 1024, 1.5), [30000, 46000], 2, "not converging"),
    (PrecopyPolicy(1, 0, 1.0), [123456], 1, "reached 1 rounds"),  # one pre-dump, then the final dump
    (PrecopyPolicy(3, 0, 1.0), [0, 0, 0, 0], 3, "reached 3 rounds"),  # threshold 0 and 0 -> 0: only max_rounds
])
def test_convergence(policy: PrecopyPolicy, series: list[int], rounds: int, why: str) -> None:
    got, reason = rounds_until_stop(policy, series)
    assert got == rounds and why in reason, (got, reason)


def test_first_round_never_stops_on_growth() -> None:
    assert precopy_should_stop(PrecopyPolicy(5, 10, 0.1), [5000]) == (False, "")
    assert precopy_should_stop(PrecopyPolicy(5, 10, 0.1), []) == (False, "")


# -- layout and options ------------------------------------------------------------------------------
def test_round_options() -> None:
    r1 = precopy_round_opts(BASE, 1)
    assert r1 == {**BASE, "track_mem": True}  # no parent for the first round, nothing else changed
    ps = {"address": "198.18.0.2", "port": 4000}
    r3 = precopy_round_opts({**BASE, "ps": {"address": "x", "port": 1}, "lazy_pages": True,
                             "parent_img": "stale"}, 3, ps)
    assert r3["parent_img"] == "../2" and r3["track_mem"] is True and r3["ps"] == ps
    assert "lazy_pages" not in r3
    assert r3["ps"] is not ps  # each round gets its own copy (its own page server port)
    assert "ps" not in precopy_round_opts({**BASE, "ps": {"address": "x", "port": 1}}, 2)
    final = precopy_final_opts(BASE, 4, ps)
    assert final == {**BASE, "track_mem": True, "parent_img": "pre/4", "ps": ps}
    assert "ps" not in precopy_final_opts({**BASE, "ps": ps}, 4)
    assert BASE == {"pid": 4242, "log_level": 4, "external": ["unix[77]"], "shell_job": True}  # not mutated


def test_parent_links_resolve_like_criu_makes_them(tmp_path: Path) -> None:
    """CRIU symlinks IMAGES_DIR/parent -> parent_img (image.c open_image_dir); the chain must end in round 1."""
    images = tmp_path / "images"
    images.mkdir()
    n = 3
    for k in range(1, n + 1):
        d = precopy_round_dir(images, k)
        assert d == images / "pre" / str(k)
        d.mkdir(parents=True)
        opts = precopy_round_opts(BASE, k)
        if "parent_img" in opts:
            os.symlink(opts["parent_img"], d / "parent")
    os.symlink(precopy_final_opts(BASE, n)["parent_img"], images / "parent")
    chain, here = [], images
    while (here / "parent").exists():
        here = (here / "parent").resolve()
        chain.append(here)
    assert chain == [(images / "pre" / str(k)).resolve() for k in (3, 2, 1)]
    # the same relative tree copied elsewhere (the destination) resolves the same way
    import shutil

    copy = tmp_path / "dest" / "ID"
    shutil.copytree(images, copy, symlinks=True)
    assert (copy / "parent" / "parent").resolve() == (copy / "pre" / "2").resolve()


# -- the engine's loop, with a recording stand-in for CRIU and the agent ------------------------------------
class FakeIterative:
    """Records each request of the iterative swrk session; returns the next page count as stats."""

    def __init__(self, series: list[int]) -> None:
        self.series = list(series)
        self.calls: list[tuple[str, dict[str, Any], Path]] = []

    def _stats(self, written: int) -> Any:
        st = DumpStats(0, 0, 0, 0, pages_scanned=written * 3, pages_skipped_parent=written * 2,
                       pages_written=written, pages_lazy=0)
        return type("R", (), {"stats": st})()

    def pre_dump(self, opts: dict[str, Any], images_dir: Path) -> Any:
        assert images_dir.is_dir()
        self.calls.append(("PRE_DUMP", opts, images_dir))
        return self._stats(self.series.pop(0))

    def dump(self, opts: dict[str, Any], images_dir: Path, on_notify: Any = None) -> Any:
        self.calls.append(("DUMP", opts, images_dir))
        return self._stats(0)


class FakeClient:
    def __init__(self, it: FakeIterative) -> None:
        self.it = it
        self.ps_fd: int | None = None

    def iterative(self, timeout: float | None = None, ps_fd: int | None = None) -> Any:
        import contextlib

        self.ps_fd = ps_fd  # the whole session's swrk inherits the page channel
        return contextlib.nullcontext(self.it)


class FakeChannel:
    def __init__(self) -> None:
        self.rounds: list[agent_pb2.RoundRequest] = []

    def call(self, field: str, msg: Any, timeout: float = 60) -> Any:
        assert field == "round"
        self.rounds.append(msg)
        # the page channel's socket comes with the first round; later rounds reuse the connection
        return agent_pb2.RoundReply(page_socket="/run/ctconsole/pages/h/s" if len(self.rounds) == 1 else "")


def fake_page_link(m: Migration, opened: list[str]) -> None:
    """Stand in for connecting to the destination's page socket: our end's fd is 77."""
    def open_link(path: str, plan: Any) -> None:
        opened.append(path)
        m.page_link = type("L", (), {"fd": 77, "via": "direct", "close": lambda self: None})()  # type: ignore[assignment]
    m._open_page_link = open_link  # type: ignore[method-assign]


@pytest.mark.parametrize("use_ps", [True, False], ids=["page-server", "agent-channel"])
def test_engine_rounds_and_final_dump(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, use_ps: bool) -> None:
    monkeypatch.setenv("CTCONSOLE_STATE_DIR", str(tmp_path / "state"))
    events: list[object] = []
    m = Migration(MigrationRequest(ref="tree:1", dest="netns:x", strategy="pre-copy",
                                   policy=PrecopyPolicy(max_rounds=5, min_pages=1000, max_growth=1.0)),
                  emit=events.append)
    ch = FakeChannel()
    m.channel = ch  # type: ignore[assignment]
    sent: list[tuple[Path, int]] = []
    monkeypatch.setattr(m, "_send_images", lambda d, skip=(), window=8, round_no=0: sent.append((d, round_no)))
    it = FakeIterative([50000, 20000, 700])
    images = tmp_path / "images"
    images.mkdir()
    plan = Plan(dest=parse_destination("netns:x"), strategy="pre-copy", mode="handover", images=images,
                dump=dict(BASE), restore={}, use_ps=use_ps)
    opened: list[str] = []
    fake_page_link(m, opened)
    client = FakeClient(it)
    m._precopy(client, plan, lambda n: True)  # type: ignore[arg-type]

    # three rounds (the third wrote < 1000 pages), then the final dump on the same session
    assert [c[0] for c in it.calls] == ["PRE_DUMP"] * 3 + ["DUMP"]
    assert [c[2] for c in it.calls] == [images / "pre" / "1", images / "pre" / "2", images / "pre" / "3", images]
    assert [c[1].get("parent_img") for c in it.calls] == [None, "../1", "../2", "pre/3"]
    assert all(c[1]["track_mem"] is True and c[1]["pid"] == 4242 for c in it.calls)
    # the agent was told each round in order, then the final dump on top of round 3
    assert [(r.round, r.parent, r.page_server) for r in ch.rounds] == [
        (1, 0, use_ps), (2, 0, use_ps), (3, 0, use_ps), (0, 3, use_ps)]
    if use_ps:  # every round streams to its own page server, all on the one page channel
        assert opened == ["/run/ctconsole/pages/h/s"] and client.ps_fd == 77
        assert [c[1]["ps"] for c in it.calls] == [{"fd": 77}] * 4
        assert sent == []
    else:  # pages stay local and go over the channel right after each round, into pre/k there
        assert all("ps" not in c[1] for c in it.calls)
        assert sent == [(images / "pre" / "1", 1), (images / "pre" / "2", 2), (images / "pre" / "3", 3)]
    rounds = [e for e in events if isinstance(e, ev.RoundProgress)]
    assert [(r.round, r.pages_written, r.pages_scanned, r.pages_skipped) for r in rounds] == [
        (1, 50000, 150000, 100000), (2, 20000, 60000, 40000), (3, 700, 2100, 1400)]
    assert not any(isinstance(e, ev.FinalDump) for e in events)  # the final dump is the caller's to report
    assert m.rounds == 3
    recs = [r for r in m.journal.records() if r.get("kind") == "round"]
    assert [r["round"] for r in recs] == [1, 2, 3, 0] and recs[-1]["options"]["parent_img"] == "pre/3"


def test_engine_abort_between_rounds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ctconsole.errors import CtError

    monkeypatch.setenv("CTCONSOLE_STATE_DIR", str(tmp_path / "state"))
    m = Migration(MigrationRequest(ref="tree:1", dest="local", strategy="pre-copy"))
    ch = FakeChannel()
    m.channel = ch  # type: ignore[assignment]
    it = FakeIterative([50000, 40000, 30000])
    orig = it.pre_dump

    def pre_dump(opts: dict[str, Any], d: Path) -> Any:
        m.abort()  # Ctrl-C during round 1: honoured before round 2 starts
        return orig(opts, d)

    it.pre_dump = pre_dump  # type: ignore[method-assign]
    images = tmp_path / "images"
    images.mkdir()
    fake_page_link(m, [])
    with pytest.raises(CtError, match="aborted"):
        plan = Plan(dest=parse_destination("local"), strategy="pre-copy", mode="handover", images=images,
                    dump=dict(BASE), restore={}, use_ps=True)
        m._precopy(FakeClient(it), plan, lambda n: True)  # type: ignore[arg-type]
    assert [c[0] for c in it.calls] == ["PRE_DUMP"]


# -- the agent mirrors the layout ------------------------------------------------------------------------
def test_agent_round_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    c = Conn(tmp_path, monkeypatch)
    try:
        d = Path(c.call("prepare", agent_pb2.PrepareRequest(migration_id="p1")).prepare.images_dir)
        assert c.call("round", agent_pb2.RoundRequest(round=2)).error.code == "state"  # out of order
        assert c.call("file", agent_pb2.FileChunk(name="pages-1.img", data=b"x", last=True,
                                                  round=1)).error.code == "state"  # round not announced
        r1 = c.call("round", agent_pb2.RoundRequest(round=1)).round
        assert Path(r1.images_dir) == d / "pre" / "1" and not (d / "pre" / "1" / "parent").exists()
        assert c.call("file", agent_pb2.FileChunk(name="pages-1.img", data=b"r1", last=True, round=1)).file.size == 2
        r2 = c.call("round", agent_pb2.RoundRequest(round=2)).round
        assert os.readlink(Path(r2.images_dir) / "parent") == "../1"
        assert c.call("file", agent_pb2.FileChunk(name="pages-1.img", data=b"r22", last=True, round=2)).file.size == 3
        # the same name in another round is another file; twice in one round is refused
        assert c.call("file", agent_pb2.FileChunk(name="pages-1.img", data=b"x", last=True,
                                                  round=2)).error.code == "state"
        for evil in ("../1/pages-1.img", "parent"):
            r = c.call("file", agent_pb2.FileChunk(name=evil, data=b"x", last=True, round=2))
            assert r.WhichOneof("body") == "error", evil
        assert c.call("round", agent_pb2.RoundRequest(round=0, parent=1)).error.code == "state"  # not the last
        final = c.call("round", agent_pb2.RoundRequest(round=0, parent=2)).round
        assert Path(final.images_dir) == d and os.readlink(d / "parent") == "pre/2"
        assert (d / "parent" / "pages-1.img").read_bytes() == b"r22"
        assert (d / "parent" / "parent" / "pages-1.img").read_bytes() == b"r1"
        assert (d / "pre").stat().st_mode & 0o777 == 0o700
        assert c.call("abort", agent_pb2.AbortRequest()).WhichOneof("body") == "abort"
        assert not d.exists()
    finally:
        c.close()


def test_file_chunk_round_on_the_wire() -> None:
    """The hand-made FileChunk frame carries ``round`` exactly as protobuf would."""
    r, w = os.pipe()
    ch = AgentChannel(parse_destination("local"))
    ch.proc = type("P", (), {"stdin": os.fdopen(w, "wb", buffering=0)})()  # type: ignore[assignment]
    try:
        ch.send_file_chunk("pages-1.img", 7, b"data", True, 3)
        ch.send_file_chunk("core.img", 0, b"", False)
        with os.fdopen(r, "rb", buffering=0) as f:
            from ctconsole.agent.channel import read_frame

            got = []
            for _ in range(2):
                req = agent_pb2.Request()
                req.ParseFromString(bytes(read_frame(f) or b""))
                got.append((req.file.name, req.file.offset, req.file.data, req.file.last, req.file.round))
    finally:
        assert ch.proc is not None
        ch.proc.stdin.close()  # type: ignore[union-attr]
    assert got == [("pages-1.img", 7, b"data", True, 3), ("core.img", 0, b"", False, 0)]


def test_cli_precopy_flags() -> None:
    args = build_parser().parse_args(["migrate", "tree:1", "--to", "local", "--strategy", "pre-copy",
                                      "--precopy-max-rounds", "3", "--precopy-threshold-pages", "256",
                                      "--precopy-growth", "1.5"])
    assert (args.max_rounds, args.min_pages, args.max_growth) == (3, 256, 1.5)
    old = build_parser().parse_args(["migrate", "tree:1", "--to", "local", "--max-rounds", "2"])
    assert old.max_rounds == 2 and old.min_pages == 1024 and old.max_growth == 1.0
    for bad in (["--precopy-max-rounds", "0"], ["--precopy-growth", "0"], ["--precopy-threshold-pages", "-1"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["migrate", "tree:1", "--to", "local", *bad])
