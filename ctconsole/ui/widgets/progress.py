"""Widgets of the live migration view.

Why separate widgets: each one renders a part of the same
:class:`~ctconsole.ui.backend.MigrationState` snapshot, so the screen just
hands every tick to all of them.
"""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from ctconsole.migrate.events import Transfer
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


def pages(n: int) -> str:
    """Pages written, short enough for four rounds on one line: ``812p``, ``33kp``."""
    return f"{n}p" if n < 1000 else f"{n / 1000:.0f}kp"


#: how each transfer kind is named next to its bytes
KIND_WORDS = {"linked": "linked", "copied": "copied", "streamed": "sent", "storage": "storage"}


class MigrationStats(Static):
    """Bytes per transfer kind, rate and ETA, frozen time and pre-copy rounds.

    Why per kind: images hard-linked on a shared filesystem move no bytes, so
    "sent 0 B" was a lie; each kind is named for what happened to the bytes,
    with the share of its step done (every kind that finished says 100%).
    """

    def show(self, state: MigrationState) -> None:
        t = Text()
        cur = state.transfer
        latest: dict[str, Transfer] = {tr.kind: tr for tr in state.transfers}  # the newest step of each kind
        kinds = state.bytes_by_kind()
        if not kinds:
            t.append("moved   ", style="bold")
            t.append("—\n")
        for kind, n in kinds[-3:]:  # linked and streamed never both: at most storage, copied and one of them
            t.append(f"{KIND_WORDS.get(kind, kind):<8}", style="bold")
            line = human_bytes(n)
            last = latest[kind]
            if last.total:
                line += f" / {human_bytes(last.total)}" if not last.finished else ""
                line += f"  {100 * (last.fraction or 0):.0f}%"
            if kind == "linked":
                line += " (no copy)"
            t.append(line + "\n")
        t.append("rate    ", style="bold")
        moving = cur is not None and not cur.finished
        rate = cur.rate if cur is not None and moving and cur.rate > 0 else 0.0
        t.append(f"{human_bytes(rate)}/s" if rate else "—")
        t.append("  ETA ", style="bold")
        t.append(f"{human_time(cur.eta if cur is not None and moving else None)}\n")
        t.append("frozen  ", style="bold")
        t.append(f"{human_time(state.frozen)}\n")
        t.append("rounds  ", style="bold")
        rounds = " ".join(f"{r.round}:{pages(r.pages_written)}" for r in state.rounds[-3:])
        if state.final is not None:  # the final dump is not a round: named apart
            rounds = (rounds + " " if rounds else "") + f"final:{pages(state.final.pages_written)}"
        t.append(rounds or "—")
        self.update(t)
