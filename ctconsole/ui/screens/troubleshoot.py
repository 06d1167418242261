"""Troubleshooting: CRIU's log with explained Error lines, and the migration history.

Why explanations beside the log: CRIU's errors name source files and option
flags; ``ctconsole.criu.errors.explain`` turns each into a sentence about
what to change, shown for the highlighted line (``n`` walks the errors).

The history is the journal's own :class:`~ctconsole.migrate.journal.Summary`
(what ``ctconsole history`` prints): the table holds what fits in 80 columns,
the panel under it the selected migration's result and message word for word
(e.g. "unresolved: destination unreachable (...)", or what became of the source).
"""

from __future__ import annotations

import time

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.widgets import DataTable, Footer, Header, OptionList, Static, TabbedContent, TabPane
from textual.widgets.option_list import Option

from ctconsole.migrate.journal import Summary
from ctconsole.ui import keymap
from ctconsole.ui.messages import HistoryLoaded, LogLoaded
from ctconsole.ui.screens.base import BaseScreen
from ctconsole.ui.widgets.render import plain, theme_color

#: the colour of each ``Summary.result`` (the others, e.g. unfinished, in the foreground colour)
RESULT_COLORS = {"migrated": "success", "rolled-back": "warning", "failed": "error", "unresolved": "error"}


def is_error(line: str) -> bool:
    return "Error (" in line or line.startswith("Error") or " Error:" in line


