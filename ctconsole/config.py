"""Where ctconsole keeps its settings, state and journals.

Why: tests and the lab need to redirect everything (journals, caches, user
config) without touching the operator's real files, so every path comes from
one place and honours environment overrides:

- ``CTCONSOLE_CONFIG_DIR`` (default ``$XDG_CONFIG_HOME/ctconsole`` or ``~/.config/ctconsole``)
- ``CTCONSOLE_STATE_DIR``  (default ``/var/lib/ctconsole`` as root, else ``$XDG_STATE_HOME/ctconsole``)
- ``CTCONSOLE_RUN_DIR``    (default ``/run/ctconsole`` as root, else ``$XDG_RUNTIME_DIR/ctconsole``)
- ``CTCONSOLE_CRIU``       (path of the criu binary; default: ``criu`` on PATH, /usr/local/sbin first)
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def _home() -> Path:
    return Path(os.environ.get("HOME", "/root"))


def config_dir() -> Path:
    if v := os.environ.get("CTCONSOLE_CONFIG_DIR"):
        return Path(v)
    base = os.environ.get("XDG_CONFIG_HOME") or str(_home() / ".config")
    return Path(base) / "ctconsole"


def state_dir() -> Path:
    if v := os.environ.get("CTCONSOLE_STATE_DIR"):
        return Path(v)
    if os.geteuid() == 0:
        return Path("/var/lib/ctconsole")
    base = os.environ.get("XDG_STATE_HOME") or str(_home() / ".local/state")
    return Path(base) / "ctconsole"


def run_dir() -> Path:
    if v := os.environ.get("CTCONSOLE_RUN_DIR"):
        return Path(v)
    if os.geteuid() == 0:
        return Path("/run/ctconsole")
    base = os.environ.get("XDG_RUNTIME_DIR") or "/tmp"
    return Path(base) / "ctconsole"


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) and make it mode 0700: images and sockets live there."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def criu_binary() -> str:
    """The criu to run: ``$CTCONSOLE_CRIU``, else /usr/local/sbin/criu, else PATH."""
    if v := os.environ.get("CTCONSOLE_CRIU"):
        return v
    local = Path("/usr/local/sbin/criu")
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which("criu")
    return found or "criu"
