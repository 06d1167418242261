"""Small modal screens: help, confirmation, error panel.

Why modal: confirmation and errors must take the keyboard until answered,
and all three work without a mouse (escape closes, y/n answer).
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, Static

from ctconsole.ui import keymap


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
