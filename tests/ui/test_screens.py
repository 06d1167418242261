"""Pilot tests of every screen on the fake backend, at 80x24, keyboard only."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from textual.widgets import DataTable, Input, OptionList, Select, Static

from ctconsole import remap
from ctconsole.errors import CtError
from ctconsole.feasibility.findings import Report
from ctconsole.ui import keymap
from ctconsole.ui.app import CtConsoleApp
from ctconsole.ui.commands import ActionsProvider
from ctconsole.ui.fake import FakeBackend
from ctconsole.ui.screens.containers import ContainersScreen
from ctconsole.ui.screens.detail import DetailScreen
from ctconsole.ui.screens.migrate import MigrateScreen
from ctconsole.ui.screens.modals import ConfirmScreen, ErrorScreen, HelpScreen, RulesFileScreen
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
        assert screen.report.verdict == "infeasible"
        assert "INFEASIBLE" in text_of(screen.query_one("#verdict", Static))  # the CLI's word
        table = screen.query_one("#findings", DataTable)
        first = [str(table.get_row_at(i)[1]) for i in range(table.row_count)]
        assert first[0].startswith("BLOCKER") and any(x.startswith("NEEDS-RULE") for x in first)
        assert "pid = 4301" in text_of(screen.query_one("#options", Static))
        assert app.reports["runc/console-vm"].verdict == "infeasible"
        # move to the mount finding and fix it: the form is the real remap mount kind, filled in
        while (f := screen.selected()) is None or f.rule_kind != "mount":
            await pilot.press("down")
        await pilot.press("f")
        await wait_for(pilot, lambda: isinstance(app.screen, RuleFormScreen))
        form = app.screen
        assert form.query_one("#field-mountpoint", Input).value == "/proc/meminfo"
        assert form.query_one("#field-path", Input).value == "/proc/meminfo"  # the source's path
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, RulesScreen))
        assert app.screen.rules[-1].kind == "mount"
        await pilot.press("s")
        # saving goes back to the verdict, re-checked with the saved rule: the finding is now satisfied
        await wait_for(pilot, lambda: "runc/console-vm" in fake.files[fake.default_rules_file()])
        await wait_for(pilot, lambda: isinstance(app.screen, ReportScreen))
        await wait_for(pilot, lambda: sum(c.startswith("check:runc/console-vm") for c in fake.calls) >= 2)
        await wait_for(pilot, lambda: any(f.satisfied for f in screen.report.findings))
        rows = [str(table.get_row_at(i)[0]) for i in range(table.row_count)]
        assert "satisfied" in rows
        await pilot.press("escape")
        await pilot.pause()
        # the badge shows in the list, in the CLI's word
        table = app.screen.query_one("#containers", DataTable)
        assert "INFEASIBLE" in str(table.get_cell("runc/console-vm", "check"))


async def test_satisfied_finding_shows_as_satisfied(fake: FakeBackend, make_app) -> None:
    """web-1's lxcfs mount has a rule in the rules file: the report says so instead of asking for one."""
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await select(pilot, "web-1")
        await pilot.press("c")
        await wait_for(pilot, lambda: isinstance(app.screen, ReportScreen) and app.screen.report is not None)
        screen = app.screen
        fuse = next(f for f in screen.report.findings if f.rule == "fuse-mount")
        assert fuse.satisfied
        table = screen.query_one("#findings", DataTable)
        groups = [str(table.get_row_at(i)[1]) for i in range(table.row_count)]
        assert "SATISFIED (1)" in groups
        key = next(k for k, f in screen.rows.items() if f.rule == "fuse-mount")
        table.move_cursor(row=table.get_row_index(key))
        await pilot.pause()
        assert "satisfied" in text_of(screen.query_one("#finding-detail", Static))
        assert str(table.get_cell(key, "sev")) == "satisfied"


