"""What the operator reads at the end of a migration, for the outcomes and transfer kinds the other tests
do not reach: a source that is lost, and a container whose storage is carried along.

The fake backend fakes the host only: its migration emits the engine's own events (``Transfer`` of kind
``storage``, ``Done`` with ``source="lost"``), and the console's fold and views are the real ones.
"""

from __future__ import annotations

from textual.widgets import DataTable, ProgressBar, Static

from ctconsole.ui.backend import MigrationState, fold
from ctconsole.ui.fake import STORAGE_BYTES, FakeBackend
from ctconsole.ui.screens.containers import ContainersScreen
from ctconsole.ui.screens.migrate import MigrateScreen
from ctconsole.ui.widgets.progress import human_bytes
from tests.ui.test_screens import SIZE, loaded, select, text_of, wait_for


async def migrate(pilot, name: str, dest: str) -> MigrateScreen:
    app = pilot.app
    await loaded(pilot)
    await select(pilot, name)
    await pilot.press("m")
    await wait_for(pilot, lambda: isinstance(app.screen, MigrateScreen))
    screen = app.screen
    await pilot.press(*dest, "ctrl+g", "y")
    await wait_for(pilot, lambda: screen.finished, timeout=10)
    return screen


async def test_lost_source_is_said_in_capitals_and_the_list_no_longer_shows_it(
    fake: FakeBackend, make_app
) -> None:
    fake.fail_at, fake.lose_source = "restore", True
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await migrate(pilot, "db", "netns:ctlab-dst")
        done = screen.state.done
        assert done is not None and done.source == "lost" and done.source_survived is False
        outcome = text_of(screen.query_one("#outcome", Static))
        assert " FAILED " in outcome and "the source IS GONE" in outcome
        assert "✘ THE SOURCE CONTAINER IS GONE: it runs neither here nor on the destination" in outcome
        assert "Restoring FAILED" in outcome  # CRIU's error, explained under it
        assert "ctconsole history" in outcome and "enter: show" not in outcome
        assert "✘ restore" in text_of(screen.query_one("#timeline", Static))
        # back: the list of this host (the old screens pointed at a container that no longer exists)
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, ContainersScreen) and app.screen is not screen)
        lst = app.screen
        await wait_for(pilot, lambda: lst.scans >= 1)
        assert "lxc/db" not in lst.containers
        assert not any(isinstance(s, MigrateScreen) for s in app.screen_stack)
        assert lst.query_one("#containers", DataTable).row_count == 11


async def test_carried_storage_shows_its_bytes_and_100_percent(fake: FakeBackend, make_app) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await migrate(pilot, "db", "ssh://node9")  # no shared storage: the root is carried
        done = screen.state.done
        assert done is not None and done.migrated
        stats = text_of(screen.query_one("#mig-stats", Static)).splitlines()
        storage = next(line for line in stats if line.startswith("storage"))
        assert storage.split() == ["storage", *human_bytes(STORAGE_BYTES).split(), "100%"], stats
        sent = next(line for line in stats if line.startswith("sent"))
        assert sent.endswith("100%") and "0 B" not in sent, stats
        assert any(line.startswith("copied") and line.endswith("100%") for line in stats), stats  # pre-copy
        assert screen.query_one("#bar", ProgressBar).percentage == 1.0
        assert "0 B" not in " ".join(stats)


def test_storage_copy_while_running_shows_its_share_and_what_is_left() -> None:
    """Half-way through the full copy (before the freeze): bytes, total, percent, rate."""
    from ctconsole.migrate import events as ev
    from ctconsole.ui.widgets.progress import MigrationStats

    state = fold(MigrationState(), ev.PhaseChanged("prepare", "copying the container's storage while it runs"))
    state = fold(state, ev.Transfer("storage", STORAGE_BYTES // 2, STORAGE_BYTES, 80e6, 0.3))
    assert state.fraction == 0.5 and state.bytes_by_kind() == [("storage", STORAGE_BYTES // 2)]
    widget = MigrationStats()
    texts: list[str] = []
    widget.update = lambda t: texts.append(str(t))  # type: ignore[method-assign]
    widget.show(state)
    first = texts[-1].splitlines()[0]
    assert first.split() == ["storage", "24.0", "MiB", "/", "48.0", "MiB", "50%"], first
    assert "76.3 MiB/s" in texts[-1] and "ETA 300 ms" in texts[-1]
