"""What every console screen shares: its key scope and worker error handling.

Why: a worker that raises must end as a notification or an error panel,
never as a traceback, and each screen's keys come from the one table in
:mod:`ctconsole.ui.keymap` (``SCOPE``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from textual.screen import Screen
from textual.widgets import Input, TextArea
from textual.worker import Worker, WorkerState

from ctconsole.ui import keymap

if TYPE_CHECKING:
    from ctconsole.ui.app import CtConsoleApp
    from ctconsole.ui.backend import Backend


class BaseScreen(Screen[None]):
    SCOPE = ""

    @property
    def console(self) -> CtConsoleApp:
        from ctconsole.ui.app import CtConsoleApp

        return cast(CtConsoleApp, self.app) if isinstance(self.app, CtConsoleApp) else self.app  # type: ignore[return-value]

    @property
    def backend(self) -> Backend:
        return self.console.backend

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """A key that would be typed into the focused field is off (and out of the footer);
        otherwise the screen's own :meth:`offer` decides."""
        if self.typing() and keymap.typed_only(self.SCOPE, action, self.console.user_keymap):
            return False
        return self.offer(action)

    def offer(self, action: str) -> bool | None:
        """Whether ``action`` makes sense now (False hides it from the footer). Screens override."""
        return True

    def typing(self) -> bool:
        """Whether a text field has the focus (printable keys go into it)."""
        return isinstance(self.focused, Input | TextArea)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR and event.worker.error is not None:
            self.worker_failed(event.worker, event.worker.error)

    def worker_failed(self, worker: Worker[object], error: BaseException) -> None:
        """Default: show the error; screens override to also restore their state."""
        self.console.show_error(error, title=worker.name or "Error")

    def refuse_remote(self, host: str, what: str) -> bool:
        """True, after telling the operator why, when ``what`` cannot be done for a container on ``host``.

        Why: rules, previews and migrations run on the source host (its CRIU
        dumps the container); for a ``--host`` the console only has the agent,
        which lists and checks. The message says what to do instead.
        """
        if not self.backend.is_remote(host):
            return False
        self.notify(
            f"{what} runs on the container's own host, and this one is on {host}. "
            f"Run ctconsole on {host} for that; from here, {host} can be a migration destination.",
            title="Only for local containers",
            severity="warning",
            timeout=8,
            markup=False,
        )
        return True

    def action_back(self) -> None:
        self.dismiss()
