"""Process helpers for the lab: run tools, start detached daemons, kill only what we started.

Why a pid *and* its start time: PID 1 on these machines reaps slowly and pids
get reused; the lab must never kill a process it did not start, so every pid it
records is paired with its ``starttime`` (field 22 of /proc/PID/stat) and a
kill only happens when both still match.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ctconsole import process
from ctconsole.errors import CtError


class LabError(CtError):
    """A lab step failed; the message says which and the details carry the tool's output."""


@dataclass(frozen=True)
class ProcRef:
    """A process the lab started: pid plus its kernel start time (guards against pid reuse)."""

    pid: int
    start: int
    what: str = ""

    def alive(self) -> bool:
        return self.pid > 0 and start_time(self.pid) == self.start and not is_zombie(self.pid)


def start_time(pid: int) -> int:
    """Kernel start time of ``pid`` in clock ticks, or -1 when it does not exist (ctconsole.process reads it)."""
    st = process.read_stat(pid)
    return st.start_time if st else -1


def is_zombie(pid: int) -> bool:
    st = process.read_stat(pid)
    return st is not None and st.state in process.EXITED_STATES


def ppid_of(pid: int) -> int:
    st = process.read_stat(pid)
    return st.ppid if st else -1


def ref(pid: int, what: str = "") -> ProcRef:
    """Record ``pid`` now (its start time is read immediately)."""
    return ProcRef(pid, start_time(pid), what)


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (all threads' children files)."""
    return process.children(pid)


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 30.0,
    env: dict[str, str] | None = None,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a tool with captured output; a failure becomes a :class:`LabError` with its stderr.

    ``close_fds`` and ``/dev/null`` stdin keep our own fds out of whatever the tool spawns
    (a daemon that inherits a pipe of ours would both block us and be undumpable).
    """
    try:
        cp = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            input=input_text,
            stdin=None if input_text is not None else subprocess.DEVNULL,
            close_fds=True,
        )
    except FileNotFoundError as exc:
        raise LabError(f"{argv[0]} is not installed (run scripts/setup)") from exc
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{' '.join(argv)} did not finish within {timeout:.0f} s") from exc
    if check and cp.returncode != 0:
        lines = [ln for ln in (cp.stderr or cp.stdout or "").splitlines() if ln.strip()][-8:]
        raise LabError(f"{' '.join(argv)} failed (exit {cp.returncode})", lines)
    return cp


def spawn(
    argv: Sequence[str],
    *,
    stdout: int | None = None,
    pass_fds: Sequence[int] = (),
    env: dict[str, str] | None = None,
    cwd: str | None = None,
) -> subprocess.Popen[bytes]:
    """Start a long-lived process in its own session, stdio on /dev/null, no inherited fds.

    Why: lab processes must be checkpointable (no fds leaking in from whoever
    ran ``ctconsole lab up``) and must survive the CLI exiting.
    """
    return subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=stdout if stdout is not None else subprocess.DEVNULL,
        stderr=subprocess.STDOUT if stdout is not None else subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
        pass_fds=tuple(pass_fds),
        env=env,
        cwd=cwd,
    )


def reap(pid: int) -> None:
    """Reap ``pid`` if it is our child (no-op otherwise): zombies of ours would look alive."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def wait_gone(pid: int, timeout: float = 5.0) -> bool:
    """Wait until ``pid`` has exited (zombie counts as gone); True when it did in time."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        reap(pid)
        if start_time(pid) < 0 or is_zombie(pid):
            return True
        time.sleep(0.02)
    return False


def kill(p: ProcRef, sig: int = signal.SIGKILL, timeout: float = 5.0) -> bool:
    """Kill ``p`` only if it is still the process we started; True when it is gone afterwards."""
    if not p.alive():
        reap(p.pid)
        return True
    try:
        os.kill(p.pid, sig)
    except ProcessLookupError:
        return True
    return wait_gone(p.pid, timeout)


def wait_for(cond: Callable[[], object], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``cond()`` until true or raise a :class:`LabError` naming ``what``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(interval)
    raise LabError(f"timed out after {timeout:.0f} s waiting for {what}")
