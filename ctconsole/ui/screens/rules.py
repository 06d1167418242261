"""Rules editor: a container's remap rules, a form per kind, and the compiled options.

Why validation is inline and compilation previewed: a rule is only right if
CRIU gets the right options, so every keystroke re-validates the form
(cheap, synchronous) and every change to the list recompiles the whole set in
a worker, showing exactly the ``criu_opts`` fields that will be sent.
"""

from __future__ import annotations

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Footer, Header, Input, Label, Select, Static
from textual.worker import Worker

from ctconsole import remap
from ctconsole.model import Container
from ctconsole.remap import KindSpec, Rule
from ctconsole.ui import keymap
from ctconsole.ui.backend import Backend, option_lines, rule_summary, rules_label
from ctconsole.ui.messages import OptionsCompiled, RulesLoaded
from ctconsole.ui.screens.base import BaseScreen
from ctconsole.ui.screens.modals import ConfirmScreen
from ctconsole.ui.widgets.render import plain, theme_color


class RuleFormScreen(ModalScreen[Rule | None]):
    """Add or edit one rule; ``ctrl+s`` (or enter in the last field) saves when it is valid."""

    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "submit", "OK"),
    ]

    def __init__(
        self, backend: Backend, ref: str, rule: Rule | None = None, editing: bool = False
    ) -> None:
        super().__init__()
        self.backend = backend
        self.ref = ref
        self.kinds = backend.rule_kinds()
        self.rule = rule or Rule(self.kinds[0].name, {})
        self.values = remap.rule_to_form(self.rule)
        self.editing = editing
        self.problems: list[str] = []
        self.touched: set[str] = set()  # fields the operator typed in (defaults never overwrite them)
        self.defaulted: set[str] = set()  # fields holding a default (a new default replaces it)

    def spec(self) -> KindSpec:
        return next((k for k in self.kinds if k.name == self.rule.kind), self.kinds[0])

    def compose(self) -> ComposeResult:
        with Vertical(classes="modal-box", id="rule-form"):
            yield Static(
                ("Edit" if self.editing else "Add") + " rule  (ctrl+s saves, esc cancels)",
                classes="modal-title",
                markup=False,
            )
            yield Select(
                [(f"{k.title} ({k.name})", k.name) for k in self.kinds],
                value=self.spec().name,
                allow_blank=False,
                compact=True,
                id="rule-kind",
            )
            yield Static(self.spec().help, id="rule-help", markup=False)
            with VerticalScroll(id="rule-fields"):
                yield from self._fields()
            yield Static(id="rule-problems", markup=False)
            with Horizontal(id="rule-buttons"):
                yield Button("OK (ctrl+s)", id="rule-ok", variant="primary", compact=True)
                yield Button("Cancel (esc)", id="rule-cancel", compact=True)

    def _fields(self) -> list[Label | Input]:
        out: list[Label | Input] = []
        for f in self.spec().fields:
            optional = "" if f.required or "optional" in f.label.lower() else " (optional)"
            out.append(Label(f.label + optional, markup=False))
            out.append(
                Input(
                    self.values.get(f.name, ""),
                    placeholder=f.placeholder,
                    id=f"field-{f.name}",
                    classes="rule-field",
                    compact=True,
                )
            )
        return out

    def on_mount(self) -> None:
        if self.editing:
            self.query_one("#rule-kind", Select).disabled = True
        inputs = self.query(".rule-field")
        target = next((i for i in inputs if isinstance(i, Input) and not i.value), None) or (
            inputs.first() if inputs else None
        )
        if target is not None:
            target.focus()
        self.fill_defaults()
        self.validate()

    def current(self) -> Rule:
        values: dict[str, str] = {"kind": self.spec().name}
        for f in self.spec().fields:
            found = self.query(f"#field-{f.name}")
            values[f.name] = found.first(Input).value.strip() if found else self.values.get(f.name, "")
        return remap.rule_from_form(values)

    def fill_defaults(self) -> None:
        """Blank fields the operator has not typed in get what remap would suggest (e.g. a mount's
        host path on the destination: the source's path)."""
        try:
            defaults = self.backend.form_defaults(self.ref, self.current())
        except Exception:  # a default is a convenience: never let it break the form
            return
        for name in self.defaulted - set(defaults) - self.touched:
            for box in self.query(f"#field-{name}").results(Input):
                with self.prevent(Input.Changed):
                    box.value = ""  # the default no longer applies to what was typed
        self.defaulted &= set(defaults)
        for name, value in defaults.items():
            found = self.query(f"#field-{name}")
            if not found or name in self.touched:
                continue
            box = found.first(Input)
            if not box.value or name in self.defaulted:
                self.defaulted.add(name)
                with self.prevent(Input.Changed):
                    box.value = value

    def validate(self) -> bool:
        self.rule = self.current()
        try:
            self.problems = self.backend.validate_rule(self.rule)
        except Exception as exc:  # a validator bug must not close the form
            self.problems = [f"validator failed: {exc}"]
        box = self.query_one("#rule-problems", Static)
        if self.problems:
            box.update(Text("\n".join(f"✗ {p}" for p in self.problems), style=theme_color(self.app, "error", "red")))
        else:
            box.update(Text("✓ valid", style=theme_color(self.app, "success", "green")))
        self.query_one("#rule-ok", Button).disabled = bool(self.problems)
        return not self.problems

    @on(Select.Changed, "#rule-kind")
    async def _kind_changed(self, event: Select.Changed) -> None:
        if event.value == self.rule.kind or not isinstance(event.value, str):
            return
        self.rule = Rule(event.value, {})
        self.values = {"kind": event.value}
        self.touched, self.defaulted = set(), set()
        self.query_one("#rule-help", Static).update(self.spec().help)
        fields = self.query_one("#rule-fields", VerticalScroll)
        await fields.remove_children()
        await fields.mount_all(self._fields())
        fields.query(".rule-field").first(Input).focus()
        self.fill_defaults()
        self.validate()

    @on(Input.Changed, ".rule-field")
    def _changed(self, event: Input.Changed) -> None:
        name = (event.input.id or "").removeprefix("field-")
        self.touched.add(name)
        self.defaulted.discard(name)
        if name in ("mountpoint", "interface", "peer", "source", "fd_path"):
            self.fill_defaults()
        self.validate()

    @on(Input.Submitted, ".rule-field")
    def _submitted(self, event: Input.Submitted) -> None:
        inputs = list(self.query(".rule-field"))
        if event.input is inputs[-1]:
            self.action_submit()
        else:
            self.focus_next()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "rule-ok":
            self.action_submit()
        else:
            self.dismiss(None)

    def action_submit(self) -> None:
        if self.validate():
            self.dismiss(self.rule)
        else:
            self.notify("fix the problems shown first", severity="warning", timeout=3, markup=False)

    def action_cancel(self) -> None:
        self.dismiss(None)


