"""What every console screen shares: its key scope and worker error handling.

Why: a worker that raises must end as a notification or an error panel,
never as a traceback, and each screen's keys come from the one table in
:mod:`ctconsole.ui.keymap` (``SCOPE``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from textual.screen import Screen
from textual.worker import Worker, WorkerState

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
