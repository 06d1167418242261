"""Widgets of the live migration view.

Why separate widgets: each one renders a part of the same
:class:`~ctconsole.ui.backend.MigrationState` snapshot, so the screen just
hands every tick to all of them.
"""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from ctconsole.ui.backend import MigrationState
from ctconsole.ui.widgets.render import theme_color


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_time(s: float | None) -> str:
    if s is None:
        return "—"
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 120:
        return f"{s:.1f} s"
    return f"{int(s // 60)} min {int(s % 60)} s"


class PhaseTimeline(Static):
    """``✔ begin ✔ prepare ▶ precopy · dump …`` — where the migration is."""

    def show(self, state: MigrationState) -> None:
        t = Text()
        failed = state.done is not None and state.done.result != "migrated"
        for name in state.phases:
            if name == state.failed_phase:
                t.append(f"✘ {name}", style=f"bold {theme_color(self.app, 'error', 'red')}")
            elif name in state.done_phases:
                t.append(f"✔ {name}", style=theme_color(self.app, "success", "green"))
            elif name == state.phase:
                style = theme_color(self.app, "error" if failed else "accent", "yellow")
                t.append(f"{'✘' if failed else '▶'} {name}", style=f"bold {style}")
            else:
                t.append(f"· {name}", style="dim")
            t.append("  ")
        self.update(t)


class MigrationStats(Static):
    """Rate, bytes, ETA, frozen time and pages per round."""

    def show(self, state: MigrationState) -> None:
        t = Text()
        total = f" / {human_bytes(state.bytes_total)}" if state.bytes_total else ""
        t.append("sent   ", style="bold")
        t.append(f"{human_bytes(state.bytes_sent)}{total}\n")
        t.append("rate   ", style="bold")
        t.append(f"{human_bytes(state.rate)}/s\n")
        t.append("ETA    ", style="bold")
        t.append(f"{human_time(state.eta)}\n")
        t.append("frozen ", style="bold")
        t.append(f"{human_time(state.frozen_ms / 1000) if state.frozen_ms is not None else '—'}\n")
        t.append("rounds ", style="bold")
        t.append(" ".join(f"{r.round}:{r.pages}p" for r in state.rounds[-6:]) or "—")
        self.update(t)
