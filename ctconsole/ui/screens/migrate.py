"""Migration: choose destination and strategy, preview, confirm, then watch it live.

Why events become snapshots: the engine calls back from its own thread for
every page round and byte count; :func:`~ctconsole.ui.backend.fold` turns
each event into a new immutable state and the screen posts it as a
replaceable :class:`~ctconsole.ui.messages.MigrationTick`, so however fast
events come, the UI repaints at its own pace and keys stay responsive.
"""

from __future__ import annotations

import threading

from rich.text import Text
from textual import events, on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.suggester import SuggestFromList
from textual.widgets import (
    Button,
    Footer,
    Header,
    Input,
    Label,
    Log,
    ProgressBar,
    RadioButton,
    RadioSet,
    Sparkline,
    Static,
)
from textual.worker import Worker

from ctconsole.model import Container
from ctconsole.ui import keymap
from ctconsole.ui.backend import LOCAL_HOST, NEXT_STEPS, Done, MigrationHandle, MigrationState, UiEvent, fold
from ctconsole.ui.messages import MigrationFinished, MigrationTick, PreviewReady
from ctconsole.ui.screens.base import BaseScreen
from ctconsole.ui.screens.modals import ConfirmScreen
from ctconsole.ui.widgets.progress import MigrationStats, PhaseTimeline, human_time
from ctconsole.ui.widgets.render import theme_color

RENDER_HZ = 20
RESULT_COLOR = {"migrated": "success", "rolled-back": "warning", "failed": "error"}


