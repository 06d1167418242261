"""Migration: choose destination and strategy, preview, confirm, then watch it live.

Why events become snapshots: the engine calls back from its own thread for
every page round and byte count; :func:`~ctconsole.ui.backend.fold` turns
each event into a new immutable state and the screen posts it as a
replaceable :class:`~ctconsole.ui.messages.MigrationTick`, so however fast
events come, the UI repaints at its own pace and keys stay responsive.
"""

from __future__ import annotations

import threading
import time

from rich.text import Text
from textual import events, on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import (
    Button,
    Footer,
    Header,
    Input,
    Label,
    Log,
    OptionList,
    ProgressBar,
    RadioButton,
    RadioSet,
    Sparkline,
    Static,
)
from textual.worker import Worker

from ctconsole.commands.destinations import Destination, reach_rank, reach_word
from ctconsole.migrate import events as ev
from ctconsole.model import Container
from ctconsole.ui import keymap
from ctconsole.ui.backend import (
    LOCAL_HOST,
    NEXT_STEPS,
    MigrationHandle,
    MigrationState,
    fold,
    rules_label,
    source_sentence,
)
from ctconsole.ui.messages import DestinationsLoaded, MigrationFinished, MigrationTick, PreviewReady
from ctconsole.ui.screens.base import BaseScreen
from ctconsole.ui.screens.modals import ConfirmScreen
from ctconsole.ui.widgets.progress import MigrationStats, PhaseTimeline, human_time
from ctconsole.ui.widgets.render import theme_color

RENDER_HZ = 20
RESULT_COLOR = {"migrated": "success", "rolled-back": "warning", "failed": "error"}


def ago(seconds: float) -> str:
    """``5 min ago``, ``3 h ago``, ``2 d ago``: how long since a destination was last used."""
    if seconds < 60:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return "just now"