class RulesScreen(BaseScreen):
    SCOPE = "rules"
    BINDINGS = keymap.bindings(SCOPE)

    def __init__(
        self,
        container: Container,
        prefill: Rule | None = None,
        dest: str = "",
        suggested: list[Rule] | None = None,
        return_on_save: bool = False,
    ) -> None:
        """``prefill`` opens the form for one rule; ``suggested`` adds these drafts to the loaded rules
        (unsaved); ``return_on_save``: saving goes back to the screen that opened the editor."""
        super().__init__()
        self.container = container
        self.prefill = prefill
        self.dest = dest
        self.suggested = suggested
        self.return_on_save = return_on_save
        self.rules: list[Rule] = []
        self.dirty = False
        self.generation = 0
        self.loaded = False
        self.rules_file = ""

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="rules-body"):
            with Vertical(id="rules-left"):
                table: DataTable[object] = DataTable(id="rules", cursor_type="row")
                table.add_column("Kind", key="kind", width=11)
                table.add_column("Values", key="values", width=24)
                yield table
                # the Values column is cut at 80 columns: the selected rule is shown whole here
                yield Static(id="rule-detail", classes="why-panel", markup=False)
                yield Static(id="rules-status", markup=False)
            with VerticalScroll(id="preview-box"):
                yield Static("compiling…", id="preview", markup=False)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.title = f"Rules: {self.container.name}"
        # the file in use, or the default one when the session runs without rules (saving switches to it)
        self.rules_file = self.console.rules_file or self.backend.default_rules_file()
        self.query_one("#preview-box").border_title = "Compiled CRIU options"
        self.query_one("#rules", DataTable).focus()
        self.load()

    @work(thread=True, exclusive=True, exit_on_error=False, group="rules-load")
    def load(self) -> None:
        rules = self.backend.load_rules(self.container.id, self.rules_file)
        self.post_message(RulesLoaded(self.container.id, rules))

    def on_rules_loaded(self, message: RulesLoaded) -> None:
        self.rules = list(message.rules)
        self.loaded = True
        if self.suggested:
            self._add_suggested(self.suggested)
            self.suggested = None
        self.refresh_rules()
        if self.prefill is not None:
            rule, self.prefill = self.prefill, None
            self.open_form(rule, None)

    def worker_failed(self, worker: Worker[object], error: BaseException) -> None:
        if worker.group == "rules-load":
            self.loaded = True  # start from an empty set; saving will say whether remap is there
            self.refresh_rules()
        self.console.show_error(error, title="Rules")

    def refresh_rules(self) -> None:
        table = self.query_one("#rules", DataTable)
        row = table.cursor_row
        table.clear()
        for n, r in enumerate(self.rules):
            table.add_row(plain(r.kind), plain(rule_summary(r)), key=str(n))
        if self.rules:
            table.move_cursor(row=min(row, len(self.rules) - 1))
        self._show_rule(table.cursor_row if self.rules else None)
        status = f"{len(self.rules)} rule(s)" + (" · unsaved changes (s saves)" if self.dirty else "")
        self.query_one("#rules-status", Static).update(status)
        to = f" · to {self.dest}" if self.dest else ""
        self.sub_title = f"{rules_label(self.rules_file)}{to}" + (" · unsaved" if self.dirty else "")
        self.generation += 1
        self.compile(self.generation, list(self.rules))

    @work(thread=True, exclusive=True, exit_on_error=False, group="compile")
    def compile(self, gen: int, rules: list[Rule]) -> None:
        try:
            opts = self.backend.compile_rules(self.container.id, rules, self.dest or None)
        except Exception as exc:
            self.post_message(OptionsCompiled(gen, None, exc))
            return
        self.post_message(OptionsCompiled(gen, option_lines(opts.dump, opts.restore)))

    def on_options_compiled(self, message: OptionsCompiled) -> None:
        if message.generation != self.generation:
            return  # an older compile finished late
        preview = self.query_one("#preview", Static)
        if message.options is None:
            err = message.error
            text = Text(f"does not compile: {err}\n", style=f"bold {theme_color(self.app, 'error')}")
            for d in getattr(err, "details", []):
                text.append(f"  {d}\n")
            preview.update(text)
            return
        t = Text()
        for line in message.options:
            phase, _, rest = line.partition(": ")
            t.append(f"{phase:<8}", style=f"bold {theme_color(self.app, 'primary')}")
            t.append(rest + "\n")
        preview.update(t)

    def selected_index(self) -> int | None:
        table = self.query_one("#rules", DataTable)
        return table.cursor_row if self.rules and table.row_count else None

    def open_form(self, rule: Rule | None, index: int | None) -> None:
        def done(result: Rule | None) -> None:
            if result is None:
                return
            if index is None:
                self.rules.append(result)
            else:
                self.rules[index] = result
            self.dirty = True
            self.refresh_rules()
            self.query_one("#rules", DataTable).move_cursor(row=len(self.rules) - 1 if index is None else index)

        self.app.push_screen(RuleFormScreen(self.backend, self.container.id, rule, editing=index is not None), done)

    def _show_rule(self, index: int | None) -> None:
        panel = self.query_one("#rule-detail", Static)
        if index is None or not 0 <= index < len(self.rules):
            panel.update(Text("no rules yet: g suggests them from the inventory, a adds one", style="dim"))
            return
        rule = self.rules[index]
        t = Text(rule.kind, style="bold")
        for k, v in remap.rule_to_form(rule).items():
            if v and k != "kind":
                t.append(f"\n{k}: ", style=f"bold {theme_color(self.app, 'primary')}")
                t.append(v)
        panel.update(t)

    @on(DataTable.RowHighlighted, "#rules")
    def _rule_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_rule(event.cursor_row)

    @on(DataTable.RowSelected, "#rules")
    def _selected(self, event: DataTable.RowSelected) -> None:
        self.action_edit()

    def action_add(self) -> None:
        self.open_form(None, None)

    def action_edit(self) -> None:
        idx = self.selected_index()
        if idx is None:
            self.notify("no rule selected (a adds one)", timeout=3, markup=False)
            return
        self.open_form(self.rules[idx], idx)

    def action_delete(self) -> None:
        idx = self.selected_index()
        if idx is None:
            return
        rule = self.rules[idx]

        def answer(yes: bool | None) -> None:
            if yes:
                del self.rules[idx]
                self.dirty = True
                self.refresh_rules()

        self.app.push_screen(ConfirmScreen(f"Delete the {rule.kind} rule?", rule_summary(rule)), answer)

    @work(thread=True, exclusive=True, exit_on_error=False, group="rules-suggest")
    def suggest(self) -> None:
        drafts = self.backend.suggest_rules(self.container.id, self.dest or None)
        self.app.call_from_thread(self._suggested, drafts)

    def _add_suggested(self, drafts: list[Rule]) -> int:
        """Add the drafts whose slot no rule fills yet (a rule the operator wrote wins); returns how many."""
        slots = {r.slot() for r in self.rules}
        new = [r for r in drafts if r.slot() not in slots]
        self.rules.extend(new)
        if new:
            self.dirty = True
        return len(new)

    def _suggested(self, drafts: list[Rule]) -> None:
        n = self._add_suggested(drafts)
        if not n:
            self.notify("no new suggestions: every external item already has a rule", timeout=3, markup=False)
            return
        self.refresh_rules()
        self.notify(f"added {n} suggested rule(s): review them, then s to save", timeout=4, markup=False)

    def action_suggest(self) -> None:
        self.suggest()

    @work(thread=True, exclusive=True, exit_on_error=False, group="rules-save")
    def save(self) -> None:
        where = self.backend.save_rules(self.container.id, list(self.rules), self.rules_file)
        self.app.call_from_thread(self._saved, where)

    def _saved(self, where: str) -> None:
        self.dirty = False
        if self.console.rules_file != where:
            self.console.use_rules_file(where)  # what was just saved is what the checks use now
        self.notify(f"rules saved to {rules_label(where)}", timeout=4, markup=False)
        if self.return_on_save:
            self.dismiss()  # back to the verdict, which re-checks with these rules
            return
        self.refresh_rules()

    def action_save(self) -> None:
        self.save()

    def action_back(self) -> None:
        if not self.dirty:
            self.dismiss()
            return

        def answer(yes: bool | None) -> None:
            if yes:
                self.dismiss()

        self.app.push_screen(ConfirmScreen("Leave without saving?", "The unsaved rules will be lost."), answer)
