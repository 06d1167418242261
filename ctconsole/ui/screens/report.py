"""Feasibility report: findings by severity, each with its remedy, and the options CRIU will get.

Why the options are on this screen: the operator decides on a migration by
what will actually be sent to CRIU, so the compiled dump/restore options are
shown verbatim beside the findings; ``f`` opens the rules editor pre-filled
for the selected finding's rule kind.
"""

from __future__ import annotations

import re

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import DataTable, Footer, Header, Static
from textual.worker import Worker

from ctconsole.model import Container
from ctconsole.ui import keymap
from ctconsole.ui.backend import LOCAL_HOST, Finding, Report
from ctconsole.ui.messages import ReportReady
from ctconsole.ui.screens.base import BaseScreen
from ctconsole.ui.widgets.render import plain, severity_text, theme_color, verdict_badge

VERDICT_TEXT = {
    "ok": "CRIU can checkpoint this container as it is.",
    "needs-rules": "CRIU can checkpoint it once the findings below have rules (f adds one).",
    "blocked": "Something here cannot be checkpointed: see the blockers.",
}


_SUBJECT_WORDS = ("mount", "interface", "socket", "tty", "device", "file", "pipe")


def _bare_subject(subj: str) -> str:
    """``mount /share`` -> ``/share``; ``tty /dev/pts/0 (pid 1 fd 0)`` -> ``/dev/pts/0``.

    Why: the checker names its subjects for people ("mount /share"); a form
    field wants the path or name alone (the prefilled mountpoint used to be
    ``mount /share``, which the form then rejected as not absolute).
    """
    subj = re.sub(r"\s+\(pid \d+.*\)$", "", subj.strip())
    word, _, rest = subj.partition(" ")
    return rest.strip() if word in _SUBJECT_WORDS and rest.strip() else subj


def prefill_for(f: Finding) -> dict[str, str]:
    """Form values guessed from a finding's subject, so the operator only fills the rest.

    Covers the field names of both the checker's rule kinds (``unix``,
    ``veth`` with ``interface``...) and the console's defaults; the caller keeps
    only the fields the kind's form has.
    """
    raw = f.subject
    subj = _bare_subject(raw)
    kind = f.rule_kind
    if kind in ("unix-socket", "unix"):
        m = re.search(r"socket:\[(\d+)\]", raw) or re.search(r"\b(\d{3,})\b", raw)
        path = raw.split("->")[-1].strip() if "->" in raw else ""
        return {"inode": m.group(1) if m else "", "path": path, "peer": path}
    if kind == "mount":
        key = subj.strip("/").split("/")[-1] if subj else ""
        return {"mountpoint": subj, "key": key}
    if kind in ("tty", "device", "file"):
        key = subj.strip("/").split("/")[-1] if kind != "tty" else "console"
        return {"path": subj, "key": key, "source": subj, "name": key}
    if kind in ("veth", "netdev"):
        return {"inside": subj, "interface": subj}
    if kind == "tcp":
        return {"mode": "established"}
    return {}


class ReportScreen(BaseScreen):
    SCOPE = "report"
    BINDINGS = keymap.bindings(SCOPE)

    def __init__(self, container: Container, report: Report | None = None, host: str = LOCAL_HOST) -> None:
        super().__init__()
        self.container = container
        self.host = host
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
        self.title = f"Feasibility: {self.container.name}"
        if self.host != LOCAL_HOST:
            self.sub_title = f"checked on {self.host}"
        self.query_one("#options-box").border_title = "CRIU options that will be used"
        self.query_one("#findings", DataTable).focus()
        if self.report is not None:
            self.show(self.report)
        else:
            self.run_check()

    @work(thread=True, exclusive=True, exit_on_error=False, group="check")
    def run_check(self) -> None:
        self.post_message(ReportReady(self.backend.check(self.container.id, host=self.host)))

    def worker_failed(self, worker: Worker[object], error: BaseException) -> None:
        self.query_one("#verdict", Static).update(Text(f"check failed: {error}", style="bold"))
        self.console.show_error(error, title="Feasibility check")

    def on_report_ready(self, message: ReportReady) -> None:
        self.show(message.report)

    def show(self, report: Report) -> None:
        self.report = report
        self.console.reports[self.console.report_key(self.host, report.container_id)] = report
        counts = {sev: len(fs) for sev, fs in report.grouped()}
        head = Text()
        head.append("Verdict: ")
        head.append_text(verdict_badge(self.app, report))
        head.append("  " + ", ".join(f"{n} {s}" for s, n in counts.items()))
        head.append("\n" + VERDICT_TEXT.get(report.verdict, report.raw_verdict), style="dim")
        self.query_one("#verdict", Static).update(head)
        table = self.query_one("#findings", DataTable)
        table.clear()
        self.rows = {}
        n = 0
        # subjects are cut to the screen so the table never scrolls sideways (the panel shows them whole)
        room = max(16, self.size.width - 10 - 20 - 3 * 2 - 2)
        for sev, items in report.grouped():
            table.add_row("", Text(f"{sev.upper()} ({len(items)})", style="bold underline"), "", key=f"group:{sev}")
            for f in items:
                key = f"f{n}"
                n += 1
                self.rows[key] = f
                subject = f.subject if len(f.subject) <= room else f.subject[: room - 1] + "…"
                table.add_row(severity_text(self.app, f.severity), plain(f.rule), plain(subject), key=key)
        if table.row_count > 1:
            table.move_cursor(row=1)
        opts = Text()
        for line in report.options.lines():
            phase, _, rest = line.partition(": ")
            opts.append(f"{phase:<8}", style=f"bold {theme_color(self.app, 'primary')}")
            opts.append(rest + "\n")
        opts.rstrip()  # no blank last line in an auto-height box
        self.query_one("#options", Static).update(opts)

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
        t.append("\nremedy: ", style=f"bold {theme_color(self.app, 'primary')}")
        t.append(f.remedy or "nothing to do")
        if f.rule_kind:
            t.append(f"   (f: add a {f.rule_kind} rule)", style="dim")
        panel.update(t)

    @on(DataTable.RowSelected, "#findings")
    def _selected(self, event: DataTable.RowSelected) -> None:
        self.action_fix()

    def action_fix(self) -> None:
        from ctconsole.ui.screens.rules import RulesScreen

        f = self.selected()
        if f is None or not f.rule_kind:
            self.notify("no rule kind fixes this finding", severity="warning", timeout=3, markup=False)
            return
        if not self.refuse_remote(self.host, "Editing rules"):
            spec = next((k for k in self.backend.rule_kinds() if k.name == f.rule_kind), None)
            names = {x.name for x in spec.fields} if spec else set()
            values = {k: v for k, v in prefill_for(f).items() if not names or k in names}
            self.app.push_screen(RulesScreen(self.container, prefill=(f.rule_kind, values)))

    def action_recheck(self) -> None:
        self.query_one("#verdict", Static).update("checking…")
        self.run_check()

    def on_screen_resume(self) -> None:
        # rules may have changed in the editor: the verdict shown must match them
        if self.report is not None:
            self.action_recheck()

    def action_migrate(self) -> None:
        from ctconsole.ui.screens.migrate import MigrateScreen

        if not self.refuse_remote(self.host, "Migrating"):
            self.app.push_screen(MigrateScreen(self.container))
