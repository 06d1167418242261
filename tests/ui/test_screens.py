"""Pilot tests of every screen on the fake backend, at 80x24, keyboard only."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from textual.widgets import DataTable, Input, OptionList, Static

from ctconsole.errors import CtError
from ctconsole.ui import keymap
from ctconsole.ui.app import CtConsoleApp
from ctconsole.ui.backend import Report
from ctconsole.ui.commands import ActionsProvider
from ctconsole.ui.fake import FakeBackend
from ctconsole.ui.screens.containers import ContainersScreen
from ctconsole.ui.screens.detail import DetailScreen
from ctconsole.ui.screens.migrate import MigrateScreen
from ctconsole.ui.screens.modals import ConfirmScreen, ErrorScreen, HelpScreen
from ctconsole.ui.screens.report import ReportScreen
from ctconsole.ui.screens.rules import RuleFormScreen, RulesScreen
from ctconsole.ui.screens.troubleshoot import TroubleshootScreen

SIZE = (80, 24)


async def wait_for(pilot, cond, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        await pilot.pause(0.02)
    raise AssertionError("condition not reached")


def text_of(widget: Static) -> str:
    return str(widget.render())


async def loaded(pilot) -> ContainersScreen:
    app = pilot.app
    await wait_for(pilot, lambda: isinstance(app.screen, ContainersScreen) and app.screen.scans >= 1)
    return app.screen


async def select(pilot, name: str) -> None:
    """Filter the list down to ``name`` and put the cursor on it."""
    await pilot.press("slash", *name, "enter")
    table = pilot.app.screen.query_one("#containers", DataTable)
    await wait_for(pilot, lambda: table.row_count == 1)


async def test_container_list_and_filter(make_app) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await loaded(pilot)
        table = screen.query_one("#containers", DataTable)
        assert table.row_count == 12
        assert "12 containers" in text_of(screen.query_one("#containers-status", Static))
        await pilot.press("slash", "w", "e", "b")
        assert table.row_count == 1
        assert screen.selected_id() == "libvirt-lxc/web-1"
        await pilot.press("escape")
        assert table.row_count == 12
        assert not screen.query_one("#filter", Input).display


async def test_poll_rearms_without_overlap(fake: FakeBackend, make_app) -> None:
    active = 0
    overlaps = 0
    lock = threading.Lock()
    orig = fake.list_containers

    def slow_list(host: str = "local"):
        nonlocal active, overlaps
        with lock:
            active += 1
            overlaps += active > 1
        time.sleep(0.03)
        with lock:
            active -= 1
        return orig(host)

    fake.list_containers = slow_list  # type: ignore[method-assign]
    app = make_app(refresh_interval=0.02)
    async with app.run_test(size=SIZE) as pilot:
        screen = await loaded(pilot)
        await wait_for(pilot, lambda: screen.scans >= 5)
        # input stays responsive while scans run
        await pilot.press("down", "down")
        assert screen.query_one("#containers", DataTable).cursor_row == 2
    assert overlaps == 0


async def test_scan_failure_shown_once_and_poll_continues(fake: FakeBackend, make_app) -> None:
    calls = 0

    def broken(host: str = "local"):
        nonlocal calls
        calls += 1
        raise CtError("inventory exploded")

    fake.list_containers = broken  # type: ignore[method-assign]
    app = make_app(refresh_interval=0.02)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: calls >= 4)
        assert isinstance(app.screen, ContainersScreen)
        assert sum("inventory exploded" in str(n.message) for n in app._notifications) == 1


async def test_hosts_list(fake: FakeBackend, make_app) -> None:
    app = make_app(hosts=["netns:dst"])
    async with app.run_test(size=SIZE) as pilot:
        screen = await loaded(pilot)
        hosts = screen.query_one("#hosts", OptionList)
        assert hosts.option_count == 2
        await pilot.press("h")
        await wait_for(pilot, lambda: screen.host == "netns:dst" and screen.scans >= 2)
        assert "list:netns:dst" in fake.calls
        assert screen.query_one("#containers", DataTable).row_count == 2


async def test_detail_tabs_and_externals(make_app) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await select(pilot, "web-1")
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, DetailScreen))
        screen = app.screen
        assert "external item" in text_of(screen.query_one("#detail-summary", Static))
        await pilot.press("x")
        why = text_of(screen.query_one("#why", Static))
        assert "why:" in why and "remedy:" in why
        await pilot.press("x")
        why2 = text_of(screen.query_one("#why", Static))
        assert why2 != why and "remedy:" in why2
        await pilot.press("right_square_bracket")
        await pilot.press("escape")
        assert isinstance(app.screen, ContainersScreen)


async def test_report_groups_and_fix_opens_prefilled_form(fake: FakeBackend, make_app) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await select(pilot, "console-vm")
        await pilot.press("c")
        await wait_for(pilot, lambda: isinstance(app.screen, ReportScreen) and app.screen.report is not None)
        screen = app.screen
        assert screen.report.verdict == "blocked"
        table = screen.query_one("#findings", DataTable)
        first = [str(table.get_row_at(i)[1]) for i in range(table.row_count)]
        assert first[0].startswith("BLOCKER") and any(x.startswith("ERROR") for x in first)
        assert "pid = 4301" in text_of(screen.query_one("#options", Static))
        assert app.reports["runc/console-vm"].verdict == "blocked"
        # move to the mount error and fix it
        while (f := screen.selected()) is None or f.rule_kind != "mount":
            await pilot.press("down")
        await pilot.press("f")
        await wait_for(pilot, lambda: isinstance(app.screen, RuleFormScreen))
        form = app.screen
        assert form.query_one("#field-mountpoint", Input).value == "/proc/meminfo"
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, RulesScreen))
        assert app.screen.rules[-1].kind == "mount"
        await pilot.press("s")
        await wait_for(pilot, lambda: "runc/console-vm" in fake.saved)
        await pilot.press("escape")
        # back on the report: it re-checks with the saved rule
        await wait_for(pilot, lambda: isinstance(app.screen, ReportScreen))
        await wait_for(pilot, lambda: fake.calls.count("check:runc/console-vm") >= 2)
        await pilot.press("escape")
        await pilot.pause()
        # the badge shows in the list
        table = app.screen.query_one("#containers", DataTable)
        assert "blocked" in str(table.get_cell("runc/console-vm", "check"))


async def test_rules_editor_add_validate_delete(fake: FakeBackend, make_app) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await select(pilot, "web-1")
        await pilot.press("e")
        await wait_for(pilot, lambda: isinstance(app.screen, RulesScreen) and app.screen.loaded)
        screen = app.screen
        assert len(screen.rules) == 1  # the fake's saved unix-socket rule
        await wait_for(pilot, lambda: "external" in text_of(screen.query_one("#preview", Static)))
        await pilot.press("a")
        await wait_for(pilot, lambda: isinstance(app.screen, RuleFormScreen))
        form = app.screen
        # first kind is unix-socket; type a bad inode
        await pilot.press("x", "y")
        assert any("number" in p for p in form.problems)
        assert form.query_one("#rule-ok").disabled
        await pilot.press("ctrl+s")
        assert isinstance(app.screen, RuleFormScreen)  # refused
        await pilot.press("backspace", "backspace", "4", "2", "tab", "/", "r", "u", "n")
        assert form.problems == []
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, RulesScreen))
        assert len(screen.rules) == 2 and screen.dirty
        await wait_for(pilot, lambda: "unix[42]" in text_of(screen.query_one("#preview", Static)))
        await pilot.press("d")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await wait_for(pilot, lambda: len(screen.rules) == 1)
        await pilot.press("escape")  # unsaved: asks
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await wait_for(pilot, lambda: isinstance(app.screen, ContainersScreen))


async def test_migration_runs_to_migrated(fake: FakeBackend, make_app) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await select(pilot, "db")
        await pilot.press("m")
        await wait_for(pilot, lambda: isinstance(app.screen, MigrateScreen))
        screen = app.screen
        await pilot.press(*"netns:dst", "enter")
        await wait_for(pilot, lambda: "netns:dst" in text_of(screen.query_one("#mig-preview", Static)))
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await wait_for(pilot, lambda: screen.finished, timeout=10)
        assert screen.state.done.result == "migrated"
        assert "MIGRATED" in text_of(screen.query_one("#outcome", Static))
        assert len(screen.state.rounds) == 6
        assert screen.query_one("#bar").percentage == 1.0
        assert "lxc/db" in fake.calls[-1] or any(c.startswith("migrate:lxc/db") for c in fake.calls)
        await pilot.press("t")
        await wait_for(pilot, lambda: isinstance(app.screen, TroubleshootScreen))
        await pilot.pause(0.1)


async def test_migration_abort_rolls_back(make_app) -> None:
    app = make_app(backend=FakeBackend(speed=0.5))
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await pilot.press("m")
        await wait_for(pilot, lambda: isinstance(app.screen, MigrateScreen))
        screen = app.screen
        await pilot.press(*"netns:dst", "ctrl+g", "y")
        await wait_for(pilot, lambda: screen.running and screen.handle is not None)
        await pilot.press("escape")  # refused while running
        assert app.screen is screen
        await pilot.press("a")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await wait_for(pilot, lambda: screen.finished, timeout=10)
        assert screen.state.done.result == "rolled-back"
        assert "rollback" in screen.state.phases
        await pilot.press("escape")
        assert isinstance(app.screen, ContainersScreen)


async def test_troubleshoot_log_and_history(make_app) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await pilot.press("t")
        await wait_for(pilot, lambda: isinstance(app.screen, TroubleshootScreen) and app.screen.lines)
        screen = app.screen
        ol = screen.query_one("#log-lines", OptionList)
        assert "Error" in screen.lines[ol.highlighted]
        assert "unix-socket" in text_of(screen.query_one("#explain", Static))
        await pilot.press("n")
        assert "Error" in screen.lines[ol.highlighted]
        await pilot.press("right_square_bracket")
        table = screen.query_one("#history", DataTable)
        assert table.row_count == 3
        await pilot.press("enter")  # first entry has a log
        await pilot.press("escape")
        assert isinstance(app.screen, ContainersScreen)


async def test_help_lists_every_key(make_app) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        text = text_of(app.screen.query_one("#help-text", Static))
        for spec in keymap.ACTIONS:
            assert spec.help in text
        await pilot.press("escape")
        assert isinstance(app.screen, ContainersScreen)


async def test_palette_offers_every_action(make_app) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await loaded(pilot)
        provider = ActionsProvider(screen)
        hits = [h async for h in provider.discover()]
        titles = " ".join(str(h.display) for h in hits)
        for spec in [*keymap.actions("containers"), *keymap.actions("app")]:
            if spec.action != "command_palette":
                assert spec.help in titles
        # running a hit runs the action on the screen
        hit = next(h for h in hits if "feasibility check" in str(h.display))
        await hit.command()
        await wait_for(pilot, lambda: isinstance(app.screen, ReportScreen))
        await pilot.pause(0.1)


async def test_keymap_from_config(make_app, _private_config: Path) -> None:
    _private_config.mkdir(parents=True)
    (_private_config / "config.toml").write_text('[keys]\n"containers.check" = "k"\n"nope.x" = "z"\n')
    app = make_app(remember=True)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        assert any("nope.x" in w for w in app.keymap_warnings)
        await pilot.press("k")
        await wait_for(pilot, lambda: isinstance(app.screen, ReportScreen))
        await pilot.pause(0.1)


async def test_theme_cycle_is_remembered(make_app, _private_config: Path) -> None:
    app = make_app(remember=True)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        assert app.theme == "ctconsole-dark"
        await pilot.press("ctrl+t")
        await pilot.pause()
        assert app.theme != "ctconsole-dark"
        chosen = app.theme
    text = (_private_config / "config.toml").read_text()
    assert f'theme = "{chosen}"' in text
    app2 = make_app(remember=True)
    async with app2.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert app2.theme == chosen


async def test_bad_theme_reported_once(make_app, tmp_path: Path) -> None:
    d = tmp_path / "themes"
    d.mkdir()
    (d / "broken.toml").write_text('name = "broken"\nprimary = "not-a-colour"\n')
    (d / "ok.toml").write_text('name = "mine"\nprimary = "#336699"\n')
    app = make_app(theme="mine", theme_dirs=[d])
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        assert app.theme == "mine"
        msgs = [str(n.message) for n in app._notifications]
        assert sum("not a colour" in m for m in msgs) == 1


class ExplodingBackend(FakeBackend):
    def check(self, ref, dest=None, rules=None, host="local") -> Report:
        raise CtError(
            "CRIU check failed",
            ["Error (criu/sk-unix.c:684): unix: External socket is used.", "add an external unix-socket rule"],
        )


async def test_errors_become_a_panel_not_a_traceback(make_app) -> None:
    app = make_app(backend=ExplodingBackend())
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await pilot.press("c")
        await wait_for(pilot, lambda: isinstance(app.screen, ErrorScreen))
        assert "External socket" in text_of(app.screen.query_one("#error-body", Static))
        await pilot.press("escape")
        assert isinstance(app.screen, ReportScreen)
        assert "check failed" in text_of(app.screen.query_one("#verdict", Static))


def test_app_factory_uses_fake_backend_from_env(monkeypatch) -> None:
    monkeypatch.setenv("CTCONSOLE_FAKE", "1")
    monkeypatch.setenv("CTCONSOLE_FAKE_N", "7")
    from ctconsole.ui.app import create_app

    app = create_app(remember=False)
    assert isinstance(app, CtConsoleApp)
    assert isinstance(app.backend, FakeBackend) and len(app.backend.containers) == 7


async def test_empty_host_says_so(make_app) -> None:
    app = make_app(backend=FakeBackend(0))
    async with app.run_test(size=SIZE) as pilot:
        screen = await loaded(pilot)
        await pilot.pause()
        assert "no containers found" in text_of(screen.query_one("#containers-status", Static))
        await pilot.press("c", "enter", "m", "e")  # nothing selected: no crash, no screen change
        assert app.screen is screen
