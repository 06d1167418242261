"""A journal per migration, and the per-container migration lock.

Why: a migration spans two hosts and a frozen source; if ctconsole itself
dies half-way, the next start must find out what happened and finish the job
(resume/clean the source, clean or commit the destination). Each migration
appends JSON lines to ``<state_dir>/journal/<id>.jsonl``; every line that
recovery acts on is flushed and fsynced before the step it announces is
taken (progress records are written unsynced: see :meth:`Journal.write`). A journal without
an ``end`` record whose lock is free belongs to a dead ctconsole:
:func:`ctconsole.migrate.recovery.recover` resolves it. ``ctconsole history`` reads the same files.

Record kinds: begin, phase, options, dump_stats, restore_stats, restored,
acked, source_released, committed, error, timeline, end.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctconsole.config import private_dir, run_dir, state_dir
from ctconsole.errors import CtError


def journal_dir() -> Path:
    return private_dir(state_dir() / "journal")


def new_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:8]


class Journal:
    """Append-only JSON-lines record of one migration."""

    def __init__(self, mid: str, path: Path | None = None) -> None:
        self.id = mid
        self.path = path or journal_dir() / f"{mid}.jsonl"

    def write(self, kind: str, *, durable: bool = True, **fields: Any) -> None:
        """Append one record; ``durable`` (the default) fsyncs it before returning.

        Why optional: inside the frozen window every fsync is downtime, and
        progress records (phase, sent, stats, timeline) decide nothing in
        :func:`recover`. They still reach the file at once (other readers and
        the fault tests see them) and are made durable by the next fsynced
        record, which flushes the whole file. Records that recovery acts on
        (begin, options, restored, source_released, end) stay durable.
        """
        rec = {"ts": time.time(), "kind": kind, **fields}
        line = json.dumps(rec, default=str, sort_keys=False) + "\n"
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = "\n" + line  # a crash tore the last line: do not glue this record to it
            os.write(fd, line.encode())
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)

    def records(self) -> list[dict[str, Any]]:
        return read_records(self.path)


def read_records(path: Path) -> list[dict[str, Any]]:
    """All well-formed records of a journal (a torn last line after a crash is skipped)."""
    out = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def journals() -> list[Path]:
    return sorted(journal_dir().glob("*.jsonl"))


@dataclass
class Summary:
    """One line of ``ctconsole history``."""

    id: str
    container: str
    dest: str
    strategy: str
    started: float
    ended: float | None
    result: str
    message: str = ""
    phases: list[str] = field(default_factory=list)
    downtime: float | None = None
    frozen: float | None = None
    errors: list[str] = field(default_factory=list)
    name: str = ""  # the container's name from ``begin`` (``container`` is its id, e.g. ns-4026532184)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def summarize(path: Path) -> Summary:
    recs = read_records(path)
    begin = next((r for r in recs if r.get("kind") == "begin"), {})
    end = next((r for r in reversed(recs) if r.get("kind") == "end"), None)
    s = Summary(
        id=path.stem,
        container=str(begin.get("container", "?")),
        dest=str(begin.get("dest", "?")),
        strategy=str(begin.get("strategy", "?")),
        started=float(recs[0]["ts"]) if recs else 0.0,
        ended=float(end["ts"]) if end else None,
        result=str(end.get("result")) if end else "unfinished",
        message=str(end.get("message", "")) if end else "",
        name=str(begin.get("name", "") or ""),
    )
    last_unresolved = next((r for r in reversed(recs) if r.get("kind") == "unresolved"), None)
    if end is None and last_unresolved is not None:
        # recovery (or the engine) could not finish it: say why, e.g. "unresolved: destination unreachable"
        s.result = "unresolved"
        note = str(last_unresolved.get("message", ""))
        reason = last_unresolved.get("reason", "")
        s.message = note if note.startswith("unresolved") else f"unresolved: {reason}: {note}"
    for r in recs:
        k = r.get("kind")
        if k == "plan":
            s.strategy = f"{r.get('strategy')}/{r.get('mode')}"
        elif k == "phase":
            s.phases.append(str(r.get("phase")))
        elif k == "error":
            s.errors.append(str(r.get("message")))
        elif k == "end":
            s.downtime = r.get("downtime")
            s.frozen = r.get("frozen")
    return s


# -- locking -------------------------------------------------------------------------
_KEY_RE = re.compile(r"[^A-Za-z0-9_.-]+")


def lock_path(key: str) -> Path:
    return private_dir(run_dir() / "locks") / (_KEY_RE.sub("_", key)[:100] + ".lock")


class MigrationLock:
    """``flock`` on ``<run_dir>/locks/<container>.lock``: one migration per container at a time.

    The kernel drops the lock when the holder dies, which is also how
    :func:`recover` tells a dead migration from a running one.
    """

    def __init__(self, key: str) -> None:
        self.path = lock_path(key)
        self.fd: int | None = None

    def acquire(self) -> MigrationLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CtError("another migration of this container is in progress",
                          [f"lock held: {self.path}"]) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self.fd, fcntl.LOCK_UN)
                os.close(self.fd)
            self.fd = None

    def __enter__(self) -> MigrationLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_free(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


# -- what recovery looks at (ctconsole.migrate.recovery) ------------------------------------
def unfinished() -> list[Path]:
    """Journals without an end record whose migration lock is free (their ctconsole died)."""
    out = []
    for p in journals():
        recs = read_records(p)
        if not recs or any(r.get("kind") == "end" for r in recs):
            continue
        begin = next((r for r in recs if r.get("kind") == "begin"), None)
        if begin is None or not lock_free(Path(str(begin.get("lock", "")))):
            continue
        out.append(p)
    return out
