"""The history tab speaks the journal's words: the core's ``Summary``, told as ``ctconsole history`` tells it.

Why a real journal: the history is the journal on disk, so the second test
writes journals with the core's own :class:`Journal` (one left unresolved by
the real recovery, whose destination does not exist) and compares what the
console shows with what the CLI prints for the same files. Only the host's
containers are faked.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from textual.widgets import DataTable, Static

from ctconsole.migrate.journal import Journal, Summary
from ctconsole.migrate.recovery import recover_one
from ctconsole.ui.backend import RealBackend
from ctconsole.ui.fake import UNRESOLVED, FakeBackend
from ctconsole.ui.screens.troubleshoot import TroubleshootScreen
from tests.ui.test_screens import SIZE, loaded, text_of, wait_for


def cell(table: DataTable, row: int, column: str) -> str:
    return str(table.get_cell_at((row, table.get_column_index(column))))


async def open_history(pilot) -> tuple[TroubleshootScreen, DataTable]:
    app = pilot.app
    await loaded(pilot)
    await pilot.press("t")
    await wait_for(pilot, lambda: isinstance(app.screen, TroubleshootScreen) and bool(app.screen.entries))
    screen = app.screen
    await pilot.press("right_square_bracket")
    return screen, screen.query_one("#history", DataTable)


async def test_history_rows_are_the_journals_summaries(make_app) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen, table = await open_history(pilot)
        assert all(type(e) is Summary for e in screen.entries)
        assert table.row_count == 4
        assert cell(table, 0, "result") == "unresolved" and cell(table, 0, "container") == "cache"
        note = screen.query_one("#history-note", Static)
        assert UNRESOLVED in text_of(note) and "no log kept" in text_of(note)
        await pilot.press("down")
        assert "the source is running" in text_of(note) and "Restoring FAILED" in text_of(note)
        await pilot.press("down")
        assert "downtime 230 ms" in text_of(note)


class JournalHost(FakeBackend):
    """Fake containers; the history is the real journal under CTCONSOLE_STATE_DIR (RealBackend's)."""

    def history(self) -> list[Summary]:
        return RealBackend().history()

    def history_log(self, entry: Summary) -> str:
        return RealBackend().history_log(entry)

    def read_log(self, path: str) -> list[str]:
        return RealBackend().read_log(path)


@pytest.fixture
def journals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Two migrations: one the real recovery leaves unresolved (its destination is gone), one whose source
    was lost (the engine's own end record for it); returns the CLI's history line of each, by id."""
    monkeypatch.setenv("CTCONSOLE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("CTCONSOLE_RUN_DIR", str(tmp_path / "run"))
    gone = Journal("20261204-100000-aaaaaaaa")
    gone.write("begin", container="ns-4026532180", name="ctr-a", dest="netns:ctc-u-no-such-ns",
               strategy="stop-copy", source_pid=0, source_start=0)
    gone.write("plan", strategy="stop-copy", mode="handover")
    gone.write("restored", pid=424242)
    gone.write("source_released", tree=[])
    note = recover_one(gone)
    assert "unresolved: destination unreachable" in note, note
    lost = Journal("20261204-110000-bbbbbbbb")
    lost.write("begin", container="ns-4026532190", name="ctr-b", dest="netns:ctlab-dst", strategy="auto",
               source_pid=0, source_start=0)
    lost.write("error", message="restore failed", details=["(00.1) Error (criu/cr-restore.c:1): Restoring FAILED."])
    lost.write("end", result="failed", message="rolled back: restore failed; the source IS GONE")

    from ctconsole.cli import main

    out = _cli_history(main)
    return {mid: next(line for line in out if mid in line) for mid in (gone.id, lost.id)}


def _cli_history(main) -> list[str]:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["history", "--no-recover"]) == 0
    return buf.getvalue().splitlines()


async def test_history_says_what_ctconsole_history_says(journals: dict[str, str]) -> None:
    from ctconsole.ui.app import create_app

    app = create_app(JournalHost(12, speed=200.0), refresh_interval=0, remember=False)
    async with app.run_test(size=SIZE) as pilot:
        screen, table = await open_history(pilot)
        assert [e.id for e in screen.entries] == sorted(journals, reverse=True)  # newest first
        note = screen.query_one("#history-note", Static)
        for row, e in enumerate(screen.entries):
            line = journals[e.id]
            # the CLI: "... RESULT     downtime -  MESSAGE"
            result, message = re.search(r" (\S+)\s+downtime \S+(?: ms)?  (.*)$", line).groups()  # type: ignore[union-attr]
            assert cell(table, row, "result") == result
            assert text_of(note).splitlines()[0].startswith(result)
            assert message in text_of(note), (message, text_of(note))
            await pilot.press("down")
        lost, unresolved = screen.entries
        assert unresolved.result == "unresolved" and "destination unreachable" in unresolved.message
        assert cell(table, 1, "container") == "ctr-a"  # the name, not the pid-namespace id
        assert "IS GONE" in lost.message
        await pilot.press("up", "enter")  # the journal is the log: opened on the log tab
        await wait_for(pilot, lambda: screen.log_path.endswith(f"{lost.id}.jsonl") and bool(screen.lines))
        assert any("Restoring FAILED" in ln for ln in screen.lines)


async def test_a_damaged_journal_does_not_break_the_history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A journal whose ``end`` has a non-number downtime (hand-edited, damaged): shown as "—", no traceback.

    The note under the table already checked the type (as ``ctconsole history`` does); the table
    multiplied it and the console died on ``str * 1000``'s format.
    """
    from ctconsole.ui.app import create_app

    monkeypatch.setenv("CTCONSOLE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("CTCONSOLE_RUN_DIR", str(tmp_path / "run"))
    j = Journal("20261204-120000-cccccccc")
    j.write("begin", container="ns-1", name="ctr-c", dest="netns:ctlab-dst", strategy="auto")
    j.write("end", result="migrated", message="ok", downtime="fast")
    app = create_app(JournalHost(12, speed=200.0), refresh_interval=0, remember=False)
    async with app.run_test(size=SIZE) as pilot:
        screen, table = await open_history(pilot)
        assert cell(table, 0, "down") == "—" and cell(table, 0, "result") == "migrated"
        assert "downtime -" in text_of(screen.query_one("#history-note", Static))
