"""Typed messages that workers post to screens.

Why typed messages: a thread worker must never touch widgets; it posts one
of these and the screen's handler (on the UI thread) renders it. Progress
ticks carry a whole :class:`~ctconsole.ui.backend.MigrationState` snapshot
and may replace each other in the queue (``can_replace``), so a flood of
engine events never backs the UI up.
"""

from __future__ import annotations

from textual.message import Message

from ctconsole.commands.destinations import Destination
from ctconsole.feasibility.findings import Report
from ctconsole.migrate.journal import Summary
from ctconsole.model import Container
from ctconsole.remap import Rule
from ctconsole.ui.backend import MigrationState


class ContainersLoaded(Message):
    """A scan of ``host`` finished."""

    def __init__(self, host: str, containers: list[Container]) -> None:
        super().__init__()
        self.host = host
        self.containers = containers


class ScanFailed(Message):
    """A scan failed; the poll is re-armed anyway (the error is shown once per message)."""

    def __init__(self, host: str, error: BaseException) -> None:
        super().__init__()
        self.host = host
        self.error = error


class DetailLoaded(Message):
    def __init__(self, container: Container) -> None:
        super().__init__()
        self.container = container


class ReportReady(Message):
    """A feasibility check finished (the app also keeps the verdict for the table badge)."""

    def __init__(self, report: Report) -> None:
        super().__init__()
        self.report = report


class RulesLoaded(Message):
    def __init__(self, ref: str, rules: list[Rule]) -> None:
        super().__init__()
        self.ref = ref
        self.rules = rules


class OptionsCompiled(Message):
    """The compiled CRIU options as ``phase: key = value`` lines (``error`` set when the rules do not compile)."""

    def __init__(self, generation: int, options: list[str] | None, error: BaseException | None = None) -> None:
        super().__init__()
        self.generation = generation
        self.options = options
        self.error = error


class PreviewReady(Message):
    def __init__(self, lines: list[str]) -> None:
        super().__init__()
        self.lines = lines


class MigrationTick(Message, bubble=False):
    """The latest migration state; replaces an older tick still waiting in the queue."""

    def __init__(self, state: MigrationState) -> None:
        super().__init__()
        self.state = state

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, MigrationTick)


class MigrationFinished(Message, bubble=False):
    """The final state (never replaced: the outcome must be shown)."""

    def __init__(self, state: MigrationState) -> None:
        super().__init__()
        self.state = state


class LogLoaded(Message):
    def __init__(self, path: str, lines: list[str], explanations: dict[int, str]) -> None:
        super().__init__()
        self.path = path
        self.lines = lines
        self.explanations = explanations


class HistoryLoaded(Message):
    """The journal's summaries (newest first), each with the log it opens ("" when none)."""

    def __init__(self, entries: list[Summary], logs: list[str]) -> None:
        super().__init__()
        self.entries = entries
        self.logs = logs


class DestinationsLoaded(Message):
    """The destinations the picker offers (lab hosts, --host, past ones, ssh config)."""

    def __init__(self, destinations: list[Destination]) -> None:
        super().__init__()
        self.destinations = destinations
