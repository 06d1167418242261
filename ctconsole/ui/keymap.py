"""Every key of the console, declared once.

Why one table: the screens' ``BINDINGS``, the help screen and the command
palette are all generated from :data:`ACTIONS`, so a key cannot exist
without being documented and offered in the palette. Each binding has an
``id`` (``scope.action``) that the ``[keys]`` table of the user config can
remap, e.g. ``"containers.check" = "c,f5"``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from textual.binding import Binding, BindingType


@dataclass(frozen=True)
class ActionSpec:
    scope: str  # "app" or a screen's scope name
    action: str  # textual action (method action_<name> on the screen/app)
    key: str  # default key(s), comma separated
    title: str  # short, shown in the footer
    help: str  # one sentence for the help screen and the palette
    show: bool = True  # in the footer
    priority: bool = False

    @property
    def id(self) -> str:
        return f"{self.scope}.{self.action}"


ACTIONS: tuple[ActionSpec, ...] = (
    # app-wide
    ActionSpec("app", "help", "f1,question_mark", "Help", "Show every key of every screen"),
    ActionSpec("app", "command_palette", "ctrl+p", "Palette", "Search every action by name", show=False),
    ActionSpec("app", "cycle_theme", "ctrl+t", "Theme", "Switch to the next theme (remembered)", show=False),
    ActionSpec("app", "troubleshoot", "t", "Trouble", "Open troubleshooting: CRIU logs and history"),
    ActionSpec("app", "quit", "ctrl+q", "Quit", "Leave the console", show=False, priority=True),
    # hosts & containers
    ActionSpec("containers", "filter", "slash", "Filter", "Filter containers by name, runtime or id"),
    ActionSpec("containers", "clear_filter", "escape", "Clear", "Clear the filter", show=False),
    ActionSpec("containers", "open_detail", "enter", "Detail", "Show the selected container's inventory"),
    ActionSpec("containers", "check", "c", "Check", "Run the feasibility check on the selected container"),
    ActionSpec("containers", "rules", "e", "Rules", "Edit the remap rules of the selected container"),
    ActionSpec("containers", "migrate", "m", "Migrate", "Migrate the selected container"),
    # not in the footer: the list rescans by itself every 2 s, and at 80 columns the footer was cut
    ActionSpec("containers", "refresh", "r", "Refresh", "Rescan the host now", show=False),
    ActionSpec("containers", "next_host", "h", "Host", "Show the next host (with --host)"),
    ActionSpec("containers", "quit", "q", "Quit", "Leave the console"),
    # container detail
    ActionSpec("detail", "next_tab", "right_square_bracket,l", "Next tab", "Next inventory tab", show=False),
    ActionSpec("detail", "prev_tab", "left_square_bracket,h", "Prev tab", "Previous inventory tab", show=False),
    ActionSpec("detail", "next_external", "x", "Next ext", "Jump to the next external item"),
    ActionSpec("detail", "check", "c", "Check", "Run the feasibility check"),
    ActionSpec("detail", "rules", "e", "Rules", "Edit this container's rules"),
    ActionSpec("detail", "migrate", "m", "Migrate", "Migrate this container"),
    ActionSpec("detail", "back", "escape", "Back", "Back to the container list"),
    # feasibility report
    ActionSpec(
        "report", "suggest", "e", "Rules", "Open the rules editor with every suggested rule for this destination"
    ),
    ActionSpec("report", "fix", "f", "Fix", "Open the rules editor pre-filled for the selected finding"),
    ActionSpec("report", "recheck", "c", "Recheck", "Run the check again"),
    ActionSpec("report", "migrate", "m", "Migrate", "Migrate this container"),
    ActionSpec("report", "rules_file", "ctrl+o", "File", "Choose the rules file in use (recent, default, none)"),
    ActionSpec("report", "back", "escape", "Back", "Back"),
    # rules editor
    ActionSpec("rules", "add", "a", "Add", "Add a rule"),
    ActionSpec("rules", "edit", "enter", "Edit", "Edit the selected rule"),
    ActionSpec("rules", "suggest", "g", "Suggest", "Add suggested rules for every external item that needs one"),
    ActionSpec("rules", "delete", "d", "Delete", "Delete the selected rule (asks first)"),
    ActionSpec("rules", "save", "s", "Save", "Save the rules file"),
    ActionSpec("rules", "back", "escape", "Back", "Back (unsaved changes are kept until you leave)"),
    # migration: the destination field has the focus, so no key here is a printable character
    ActionSpec("migrate", "preview", "ctrl+r", "Preview", "Preview what the migration will do"),
    ActionSpec("migrate", "start", "ctrl+g", "Start", "Start the migration (asks for confirmation)"),
    ActionSpec("migrate", "rules_file", "ctrl+o", "File", "Choose the rules file in use (recent, default, none)"),
    ActionSpec("migrate", "abort", "a", "Abort", "Abort the running migration (asks first)"),
    ActionSpec("migrate", "follow", "enter", "Show it", "Show the migrated container on its new host"),
    ActionSpec("migrate", "open_log", "t", "Log", "Open this migration's CRIU log in troubleshooting"),
    ActionSpec("migrate", "back", "escape", "Back", "Back (only when no migration runs)"),
    # troubleshooting
    ActionSpec(
        "trouble",
        "switch_tab",
        "right_square_bracket,left_square_bracket",
        "Log/History",
        "Switch between the log and the history",
    ),
    ActionSpec("trouble", "next_error", "n", "Next error", "Jump to the next Error line"),
    ActionSpec("trouble", "prev_error", "N", "Prev error", "Jump to the previous Error line", show=False),
    ActionSpec("trouble", "open_entry", "o", "Open log", "Open the selected history entry's log"),
    ActionSpec("trouble", "back", "escape", "Back", "Back"),
)

SCOPE_TITLES = {
    "app": "Everywhere",
    "containers": "Hosts & containers",
    "detail": "Container detail",
    "report": "Feasibility report",
    "rules": "Rules editor",
    "migrate": "Migration",
    "trouble": "Troubleshooting",
}


def actions(scope: str) -> list[ActionSpec]:
    return [a for a in ACTIONS if a.scope == scope]


def bindings(scope: str) -> list[BindingType]:
    """``BINDINGS`` for a screen (or the app): each with its remappable id."""
    return [
        Binding(a.key, a.action, a.title, show=a.show, priority=a.priority, id=a.id, tooltip=a.help)
        for a in actions(scope)
    ]


def keymap_from_config(config: dict[str, Any], known: Iterable[str] | None = None) -> tuple[dict[str, str], list[str]]:
    """The ``[keys]`` table as a Textual keymap, plus one warning per unknown id or bad value."""
    table = config.get("keys", {})
    if not isinstance(table, dict):
        return {}, ["[keys] in the config must be a table"]
    ids = set(known) if known is not None else {a.id for a in ACTIONS}
    keymap: dict[str, str] = {}
    warnings: list[str] = []
    for bid, keys in table.items():
        if bid not in ids:
            warnings.append(f"unknown key binding id {bid!r} in config")
        elif not isinstance(keys, str) or not keys.strip():
            warnings.append(f"key binding {bid!r} must be a non-empty string")
        else:
            keymap[bid] = keys
    return keymap, warnings


_SPECIAL = {
    "escape", "enter", "tab", "backspace", "delete", "insert", "home", "end", "pageup", "pagedown",
    "up", "down", "left", "right", "space",
}


def is_printable(key: str) -> bool:
    """Whether a key types a character in a text field (``a``, ``slash``, ``question_mark``...).

    Why: a binding on such a key cannot work while an input has the focus (the
    input takes the character), so the screens switch it off (and out of the
    footer) then; ctrl/alt/function keys and enter/escape always work.
    """
    key = key.strip()
    if "+" in key or key in _SPECIAL:
        return False
    return not (key.startswith("f") and key[1:].isdigit())


def typed_only(scope: str, action: str, keymap: dict[str, str]) -> bool:
    """True when every key of ``scope.action`` (as remapped) is a printable character."""
    spec = next((a for a in ACTIONS if a.scope == scope and a.action == action), None)
    if spec is None:
        return False
    return all(is_printable(k) for k in keymap.get(spec.id, spec.key).split(","))


def display_key(keys: str) -> str:
    """``question_mark,f1`` -> ``? / f1`` for the help screen."""
    names = {
        "question_mark": "?",
        "slash": "/",
        "escape": "esc",
        "right_square_bracket": "]",
        "left_square_bracket": "[",
    }
    return " / ".join(names.get(k.strip(), k.strip()) for k in keys.split(","))


def effective_key(spec: ActionSpec, keymap: dict[str, str]) -> str:
    return display_key(keymap.get(spec.id, spec.key))
