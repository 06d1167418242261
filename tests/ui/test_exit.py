"""Quitting is clean even when another key follows ``q`` within milliseconds.

Why: a terminal delivers ``q`` and the next key in one read; the second key's
action used to push a screen while Textual was tearing the app down, and its
``on_mount`` raised ``NoMatches`` -> a traceback on the operator's terminal and
exit status 1. The keys are posted back to back here, as the driver does,
without letting the app process the first one alone.
"""

from __future__ import annotations

import pytest
from textual import events

from ctconsole.ui.app import CtConsoleApp


async def _quit_then(app: CtConsoleApp, key: str, character: str | None) -> None:
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.1)
        app.post_message(events.Key("q", "q"))
        app.post_message(events.Key(key, character))
        for _ in range(100):
            if app._exit:
                break
            await pilot.pause(0.01)
        await pilot.pause(0.2)


@pytest.mark.parametrize(
    ("key", "character"),
    [("enter", "\r"), ("c", "c"), ("e", "e"), ("m", "m"), ("t", "t"), ("question_mark", "?"), ("ctrl+p", None)],
)
async def test_quit_then_another_key_exits_cleanly(make_app, key: str, character: str | None) -> None:
    app = make_app()
    await _quit_then(app, key, character)
    assert app.return_code == 0
    assert app._exit_renderables == [], "Textual recorded a traceback on exit"
    assert app._exception is None


async def test_screen_push_after_exit_is_refused(make_app) -> None:
    """A worker finishing during shutdown may still try to show a panel: it is dropped."""
    from ctconsole.ui.screens.modals import HelpScreen

    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.1)
        app.exit(0)
        await app.push_screen(HelpScreen())  # no-op awaitable
        assert not isinstance(app.screen, HelpScreen)
    assert app.return_code == 0 and app._exception is None
