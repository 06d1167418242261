"""Benchmark: ctconsole.process (hand-written /proc/PID/stat reader) vs psutil for the same facts.

What ctconsole asks about a process, over and over (engine waits, the agent's
status, the keeper, the lab, the inventory's scan): its state letter, parent,
session/group and start time, and whether it is alive (not a zombie) and
still the same process (start time). Each case below gets exactly those
facts both ways, on live processes of this host:

- one: the facts of one pid (our own), repeated;
- alive: ``alive(pid, started)`` for one pid (the engine's poll);
- scan: the facts of every pid on the host (the inventory's first pass);
- gone: asking about a pid that does not exist.

psutil is given its best shot: ``Process.oneshot()`` (one read of stat for
several attributes) and ``psutil.process_iter`` with the attributes named.
Prints medians (and the ratio psutil / hand-written) over ``--repeat`` runs.
Usage: .venv/bin/python benchmarks/procstat.py [--repeat 15] [--loops 2000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import psutil

from ctconsole import process


def _ours_one(pid: int) -> tuple[str, int, int, int, int]:
    st = process.read_stat(pid)
    assert st is not None
    return st.state, st.ppid, st.pgid, st.sid, st.start_time


def _psutil_one(pid: int) -> tuple[str, int, int, int, float]:
    p = psutil.Process(pid)
    with p.oneshot():
        return p.status(), p.ppid(), os.getpgid(pid), os.getsid(pid), p.create_time()


def _ours_alive(pid: int, started: int) -> bool:
    return process.alive(pid, started)


def _psutil_alive(pid: int, started: float) -> bool:
    try:
        p = psutil.Process(pid)
        with p.oneshot():
            return p.status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD) and p.create_time() == started
    except psutil.NoSuchProcess:
        return False


def _ours_scan() -> int:
    n = 0
    with os.scandir("/proc") as it:
        for e in it:
            if e.name.isdigit() and process.read_stat(e.name) is not None:
                n += 1
    return n


def _psutil_scan() -> int:
    return sum(1 for _ in psutil.process_iter(["status", "ppid", "create_time"]))


def _free_pid() -> int:
    pid = 4_000_000
    while os.path.exists(f"/proc/{pid}"):
        pid -= 1
    return pid


def _time(fn: Callable[[], object], loops: int) -> float:
    t0 = time.perf_counter()
    for _ in range(loops):
        fn()
    return (time.perf_counter() - t0) / loops * 1e6  # µs per call


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--loops", type=int, default=2000)
    args = ap.parse_args()
    me, gone = os.getpid(), _free_pid()
    ours_start = process.start_time(me)
    ps_start = psutil.Process(me).create_time()
    assert _ours_one(me)[1] == _psutil_one(me)[1] and _ours_alive(me, ours_start) and _psutil_alive(me, ps_start)
    scan_loops = max(1, args.loops // 200)
    cases: list[tuple[str, Callable[[], object], Callable[[], object], int]] = [
        ("one pid: state/ppid/pgid/sid/start", lambda: _ours_one(me), lambda: _psutil_one(me), args.loops),
        ("alive(pid, started)", lambda: _ours_alive(me, ours_start), lambda: _psutil_alive(me, ps_start), args.loops),
        ("pid that does not exist", lambda: process.read_stat(gone), lambda: _psutil_alive(gone, 0.0), args.loops),
        (f"scan all pids ({_ours_scan()})", _ours_scan, _psutil_scan, scan_loops),
    ]
    print(f"{'case':38} {'ctconsole.process':>18} {'psutil ' + psutil.__version__:>14} {'psutil/ours':>12}")
    for name, ours, theirs, loops in cases:
        a = statistics.median(_time(ours, loops) for _ in range(args.repeat))
        b = statistics.median(_time(theirs, loops) for _ in range(args.repeat))
        print(f"{name:38} {a:15.1f} µs {b:11.1f} µs {b / a:11.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
