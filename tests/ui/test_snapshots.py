"""Snapshots of the main screens on the fake backend, for each shipped theme, at 80x24 and 120x40.

Why these: they catch layout regressions a Pilot test cannot see (clipping
at 80 columns, unreadable colours in a theme). Regenerate after an
intended change with ``pytest tests/ui/test_snapshots.py --snapshot-update``
and look at the SVGs (tests/ui/__snapshots__/) before committing them.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import pytest
from textual.pilot import Pilot

from ctconsole.ui.app import create_app
from ctconsole.ui.fake import FakeBackend

THEMES = ("ctconsole-dark", "ctconsole-light", "ctconsole-high-contrast")
SIZES = ((80, 24), (120, 40))


async def _until(pilot: Pilot, cond: Callable[[], bool], timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            await pilot.pause(0.05)
            return
        await pilot.pause(0.02)
    raise AssertionError("screen did not settle")


def _scanned(pilot: Pilot) -> bool:
    return getattr(pilot.app.screen, "scans", 0) >= 1


async def _select(pilot: Pilot, name: str) -> None:
    await _until(pilot, lambda: _scanned(pilot))
    await pilot.press("slash", *name, "enter")
    await pilot.pause(0.05)


async def containers(pilot: Pilot) -> None:
    await _until(pilot, lambda: _scanned(pilot))
    # show a badge: check web-1, come back
    await _select(pilot, "web-1")
    await pilot.press("c")
    await _until(pilot, lambda: getattr(pilot.app.screen, "report", None) is not None)
    await pilot.press("escape", "escape")
    await pilot.press("down", "down")
    await pilot.pause(0.1)


async def detail(pilot: Pilot) -> None:
    await _select(pilot, "web-1")
    await pilot.press("enter")
    await _until(pilot, lambda: type(pilot.app.screen).__name__ == "DetailScreen")
    await pilot.press("x")
    await pilot.pause(0.1)


async def report(pilot: Pilot) -> None:
    await _select(pilot, "console-vm")
    await pilot.press("c")
    await _until(pilot, lambda: getattr(pilot.app.screen, "report", None) is not None)
    await pilot.press("down", "down")
    await pilot.pause(0.1)


async def rules(pilot: Pilot) -> None:
    await _select(pilot, "web-1")
    await pilot.press("e")
    await _until(pilot, lambda: getattr(pilot.app.screen, "loaded", False))
    await _until(pilot, lambda: "external" in str(pilot.app.screen.query_one("#preview").render()))


async def rule_form(pilot: Pilot) -> None:
    await rules(pilot)
    await pilot.press("a", "x")
    await pilot.pause(0.1)


async def migration_setup(pilot: Pilot) -> None:
    """The destination picker (known hosts, kind, reachability, last used first), the rules file, a preview."""
    await _select(pilot, "db")
    await pilot.press("m")
    await _until(pilot, lambda: bool(getattr(pilot.app.screen, "destinations", None)))
    await pilot.press("down", "ctrl+r")
    await _until(pilot, lambda: "rules file" in str(pilot.app.screen.query_one("#mig-preview").render()))


async def migration_done(pilot: Pilot) -> None:
    await _select(pilot, "db")
    await pilot.press("m")
    await _until(pilot, lambda: type(pilot.app.screen).__name__ == "MigrateScreen")
    await pilot.press(*"netns:ctlab-dst", "ctrl+g", "y")
    await _until(pilot, lambda: getattr(pilot.app.screen, "finished", False))
    await pilot.pause(0.1)


async def troubleshoot(pilot: Pilot) -> None:
    await _until(pilot, lambda: _scanned(pilot))
    await pilot.press("t")
    await _until(pilot, lambda: bool(getattr(pilot.app.screen, "lines", None)))
    await pilot.press("n")
    await pilot.pause(0.1)


async def help_screen(pilot: Pilot) -> None:
    await _until(pilot, lambda: _scanned(pilot))
    await pilot.press("question_mark")
    await pilot.pause(0.1)


SCREENS: dict[str, Callable[[Pilot], Awaitable[None]]] = {
    "containers": containers,
    "detail": detail,
    "report": report,
    "rules": rules,
    "migrate": migration_setup,
    "migration": migration_done,
    "troubleshoot": troubleshoot,
}


def _app(theme: str):
    return create_app(FakeBackend(12, speed=500.0), theme=theme, refresh_interval=0, remember=False)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("theme", THEMES)
@pytest.mark.parametrize("screen", list(SCREENS))
def test_screen(snap_compare, screen: str, theme: str, size: tuple[int, int]) -> None:
    assert snap_compare(_app(theme), terminal_size=size, run_before=SCREENS[screen])


@pytest.mark.parametrize("screen", ["help", "rule_form"])
def test_modal(snap_compare, screen: str) -> None:
    run = help_screen if screen == "help" else rule_form
    assert snap_compare(_app("ctconsole-dark"), terminal_size=(80, 24), run_before=run)