async def test_needs_rules_one_key_opens_all_suggestions(fake: FakeBackend, make_app) -> None:
    """From a needs-rules verdict, e opens the editor with every suggestion; saving returns re-checked."""
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await select(pilot, "cache")
        await pilot.press("c")
        await wait_for(pilot, lambda: isinstance(app.screen, ReportScreen) and app.screen.report is not None)
        report = app.screen
        assert report.report.verdict == "needs-rules"
        assert "e opens the editor" in text_of(report.query_one("#verdict", Static))
        await pilot.press("e")
        await wait_for(pilot, lambda: isinstance(app.screen, RulesScreen) and app.screen.loaded)
        rules = app.screen
        assert {r.kind for r in rules.rules} >= {"veth"} and rules.dirty
        await pilot.press("s")
        await wait_for(pilot, lambda: app.screen is report)
        await wait_for(pilot, lambda: report.report.verdict == "no-known-blockers", timeout=5)
        assert "NO KNOWN BLOCKERS" in text_of(report.query_one("#verdict", Static))


async def test_rules_editor_add_validate_delete(fake: FakeBackend, make_app) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await select(pilot, "web-1")
        await pilot.press("e")
        await wait_for(pilot, lambda: isinstance(app.screen, RulesScreen) and app.screen.loaded)
        screen = app.screen
        assert len(screen.rules) == 1  # the fake rules file's mount rule
        assert "rules.toml" in str(screen.sub_title)
        await wait_for(pilot, lambda: "external" in text_of(screen.query_one("#preview", Static)))
        await pilot.press("a")
        await wait_for(pilot, lambda: isinstance(app.screen, RuleFormScreen))
        form = app.screen
        # the first kind is remap's own first kind (veth): a bad interface name is refused by remap
        assert form.spec().name == remap.KINDS[0].name == "veth"
        await pilot.press(*"eth 0")
        assert form.problems and form.query_one("#rule-ok").disabled
        await pilot.press("ctrl+s")
        assert isinstance(app.screen, RuleFormScreen)  # refused
        await pilot.press("backspace", "backspace", "0", "tab", *"vweb1")
        assert form.problems == []
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, RulesScreen))
        assert len(screen.rules) == 2 and screen.dirty
        await wait_for(pilot, lambda: "veth[eth0]:vweb1" in text_of(screen.query_one("#preview", Static)))
        await pilot.press("d")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await wait_for(pilot, lambda: len(screen.rules) == 1)
        await pilot.press("escape")  # unsaved: asks
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await wait_for(pilot, lambda: isinstance(app.screen, ContainersScreen))


async def test_add_rule_form_defaults_host_path_to_source(make_app) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await select(pilot, "web-1")
        await pilot.press("e")
        await wait_for(pilot, lambda: isinstance(app.screen, RulesScreen) and app.screen.loaded)
        await pilot.press("a")
        await wait_for(pilot, lambda: isinstance(app.screen, RuleFormScreen))
        form = app.screen
        form.query_one("#rule-kind", Select).value = "mount"
        await wait_for(pilot, lambda: bool(form.query("#field-mountpoint")))
        await pilot.press(*"/proc/meminfo")
        assert form.query_one("#field-path", Input).value == "/proc/meminfo"
        assert form.problems == []


async def test_migration_runs_to_migrated(fake: FakeBackend, make_app) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await select(pilot, "db")
        await pilot.press("m")
        await wait_for(pilot, lambda: isinstance(app.screen, MigrateScreen) and app.screen.destinations)
        screen = app.screen
        # the picker: known destinations, last used first; down fills the field
        await pilot.press("down")
        assert screen.dest() == "netns:ctlab-dst"
        await pilot.press("enter")
        await wait_for(pilot, lambda: "netns:ctlab-dst" in text_of(screen.query_one("#mig-preview", Static)))
        assert "rules file: /etc/ctconsole/rules.toml" in text_of(screen.query_one("#mig-preview", Static))
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await wait_for(pilot, lambda: screen.finished, timeout=10)
        done = screen.state.done
        assert done is not None and done.migrated and done.source == "released"
        outcome = text_of(screen.query_one("#outcome", Static))
        assert "MIGRATED" in outcome and "runs only on the destination" in outcome
        assert len(screen.state.rounds) == 3 and screen.state.final is not None  # the final dump is no round
        assert screen.query_one("#bar").percentage == 1.0
        stats = text_of(screen.query_one("#mig-stats", Static))
        assert "linked  6.0 MiB  100% (no copy)" in stats and "0 B" not in stats
        assert any(c.startswith("migrate:lxc/db:netns:ctlab-dst") for c in fake.calls)
        await pilot.press("t")
        await wait_for(pilot, lambda: isinstance(app.screen, TroubleshootScreen))
        await pilot.press("escape")
        # enter: the list on the new host with the container selected; nothing stale behind it
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ContainersScreen))
        lst = app.screen
        await wait_for(pilot, lambda: lst.host == "netns:ctlab-dst" and lst.selected_id() == "lxc/db@netns:ctlab-dst")
        assert not any(isinstance(s, MigrateScreen | ReportScreen | DetailScreen) for s in app.screen_stack)


