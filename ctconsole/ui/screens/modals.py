"""Small modal screens: help, confirmation, error panel.

Why modal: confirmation and errors must take the keyboard until answered,
and all three work without a mouse (escape closes, y/n answer).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, Static

from ctconsole.ui import keymap
from ctconsole.ui.backend import rules_label


class HelpScreen(Screen[None]):
    """Every key of every screen, with the keymap from the user config applied.

    A full screen, not a modal: a modal composites the (possibly busy,
    migrating) screen underneath on every frame, which made ``?`` slow.
    """

    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        km = getattr(self.app, "_keymap", {})
        text = Text()
        for scope, title in keymap.SCOPE_TITLES.items():
            text.append(f"{title}\n", style="bold underline")
            for spec in keymap.actions(scope):
                text.append(f"  {keymap.effective_key(spec, km):<16}", style="bold")
                text.append(f"{spec.help}\n")
            text.append("\n")
        text.append('Remap keys in config.toml [keys], e.g. "containers.check" = "c,f5".\n', style="italic")
        with Vertical(id="help-box"):
            yield Static("Keys  (esc closes)", classes="modal-title", markup=False)
            with VerticalScroll(id="help-scroll"):
                yield Static(text, id="help-text", markup=False)

    def on_mount(self) -> None:
        self.query_one("#help-scroll").focus()  # arrows and page keys scroll without a mouse

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss(None)


class ConfirmScreen(ModalScreen[bool]):
    """Yes/no question; ``y`` confirms, ``n``/escape cancels."""

    BINDINGS = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, question: str, detail: str = "", yes: str = "Yes (y)", no: str = "No (n)") -> None:
        super().__init__()
        self.question = question
        self.detail = detail
        self.yes, self.no = yes, no

    def compose(self) -> ComposeResult:
        with Vertical(classes="modal-box", id="confirm-box"):
            yield Static(self.question, classes="modal-title", markup=False)
            if self.detail:
                yield Static(self.detail, id="confirm-detail", markup=False)
            with Vertical(id="confirm-buttons"):
                yield Button(self.yes, id="yes", variant="warning")
                yield Button(self.no, id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


class ErrorScreen(ModalScreen[None]):
    """An error with its detail lines (e.g. CRIU's Error lines and their explanations)."""

    BINDINGS = [Binding("escape,enter,q", "close", "Close")]

    def __init__(self, title: str, message: str, details: list[str]) -> None:
        super().__init__()
        self.title_text = title
        self.message = message
        self.details = details

    def compose(self) -> ComposeResult:
        body = Text()
        body.append(self.message + "\n\n", style="bold")
        for line in self.details:
            style = "bold red" if "Error" in line else ""
            body.append(line + "\n", style=style)
        with Vertical(classes="modal-box error-box", id="error-box"):
            yield Static(f"{self.title_text}  (esc closes)", classes="modal-title", markup=False)
            with VerticalScroll():
                yield Static(body, id="error-body", markup=False)

    def action_close(self) -> None:
        self.dismiss(None)


class RulesFileScreen(ModalScreen[str | None]):
    """Choose the rules file in use: the recent ones, the default one, none, or a typed path.

    Answers the path ("" for none) or None when cancelled. Why a short list
    plus a field: most sessions switch between the default file and one or
    two files written by ``rules suggest > r.toml``; any other is typed.
    """

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, current: str, recent: list[str], default: str) -> None:
        super().__init__()
        self.current = current
        self.choices: list[str] = []
        for path in [*recent, default]:
            if path and path not in self.choices:
                self.choices.append(path)
        self.choices.append("")  # none
        self.default = default

    def compose(self) -> ComposeResult:
        from textual.widgets import Input, OptionList

        def label(path: str) -> str:
            if not path:
                return "none: no rules (the check shows what needs one)"
            tags = [t for t, on in (("default", path == self.default), ("in use", path == self.current)) if on]
            return rules_label(path) + (f"  ({', '.join(tags)})" if tags else "")

        with Vertical(classes="modal-box", id="rules-file-box"):
            yield Static("Rules file  (enter picks, esc cancels)", classes="modal-title", markup=False)
            yield OptionList(*(label(p) for p in self.choices), id="rules-files")
            yield Input(placeholder="or type a path and press enter", id="rules-path", compact=True)

    def on_mount(self) -> None:
        from textual.widgets import OptionList

        files = self.query_one("#rules-files", OptionList)
        files.highlighted = self.choices.index(self.current) if self.current in self.choices else 0
        files.focus()

    def on_option_list_option_selected(self, event: Any) -> None:
        self.dismiss(self.choices[event.option_index])

    def on_input_submitted(self, event: Any) -> None:
        path = str(event.value).strip()
        if path:
            self.dismiss(str(Path(path).expanduser()))

    def action_cancel(self) -> None:
        self.dismiss(None)
