"""Files and sockets the agent opens on the peer's behalf, without following symlinks.

Why: the agent runs as root and the paths it opens for a restore (inherited
``open-file`` fds, ``connect-unix`` peers, bind-mount sources) come from the
console. A plain ``open(path, O_CREAT)`` follows symlinks in every component,
so a local user who owns any directory on the way (or plants ``/tmp/x`` as a
symlink) turns it into "root writes wherever I point". Here every path is
resolved with ``openat2(RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`` (Linux
5.6+, syscall 437 on x86_64 and aarch64) or, where that is missing, a walk
that opens one component at a time with ``O_NOFOLLOW``; the file itself is
then created relative to its parent's fd, so nothing can be swapped between
the check and the use.

A file is only created in a directory owned by root (the agent's euid) that
is not group/world-writable, so no other user can replace or pre-create what
the agent makes; every file created is recorded in a :class:`Ledger`, and
rollback removes exactly those (checked by device and inode, so a file that
was replaced meanwhile is left alone).

And the whole way there must be safe, as OpenSSH's ``StrictModes`` wants it
for ``authorized_keys`` (:func:`ancestors_problem`): every directory from
``/`` down to a container root, a bind source or the directory of a file the
agent creates is owned by root and not group/world-writable unless it is
sticky (``/tmp``: others may add entries there but not rename or remove
root's). Location alone is not enough: ``/tmp/alice/x`` is below an allowed
``/tmp``, but alice can rename her directory and put another ``x`` in its
place, however root-owned and private ``x`` itself is.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import socket
import stat
from dataclasses import dataclass, field

from ctconsole.errors import CtError

RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
_SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437, "arm64": 437}.get(platform.machine(), 0)
#: bits a file the agent creates never gets: group/other write and set-id/sticky
NEVER_BITS = 0o7022


class UnsafePath(CtError):
    """A path the agent will not open: a symlink on the way, a writable parent, the wrong file type."""


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc: ctypes.CDLL | None = None
_have_openat2 = _SYS_OPENAT2 != 0


def _openat2(dirfd: int, path: str, flags: int, mode: int, resolve: int) -> int:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    fd = int(_libc.syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(dirfd), ctypes.c_char_p(os.fsencode(path)),
                           ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how))))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return fd


def _components(path: str) -> list[str]:
    if not path.startswith("/") or "\0" in path:
        raise UnsafePath(f"{path!r} is not an absolute path")
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise UnsafePath(f"{path!r}: '.' and '..' are not accepted in paths")
    return parts


def open_nofollow(path: str, flags: int = os.O_PATH | os.O_DIRECTORY) -> int:
    """Open an absolute ``path`` with no symlink in any component (the last one included)."""
    global _have_openat2
    parts = _components(path)
    if _have_openat2:
        try:
            return _openat2(-100, "/" + "/".join(parts), flags, 0, RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)
        except OSError as exc:
            if exc.errno not in (errno.ENOSYS, errno.EPERM):  # EPERM: a seccomp filter that blocks it
                raise
            _have_openat2 = False
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if stat.S_ISLNK(os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode):
                raise OSError(errno.ELOOP, "symbolic link in path", path)
            # O_NOFOLLOW: a link swapped in after the look above fails the open (ELOOP/ENOTDIR)
            f = (flags if last else os.O_PATH | os.O_DIRECTORY) | os.O_NOFOLLOW | os.O_CLOEXEC
            nfd = os.open(part, f, dir_fd=fd)
            os.close(fd)
            fd = nfd
            if stat.S_ISLNK(os.fstat(fd).st_mode):  # O_PATH|O_NOFOLLOW opens a link itself
                raise OSError(errno.ELOOP, "symbolic link in path", path)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _explain(path: str, exc: OSError) -> UnsafePath:
    if exc.errno == errno.ELOOP:
        return UnsafePath(f"{path}: a symbolic link is on the way (the agent never follows links)")
    if exc.errno == errno.ENOTDIR:
        return UnsafePath(f"{path}: a component is not a directory")
    if exc.errno == errno.EXDEV:
        return UnsafePath(f"{path}: the path crosses a magic link")
    return UnsafePath(f"{path}: {exc.strerror or exc}")


def ancestors_problem(path: str) -> str:
    """Why the way to ``path`` is unsafe, or "": every directory from ``/`` to its parent must be root's.

    Root's means owned by the agent's euid and not group/world-writable
    unless sticky; no component may be a symlink. ``path`` itself is not
    looked at (its own rules differ: a container root, a bind source, a file).
    """
    try:
        parts = _components(path)
    except UnsafePath as exc:
        return exc.message
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    where = "/"
    try:
        for i, part in enumerate(parts):
            st = os.fstat(fd)
            if st.st_uid != os.geteuid():
                return f"{where} (on the way to {path}) is owned by uid {st.st_uid}, not by root"
            if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
                return (f"{where} (on the way to {path}) is writable by "
                        f"{'others' if st.st_mode & 0o002 else 'its group'} and not sticky "
                        f"(mode {st.st_mode & 0o7777:o})")
            if i == len(parts) - 1:
                return ""
            try:
                nfd = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError as exc:
                return _explain(where.rstrip("/") + "/" + part, exc).message
            os.close(fd)
            fd = nfd
            where = where.rstrip("/") + "/" + part
        return ""  # path is "/"
    finally:
        os.close(fd)


def dir_problem(path: str, *, root_owned: bool, no_write: int) -> str:
    """Why directory ``path`` is unfit (an unsafe way there, symlinks, owner, ``no_write`` mode bits), or ""."""
    why = ancestors_problem(path)
    if why:
        return why
    try:
        fd = open_nofollow(path)
    except UnsafePath as exc:
        return exc.message
    except OSError as exc:
        return _explain(path, exc).message
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a directory"
    if root_owned and st.st_uid != os.geteuid():
        return f"{path} is owned by uid {st.st_uid}, not by root"
    if st.st_mode & no_write:
        return f"{path} is writable by {'others' if st.st_mode & 0o002 else 'its group'} (mode {st.st_mode & 0o7777:o})"
    return ""


def _safe_parent(path: str) -> tuple[int, str]:
    """The parent of ``path`` as an fd (root-owned, not group/world-writable) and the last name."""
    parts = _components(path)
    if not parts:
        raise UnsafePath("/ is not a file")
    parent = "/" + "/".join(parts[:-1])
    try:
        pfd = open_nofollow(parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise _explain(parent, exc) from None
    st = os.fstat(pfd)
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        os.close(pfd)
        raise UnsafePath(f"{parent} must be owned by root and not group/world-writable to hold a file the agent "
                         f"opens (owner uid {st.st_uid}, mode {st.st_mode & 0o7777:o})")
    why = ancestors_problem(parent)
    if why:
        os.close(pfd)
        raise UnsafePath(why)
    return pfd, parts[-1]


@dataclass
class Ledger:
    """What the agent created on the peer's behalf, so rollback removes exactly that."""

    files: list[tuple[str, int, int]] = field(default_factory=list)  # (path, st_dev, st_ino)

    def rollback(self) -> list[str]:
        removed = []
        for path, dev, ino in reversed(self.files):
            with contextlib.suppress(OSError, UnsafePath):
                pfd, name = _safe_parent(path)
                try:
                    st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
                    if (st.st_dev, st.st_ino) == (dev, ino):
                        os.unlink(name, dir_fd=pfd)
                        removed.append(path)
                finally:
                    os.close(pfd)
        self.files.clear()
        return removed

    def forget(self) -> None:
        """The migration was committed: what was created now belongs to the restored container."""
        self.files.clear()