async def test_failed_migration_says_the_source_survived(fake: FakeBackend, make_app) -> None:
    fake.fail_at = "restore"
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await select(pilot, "db")
        await pilot.press("m")
        await wait_for(pilot, lambda: isinstance(app.screen, MigrateScreen))
        screen = app.screen
        await pilot.press(*"ssh://node9", "ctrl+g", "y")
        await wait_for(pilot, lambda: screen.finished, timeout=10)
        assert screen.state.done is not None and screen.state.done.source_survived
        outcome = text_of(screen.query_one("#outcome", Static))
        assert "ROLLED-BACK" in outcome and "still running where it was" in outcome
        stats = text_of(screen.query_one("#mig-stats", Static))
        assert "sent" in stats  # streamed to an ssh host


async def test_destination_remembered_per_container(make_app) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await select(pilot, "db")
        await pilot.press("m")
        await wait_for(pilot, lambda: isinstance(app.screen, MigrateScreen))
        await pilot.press(*"ssh://node7", "enter", "escape")
        await wait_for(pilot, lambda: isinstance(app.screen, ContainersScreen))
        await pilot.press("m")
        await wait_for(pilot, lambda: isinstance(app.screen, MigrateScreen))
        assert app.screen.dest() == "ssh://node7"


async def test_rules_file_switch_none_and_back(fake: FakeBackend, make_app) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await select(pilot, "web-1")
        await pilot.press("c")
        await wait_for(pilot, lambda: isinstance(app.screen, ReportScreen) and app.screen.report is not None)
        report = app.screen
        assert "rules /etc/ctconsole/rules.toml" in str(report.sub_title)
        await pilot.press("ctrl+o")
        await wait_for(pilot, lambda: isinstance(app.screen, RulesFileScreen))
        await pilot.press("down", "enter")  # default, then none
        await wait_for(pilot, lambda: app.screen is report and app.rules_file == "")
        await wait_for(pilot, lambda: not any(f.satisfied for f in report.report.findings))
        assert "rules none" in str(report.sub_title)
        await pilot.press("m")
        await wait_for(pilot, lambda: isinstance(app.screen, MigrateScreen))
        assert "none" in text_of(app.screen.query_one("#rules-file", Static))


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
        assert screen.state.done.source_survived
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
        assert "unix" in text_of(screen.query_one("#explain", Static)).lower()
        await pilot.press("n")
        assert "Error" in screen.lines[ol.highlighted]
        await pilot.press("right_square_bracket")
        table = screen.query_one("#history", DataTable)
        assert table.row_count == 4
        await pilot.press("down", "enter")  # the second entry has a log
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
    def check(self, ref, dest=None, rules_file="", host="local") -> Report:
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
    assert isinstance(app.backend, FakeBackend) and len(app.backend.list_containers()) == 7


async def test_empty_host_says_so(make_app) -> None:
    app = make_app(backend=FakeBackend(0))
    async with app.run_test(size=SIZE) as pilot:
        screen = await loaded(pilot)
        await pilot.pause()
        assert "no containers found" in text_of(screen.query_one("#containers-status", Static))
        await pilot.press("c", "enter", "m", "e")  # nothing selected: no crash, no screen change
        assert app.screen is screen
