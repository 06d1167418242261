"""ctconsole.process: one meaning of alive / exited / free, on real processes (a zombie of our own included)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from ctconsole import process


def test_parse_stat_odd_comm_and_short_lines() -> None:
    line = "1234 (my (odd) comm) S 1200 1234 1234 34816 1234 4194560 1 0 0 0 0 0 0 0 20 0 3 0 99 0 0"
    st = process.parse_stat(1234, line)
    assert st is not None and st.comm == "my (odd) comm"
    assert (st.state, st.ppid, st.pgid, st.sid, st.tty_nr, st.threads, st.start_time) == (
        "S", 1200, 1234, 1234, 34816, 3, 99)
    assert process.parse_stat(1, "nonsense") is None


def test_self_is_alive_with_its_start_time() -> None:
    me = os.getpid()
    st = process.read_stat(me)
    assert st is not None and st.pid == me and st.ppid == os.getppid()
    assert process.alive(me) and process.alive(me, st.start_time) and not process.exited(me)
    assert not process.alive(me, st.start_time + 1)  # another process under the same pid
    assert me in process.descendants(os.getppid())


def test_zombie_has_exited_but_holds_its_pid() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    pid, started = child.pid, process.start_time(child.pid)
    assert started > 0
    end = time.monotonic() + 10
    while process.state(pid) != "Z" and time.monotonic() < end:
        time.sleep(0.01)
    assert process.state(pid) == "Z"
    assert process.exited(pid) and not process.alive(pid, started)
    assert not process.pid_free(pid)  # CRIU could not restore onto it yet
    assert process.wait_exited(pid, 1.0, started)
    assert process.wait_free(pid, 5.0)  # reaps our own zombie
    assert process.pid_free(pid) and process.state(pid) == "" and process.start_time(pid) == 0
    child.returncode = 0  # reaped above; keep Popen from waiting on a pid that is gone


def test_missing_pid() -> None:
    pid = 4_000_000
    while os.path.exists(f"/proc/{pid}"):
        pid -= 1
    assert process.read_stat(pid) is None and process.pid_free(pid) and not process.alive(pid)
    assert process.children(pid) == [] and process.descendants(pid) == [pid]
    assert process.state(0) == "" and not process.alive(0)