def dest_prompt(d: Destination) -> Text:
    """One picker line: DEST, then (dim) its kind, whether it answers, when it was last used, and why it is down
    (last: at 80 columns a long reason is what gets cut; one line each, so the 5-line picker shows 5 of them)."""
    t = Text(d.dest, no_wrap=True, overflow="ellipsis")
    used = f"used {ago(time.time() - d.last_used)}" if d.last_used else ""
    reach = reach_word(d)
    t.append(f"  {d.kind}", style="dim")
    t.append(f"  {reach}", style="bold red" if d.reachable is False else "dim")
    if used:
        t.append(f"  {used}", style="dim")
    if d.reachable is False and d.why:
        t.append(f"  {d.why}", style="red")
    return t


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
        self.dest_used = ""
        self.destinations: list[Destination] = []
        self._shown: list[Destination] = []  # the picker's rows (filtered by what is typed)
        self._lock = threading.Lock()
        self._log_shown = 0
        self._pending: MigrationState | None = None
        self._render_scheduled = False
        self._tick_in_flight = False
        self.ticks = 0  # progress messages handled
        self.renders = 0  # progress repaints (at most RENDER_HZ a second)

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="setup"):
            with Horizontal(classes="form-row -with-hint"):
                yield Label("Destination", classes="form-label")
                yield Input(
                    self.initial_dest,
                    placeholder="pick below (↑/↓) or type ssh://host, netns:NAME",
                    id="dest",
                    compact=True,
                )
            yield OptionList(id="dest-list")
            with Horizontal(classes="form-row", id="strategy-row"):
                yield Label("Strategy", classes="form-label")
                with RadioSet(id="strategy"):
                    for n, s in enumerate(self.backend.strategies()):
                        yield RadioButton(s, value=n == 0, id=f"strategy-{s}")
            with Horizontal(classes="form-row", id="rules-row"):
                yield Label("Rules file", classes="form-label")
                yield Static(id="rules-file", markup=False)
            with VerticalScroll(id="preview-box"):
                yield Static("ctrl+r: preview what will happen · ctrl+g: start", id="mig-preview", markup=False)
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
        box = self.query_one("#dest", Input)
        if not box.value:
            box.value = self.console.dest_for.get(self.console.container_key(self.container), "")
        box.cursor_position = len(box.value)
        box.focus()
        self.show_rules_file()
        self.load_destinations()

    def offer(self, action: str) -> bool | None:
        """Offer (and show in the footer) only the keys that make sense in the current phase."""
        if action in ("preview", "start", "rules_file"):
            return not (self.running or self.finished)
        if action == "abort":
            return self.running
        if action == "open_log":
            return self.finished
        if action == "follow":
            return self.finished and self.state.done is not None and self.state.done.migrated
        if action == "back":
            return not self.running
        return True

    # ------------------------------------------------------------------ form
    @work(thread=True, exclusive=True, exit_on_error=False, group="destinations")
    def load_destinations(self) -> None:
        hosts = [h for h in self.console.hosts if h != LOCAL_HOST]
        self.post_message(DestinationsLoaded(self.backend.destinations(hosts)))

    def on_destinations_loaded(self, message: DestinationsLoaded) -> None:
        """Known destinations: the ones that answer first, and among them the ones used this session first (the
        latest first), then the core's order (last used first); the ones that are down come after, with why."""
        used = self.console.used_dests
        found = {d.dest: d for d in message.destinations}
        for dest in used:
            found.setdefault(dest, Destination(dest, "used"))
        order = {d: n for n, d in enumerate(used)}
        self.destinations = sorted(
            found.values(), key=lambda d: (reach_rank(d), order.get(d.dest, len(order)))
        )  # stable: the core's order within each group
        self.filter_destinations()

    def filter_destinations(self) -> None:
        typed = self.dest().lower()
        picker = self.query_one("#dest-list", OptionList)
        exact = any(d.dest.lower() == typed for d in self.destinations)
        self._shown = [d for d in self.destinations if exact or not typed or typed in d.dest.lower()]
        picker.clear_options()
        picker.add_options([dest_prompt(d) for d in self._shown])
        if not self._shown:
            picker.add_option(Text("no known destination matches: the typed one is used", style="dim"))
        else:
            picker.highlighted = next((n for n, d in enumerate(self._shown) if d.dest.lower() == typed), None)

    @on(Input.Changed, "#dest")
    def _dest_typed(self, event: Input.Changed) -> None:
        if not event.input.has_focus or event.value in {d.dest for d in self._shown}:
            return
        self.filter_destinations()

    @on(OptionList.OptionSelected, "#dest-list")
    def _dest_picked(self, event: OptionList.OptionSelected) -> None:
        if 0 <= event.option_index < len(self._shown):
            self.set_dest(self._shown[event.option_index].dest)
            self.query_one("#dest", Input).focus()

    def set_dest(self, dest: str) -> None:
        box = self.query_one("#dest", Input)
        with self.prevent(Input.Changed):
            box.value = dest
        box.cursor_position = len(dest)
        self.console.dest_for[self.console.container_key(self.container)] = dest

    def show_rules_file(self) -> None:
        path = self.console.rules_file
        self.query_one("#rules-file", Static).update(f"{rules_label(path)}  (ctrl+o switches)")

    def dest(self) -> str:
        return self.query_one("#dest", Input).value.strip()

    def strategy(self) -> str:
        rs = self.query_one("#strategy", RadioSet)
        btn = rs.pressed_button
        return str(btn.label) if btn is not None else self.backend.strategies()[0]

    def action_rules_file(self) -> None:
        from ctconsole.ui.screens.modals import RulesFileScreen

        def chosen(path: str | None) -> None:
            if path is not None:
                self.console.use_rules_file(path)
                self.show_rules_file()
                if self.dest():
                    self.action_preview()

        app = self.console
        default = self.backend.default_rules_file()
        self.app.push_screen(RulesFileScreen(app.rules_file, app.recent_rules, default), chosen)

    def action_preview(self) -> None:
        if self.running or self.finished:
            return
        if not self.dest():
            self.notify("pick or type a destination first", severity="warning", timeout=3, markup=False)
            return
        self.console.dest_for[self.console.container_key(self.container)] = self.dest()
        self.query_one("#mig-preview", Static).update("preparing the preview…")
        self.preview(self.dest(), self.strategy(), self.console.rules_file)

    @work(thread=True, exclusive=True, exit_on_error=False, group="preview")
    def preview(self, dest: str, strategy: str, rules_file: str) -> None:
        lines = self.backend.preview_migration(self.container.id, dest, strategy, rules_file)
        self.post_message(PreviewReady(lines))

    def on_preview_ready(self, message: PreviewReady) -> None:
        self.query_one("#mig-preview", Static).update("\n".join(message.lines))

    def on_key(self, event: events.Key) -> None:
        """Up/down in the destination field walk the picker and fill the field.

        Why from the field: the operator types and picks without moving the
        focus; what is typed filters the list, and any text is still accepted.
        """
        box = self.query_one("#dest", Input)
        if self.focused is not box or event.key not in ("up", "down") or not self._shown:
            return
        event.stop()
        event.prevent_default()
        picker = self.query_one("#dest-list", OptionList)
        cur = picker.highlighted
        step = 1 if event.key == "down" else -1
        idx = (cur + step) % len(self._shown) if cur is not None else (0 if step > 0 else len(self._shown) - 1)
        picker.highlighted = idx
        self.set_dest(self._shown[idx].dest)

    @on(Input.Submitted, "#dest")
    def _dest_submitted(self) -> None:
        self.action_preview()

    @on(Button.Pressed, "#start")
    def _start_pressed(self) -> None:
        self.action_start()

    def action_start(self) -> None:
        if self.running or self.finished:
            return
        dest, strategy, rules_file = self.dest(), self.strategy(), self.console.rules_file
        if not dest:
            self.notify("pick or type a destination first", severity="warning", timeout=3, markup=False)
            return
        self.console.dest_for[self.console.container_key(self.container)] = dest

        def answer(yes: bool | None) -> None:
            if yes:
                self.begin(dest, strategy, rules_file)

        self.app.push_screen(
            ConfirmScreen(
                f"Migrate {self.container.name} to {dest}?",
                f"strategy {strategy}; rules {rules_label(rules_file)}; the container is frozen briefly. "
                "On any failure before confirm, the source is resumed.",
                yes="Migrate (y)",
            ),
            answer,
        )

    # ------------------------------------------------------------- progress
    def begin(self, dest: str, strategy: str, rules_file: str) -> None:
        self.running = True
        self.dest_used = dest
        self.console.used_dests = [dest, *[d for d in self.console.used_dests if d != dest]]
        self.refresh_bindings()
        self.query_one("#setup").display = False
        self.query_one("#progress").display = True
        self.query_one("#outcome").display = False
        self.sub_title = f"to {dest} · {strategy} · rules {rules_label(rules_file)} · a: abort"
        self.query_one("#mig-log", Log).focus()
        self.launch(dest, strategy, rules_file)

    @work(thread=True, exclusive=True, exit_on_error=False, group="migrate")
    def launch(self, dest: str, strategy: str, rules_file: str) -> None:
        """Start the engine; its events come back through :meth:`engine_event` from any thread."""
        self.handle = self.backend.start_migration(self.container.id, dest, strategy, rules_file, self.engine_event)

    def engine_event(self, event: ev.Event) -> None:
        """Called on the engine's thread: fold, then post (thread-safe).

        At most one tick is in flight: while the UI has not taken the last one,
        newer events only update ``self.state``, which that tick reads when it
        is handled. A fast engine therefore costs the UI one message per
        handled tick, not one per event.
        """
        with self._lock:
            self.state = fold(self.state, event)
            state = self.state
            post_tick = not self._tick_in_flight and not isinstance(event, ev.Done)
            if post_tick:
                self._tick_in_flight = True
        if isinstance(event, ev.Done):
            self.post_message(MigrationFinished(state))
        elif post_tick:
            self.post_message(MigrationTick(state))

    def worker_failed(self, worker: Worker[object], error: BaseException) -> None:
        if worker.group == "preview":
            # a refused preview is the answer to "can I migrate?": show it in place, not as a pop-up
            t = Text(f"{error}\n", style=f"bold {theme_color(self.app, 'error')}")
            for line in getattr(error, "details", []):
                t.append(f"{line}\n")
            t.append(
                "\nFix it: escape, then c (check) and e (the editor with every suggested rule); "
                "ctrl+o switches the rules file.",
                style="italic",
            )
            self.query_one("#mig-preview", Static).update(t)
            return
        if worker.group == "migrate":
            # the engine could not even start: show it as a failed outcome, not a crash
            self.engine_event(ev.Done("failed", str(error), source="untouched"))
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
        self.render_state(message.state)
        self.show_outcome(message.state)
        self.refresh_bindings()

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
        if state.downtime is not None:
            t.append(f"  · downtime {human_time(state.downtime)}")
        survived = done.source_survived
        t.append(f"\n{'✔' if survived or done.migrated else '✘'} {source_sentence(done)}",
                 style="bold" if survived is False else "")
        # what to do next before CRIU's errors: at 80x24 the box shows ~7 lines, and `t` has every error
        if done.migrated:
            t.append(f"\n→ enter: show {self.container.name} on {self.dest_used}")
        for step in NEXT_STEPS.get(done.result, ()):
            t.append(f"\n→ {step}")
        for err in done.errors[:3]:
            t.append(f"\n✗ {err}", style=theme_color(self.app, "error"))
            if why := self.backend.explain(err):
                t.append(f"\n  {why}", style="italic")
        outcome = self.query_one("#outcome", Static)
        outcome.update(t)
        outcome.display = True
        self.call_after_refresh(self.query_one("#mig-log", Log).scroll_end, animate=False)
        self.sub_title = f"{done.result} · " + ("enter: show it · " if done.migrated else "esc: back · ") + "t: log"

    def action_follow(self) -> None:
        """The migrated container on its new host (the screens that held its old id are dropped)."""
        if self.state.done is not None and self.state.done.migrated:
            self.console.follow(self.container, self.dest_used)

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
        path = self.state.done.journal if self.state.done else ""
        self.console.action_troubleshoot(path)

    def action_back(self) -> None:
        if self.running:
            self.notify("a migration is running: abort it first (a)", severity="warning", timeout=3, markup=False)
            return
        done = self.state.done
        if done is not None and done.migrated:
            self.action_follow()  # never back to screens that point at where the container was
            return
        if done is not None and done.source_survived is False:
            self.console.follow(self.container, LOCAL_HOST)  # it is gone: the list, not its old screens
            return
        self.dismiss()
