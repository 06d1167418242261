"""Readers for /proc that never raise on a vanished process.

Why this module: every part of the inventory reads /proc, and processes exit
while we read. Each reader returns ``None`` (or an empty value) when the entry
is gone or unreadable, so callers skip the process instead of crashing. The
readers are plain functions over paths so tests can point them at a fake
tree via ``PROC``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ctconsole.process import ProcStat, parse_stat

__all__ = ["ProcStat", "parse_stat"]  # the one stat parser (ctconsole.process), read here from PROC

PROC = "/proc"

#: Namespace kinds, in the order ``/proc/PID/ns`` is usually listed.
NS_KINDS = ("cgroup", "ipc", "mnt", "net", "pid", "time", "user", "uts")


@dataclass
class ProcStatus:
    """Fields from ``/proc/PID/status``: pid namespace ids, tracer, uid, pending signals."""

    nspid: tuple[int, ...] = ()
    tracer_pid: int = 0
    uid: int = 0
    sigpnd_trap: bool = False


@dataclass
class MountInfo:
    """One line of ``/proc/PID/mountinfo``."""

    mount_id: int
    parent_id: int
    major: int
    minor: int
    root: str
    mountpoint: str
    options: str
    propagation: str
    fstype: str
    source: str
    super_options: str = ""


@dataclass
class FdInfo:
    """The parts of ``/proc/PID/fdinfo/N`` we use."""

    flags: int = 0
    mnt_id: int = 0
    tty_index: int = -1
    locks: list[str] = field(default_factory=list)


_O_RDONLY = os.O_RDONLY | os.O_CLOEXEC
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_CHUNK = 16384


def _read(path: str, one_record: bool = False) -> str | None:
    """Whole file as text, or None.

    Why os.open/os.read and not open(): a scan reads a few thousand small
    /proc files and the buffered-file machinery (object, fstat, buffer) costs
    about as much as the syscalls themselves. ``one_record`` files (stat,
    status, fdinfo, cmdline: one seq_file record or a plain copy) hand over
    everything in the first read, so a short read is the end and the read
    that would return b"" is skipped; multi-record seq files (mountinfo)
    return at most a page per read and are read until EOF.
    """
    try:
        fd = os.open(path, _O_RDONLY)
    except (OSError, ValueError):
        return None
    try:
        data = os.read(fd, _CHUNK)
        if data and not (one_record and len(data) < _CHUNK):
            more = os.read(fd, _CHUNK)
            while more:
                data += more
                more = os.read(fd, _CHUNK)
    except OSError:
        return None
    finally:
        os.close(fd)
    return data.decode("utf-8", "surrogateescape")


def list_pids() -> list[int]:
    """All pids visible in our pid namespace (thread-group leaders only)."""
    out = []
    try:
        with os.scandir(PROC) as it:
            for entry in it:
                name = entry.name
                if name.isdigit():
                    out.append(int(name))
    except OSError:
        return []
    return out


def read_stat(pid: int) -> ProcStat | None:
    text = _read(f"{PROC}/{pid}/stat", one_record=True)
    return parse_stat(pid, text) if text else None


def _field(text: str, key: str) -> str:
    """Value of ``Key:`` in a status file; str.find beats splitting ~55 lines per process."""
    i = text.find("\n" + key + ":")
    if i < 0:
        return ""
    i += len(key) + 2
    j = text.find("\n", i)
    return text[i : j if j >= 0 else len(text)].strip()


def parse_status(text: str) -> ProcStatus:
    text = "\n" + text
    st = ProcStatus()
    try:
        nspid = _field(text, "NSpid")
        st.nspid = tuple(int(v) for v in nspid.split()) if nspid else ()
        st.tracer_pid = int(_field(text, "TracerPid") or 0)
        uid = _field(text, "Uid")
        st.uid = int(uid.split()[0]) if uid else 0
        pending = int(_field(text, "SigPnd") or "0", 16) | int(_field(text, "ShdPnd") or "0", 16)
    except ValueError:
        return st
    st.sigpnd_trap = bool(pending & 0x10)  # bit 5 (SIGTRAP) - CRIU refuses to dump it
    return st


def read_status(pid: int) -> ProcStatus | None:
    text = _read(f"{PROC}/{pid}/status", one_record=True)
    return parse_status(text) if text else None


def read_cmdline(pid: int) -> str:
    text = _read(f"{PROC}/{pid}/cmdline", one_record=True)
    if not text:
        return ""
    return " ".join(text.rstrip("\0").split("\0"))


def ns_inode(pid: int, kind: str) -> int:
    """Inode of one namespace of ``pid`` (0 when unreadable: gone, or no permission)."""
    try:
        link = os.readlink(f"{PROC}/{pid}/ns/{kind}")
    except OSError:
        return 0
    return parse_ns_link(link)


def parse_ns_link(link: str) -> int:
    """``net:[4026531840]`` -> 4026531840."""
    lb = link.find("[")
    if lb < 0 or not link.endswith("]"):
        return 0
    try:
        return int(link[lb + 1 : -1])
    except ValueError:
        return 0


def namespaces(pid: int, pid_ns: int = 0) -> dict[str, int]:
    """kind -> inode for every namespace kind the kernel exposes (missing kinds left out).

    ``pid_ns``: the pid namespace inode, when the caller read it already (a
    task's pid namespace never changes), saves one readlink per process.
    """
    out: dict[str, int] = {}
    try:  # readlinks relative to the open ns directory: one path component each instead of four
        dfd = os.open(f"{PROC}/{pid}/ns", _O_DIR)
    except OSError:
        return out
    try:
        for kind in NS_KINDS:
            if pid_ns and kind == "pid":
                ino = pid_ns
            else:
                try:
                    ino = parse_ns_link(os.readlink(kind, dir_fd=dfd))
                except OSError:
                    continue
            if ino:
                out[kind] = ino
    finally:
        os.close(dfd)
    if pid_ns and len(out) == 1:
        return {}  # nothing else readable: the process is gone, as a full read would say
    return out


def read_cgroups(pid: int) -> dict[str, str]:
    """controller list -> path; the cgroup v2 line ``0::/path`` is keyed ``unified``."""
    text = _read(f"{PROC}/{pid}/cgroup")
    out: dict[str, str] = {}
    if not text:
        return out
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            out[parts[1] or "unified"] = parts[2]
    return out


def read_lsm_label(pid: int) -> str:
    """SELinux context or AppArmor profile from ``attr/current`` ("" when no LSM is active)."""
    text = _read(f"{PROC}/{pid}/attr/current")
    if not text:
        return ""
    return text.strip().strip("\0")


def list_fds(pid: int) -> list[tuple[int, str]] | None:
    """(fd, link text) for every open fd, or None when the process is gone/unreadable."""
    # relative to an open fd directory: the kernel walks one component per readlink instead of
    # four (/proc, PID, fd, N) and no path string is built per fd; ~5% off the ~10,000 readlinks
    # of a 200-container host
    try:
        dfd = os.open(f"{PROC}/{pid}/fd", _O_DIR)
    except OSError:
        return None
    out = []
    readlink = os.readlink
    try:
        for name in os.listdir(dfd):
            try:
                out.append((int(name), readlink(name, dir_fd=dfd)))
            except (OSError, ValueError):
                continue  # fd closed between listdir and readlink
    except OSError:
        return None
    finally:
        os.close(dfd)
    return out


def parse_fdinfo(text: str) -> FdInfo:
    info = FdInfo()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        value = value.strip()
        if key == "flags":
            info.flags = int(value, 8)
        elif key == "mnt_id":
            info.mnt_id = int(value)
        elif key == "tty-index":
            info.tty_index = int(value)
        elif key == "lock":
            info.locks.append(value)
    return info


def read_fdinfo(pid: int, fd: int) -> FdInfo | None:
    text = _read(f"{PROC}/{pid}/fdinfo/{fd}", one_record=True)
    return parse_fdinfo(text) if text is not None else None


def fd_stat(pid: int, fd: int) -> os.stat_result | None:
    """stat() of the open file itself (follows the magic link)."""
    try:
        return os.stat(f"{PROC}/{pid}/fd/{fd}")
    except OSError:
        return None


def _unescape(s: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040 ...)."""
    if "\\" not in s:
        return s
    out = []
    i = 0
    while i < len(s):
        if s[i] == "\\" and i + 4 <= len(s) and s[i + 1 : i + 4].isdigit():
            out.append(chr(int(s[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


#: mountinfo line without its two mount ids -> the other fields, parsed. Every mount namespace
#: created by unshare/clone starts as a copy of its parent's, so 200 containers repeat the same
#: few dozen lines with fresh ids; parsing each distinct tail once halves the mountinfo cost.
_MOUNT_TAILS: dict[str, tuple[int, int, str, str, str, str, str, str, str] | None] = {}


def _parse_mount_tail(tail: str) -> tuple[int, int, str, str, str, str, str, str, str] | None:
    f = tail.split()
    try:
        sep = f.index("-", 4)
        major, minor = f[0].split(":")
        return (
            int(major),
            int(minor),
            _unescape(f[1]),
            _unescape(f[2]),
            f[3],
            " ".join(f[4:sep]),
            f[sep + 1],
            _unescape(f[sep + 2]) if len(f) > sep + 2 else "",
            f[sep + 3] if len(f) > sep + 3 else "",
        )
    except (ValueError, IndexError):
        return None


def parse_mountinfo(text: str) -> list[MountInfo]:
    out = []
    cache = _MOUNT_TAILS
    if len(cache) > 8192:  # a host with endless distinct mounts: do not grow without bound
        cache.clear()
    for line in text.splitlines():
        ids = line.split(None, 2)
        if len(ids) < 3:
            continue
        tail = ids[2]
        parsed = cache.get(tail)
        if parsed is None:
            if tail in cache:
                continue  # known unparsable
            parsed = cache[tail] = _parse_mount_tail(tail)
            if parsed is None:
                continue
        try:
            mount_id, parent_id = int(ids[0]), int(ids[1])
        except ValueError:
            continue
        out.append(MountInfo(mount_id, parent_id, *parsed))
    return out


def read_mountinfo(pid: int) -> list[MountInfo] | None:
    text = _read(f"{PROC}/{pid}/mountinfo")
    return parse_mountinfo(text) if text is not None else None


def read_locks() -> set[tuple[int, int, int]]:
    """(major, minor, inode) of every file with a lock or lease (``/proc/locks``)."""
    return parse_locks(_read(f"{PROC}/locks") or "")


def parse_locks(text: str) -> set[tuple[int, int, int]]:
    out = set()
    for line in text.splitlines():
        f = line.split()
        # "1: POSIX  ADVISORY  WRITE 1234 08:01:12345 0 EOF"; blocked waiters have "->" first
        if len(f) > 1 and f[1] == "->":
            f = [f[0], *f[2:]]
        if len(f) < 6:
            continue
        try:
            maj, mino, ino = f[5].split(":")
            out.add((int(maj, 16), int(mino, 16), int(ino)))
        except ValueError:
            continue
    return out


def root_link(pid: int) -> str:
    try:
        return os.readlink(f"{PROC}/{pid}/root")
    except OSError:
        return ""
