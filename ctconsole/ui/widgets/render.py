"""Turning model objects into table cells.

Why here: every screen marks external items the same way (a ``!`` column and
the theme's warning colour) and shows verdict badges the same way, so the
styling decisions live in one module and follow the current theme.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import App

from ctconsole.feasibility.findings import Report
from ctconsole.model import External
from ctconsole.ui.backend import verdict_word

VERDICT_STYLE = {"feasible": "success", "no-known-blockers": "success", "needs-rules": "warning", "infeasible": "error"}
SEVERITY_STYLE = {
    "blocker": "error",
    "needs-rule": "warning",
    "satisfied": "success",
    "auto": "success",
    "info": "primary",
}


def plain(value: object) -> Text:
    """A table cell shown literally: DataTable parses ``str`` cells as markup ("[eth0]" would vanish)."""
    return value if isinstance(value, Text) else Text(str(value))


def theme_color(app: App[Any], name: str, fallback: str = "yellow") -> str:
    """A colour of the current theme as a Rich style string."""
    theme = app.current_theme
    value = getattr(theme, name, None)
    return str(value) if value else fallback


def verdict_badge(app: App[Any], report: Report | None, checking: bool = False) -> Text:
    if checking:
        return Text("checking…", style="italic")
    if report is None:
        return Text("·", style="dim")
    color = VERDICT_STYLE.get(report.verdict, "foreground")
    return Text(verdict_word(report.verdict), style=f"bold {theme_color(app, color)}")


def severity_text(app: App[Any], severity: str) -> Text:
    return Text(severity, style=f"bold {theme_color(app, SEVERITY_STYLE.get(severity, 'foreground'), 'white')}")


def cell(app: App[Any], value: object, external: External | None) -> Text:
    """A cell of an item's row: warning-coloured when the item is external."""
    text = Text(str(value))
    if external is not None:
        text.stylize(theme_color(app, "warning"))
    return text


def ext_mark(app: App[Any], external: External | None) -> Text:
    if external is None:
        return Text(" ")
    return Text("!", style=f"bold {theme_color(app, 'warning')}")


def why_text(app: App[Any], what: str, external: External | None) -> Text:
    """The panel under a table: why the selected item is external and what handles it."""
    out = Text()
    out.append(what, style="bold")
    if external is None:
        out.append("\nnot external: CRIU checkpoints it with the container", style="dim")
        return out
    out.append("\nwhy:    ", style=f"bold {theme_color(app, 'warning')}")
    out.append(external.reason)
    out.append("\nremedy: ", style=f"bold {theme_color(app, 'primary')}")
    out.append(external.remedy)
    if external.holder:
        out.append(f"   (held by {external.holder})", style="dim")
    return out
