"""The console application, its factory and ``run_app``.

Why a factory: the CLI, the tests, the snapshot tests and the benchmark all
build the app the same way (:func:`create_app`), differing only in the
backend and options they pass — the fake backend for everything that must
be deterministic, the real one otherwise.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from textual import events
from textual.app import App
from textual.screen import Screen
from textual.theme import Theme
from textual.widget import AwaitMount
from textual.widgets import Input, TextArea

from ctconsole.errors import CtError
from ctconsole.feasibility.findings import Report
from ctconsole.model import Container
from ctconsole.ui import keymap
from ctconsole.ui.backend import LOCAL_HOST, Backend, make_backend
from ctconsole.ui.commands import ActionsProvider
from ctconsole.ui.theming import (
    DEFAULT_THEME,
    load_themes,
    read_user_config,
    remember_theme,
    resolve_theme,
)

STYLES = Path(__file__).resolve().parent / "styles"


class CtConsoleApp(App[int]):
    """Operator console: containers, inventory, feasibility, rules, migration, troubleshooting."""

    CSS_PATH = STYLES / "app.tcss"
    TITLE = "ctconsole"
    BINDINGS = keymap.bindings("app")
    COMMANDS = App.COMMANDS | {ActionsProvider}
    ENABLE_COMMAND_PALETTE = True

    def __init__(
        self,
        backend: Backend,
        hosts: Sequence[str] = (),
        theme: str | None = None,
        refresh_interval: float = 2.0,
        remember: bool = True,
        theme_dirs: list[Path] | None = None,
    ) -> None:
        super().__init__()
        self.backend = backend
        self.hosts = backend.hosts(hosts)
        self.requested_theme = theme
        self.refresh_interval = refresh_interval
        self.remember = remember
        self.theme_dirs = theme_dirs
        self.reports: dict[str, Report] = {}  # report_key(host, id) -> last report (table badges)
        # session memory: the rules file in use ("" = none) and the ones used before, newest first
        self.rules_file = backend.default_rules_file()
        self.recent_rules: list[str] = [self.rules_file]
        self.dest_for: dict[str, str] = {}  # container key -> destination chosen (per container, this session)
        self.used_dests: list[str] = []  # destinations migrated to this session, newest first
        self.user_keymap: dict[str, str] = {}
        self.theme_errors: list[str] = []
        self.keymap_warnings: list[str] = []
        self.shipped_themes: list[str] = []
        self._gc_frozen = False
        self._load_themes_and_config()

    def _load_themes_and_config(self) -> None:
        """Themes and keys before the first paint, so the first frame already has the right colours."""
        loaded = load_themes(self.theme_dirs)
        for t in loaded.themes.values():
            self.register_theme(t)
        self.shipped_themes = sorted(loaded.themes)
        self.theme_errors = loaded.errors
        config = read_user_config() if self.remember else {}
        available = set(self.available_themes)
        name = resolve_theme(self.requested_theme, available)
        if self.requested_theme and name is None:
            self.theme_errors.append(f"unknown theme {self.requested_theme!r}; using the default")
        name = name or resolve_theme(config.get("theme"), available)
        if name is None:
            name = DEFAULT_THEME if DEFAULT_THEME in available else "textual-dark"
        self.theme = name
        km, self.keymap_warnings = keymap.keymap_from_config(config)
        if km:
            self.user_keymap = km
            self.set_keymap(km)

    def on_mount(self) -> None:
        from ctconsole.ui.screens.containers import ContainersScreen

        for err in [*self.theme_errors, *self.keymap_warnings]:
            self.notify(err, title="Configuration", severity="warning", timeout=8, markup=False)
        if self.requested_theme and self.remember and self.theme in self.available_themes:
            self._remember(self.theme)
        self.theme_changed_signal.subscribe(self, self._on_theme_changed)
        self.push_screen(ContainersScreen())

    def settle_gc(self) -> None:
        """Move everything alive after start-up into the GC's permanent generation (once).

        Why: the widgets, styles and the first inventory are long-lived; a full
        collection walking them costs ~50-100 ms, which showed as key latency
        spikes during a migration. Frozen objects are still freed by reference
        counting; only the cyclic collector skips them.
        """
        if not self._gc_frozen:
            self._gc_frozen = True
            gc.collect()
            gc.freeze()

    def _on_theme_changed(self, theme: Theme) -> None:
        if self.remember:
            self._remember(theme.name)

    def _remember(self, name: str) -> None:
        try:
            remember_theme(name)
        except OSError as exc:
            self.notify(f"could not save the theme choice: {exc.strerror}", severity="warning", markup=False)

    @staticmethod
    def report_key(host: str, container_id: str) -> str:
        """Key of a container's last report: its id here, ``host id`` elsewhere.

        Why the host: a ``netns:`` host shares this host's /proc, so the same
        container (same id) is listed on both and checked against different
        CRIUs; each badge must show its own host's verdict.
        """
        return container_id if host == LOCAL_HOST else f"{host} {container_id}"

    @staticmethod
    def container_key(c: Container) -> str:
        """A container across a migration: runtime and name (its id changes with its pid namespace)."""
        return f"{c.runtime}/{c.name}"

    def use_rules_file(self, path: str) -> None:
        """Make ``path`` ("" = no rules) the rules file of checks, previews and migrations."""
        self.rules_file = path
        if path:
            self.recent_rules = [path, *[p for p in self.recent_rules if p != path]][:8]

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """App keys that are printable characters are off while a text field has the focus."""
        from ctconsole.ui.screens.troubleshoot import TroubleshootScreen

        if action == "troubleshoot" and isinstance(self.screen, TroubleshootScreen):
            return False  # already there: the screen's own keys are in the footer
        focused = self.focused
        return not (isinstance(focused, Input | TextArea) and keymap.typed_only("app", action, self.user_keymap))

    def follow(self, container: Container, dest: str) -> None:
        """After a migration: the container list on ``dest`` with the container selected.

        Why drop the screens in between: they hold the old container (its old
        id, its old host); going back through them re-checked a container that
        no longer exists. The list is the one place that finds it again.
        """
        from ctconsole.ui.screens.containers import ContainersScreen

        while len(self.screen_stack) > 1 and not isinstance(self.screen, ContainersScreen):
            self.pop_screen()
        screen = self.screen
        if isinstance(screen, ContainersScreen):
            self.call_later(screen.show_on, dest, container.name)

    # ------------------------------------------------------------- shutdown
    @property
    def exiting(self) -> bool:
        """True once ``exit()`` was called (``q``, ``ctrl+q``): the app is tearing its screens down."""
        return bool(self._exit)

    async def on_event(self, event: events.Event) -> None:
        """Drop keys and clicks that arrive after ``exit()``.

        Why: a terminal delivers ``q`` and the next key in the same read, so the
        second key's action (open a screen, start a check) used to run while
        Textual was already removing the widgets; the new screen's ``on_mount``
        then found nothing to query and Textual printed a traceback on exit.
        """
        if self.exiting and isinstance(event, events.InputEvent):
            return
        await super().on_event(event)

    def push_screen(
        self,
        screen: Screen[Any] | str,
        callback: Any = None,
        wait_for_dismiss: bool = False,
        *,
        mode: str | None = None,
    ) -> Any:
        """``App.push_screen``, refused (silently) once the app is exiting.

        Why here too: a worker finishing during shutdown (a scan error, a
        report) may still push an error panel or a screen; mounting it on a
        dying app is what raised. The caller gets an awaitable that does nothing.
        """
        if self.exiting:
            if wait_for_dismiss:
                future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                future.cancel()
                return future
            return AwaitMount(self.screen, [])
        if wait_for_dismiss:
            return super().push_screen(screen, callback, wait_for_dismiss=True, mode=mode)
        return super().push_screen(screen, callback, mode=mode)

    def on_unmount(self) -> None:
        """Close what the backend keeps open (agent channels to ``--host`` hosts)."""
        self.backend.close()

    # ------------------------------------------------------------- errors
    def show_error(self, exc: BaseException, title: str = "Error") -> None:
        """Show an error as the operator should see it: a panel with CRIU's lines, or a notification."""
        from ctconsole.ui.screens.modals import ErrorScreen

        if self.exiting:
            return
        if isinstance(exc, CtError):
            if exc.details:
                self.push_screen(ErrorScreen(title, exc.message, exc.details))
            else:
                self.notify(exc.message, title=title, severity="error", timeout=8, markup=False)
            return
        self.notify(f"{type(exc).__name__}: {exc}", title=title, severity="error", timeout=8, markup=False)

    # ------------------------------------------------------------- actions
    def action_help(self) -> None:
        from ctconsole.ui.screens.modals import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_troubleshoot(self, log_path: str = "") -> None:
        from ctconsole.ui.screens.troubleshoot import TroubleshootScreen

        if not isinstance(self.screen, TroubleshootScreen):
            self.push_screen(TroubleshootScreen(log_path))

    def action_cycle_theme(self) -> None:
        names = self.shipped_themes or sorted(self.available_themes)
        idx = names.index(self.theme) + 1 if self.theme in names else 0
        self.theme = names[idx % len(names)]
        self.notify(f"theme: {self.theme}", timeout=2, markup=False)


def create_app(
    backend: Backend | None = None,
    hosts: Sequence[str] = (),
    theme: str | None = None,
    refresh_interval: float = 2.0,
    remember: bool = True,
    theme_dirs: list[Path] | None = None,
) -> CtConsoleApp:
    """Build the app (shared by ``run_app``, tests and benchmarks)."""
    return CtConsoleApp(
        backend or make_backend(),
        hosts=hosts,
        theme=theme,
        refresh_interval=refresh_interval,
        remember=remember,
        theme_dirs=theme_dirs,
    )


def run_app(hosts: list[str], theme: str | None) -> int:
    """Entry point used by ``ctconsole`` without a subcommand.

    ``CTCONSOLE_FAKE=1`` selects the fake backend (demo data, no root needed);
    ``CTCONSOLE_FAKE_N`` sets how many fake containers there are.
    """
    app = create_app(hosts=hosts, theme=theme)
    app.run()
    return app.return_code or 0
