"""The console on the real core, as root, with the lab containers.

Why separate from test_screens.py: these drive :class:`RealBackend`, so they
need root, CRIU and ``ctconsole lab`` — they fail (with CTCONSOLE_STRICT=1) or
skip without them, and fail with the console's own error message when a core
module the console needs is missing. Everything is done from the keyboard.
"""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Static

from ctconsole.ui.app import CtConsoleApp, create_app
from ctconsole.ui.backend import RealBackend
from tests import support_hosts
from tests.ui.pilot_wait import until

lab_fixtures = pytest.importorskip("tests.lab_fixtures", reason="the lab fixtures are not in this checkout")
lab = lab_fixtures.lab  # session fixture: the lab containers are up
nshost = support_hosts.nshost  # a network namespace standing in for the destination host

SIZE = (80, 24)
NS_CONTAINER = "ctlab-ns"


def _require(module: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError as exc:
        pytest.fail(f"{module} is needed by the console and does not import: {exc}", pytrace=False)


@pytest.fixture
def real_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, needs_root: None) -> Path:
    """Journals and locks of migrations started from these tests stay in tmp_path."""
    monkeypatch.setenv("CTCONSOLE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("CTCONSOLE_RUN_DIR", str(tmp_path / "run"))
    return tmp_path


def real_app() -> CtConsoleApp:
    return create_app(RealBackend(), refresh_interval=0, remember=False)


async def scanned(pilot: Pilot) -> None:
    await until(pilot, lambda: getattr(pilot.app.screen, "scans", 0) >= 1, 60, "the first scan")


def console_name(pilot: Pilot, lab, lab_name: str) -> str:
    """The name the console lists a lab container under (matched by init pid)."""
    init = getattr(lab.containers[lab_name].init, "pid", lab.containers[lab_name].init)
    for c in pilot.app.screen.containers.values():
        if c.name == lab_name or c.init_pid == init:
            return c.name
    raise AssertionError(f"{lab_name} (init {init}) is not listed")


async def select(pilot: Pilot, name: str) -> None:
    await pilot.press("slash", *name, "enter")
    table = pilot.app.screen.query_one("#containers", DataTable)
    await until(pilot, lambda: table.row_count >= 1, 5, f"filtering to {name}")


async def test_lab_containers_are_listed(lab, real_env: Path) -> None:
    _require("ctconsole.inventory")
    app = real_app()
    async with app.run_test(size=SIZE) as pilot:
        await scanned(pilot)
        listed = app.screen.containers.values()
        running = {name: getattr(c.init, "pid", c.init) for name, c in lab.containers.items() if c.init is not None}
        assert running, "no lab container is running"
        # listed under its name, or (namespaces-only containers) found by its init pid
        missing = {n for n, init in running.items() if not any(n == c.name or init == c.init_pid for c in listed)}
        assert not missing, f"lab containers not listed: {missing}; listed: {sorted(c.name for c in listed)}"
        table = app.screen.query_one("#containers", DataTable)
        assert table.row_count == len(app.screen.containers)


async def test_detail_tabs_show_externals(lab, real_env: Path) -> None:
    _require("ctconsole.inventory")
    app = real_app()
    async with app.run_test(size=SIZE) as pilot:
        await scanned(pilot)
        with_ext = [c for c in app.screen.containers.values() if c.externals()]
        assert with_ext, "no lab container has an external item"
        await select(pilot, with_ext[0].name)
        await pilot.press("enter")
        await until(pilot, lambda: type(app.screen).__name__ == "DetailScreen", 30, "the detail screen")
        await pilot.press("x")
        why = str(app.screen.query_one("#why", Static).render())
        assert "why:" in why and "remedy:" in why, why
        await pilot.pause(0.1)


async def test_check_shows_findings(lab, real_env: Path) -> None:
    _require("ctconsole.feasibility")
    app = real_app()
    async with app.run_test(size=SIZE) as pilot:
        await scanned(pilot)
        await select(pilot, console_name(pilot, lab, NS_CONTAINER))
        await pilot.press("c")
        await until(pilot, lambda: getattr(app.screen, "report", None) is not None, 120, "the feasibility report")
        report = app.screen.report
        assert report.verdict in ("feasible", "no-known-blockers", "needs-rules", "infeasible"), report.verdict
        assert report.findings or report.go
        assert "dump" in str(app.screen.query_one("#options", Static).render())
        await pilot.pause(0.1)


def shown_keys(app: CtConsoleApp) -> list[str]:
    """The keys the footer shows now (first binding of each shown action), as tests/ui/test_keys.py reads them."""
    seen: dict[str, str] = {}
    for active in app.screen.active_bindings.values():
        if active.binding.show and active.enabled and active.binding.action not in seen:
            seen[active.binding.action] = active.binding.key
    return list(seen.values())


async def press_shown(pilot: Pilot, key: str) -> None:
    """Press an action key only if the current screen's footer offers it (the operator's rule)."""
    shown = shown_keys(pilot.app)
    assert key in shown, f"{key!r} is not in the footer of {pilot.app.screen!r}: {shown}"
    await pilot.press(key)


@pytest.fixture
def ui_host(lab, needs_root: None) -> Iterator[str]:
    """A lab host of this test's own (removed after), and ctlab-ns restarted from scratch before and after.

    Why before too: the shared ctlab-ns may have been left migrated, restored elsewhere or half-dumped by
    another session (a disturbed lab made this test fail with CRIU dump errors that had nothing to do
    with the console); a fresh one, counting again, is the same starting point every run.
    """
    from ctconsole.lab import hosts as lab_hosts

    lab_fixtures.fresh(NS_CONTAINER)
    name = f"ui{os.getpid() % 100000}"
    if name in {h.name for h in lab_hosts.list_hosts()}:  # left over by an interrupted run of this pid
        lab_hosts.delete(name)
    host = lab_hosts.add(name)
    try:
        yield f"netns:{host.netns}"
    finally:
        try:
            lab_fixtures.fresh(NS_CONTAINER)  # kills the copy restored on the lab host
        except Exception as exc:  # the shared lab may have been taken down by another session meanwhile
            warnings.warn(f"could not restart {NS_CONTAINER}: {exc}", stacklevel=1)
        lab_hosts.delete(name)


@pytest.fixture
def path_env(ui_host: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Journals and locks in tmp_path; the lab's own state stays visible (the picker lists its hosts)."""
    from ctconsole.lab.state import lab_dir

    state = tmp_path / "state"
    state.mkdir()
    (state / "lab").symlink_to(lab_dir())
    monkeypatch.setenv("CTCONSOLE_STATE_DIR", str(state))
    monkeypatch.setenv("CTCONSOLE_RUN_DIR", str(tmp_path / "run"))
    return tmp_path


async def test_operator_path_to_a_lab_host(ui_host: str, path_env: Path, lab, needs_criu: str) -> None:
    """The whole path at 80x24 on the real core with only the keys the screens show: list, pick the
    destination, check for it, take every suggested rule, migrate, and find the container on its new host."""
    app = real_app()
    async with app.run_test(size=SIZE) as pilot:
        await scanned(pilot)
        name = console_name(pilot, lab, NS_CONTAINER)
        await press_shown(pilot, "slash")
        await pilot.press(*name, "enter")
        table = app.screen.query_one("#containers", DataTable)
        await until(pilot, lambda: table.row_count == 1, 10, f"filtering to {name}")
        # the destination, from the picker (no typing): it is remembered for this container
        await press_shown(pilot, "m")
        await until(pilot, lambda: bool(getattr(app.screen, "destinations", None)), 60, "the destinations")
        mig = app.screen
        assert ui_host in [d.dest for d in mig.destinations], [d.dest for d in mig.destinations]
        for _ in range(len(mig.destinations) + 1):
            if mig.dest() == ui_host:
                break
            await pilot.press("down")
        assert mig.dest() == ui_host
        await press_shown(pilot, "ctrl+r")
        await until(pilot, lambda: "->" in str(mig.query_one("#mig-preview", Static).render()), 120, "a preview")
        await press_shown(pilot, "escape")
        # check for that destination; needs rules: one key for every suggestion, save, re-checked
        await press_shown(pilot, "c")
        await until(pilot, lambda: getattr(app.screen, "report", None) is not None, 180, "the report")
        report = app.screen
        assert ui_host in str(report.sub_title)
        if report.report.verdict == "needs-rules":
            await press_shown(pilot, "e")
            await until(pilot, lambda: getattr(app.screen, "loaded", False), 60, "the editor with suggestions")
            assert app.screen.dirty and app.screen.rules
            await press_shown(pilot, "s")
            await until(pilot, lambda: app.screen is report, 60, "back on the verdict")
            try:
                await until(pilot, lambda: report.report is not None and report.report.go, 180, "a go verdict")
            except AssertionError:
                pending = [(f.severity, f.rule, f.subject) for f in report.report.findings
                           if f.severity == "blocker" or (f.severity == "needs-rule" and not f.satisfied)]
                raise AssertionError(f"verdict {report.report.verdict}; still open: {pending}") from None
        assert report.report.go, [(f.rule, f.subject) for f in report.report.findings if f.severity == "blocker"]
        # migrate: the destination is filled in, the preview names the rules file
        await press_shown(pilot, "m")
        await until(pilot, lambda: type(app.screen).__name__ == "MigrateScreen", 10, "the migration screen")
        mig = app.screen
        assert mig.dest() == ui_host
        await press_shown(pilot, "ctrl+r")
        preview = mig.query_one("#mig-preview", Static)
        await until(pilot, lambda: "rules file: " in str(preview.render()), 120, "the preview")
        assert "rules.toml" in str(preview.render()), str(preview.render())
        await press_shown(pilot, "ctrl+g")
        await until(pilot, lambda: type(app.screen).__name__ == "ConfirmScreen", 10, "the confirmation")
        await pilot.press("y")  # the button says "Migrate (y)"
        await until(pilot, lambda: mig.finished, 300, "the end of the migration")
        done = mig.state.done
        assert done is not None and done.migrated, "\n".join([repr(done), *mig.state.log_tail[-20:]])
        assert "MIGRATED" in str(mig.query_one("#outcome", Static).render())
        assert "confirm" in mig.state.done_phases
        # the container on its new host, selected; nothing behind it points at its old id
        await press_shown(pilot, "enter")
        await until(pilot, lambda: type(app.screen).__name__ == "ContainersScreen", 10, "the list")
        lst = app.screen
        await until(
            pilot,
            lambda: lst.host == ui_host and (lst.containers.get(lst.selected_id() or "") or lst).name == name,
            120,
            f"{name} selected on {ui_host}",
        )
        assert [type(s).__name__ for s in app.screen_stack[1:]] == ["ContainersScreen"]
        moved = lst.containers[lst.selected_id() or ""]
        assert moved.init_pid == done.restored_pid or done.restored_pid == 0
        await pilot.pause(0.1)


async def write_rules_from_the_editor(pilot: Pilot, bridge: str) -> None:
    """e (editor), g (suggest), fix the veth rule's bridge for the destination, s (save), esc."""
    app = pilot.app
    await pilot.press("e")
    await until(pilot, lambda: getattr(app.screen, "loaded", False), 30, "the rules editor")
    screen = app.screen
    await pilot.press("g")
    await until(pilot, lambda: any(r.kind == "veth" for r in screen.rules), 30, "suggested rules")
    table = screen.query_one("#rules", DataTable)
    veth = next(i for i, r in enumerate(screen.rules) if r.kind == "veth")
    while table.cursor_row != veth:
        await pilot.press("down" if table.cursor_row < veth else "up")
    await pilot.press("enter")
    await until(pilot, lambda: type(app.screen).__name__ == "RuleFormScreen", 10, "the veth form")
    for _ in range(8):
        if app.screen.focused is not None and app.screen.focused.id == "field-bridge":
            break
        await pilot.press("tab")
    await pilot.press("end", "ctrl+u", *bridge, "ctrl+s")
    await until(pilot, lambda: app.screen is screen, 10, "the form to close")
    await pilot.press("s")
    await until(pilot, lambda: not screen.dirty, 30, "saving the rules")
    await pilot.press("escape")


@pytest.fixture
def ns_restarted_after(lab) -> Iterator[None]:
    """Give the other tests their ctlab-ns back: it now lives (or died) in the destination netns.

    The lab keeps its state in the real state dir, which ``real_env`` redirects
    for the test: the restart runs with the directories as they were before.
    """
    saved = {k: os.environ.get(k) for k in ("CTCONSOLE_STATE_DIR", "CTCONSOLE_RUN_DIR")}
    yield
    during = {k: os.environ.get(k) for k in saved}
    try:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        lab_fixtures.fresh(NS_CONTAINER)
    except Exception as exc:  # the shared lab may have been taken down by another session meanwhile
        warnings.warn(f"could not restart {NS_CONTAINER}: {exc}", stacklevel=1)
    finally:
        for k, v in during.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


async def test_migrate_to_netns_from_the_keyboard(
    ns_restarted_after: None, lab, real_env: Path, nshost, needs_criu: str
) -> None:
    _require("ctconsole.migrate.engine")
    app = real_app()
    async with app.run_test(size=SIZE) as pilot:
        await scanned(pilot)
        await select(pilot, console_name(pilot, lab, NS_CONTAINER))
        await write_rules_from_the_editor(pilot, nshost.bridge)
        await until(pilot, lambda: type(app.screen).__name__ == "ContainersScreen", 10, "back to the list")
        await pilot.press("m")
        await until(pilot, lambda: type(app.screen).__name__ == "MigrateScreen", 10, "the migration screen")
        screen = app.screen
        await pilot.press(*nshost.dest, "enter")  # destination, then preview
        await until(pilot, lambda: "->" in str(screen.query_one("#mig-preview", Static).render()), 60, "the preview")
        await pilot.press("ctrl+g", "y")
        await until(pilot, lambda: screen.finished, 300, "the end of the migration")
        done = screen.state.done
        assert done is not None and done.result == "migrated", "\n".join([repr(done), *screen.state.log_tail[-20:]])
        assert "confirm" in screen.state.done_phases
        await pilot.pause(0.1)
