"""Every key a footer shows does something, on every screen, and no key collides with text entry.

The walk: for each screen (and each state of it whose footer differs: a
focused text field, a running or finished migration), read the keys its
footer shows, press each one on a fresh console, and assert that something
visible happened (another screen, a notification, a changed picture) and
that the key was not typed into a field instead.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Footer, Input

from ctconsole.ui.app import CtConsoleApp
from ctconsole.ui.fake import FakeBackend
from ctconsole.ui.screens.detail import DetailScreen
from ctconsole.ui.screens.migrate import MigrateScreen
from ctconsole.ui.screens.report import ReportScreen
from ctconsole.ui.screens.rules import RulesScreen
from ctconsole.ui.screens.troubleshoot import TroubleshootScreen

from .test_screens import SIZE, loaded, select, wait_for

Scene = Callable[[Pilot[Any]], Awaitable[None]]


async def s_list(pilot: Pilot[Any]) -> None:
    await loaded(pilot)


async def s_filter(pilot: Pilot[Any]) -> None:
    await loaded(pilot)
    await pilot.press("slash")
    await wait_for(pilot, lambda: isinstance(pilot.app.focused, Input))


async def s_detail(pilot: Pilot[Any]) -> None:
    await loaded(pilot)
    await select(pilot, "web-1")
    await pilot.press("enter")
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, DetailScreen))
    await pilot.pause(0.1)


async def s_report(pilot: Pilot[Any]) -> None:
    await loaded(pilot)
    await select(pilot, "web-1")
    await pilot.press("c")
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, ReportScreen) and pilot.app.screen.report is not None)


async def s_rules(pilot: Pilot[Any]) -> None:
    await loaded(pilot)
    await select(pilot, "web-1")
    await pilot.press("e")
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, RulesScreen) and pilot.app.screen.loaded)


async def s_migrate(pilot: Pilot[Any]) -> None:
    await loaded(pilot)
    await select(pilot, "db")
    await pilot.press("m")
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, MigrateScreen) and pilot.app.screen.destinations)
    await pilot.press(*"netns:ctlab-dst")


async def s_migrating(pilot: Pilot[Any]) -> None:
    await s_migrate(pilot)
    pilot.app.backend.speed = 0.05  # type: ignore[attr-defined]
    await pilot.press("ctrl+g", "y")
    await wait_for(pilot, lambda: pilot.app.screen.running and pilot.app.screen.handle is not None)


async def s_migrated(pilot: Pilot[Any]) -> None:
    await s_migrate(pilot)
    await pilot.press("ctrl+g", "y")
    await wait_for(pilot, lambda: pilot.app.screen.finished, timeout=10)


async def s_trouble(pilot: Pilot[Any]) -> None:
    await loaded(pilot)
    await pilot.press("t")
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, TroubleshootScreen) and pilot.app.screen.lines)


SCENES: dict[str, Scene] = {
    "list": s_list,
    "filter": s_filter,
    "detail": s_detail,
    "report": s_report,
    "rules": s_rules,
    "migrate": s_migrate,
    "migrating": s_migrating,
    "migrated": s_migrated,
    "trouble": s_trouble,
}


def footer_keys(app: CtConsoleApp) -> list[str]:
    """The keys the footer shows, as the Footer picks them (first binding of each shown action)."""
    seen: dict[str, str] = {}
    for active in app.screen.active_bindings.values():
        b = active.binding
        if b.show and active.enabled and b.action not in seen:
            seen[b.action] = b.key
    keys = list(seen.values())
    if app.screen.query(Footer) and app.ENABLE_COMMAND_PALETTE:
        keys.append(app.COMMAND_PALETTE_BINDING)
    return keys


def picture(app: CtConsoleApp) -> tuple[object, ...]:
    """What the operator sees: the screen stack, the focus, the notifications and the painted screen
    (or that the console is leaving)."""
    return (
        app.exiting,
        tuple(id(s) for s in app.screen_stack),
        id(app.focused),
        len(app._notifications),
        app.export_screenshot(),
    )


def fields(app: CtConsoleApp) -> dict[str, str]:
    return {str(i.id): i.value for i in app.screen.query(Input)}


async def scene_keys(name: str) -> list[str]:
    app = CtConsoleApp(FakeBackend(12, speed=200.0), refresh_interval=0, remember=False)
    async with app.run_test(size=SIZE) as pilot:
        await SCENES[name](pilot)
        await pilot.pause(0.1)
        return footer_keys(app)


@pytest.mark.parametrize("scene", list(SCENES))
async def test_every_footer_key_does_something(scene: str) -> None:
    keys = await scene_keys(scene)
    assert keys, f"{scene}: the footer shows no key"
    dead = []
    for key in keys:
        app = CtConsoleApp(FakeBackend(12, speed=200.0), refresh_interval=0, remember=False)
        async with app.run_test(size=SIZE) as pilot:
            await SCENES[scene](pilot)
            await pilot.pause(0.1)
            before, typed_before = picture(app), fields(app)
            await pilot.press(key)
            await pilot.pause(0.3)
            after_fields = fields(app) if app.screen.id == app.screen_stack[-1].id else {}
            typed = any(
                len(after_fields.get(k, v)) == len(v) + 1 for k, v in typed_before.items() if k in after_fields
            )
            if typed or picture(app) == before:
                dead.append(f"{key}{' (typed)' if typed else ''}")
    assert not dead, f"{scene}: footer keys that do nothing: {dead} (footer: {keys})"


async def test_text_fields_hide_the_letter_keys() -> None:
    """With the destination field focused, the footer offers no printable key (they would be typed)."""
    from ctconsole.ui.keymap import is_printable

    for scene in ("filter", "migrate"):
        keys = await scene_keys(scene)
        assert not [k for k in keys if is_printable(k)], (scene, keys)