#: the only non-regular files handed to a restore: the kernel's memory devices (major 1), opened as they
#: are and never created. Why: a container whose stdio is the host's /dev/null needs a /dev/null there
#: (CRIU compares the whole st_mode on restore: a regular file in its place fails after the freeze)
DEV_FILES = {"/dev/null": (1, 3), "/dev/zero": (1, 5), "/dev/full": (1, 7)}


def _open_dev_file(path: str, flags: int) -> int:
    want = DEV_FILES[path]
    fd = os.open(path, (flags & ~(os.O_CREAT | os.O_EXCL | os.O_TRUNC)) | os.O_NOFOLLOW | os.O_NOCTTY
                 | os.O_CLOEXEC)
    st = os.fstat(fd)
    if not stat.S_ISCHR(st.st_mode) or (os.major(st.st_rdev), os.minor(st.st_rdev)) != want:
        os.close(fd)
        raise UnsafePath(f"{path} is not the kernel's {path} device here")
    return fd


def open_file(path: str, flags: int, perm: int, ledger: Ledger) -> int:
    """Open ``path`` for an inherited fd: create it (``perm`` minus :data:`NEVER_BITS`) or open the existing file.

    ``flags`` are the open flags (O_CREAT means "create when missing"). An
    existing file must be a regular file (or one of :data:`DEV_FILES`, never
    created); a created one is recorded in ``ledger``. Raises
    :class:`UnsafePath` with the reason.
    """
    if path in DEV_FILES:
        try:
            return _open_dev_file(path, flags)
        except OSError as exc:
            raise _explain(path, exc) from None
    pfd, name = _safe_parent(path)
    base = (flags & ~(os.O_CREAT | os.O_EXCL)) | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC
    try:
        if flags & os.O_CREAT:
            with contextlib.suppress(FileExistsError):
                fd = os.open(name, base | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=pfd)
                st = os.fstat(fd)
                os.fchmod(fd, (perm if perm >= 0 else 0o644) & 0o7777 & ~NEVER_BITS)
                ledger.files.append((path, st.st_dev, st.st_ino))
                return fd
        try:
            before = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except OSError as exc:
            raise _explain(path, exc) from None
        if stat.S_ISLNK(before.st_mode):
            raise UnsafePath(f"{path} is a symbolic link (the agent never follows links)")
        if not stat.S_ISREG(before.st_mode):
            raise UnsafePath(f"{path} is not a regular file (the agent only opens regular files for a restore)")
        try:
            fd = os.open(name, base | os.O_NONBLOCK, dir_fd=pfd)
        except OSError as exc:
            raise _explain(path, exc) from None
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
            os.close(fd)
            raise UnsafePath(f"{path} changed while it was opened")
        os.set_blocking(fd, True)
        return fd
    finally:
        os.close(pfd)


def connect_unix(path: str, timeout: float = 10.0) -> int:
    """A stream socket connected to the unix socket at ``path``, reached without following symlinks."""
    parts = _components(path)
    if not parts:
        raise UnsafePath("/ is not a socket")
    parent = "/" + "/".join(parts[:-1])
    try:
        pfd = open_nofollow(parent)
    except OSError as exc:
        raise _explain(parent, exc) from None
    try:
        try:
            st = os.stat(parts[-1], dir_fd=pfd, follow_symlinks=False)
        except OSError as exc:
            raise _explain(path, exc) from None
        if not stat.S_ISSOCK(st.st_mode):
            raise UnsafePath(f"{path} is not a unix socket")
        via = f"/proc/self/fd/{pfd}/{parts[-1]}"  # our own fd: the parent cannot be swapped any more
        if len(os.fsencode(via)) > 107:
            raise UnsafePath(f"{path}: socket name too long")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(via)
        except OSError as exc:
            s.close()
            raise UnsafePath(f"cannot connect to {path}: {exc.strerror or exc}") from None
        return s.detach()
    finally:
        os.close(pfd)
