"""Themes from TOML files, and the user config that remembers the chosen one.

Why files: operators tune colours for their terminals without touching code,
and a broken file must not stop the console — :func:`load_themes` returns
the themes that parsed plus one error line per bad file, which the app shows
once as a notification.

Where themes are found, later directories overriding earlier ones by name:

1. ``ctconsole/themes`` inside an installed package (package data),
2. ``themes/`` at the root of a source checkout,
3. ``config_dir()/themes`` for the operator's own.

The user config (``config_dir()/config.toml``) is a tiny TOML file::

    theme = "ctconsole-dark"
    [keys]
    "containers.check" = "c"

It is written atomically (temp file + rename) so a crash never leaves it half-written.
"""

from __future__ import annotations

import os
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textual.color import Color, ColorParseError
from textual.theme import Theme

from ctconsole.config import config_dir

DEFAULT_THEME = "ctconsole-dark"
COLOR_FIELDS = (
    "primary",
    "secondary",
    "warning",
    "error",
    "success",
    "accent",
    "foreground",
    "background",
    "surface",
    "panel",
    "boost",
)
_PKG_DIR = Path(__file__).resolve().parent.parent  # ctconsole/


def theme_dirs() -> list[Path]:
    """Directories searched for ``*.toml`` themes, in override order."""
    return [_PKG_DIR / "themes", _PKG_DIR.parent / "themes", config_dir() / "themes"]


class ThemeFileError(ValueError):
    """A theme file that cannot be used, with a message naming the file and the problem."""


def theme_from_dict(data: dict[str, Any], source: str = "<dict>") -> Theme:
    """Validate a parsed theme table and build a :class:`Theme` (raises ThemeFileError)."""
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ThemeFileError(f"{source}: 'name' is missing")
    if "primary" not in data:
        raise ThemeFileError(f"{source}: 'primary' is missing")
    kwargs: dict[str, Any] = {}
    for key in COLOR_FIELDS:
        if key in data:
            value = data[key]
            try:
                Color.parse(value)
            except (ColorParseError, TypeError, ValueError):
                raise ThemeFileError(f"{source}: {key} = {value!r} is not a colour") from None
            kwargs[key] = value
    unknown = set(data) - {*COLOR_FIELDS, "name", "dark", "variables", "luminosity_spread", "text_alpha"}
    if unknown:
        raise ThemeFileError(f"{source}: unknown keys {', '.join(sorted(unknown))}")
    variables = data.get("variables", {})
    if not isinstance(variables, dict) or not all(isinstance(v, str) for v in variables.values()):
        raise ThemeFileError(f"{source}: [variables] must map names to strings")
    for opt in ("luminosity_spread", "text_alpha"):
        if opt in data:
            if not isinstance(data[opt], int | float):
                raise ThemeFileError(f"{source}: {opt} must be a number")
            kwargs[opt] = float(data[opt])
    return Theme(name=name.strip(), dark=bool(data.get("dark", True)), variables=dict(variables), **kwargs)


def load_theme_file(path: Path) -> Theme:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ThemeFileError(f"{path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ThemeFileError(f"{path}: {exc}") from None
    return theme_from_dict(data, str(path))


@dataclass
class ThemeSet:
    themes: dict[str, Theme]
    errors: list[str]


def load_themes(dirs: list[Path] | None = None) -> ThemeSet:
    """Every theme that parses; bad files become error lines, never exceptions."""
    themes: dict[str, Theme] = {}
    errors: list[str] = []
    for d in dirs if dirs is not None else theme_dirs():
        if not d.is_dir():
            continue
        for path in sorted(d.glob("*.toml")):
            try:
                t = load_theme_file(path)
            except ThemeFileError as exc:
                errors.append(str(exc))
                continue
            themes[t.name] = t
    return ThemeSet(themes, errors)


def resolve_theme(name: str | None, available: list[str] | set[str] | dict[str, Any]) -> str | None:
    """Accept ``ctconsole-dark`` or just ``dark``; None when nothing matches."""
    if not name:
        return None
    if name in available:
        return name
    prefixed = f"ctconsole-{name}"
    return prefixed if prefixed in available else None


# --------------------------------------------------------------- user config
def config_path() -> Path:
    return config_dir() / "config.toml"


def read_user_config() -> dict[str, Any]:
    """The user config, or {} when absent or unreadable (a bad file must not block the console)."""
    try:
        return tomllib.loads(config_path().read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return {}


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return str(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return _toml_str(str(v))


def dump_toml(data: dict[str, Any]) -> str:
    """Enough TOML for the config: scalars first, then one level of tables."""
    lines = [
        f"{_toml_str(k) if not k.isidentifier() else k} = {_toml_value(v)}"
        for k, v in data.items()
        if not isinstance(v, dict)
    ]
    for k, v in data.items():
        if isinstance(v, dict):
            lines.append("")
            lines.append(f"[{k}]")
            lines.extend(f"{_toml_str(str(sk))} = {_toml_value(sv)}" for sk, sv in v.items())
    return "\n".join(lines) + "\n"


def write_user_config(data: dict[str, Any]) -> Path:
    """Write the config atomically: a temp file in the same directory, fsync, rename."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".config.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(dump_toml(data))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def remember_theme(name: str) -> None:
    """Store the chosen theme, keeping the rest of the config."""
    data = read_user_config()
    if data.get("theme") == name:
        return
    data["theme"] = name
    write_user_config(data)
