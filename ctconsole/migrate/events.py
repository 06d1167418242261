"""Progress events of a migration: plain frozen dataclasses, one engine, two faces.

Why plain data: the CLI prints them (a bar + phase lines, or one JSON object
per event with ``--json``) and the TUI turns them into messages in a worker
thread; neither needs to know how the engine works. :func:`to_json` gives the
wire form; its ``event`` key is the snake_case class name.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class PhaseChanged:
    """The state machine entered ``phase`` (begin, prepare, perform, finish, confirm, rollback, done)."""

    phase: str
    detail: str = ""


@dataclass(frozen=True)
class RoundProgress:
    """One dump round (pre-copy iteration or the final dump): CRIU's page counters."""

    round: int
    pages_scanned: int
    pages_written: int
    pages_skipped: int
    final: bool = False


@dataclass(frozen=True)
class BytesSent:
    """Image bytes moved to the destination so far (page server + agent channel)."""

    sent: int
    total: int


@dataclass(frozen=True)
class Rate:
    bytes_per_second: float


@dataclass(frozen=True)
class Eta:
    seconds: float


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
    """The last event. ``result`` is migrated, rolled-back or failed."""

    result: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)


Event = PhaseChanged | RoundProgress | BytesSent | Rate | Eta | FrozenTime | RestoreTime | Downtime | LogLine | Done


def event_name(ev: object) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(ev).__name__).lower()


def to_json(ev: object) -> dict[str, Any]:
    """``{"event": "phase_changed", ...fields}``; the CLI prints one per line with --json."""
    assert dataclasses.is_dataclass(ev) and not isinstance(ev, type)
    return {"event": event_name(ev), **dataclasses.asdict(ev)}
