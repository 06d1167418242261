"""Progress events of a migration: one vocabulary for the engine, the CLI and the console.

Why plain frozen data: the CLI prints them (a bar + phase lines, or one JSON
object per event with ``--json``) and the console folds them into its view
state in a worker thread; neither needs to know how the engine works, and
neither keeps a copy of these classes. :func:`to_json` gives the wire form;
its ``event`` key is the snake_case class name.

What each event promises:

- :class:`Transfer` is the only byte counter. Its ``kind`` says how the
  images reached the destination, so a face can tell the truth about it:
  ``linked`` (hard-linked on a shared filesystem: nothing moved, ``done`` is
  the size made available), ``copied`` (pages CRIU wrote straight to the
  destination's page server), ``streamed`` (image files sent over the agent
  channel), ``storage`` (the container's own storage carried along). A step
  ends with ``done == total``.
- :class:`RoundProgress` is one pre-copy round; the final dump is
  :class:`FinalDump`, never counted as a round.
- :class:`Done` is the last event, with typed facts: the result, whether the
  source survived (``source``), the errors, downtime and the journal.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Literal

TransferKind = Literal["linked", "copied", "streamed", "storage"]
TRANSFER_KINDS: tuple[str, ...] = ("linked", "copied", "streamed", "storage")

Result = Literal["migrated", "rolled-back", "failed"]

#: What became of the source when the migration ended (``Done.source``).
#: released: migrated, the source copy was killed; running: CRIU resumed it;
#: restored-locally: it was restored here from the images; untouched: refused
#: before anything was frozen; lost: it is gone; unknown: not established.
SOURCE_STATES = ("released", "running", "restored-locally", "untouched", "lost", "unknown")
SURVIVED = ("running", "restored-locally", "untouched")


@dataclass(frozen=True)
class PhaseChanged:
    """The state machine entered ``phase`` (begin, prepare, perform, finish, confirm, rollback, ...)."""

    phase: str
    detail: str = ""


@dataclass(frozen=True)
class RoundProgress:
    """One pre-copy iteration (the source keeps running): CRIU's page counters."""

    round: int
    pages_scanned: int
    pages_written: int
    pages_skipped: int


@dataclass(frozen=True)
class FinalDump:
    """The final (freezing) dump: CRIU's page counters, after ``rounds`` pre-copy rounds (0: none)."""

    rounds: int
    pages_scanned: int
    pages_written: int
    pages_skipped: int


@dataclass(frozen=True)
class Transfer:
    """Images moving to the destination: one event per update of one step.

    ``done``/``total`` are bytes (``total`` 0: not known yet); ``rate`` is
    bytes per second (0: not measured); ``eta`` seconds (None: unknown);
    ``round`` the pre-copy round the step belongs to (0: the final images).
    """

    kind: TransferKind
    done: int
    total: int
    rate: float = 0.0
    eta: float | None = None
    round: int = 0

    @property
    def fraction(self) -> float | None:
        return min(1.0, self.done / self.total) if self.total > 0 else None

    @property
    def finished(self) -> bool:
        return self.total > 0 and self.done >= self.total


@dataclass(frozen=True)
class FrozenTime:
    """How long CRIU kept the source frozen (stats-dump frozen_time)."""

    seconds: float


@dataclass(frozen=True)
class RestoreTime:
    seconds: float


@dataclass(frozen=True)
class Downtime:
    """From freezing the source to the restored tree running on the destination."""

    seconds: float


@dataclass(frozen=True)
class LogLine:
    level: str  # info, warning, error
    text: str


@dataclass(frozen=True)
class Done:
    """The last event.

    ``result`` is migrated, rolled-back or failed; ``source`` says what became
    of the source (one of :data:`SOURCE_STATES`), so a face can say whether the
    container still runs where it was. ``details`` holds the rest of what the
    engine learned (timeline, console socket...), for ``--json`` readers.
    """

    result: Result
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    source: str = "unknown"
    errors: tuple[str, ...] = ()
    downtime: float | None = None  # seconds
    frozen: float | None = None  # seconds
    restored_pid: int = 0
    journal: str = ""  # path of the migration's journal (its CRIU logs sit next to it)

    @property
    def migrated(self) -> bool:
        return self.result == "migrated"

    @property
    def source_survived(self) -> bool | None:
        """True when the source still runs (or was restored) where it was; None when not known."""
        if self.source == "unknown":
            return None
        return self.source in SURVIVED


Event = (
    PhaseChanged | RoundProgress | FinalDump | Transfer | FrozenTime | RestoreTime | Downtime | LogLine | Done
)


def event_name(ev: object) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(ev).__name__).lower()


def to_json(ev: object) -> dict[str, Any]:
    """``{"event": "phase_changed", ...fields}``; the CLI prints one per line with --json."""
    assert dataclasses.is_dataclass(ev) and not isinstance(ev, type)
    return {"event": event_name(ev), **dataclasses.asdict(ev)}
