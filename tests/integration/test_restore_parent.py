"""A root with a parent-death signal: killed by a detached restore, kept alive by the keeper.

The workload is a small program of our own (no container runtime): it sets
``PR_SET_PDEATHSIG=SIGKILL`` like LXC does for a container init, then counts
into a file. The same images are restored twice:

- ``criu restore -d`` (detached: the root's parent is criu, which exits): CRIU
  warns "Root task has pdeath_sig configured" and the root dies at once;
- through :func:`ctconsole.migrate.keeper.restore_with_parent` (RPC with
  ``rst_sibling`` from the keeper): the root is the keeper's child, keeps
  counting after we stop caring, is listed, and the keeper exits with it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

PROG = r"""
import ctypes, signal, sys, time
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(1, int(signal.SIGKILL), 0, 0, 0) != 0:  # PR_SET_PDEATHSIG
    sys.exit(3)
f = open(sys.argv[1], "a", buffering=1)
n = 0
while True:
    n += 1
    f.write(f"{n}\n")
    time.sleep(0.05)
"""


def _state(pid: int) -> str:
    from ctconsole import process

    return process.state(pid)


def _count(path: Path) -> int:
    lines = path.read_text().split()
    return int(lines[-1]) if lines else 0


def _wait(pred: Callable[[], bool], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_pdeathsig_needs_a_living_parent(tmp_path: Path, criu_bin: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from ctconsole.criu.images import root_pdeath_sig
    from ctconsole.migrate.keeper import list_keepers, restore_with_parent
    from ctconsole.process import wait_free

    monkeypatch.setenv("CTCONSOLE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("CTCONSOLE_RUN_DIR", str(tmp_path / "run"))
    counter = tmp_path / "counter"
    counter.touch()
    proc = subprocess.Popen([sys.executable, "-c", PROG, str(counter)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    pid = proc.pid
    try:
        assert _wait(lambda: _count(counter) >= 3, 10), "the workload did not start counting"
        img = tmp_path / "img"
        img.mkdir()
        r = subprocess.run([criu_bin, "dump", "-t", str(pid), "-D", str(img), "-o", "dump.log", "-v4"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, (img / "dump.log").read_text()[-2000:]
        proc.wait(timeout=10)
        assert root_pdeath_sig(img) == signal.SIGKILL  # CRIU recorded it (the kernel shows it nowhere)
        dumped = _count(counter)

        # detached: criu is the parent and exits -> SIGKILL right after the restore
        r = subprocess.run([criu_bin, "restore", "-d", "-D", str(img), "-o", "restore-d.log", "-v4"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, (img / "restore-d.log").read_text()[-2000:]
        assert "Root task has pdeath_sig configured" in (img / "restore-d.log").read_text()
        assert _wait(lambda: _state(pid) in ("", "Z"), 5), "the detached root survived its parent's exit"
        assert wait_free(pid, 30)
        with counter.open("w") as f:  # whatever the doomed copy managed to write is not the test
            f.write("".join(f"{i}\n" for i in range(1, dumped + 1)))

        # through the keeper: rst_sibling, the keeper is (and stays) the parent
        res = restore_with_parent({"log_file": "restore-k.log"}, img, migration_id="pdeath-test", timeout=60)
        assert res.pid == pid
        ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        assert ppid == res.keeper_pid
        time.sleep(2.0)  # we are not its parent, and nobody waits on it here
        assert _state(pid) not in ("", "Z", "X")
        ticks = [int(x) for x in counter.read_text().split()]
        assert ticks == list(range(1, len(ticks) + 1)) and len(ticks) > dumped + 10  # continued, no gap
        recs = [k for k in list_keepers() if k["root"] == pid]
        assert recs and recs[0]["keeper"] == res.keeper_pid and recs[0]["migration_id"] == "pdeath-test"
    finally:
        if _state(pid) not in ("", "Z", "X"):
            os.kill(pid, signal.SIGKILL)  # the workload we started (restored copy, same pid)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # the keeper reaps its root and goes away with it
    assert _wait(lambda: _state(res.keeper_pid) in ("", "Z"), 10)
    assert not [k for k in list_keepers() if k["root"] == pid]
