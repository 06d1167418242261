"""Real workloads for tests: processes we start ourselves, so we may kill them by PID.

Each workload writes an increasing counter to a file every ``interval``
seconds; after a checkpoint/restore the test reads the file and checks the
counter kept going without jumping back (no lost or repeated values).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

COUNTER_SRC = r"""
import os, sys, time
path, interval = sys.argv[1], float(sys.argv[2])
n = 0
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
while True:
    n += 1
    os.write(fd, b"%d %.6f\n" % (n, time.time()))
    time.sleep(interval)
"""


@dataclass
class Workload:
    proc: subprocess.Popen[bytes]
    counter_file: Path
    pids: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def ticks(self) -> list[int]:
        try:
            text = self.counter_file.read_text()
        except FileNotFoundError:
            return []
        return [int(line.split()[0]) for line in text.splitlines() if line.strip()]

    def last(self) -> int:
        t = self.ticks()
        return t[-1] if t else 0

    def wait_ticks(self, n: int, timeout: float = 10.0) -> None:
        end = time.monotonic() + timeout
        start = self.last()
        while time.monotonic() < end:
            if self.last() >= start + n:
                return
            time.sleep(0.02)
        raise AssertionError(f"workload stalled: no {n} new ticks in {timeout}s (last={self.last()})")

    def kill(self) -> None:
        for pid in {self.pid, *self.pids}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)


def assert_continuous(ticks: list[int]) -> None:
    """The counter never repeated or skipped a value (what an operator checks after a restore)."""
    assert ticks, "no ticks written"
    for a, b in itertools.pairwise(ticks):
        assert b == a + 1, f"counter jumped from {a} to {b}"


def spawn_counter(tmp: Path, interval: float = 0.05, name: str = "counter") -> Workload:
    """A python counter in its own session with stdio on /dev/null (so CRIU may dump it)."""
    out = tmp / f"{name}.ticks"
    script = tmp / f"{name}.py"
    script.write_text(COUNTER_SRC)
    proc = subprocess.Popen(
        [sys.executable, "-S", str(script), str(out), str(interval)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )
    w = Workload(proc, out)
    w.wait_ticks(2)
    return w


def wait_gone(pid: int, timeout: float = 10.0) -> None:
    """Wait until /proc/PID disappears (PID 1 here reaps slowly; restore needs the pid free)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not os.path.exists(f"/proc/{pid}"):
            return
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(pid, os.WNOHANG)
        except OSError:
            pass
        time.sleep(0.02)
    raise AssertionError(f"pid {pid} still exists after {timeout}s")


def restore_after_page_server(client: Any, w: Workload, res: Any, src: Path, dst: Path) -> None:
    """The second half of a page-server migration: the pages went to ``dst`` (none left in ``src``), the
    other images follow, the dumped counter ``w`` is gone, the restore gets its pid back and it keeps
    counting with no gap."""
    import shutil

    assert res.stats is not None and res.stats.pages_written > 0
    assert not list(src.glob("pages-*.img")), "the pages went to the page server, not to disk here"
    assert list(dst.glob("pages-*.img"))
    for f in src.glob("*.img"):
        shutil.copy(f, dst / f.name)
    w.proc.wait(timeout=10)
    wait_gone(w.pid)
    rr = client.restore({}, dst)
    assert rr.pid == w.pid
    w.wait_ticks(3)
    assert_continuous(w.ticks())
