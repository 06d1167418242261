"""Feasibility report: findings by severity, each with its remedy, and the options CRIU will get.

Why the options are on this screen: the operator decides on a migration by
what will actually be sent to CRIU, so the compiled dump/restore options are
shown verbatim beside the findings. The verdict depends on the destination
and the rules file, so both are named in the subtitle; ``e`` opens the
editor with every suggestion for that destination (saving comes back here,
re-checked), ``f`` with the one for the selected finding.
"""

from __future__ import annotations

import time

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import DataTable, Footer, Header, Static
from textual.worker import Worker

from ctconsole.feasibility.findings import Finding, Report
from ctconsole.model import Container
from ctconsole.remap import Rule
from ctconsole.ui import keymap
from ctconsole.ui.backend import (
    LOCAL_HOST,
    SATISFIED,
    finding_group,
    grouped,
    option_lines,
    rules_label,
    verdict_word,
)
from ctconsole.ui.messages import ReportReady
from ctconsole.ui.screens.base import BaseScreen
from ctconsole.ui.widgets.render import plain, severity_text, theme_color, verdict_badge

VERDICT_TEXT = {
    "feasible": "Verified: a trial dump succeeded with the options below.",
    "no-known-blockers": "Nothing known blocks it (unverified: CRIU's dump is the final word).",
    "needs-rules": "Add remap rules for the items below: e opens the editor with every suggestion.",
    "infeasible": "CRIU cannot checkpoint this container as it is: see the blockers.",
}


def matches(rule: Rule, f: Finding) -> bool:
    """Whether a suggested rule is the one for finding ``f`` (same kind, its subject names the item)."""
    if rule.kind != f.rule_kind:
        return False
    ident = [str(v) for k, v in rule.fields.items() if k in ("mountpoint", "interface", "peer", "inode", "source",
                                                              "fd_path", "path")]
    return not ident or any(v and v in f.subject for v in ident)