class TroubleshootScreen(BaseScreen):
    SCOPE = "trouble"
    BINDINGS = keymap.bindings(SCOPE)

    def __init__(self, log_path: str = "") -> None:
        super().__init__()
        self.log_path = log_path
        self.lines: list[str] = []
        self.explanations: dict[int, str] = {}
        self.entries: list[Summary] = []
        self.logs: list[str] = []  # the log each entry opens ("" when none)
        self._opened = False  # the operator opened a history entry: show its log when it arrives

    def compose(self) -> ComposeResult:
        yield Header()
        with TabbedContent(id="trouble-tabs"):
            with TabPane("CRIU log", id="tab-log"):
                yield Static("no log opened", id="log-path", markup=False)
                yield OptionList(id="log-lines")
                yield Static(id="explain", classes="why-panel", markup=False)
            with TabPane("History", id="tab-history"):
                t: DataTable[object] = DataTable(id="history", cursor_type="row")
                # fits 80 columns: the id (a timestamp + hex) is in the log path shown on the Log tab
                for label, w in (
                    ("Started", 11),
                    ("Container", 12),
                    ("Dest", 16),
                    ("Strategy", 10),
                    ("Result", 11),
                    ("Down", 6),
                ):
                    t.add_column(label, key=label.lower(), width=w)
                yield t
                yield Static("no migrations yet", id="history-note", classes="why-panel", markup=False)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.title = "Troubleshooting"
        self.query_one("#log-lines", OptionList).focus()
        self.load_history()
        if self.log_path:
            self.load_log(self.log_path)

    # --------------------------------------------------------------- workers
    @work(thread=True, exclusive=True, exit_on_error=False, group="history")
    def load_history(self) -> None:
        entries = self.backend.history()
        self.post_message(HistoryLoaded(entries, [self.backend.history_log(e) for e in entries]))

    @work(thread=True, exclusive=True, exit_on_error=False, group="log")
    def load_log(self, path: str) -> None:
        lines = self.backend.read_log(path)
        explanations = {}
        for n, line in enumerate(lines):
            if is_error(line):
                text = self.backend.explain(line)
                if text:
                    explanations[n] = text
        self.post_message(LogLoaded(path, lines, explanations))

    def on_history_loaded(self, message: HistoryLoaded) -> None:
        self.entries, self.logs = message.entries, message.logs
        table = self.query_one("#history", DataTable)
        table.clear()
        for n, e in enumerate(self.entries):
            table.add_row(
                plain(time.strftime("%m-%d %H:%M", time.localtime(e.started)) if e.started else "—"),
                *(plain(x) for x in (e.name or e.container, e.dest, e.strategy.split("/")[0])),
                Text(e.result, style=theme_color(self.app, RESULT_COLORS.get(e.result, "foreground"))),
                plain(f"{e.downtime * 1000:.0f}ms" if isinstance(e.downtime, int | float) else "—"),
                key=str(n),
            )
        self.show_note(table.cursor_row if self.entries else -1)
        if not self.log_path and self.entries:
            first = next((log for log in self.logs if log), "")
            if first:
                self.log_path = first
                self.load_log(first)

    def show_note(self, row: int) -> None:
        """The selected migration as ``ctconsole history`` tells it: result, downtime, message, errors."""
        note = self.query_one("#history-note", Static)
        if not 0 <= row < len(self.entries):
            note.update("no migrations yet")
            return
        e = self.entries[row]
        down = f"{e.downtime * 1000:.0f} ms" if isinstance(e.downtime, int | float) else "-"
        t = Text()
        t.append(e.result, style=f"bold {theme_color(self.app, RESULT_COLORS.get(e.result, 'foreground'))}")
        t.append(f"  downtime {down}  {e.id}\n", style="dim")
        t.append(e.message or "(no message)")
        if e.errors:
            t.append(f"\n{len(e.errors)} error(s): {e.errors[0]}", style=theme_color(self.app, "error"))
        if not self.logs[row]:
            t.append("\nno log kept", style="dim")
        note.update(t)

    def on_log_loaded(self, message: LogLoaded) -> None:
        self.lines = message.lines
        self.explanations = message.explanations
        n_err = sum(1 for ln in self.lines if is_error(ln))
        self.query_one("#log-path", Static).update(
            Text.assemble((message.path, "bold"), f"  {len(self.lines)} lines, {n_err} Error line(s) · n: next error")
        )
        ol = self.query_one("#log-lines", OptionList)
        ol.clear_options()
        err_style = f"bold {theme_color(self.app, 'error', 'red')}"
        ol.add_options(
            [
                Option(Text(ln, style=err_style) if is_error(ln) else Text(ln), id=str(n))
                for n, ln in enumerate(self.lines)
            ]
        )
        first_err = next((n for n, ln in enumerate(self.lines) if is_error(ln)), 0)
        if self.lines:
            ol.highlighted = first_err
        tabs = self.query_one("#trouble-tabs", TabbedContent)
        if self._opened or tabs.active == "tab-log":
            # a log loaded in the background never pulls the operator off the history tab
            self._opened = False
            tabs.active = "tab-log"
            ol.focus()
            self.refresh_bindings()

    # ---------------------------------------------------------------- events
    @on(OptionList.OptionHighlighted, "#log-lines")
    def _line(self, event: OptionList.OptionHighlighted) -> None:
        n = event.option_index
        panel = self.query_one("#explain", Static)
        line = self.lines[n] if n < len(self.lines) else ""
        if n in self.explanations:
            t = Text("explanation: ", style=f"bold {theme_color(self.app, 'primary')}")
            t.append(self.explanations[n])
            panel.update(t)
        elif is_error(line):
            panel.update(
                Text("no explanation known for this error; the lines just above usually say why", style="italic")
            )
        else:
            panel.update(Text("n: next Error line", style="dim"))

    @on(DataTable.RowHighlighted, "#history")
    def _entry_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.show_note(event.cursor_row)

    @on(DataTable.RowSelected, "#history")
    def _entry(self, event: DataTable.RowSelected) -> None:
        self.action_open_entry()

    # --------------------------------------------------------------- actions
    def _jump(self, step: int) -> None:
        ol = self.query_one("#log-lines", OptionList)
        if not self.lines:
            return
        cur = ol.highlighted if ol.highlighted is not None else -1
        n = len(self.lines)
        for i in range(1, n + 1):
            idx = (cur + step * i) % n
            if is_error(self.lines[idx]):
                ol.highlighted = idx
                return
        self.notify("no Error lines in this log", timeout=2, markup=False)

    def offer(self, action: str) -> bool | None:
        """Log keys on the log tab, the history's "open" on the history tab."""
        tab = self.query_one("#trouble-tabs", TabbedContent).active
        if action == "open_entry":
            return tab == "tab-history"
        if action in ("next_error", "prev_error"):
            return tab == "tab-log"
        return True

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        self.refresh_bindings()  # the footer follows the tab (a click switches it too)

    def action_next_error(self) -> None:
        self._jump(1)

    def action_prev_error(self) -> None:
        self._jump(-1)

    def action_switch_tab(self) -> None:
        tabs = self.query_one("#trouble-tabs", TabbedContent)
        tabs.active = "tab-history" if tabs.active == "tab-log" else "tab-log"
        target = "#history" if tabs.active == "tab-history" else "#log-lines"
        self.query_one(target).focus()
        self.refresh_bindings()

    def action_open_entry(self) -> None:
        table = self.query_one("#history", DataTable)
        if not self.entries or not table.row_count:
            return
        e, log = self.entries[table.cursor_row], self.logs[table.cursor_row]
        if not log:
            self.notify(f"migration {e.id} kept no log", severity="warning", timeout=3, markup=False)
            return
        self.log_path = log
        self._opened = True
        self.load_log(log)