class MigrateScreen(BaseScreen):
    SCOPE = "migrate"
    BINDINGS = keymap.bindings(SCOPE)

    def __init__(self, container: Container, dest: str = "") -> None:
        super().__init__()
        self.container = container
        self.initial_dest = dest
        self.handle: MigrationHandle | None = None
        self.state = MigrationState()
        self.running = False
        self.finished = False
        self._lock = threading.Lock()
        self._log_shown = 0
        self._pending: MigrationState | None = None
        self._render_scheduled = False
        self._tick_in_flight = False
        self.ticks = 0  # progress messages handled
        self.renders = 0  # progress repaints (at most RENDER_HZ a second)

    def compose(self) -> ComposeResult:
        hosts = [h for h in self.console.hosts if h != LOCAL_HOST]
        yield Header()
        with Vertical(id="setup"):
            with Horizontal(classes="form-row -with-hint" if hosts else "form-row"):
                yield Label("Destination", classes="form-label")
                yield Input(
                    self.initial_dest or (hosts[0] if hosts else ""),
                    placeholder="ssh://host or netns:NAME",
                    suggester=SuggestFromList([*hosts, "netns:"], case_sensitive=False),
                    id="dest",
                    compact=True,
                )
            if hosts:
                yield Label(
                    "↑/↓: " + ", ".join(hosts),
                    id="dest-hosts",
                    classes="form-hint",
                    markup=False,
                )
            with Horizontal(classes="form-row", id="strategy-row"):
                yield Label("Strategy", classes="form-label")
                with RadioSet(id="strategy"):
                    for n, s in enumerate(self.backend.strategies()):
                        yield RadioButton(s, value=n == 0, id=f"strategy-{s}")
            with VerticalScroll(id="preview-box"):
                yield Static("p: preview what will happen · ctrl+g: start", id="mig-preview", markup=False)
            yield Button("Start migration (ctrl+g)", id="start", variant="warning", compact=True)
        with Vertical(id="progress"):
            yield PhaseTimeline(id="timeline")
            yield ProgressBar(total=100, show_eta=False, id="bar")
            with Horizontal(id="mig-stats-row"):
                yield MigrationStats(id="mig-stats")
                yield Sparkline([], id="rate-spark")
            yield Static(id="outcome", markup=False)
            yield Log(id="mig-log", max_lines=500, auto_scroll=True)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.title = f"Migrate {self.container.name}"
        self.query_one("#progress").display = False
        self.query_one("#preview-box").border_title = "Preview"
        self.query_one("#rate-spark").border_title = "rate"
        self.query_one("#dest", Input).focus()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Offer (and show in the footer) only the keys that make sense in the current phase."""
        if action in ("preview", "start"):
            return not (self.running or self.finished)
        if action == "abort":
            return self.running
        if action == "open_log":
            return self.finished
        return True

    # ------------------------------------------------------------------ form
    def dest(self) -> str:
        return self.query_one("#dest", Input).value.strip()

    def strategy(self) -> str:
        rs = self.query_one("#strategy", RadioSet)
        btn = rs.pressed_button
        return str(btn.label) if btn is not None else self.backend.strategies()[0]

    def action_preview(self) -> None:
        if self.running or self.finished:
            return
        if not self.dest():
            self.notify("enter a destination first", severity="warning", timeout=3, markup=False)
            return
        self.query_one("#mig-preview", Static).update("preparing the preview…")
        self.preview(self.dest(), self.strategy())

    @work(thread=True, exclusive=True, exit_on_error=False, group="preview")
    def preview(self, dest: str, strategy: str) -> None:
        self.post_message(PreviewReady(self.backend.preview_migration(self.container.id, dest, strategy)))

    def on_preview_ready(self, message: PreviewReady) -> None:
        self.query_one("#mig-preview", Static).update("\n".join(message.lines))

    def on_key(self, event: events.Key) -> None:
        """Up/down in the destination cycle through the ``--host`` values (the hosts the console lists).

        Why: typing ``ssh://root@db1:2222`` again when it is already on the
        command line is error-prone; the suggester only completes what was typed.
        """
        box = self.query_one("#dest", Input)
        hosts = [h for h in self.console.hosts if h != LOCAL_HOST]
        if self.focused is not box or event.key not in ("up", "down") or not hosts:
            return
        event.stop()
        event.prevent_default()
        cur = hosts.index(box.value) if box.value in hosts else -1
        step = 1 if event.key == "down" else -1
        box.value = hosts[(cur + step) % len(hosts)] if cur >= 0 else hosts[0 if step > 0 else -1]
        box.cursor_position = len(box.value)

    @on(Input.Submitted, "#dest")
    def _dest_submitted(self) -> None:
        self.action_preview()

    @on(Button.Pressed, "#start")
    def _start_pressed(self) -> None:
        self.action_start()

    def action_start(self) -> None:
        if self.running or self.finished:
            return
        dest, strategy = self.dest(), self.strategy()
        if not dest:
            self.notify("enter a destination first", severity="warning", timeout=3, markup=False)
            return

        def answer(yes: bool | None) -> None:
            if yes:
                self.begin(dest, strategy)

        self.app.push_screen(
            ConfirmScreen(
                f"Migrate {self.container.name} to {dest}?",
                f"strategy {strategy}; the container is frozen briefly. "
                "On any failure before confirm, the source is resumed.",
                yes="Migrate (y)",
            ),
            answer,
        )

    # ------------------------------------------------------------- progress
    def begin(self, dest: str, strategy: str) -> None:
        self.running = True
        self.refresh_bindings()
        self.query_one("#setup").display = False
        self.query_one("#progress").display = True
        self.query_one("#outcome").display = False
        self.sub_title = f"to {dest} · {strategy} · a: abort"
        self.query_one("#mig-log", Log).focus()
        self.launch(dest, strategy)

    @work(thread=True, exclusive=True, exit_on_error=False, group="migrate")
    def launch(self, dest: str, strategy: str) -> None:
        """Start the engine; its events come back through :meth:`engine_event` from any thread."""
        self.handle = self.backend.start_migration(self.container.id, dest, strategy, None, self.engine_event)

    def engine_event(self, ev: UiEvent) -> None:
        """Called on the engine's thread: fold, then post (thread-safe).

        At most one tick is in flight: while the UI has not taken the last one,
        newer events only update ``self.state``, which that tick reads when it
        is handled. A fast engine therefore costs the UI one message per
        handled tick, not one per event.
        """
        with self._lock:
            self.state = fold(self.state, ev)
            state = self.state
            post_tick = not self._tick_in_flight and not isinstance(ev, Done)
            if post_tick:
                self._tick_in_flight = True
        if isinstance(ev, Done):
            self.post_message(MigrationFinished(state))
        elif post_tick:
            self.post_message(MigrationTick(state))

    def worker_failed(self, worker: Worker[object], error: BaseException) -> None:
        if worker.group == "preview":
            # a refused preview is the answer to "can I migrate?": show it in place, not as a pop-up
            t = Text(f"{error}\n", style=f"bold {theme_color(self.app, 'error')}")
            for line in getattr(error, "details", []):
                t.append(f"{line}\n")
            t.append("\nFix it in the rules editor (escape, then e), or start anyway (ctrl+g).", style="italic")
            self.query_one("#mig-preview", Static).update(t)
            return
        if worker.group == "migrate":
            # the engine could not even start: show it as a failed outcome, not a crash
            self.engine_event(Done("failed", str(error), next_steps=NEXT_STEPS["failed"]))
        self.console.show_error(error, title="Migration")

    def on_migration_tick(self, message: MigrationTick) -> None:
        """Keep the newest state; paint it at most RENDER_HZ times a second.

        Ticks that pile up in the queue already replace each other; this also
        bounds the painting work when the UI does keep up with a fast engine.
        """
        self.ticks += 1
        with self._lock:
            self._tick_in_flight = False
            self._pending = self.state  # the newest, not the one the message carried
        if not self._render_scheduled and not self.finished:
            self._render_scheduled = True
            self.set_timer(1 / RENDER_HZ, self._render_pending)

    def _render_pending(self) -> None:
        self._render_scheduled = False
        if self._pending is not None and not self.finished:
            self.renders += 1
            self.render_state(self._pending)

    def on_migration_finished(self, message: MigrationFinished) -> None:
        self.running = False
        self.finished = True
        self.refresh_bindings()
        self.render_state(message.state)
        self.show_outcome(message.state)

    def render_state(self, state: MigrationState) -> None:
        self.query_one("#timeline", PhaseTimeline).show(state)
        bar = self.query_one("#bar", ProgressBar)
        frac = state.fraction
        if frac is not None:
            bar.update(total=100, progress=frac * 100)
        self.query_one("#mig-stats", MigrationStats).show(state)
        if state.rates:
            self.query_one("#rate-spark", Sparkline).data = list(state.rates)
        log = self.query_one("#mig-log", Log)
        new = state.log_count - self._log_shown
        if new > 0:
            log.write_lines(state.log_tail[-min(new, len(state.log_tail)) :])
            self._log_shown = state.log_count

    def show_outcome(self, state: MigrationState) -> None:
        done = state.done
        if done is None:
            return
        color = theme_color(self.app, RESULT_COLOR.get(done.result, "foreground"))
        t = Text()
        t.append(f" {done.result.upper()} ", style=f"bold reverse {color}")
        t.append(f"  {done.message}")
        if done.downtime_ms is not None:
            t.append(f"  · downtime {human_time(done.downtime_ms / 1000)}")
        for err in done.errors[:3]:
            t.append(f"\n✗ {err}", style=theme_color(self.app, "error"))
            if why := self.backend.explain(err):
                t.append(f"\n  {why}", style="italic")
        for step in done.next_steps or NEXT_STEPS.get(done.result, ()):
            t.append(f"\n→ {step}")
        outcome = self.query_one("#outcome", Static)
        outcome.update(t)
        outcome.display = True
        self.call_after_refresh(self.query_one("#mig-log", Log).scroll_end, animate=False)
        self.sub_title = f"{done.result} · esc: back · t: log"

    # --------------------------------------------------------------- abort
    def action_abort(self) -> None:
        if not self.running:
            self.notify("no migration is running", timeout=2, markup=False)
            return

        def answer(yes: bool | None) -> None:
            if yes and self.running:
                self.do_abort()

        self.app.push_screen(
            ConfirmScreen(
                "Abort the migration?",
                "CRIU resumes the source container; the destination copy is discarded.",
                yes="Abort (y)",
                no="Keep going (n)",
            ),
            answer,
        )

    @work(thread=True, exclusive=True, exit_on_error=False, group="abort")
    def do_abort(self) -> None:
        if self.handle is not None:
            self.handle.abort()

    def action_open_log(self) -> None:
        path = self.state.done.log_path if self.state.done else ""
        self.console.action_troubleshoot(path)

    def action_back(self) -> None:
        if self.running:
            self.notify("a migration is running: abort it first (a)", severity="warning", timeout=3, markup=False)
            return
        self.dismiss()