class ReportScreen(BaseScreen):
    SCOPE = "report"
    BINDINGS = keymap.bindings(SCOPE)

    def __init__(
        self, container: Container, report: Report | None = None, host: str = LOCAL_HOST, dest: str = ""
    ) -> None:
        super().__init__()
        self.container = container
        self.host = host
        self.dest = dest
        self.report = report
        self.rows: dict[str, Finding] = {}

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("checking…", id="verdict", markup=False)
        findings: DataTable[object] = DataTable(id="findings", cursor_type="row")
        findings.add_column("Severity", key="sev", width=10)
        findings.add_column("Rule", key="rule", width=20)
        findings.add_column("Subject", key="subject")
        yield findings
        yield Static(id="finding-detail", classes="why-panel", markup=False)
        with VerticalScroll(id="options-box"):
            yield Static(id="options", markup=False)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.title = f"Check {self.container.name}"  # short: the subtitle (destination, rules file) must fit in 80
        self.dest = self.dest or self.console.dest_for.get(self.console.container_key(self.container), "")
        self._show_context()
        self.query_one("#options-box").border_title = "CRIU options that will be used"
        self.query_one("#findings", DataTable).focus()
        if self.report is not None:
            self.show(self.report)
        else:
            self.run_check()

    def _show_context(self) -> None:
        """The subtitle names what the verdict depends on: the host, the destination and the rules file."""
        where = f"on {self.host} · " if self.host != LOCAL_HOST else ""
        self.sub_title = f"{where}to {self.dest or 'this host'} · rules {rules_label(self.console.rules_file)}"

    @work(thread=True, exclusive=True, exit_on_error=False, group="check")
    def run_check(self) -> None:
        report = self.backend.check(self.container.id, self.dest or None, self.console.rules_file, host=self.host)
        self.post_message(ReportReady(report))

    def worker_failed(self, worker: Worker[object], error: BaseException) -> None:
        if worker.group == "check":
            self.query_one("#verdict", Static).update(Text(f"check failed: {error}", style="bold"))
        self.console.show_error(error, title="Feasibility check" if worker.group == "check" else "Rules")

    def on_report_ready(self, message: ReportReady) -> None:
        again = self.report is not None
        self.show(message.report)
        if again:  # a re-check: say it ran, even when nothing changed
            stamp = time.strftime("%H:%M:%S")
            self.notify(f"re-checked at {stamp}: {verdict_word(message.report.verdict)}", timeout=3, markup=False)

    def show(self, report: Report) -> None:
        self.report = report
        self.console.reports[self.console.report_key(self.host, self.container.id)] = report
        groups = grouped(report)
        head = Text()
        head.append("Verdict: ")
        head.append_text(verdict_badge(self.app, report))
        head.append("  " + ", ".join(f"{len(fs)} {g}" for g, fs in groups))
        head.append("\n" + VERDICT_TEXT.get(report.verdict, verdict_word(report.verdict)), style="dim")
        self.query_one("#verdict", Static).update(head)
        table = self.query_one("#findings", DataTable)
        table.clear()
        self.rows = {}
        n = 0
        # subjects are cut to the screen so the table never scrolls sideways (the panel shows them whole)
        room = max(16, self.size.width - 10 - 20 - 3 * 2 - 2)
        for group, items in groups:
            table.add_row("", Text(f"{group.upper()} ({len(items)})", style="bold underline"), "", key=f"group:{group}")
            for f in items:
                key = f"f{n}"
                n += 1
                self.rows[key] = f
                subject = f.subject if len(f.subject) <= room else f.subject[: room - 1] + "…"
                table.add_row(severity_text(self.app, group), plain(f.rule), plain(subject), key=key)
        if table.row_count > 1:
            table.move_cursor(row=1)
        opts = Text()
        for line in option_lines(report.dump_options, report.restore_options):
            phase, _, rest = line.partition(": ")
            opts.append(f"{phase:<8}", style=f"bold {theme_color(self.app, 'primary')}")
            opts.append(rest + "\n")
        opts.rstrip()  # no blank last line in an auto-height box
        self.query_one("#options", Static).update(opts)
        self.refresh_bindings()

    def selected(self) -> Finding | None:
        table = self.query_one("#findings", DataTable)
        if not table.row_count:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return self.rows.get(str(key))

    @on(DataTable.RowHighlighted, "#findings")
    def _highlight(self, event: DataTable.RowHighlighted) -> None:
        f = self.rows.get(str(event.row_key.value))
        panel = self.query_one("#finding-detail", Static)
        if f is None:
            panel.update(Text("a group of findings; select one to see its remedy", style="dim"))
            return
        t = Text()
        t.append(f"{f.subject}: ", style="bold")
        t.append(f.message)
        if finding_group(f) == SATISFIED:
            t.append("\nsatisfied: ", style=f"bold {theme_color(self.app, 'success')}")
            t.append(f"a {f.rule_kind or 'remap'} rule in {rules_label(self.console.rules_file)} provides it")
        else:
            t.append("\nremedy: ", style=f"bold {theme_color(self.app, 'primary')}")
            t.append(f.remedy or "nothing to do")
            if f.rule_kind:
                t.append(f"   (f: add a {f.rule_kind} rule)", style="dim")
        panel.update(t)

    @on(DataTable.RowSelected, "#findings")
    def _selected(self, event: DataTable.RowSelected) -> None:
        self.action_fix()

    def offer(self, action: str) -> bool | None:
        if action in ("fix", "suggest", "migrate"):
            return self.host == LOCAL_HOST
        return True

    def action_fix(self) -> None:
        f = self.selected()
        if f is None or not f.rule_kind:
            self.notify("no rule kind fixes this finding", severity="warning", timeout=3, markup=False)
            return
        if not self.refuse_remote(self.host, "Editing rules"):
            self.suggestions(f)

    @work(thread=True, exclusive=True, exit_on_error=False, group="suggest")
    def suggestions(self, f: Finding | None) -> None:
        """The suggester's rules for this destination: all of them (``e``) or the one for ``f``."""
        drafts = self.backend.suggest_rules(self.container.id, self.dest or None)
        self.app.call_from_thread(self._open_editor, f, drafts)

    def _open_editor(self, f: Finding | None, drafts: list[Rule]) -> None:
        from ctconsole.ui.screens.rules import RulesScreen

        if f is None:
            self.app.push_screen(RulesScreen(self.container, dest=self.dest, suggested=drafts, return_on_save=True))
            return
        rule = next((r for r in drafts if matches(r, f)), Rule(f.rule_kind, {}))
        self.app.push_screen(RulesScreen(self.container, dest=self.dest, prefill=rule, return_on_save=True))

    def action_suggest(self) -> None:
        if not self.refuse_remote(self.host, "Editing rules"):
            self.suggestions(None)

    def action_recheck(self) -> None:
        self._show_context()
        self.query_one("#verdict", Static).update("checking…")
        self.run_check()

    def on_screen_resume(self) -> None:
        # rules may have changed in the editor: the verdict shown must match them
        if self.report is not None:
            self.action_recheck()

    def action_rules_file(self) -> None:
        from ctconsole.ui.screens.modals import RulesFileScreen

        def chosen(path: str | None) -> None:
            if path is not None and path != self.console.rules_file:
                self.console.use_rules_file(path)
                self.action_recheck()

        app = self.console
        default = self.backend.default_rules_file()
        self.app.push_screen(RulesFileScreen(app.rules_file, app.recent_rules, default), chosen)

    def action_migrate(self) -> None:
        from ctconsole.ui.screens.migrate import MigrateScreen

        if not self.refuse_remote(self.host, "Migrating"):
            self.app.push_screen(MigrateScreen(self.container, self.dest))
