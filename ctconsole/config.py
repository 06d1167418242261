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

import contextlib
import errno
import os
import shutil
import stat
from pathlib import Path

from ctconsole.errors import CtError


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


class UnsafeDirectory(CtError):
    """A state/run/images directory ctconsole will not use (symlink on the way, foreign owner)."""


def _ancestor_ok(st: os.stat_result) -> bool:
    """An existing directory above ours: ours or root's, and if others may write there, sticky (like /tmp)."""
    if st.st_uid not in (0, os.geteuid()):
        return False
    return not (st.st_mode & 0o022) or bool(st.st_mode & stat.S_ISVTX)


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) and make it mode 0700: images and sockets live there.

    Why a walk instead of ``mkdir -p``: ``CTCONSOLE_*_DIR`` and the defaults may
    sit in a shared place such as /tmp, where another local user can plant a
    symlink or a directory of their own before we run. Each component is
    opened with O_NOFOLLOW relative to its parent's fd (a symlink anywhere is
    refused); every existing directory on the way must belong to root or to
    us, and may be writable by others only if it is sticky; the final
    directory must be ours, and is made 0700 through its fd.
    """
    text = os.path.abspath(os.fspath(path))
    parts = [p for p in text.split("/") if p]
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open("/", flags)
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o700 if last else 0o755, dir_fd=fd)
            try:
                nfd = os.open(part, flags, dir_fd=fd)
            except OSError as exc:
                where = "/" + "/".join(parts[: i + 1])
                why = "a symbolic link" if exc.errno in (errno.ELOOP, errno.ENOTDIR) else exc.strerror
                raise UnsafeDirectory(f"refusing directory {text}: {where} is {why}",
                                      ["ctconsole never follows symlinks for its own directories"]) from None
            os.close(fd)
            fd = nfd
            st = os.fstat(fd)
            where = "/" + "/".join(parts[: i + 1])
            if last:
                if st.st_uid != os.geteuid():
                    raise UnsafeDirectory(f"refusing directory {text}: it is owned by uid {st.st_uid}, not by us",
                                          ["remove it, or point the CTCONSOLE_*_DIR setting elsewhere"])
                os.fchmod(fd, 0o700)
            elif not _ancestor_ok(st):
                raise UnsafeDirectory(
                    f"refusing directory {text}: {where} is owned by uid {st.st_uid} "
                    f"(mode {st.st_mode & 0o7777:o}), so another user could swap what is below it",
                    ["use a directory whose parents belong to root or to you"])
    finally:
        os.close(fd)
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
