"""Benchmark: `ctconsole list --json` against `lsof -n -P` and `ss -xap` with N plain containers.

Each container is ``unshare --pid --net --mount --fork`` + a small Python init
that forks 3 children and holds a socketpair, a listener with a connection
to it (all inside), a pipe, and one connection to a listener on the host (an
external tie). We time, in the same run and on the same host state:

- ``ctconsole list --json``: the whole process (interpreter start included);
- a warm in-process re-scan: ``inventory.scan(full=True)`` after a first scan;
- ``lsof -n -P`` and ``ss -xap`` (stdout to /dev/null).

Only the processes started here are killed (by pid). Needs root.
Usage: .venv/bin/python benchmarks/inventory.py [--sizes 10,50,200] [--repeat 5]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

INIT_SRC = r"""
import os, socket, sys, time
host_sock, ready = sys.argv[1], sys.argv[2]
a, b = socket.socketpair()
ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); ls.bind("\0bench-%d" % os.getpid()); ls.listen(4)
c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); c.connect("\0bench-%d" % os.getpid())
srv, _ = ls.accept()
r, w = os.pipe()
h = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); h.connect(host_sock)
for _ in range(3):
    if os.fork() == 0:
        time.sleep(100000)
        os._exit(0)
open(ready, "w").close()
time.sleep(100000)
"""

LISTENER_SRC = r"""
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.bind(sys.argv[1]); s.listen(1024)
open(sys.argv[2], "w").close()
keep = []
while True:
    keep.append(s.accept()[0])
"""


# An installed ctconsole runs from cached bytecode; a PYTHONDONTWRITEBYTECODE=1 shell (as in some
# sandboxes) would recompile every module on every run and add ~40 ms that no operator pays.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _median_time(argv: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, env=ENV)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _wait(paths: list[Path], timeout: float) -> None:
    end = time.monotonic() + timeout
    for p in paths:
        while not p.exists():
            if time.monotonic() > end:
                raise SystemExit(f"timed out waiting for {p}")
            time.sleep(0.01)


def _kill(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGKILL)
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=10)


def run_size(n: int, repeat: int, work: Path) -> dict[str, float]:
    from ctconsole import inventory

    (work / "init.py").write_text(INIT_SRC)
    (work / "listener.py").write_text(LISTENER_SRC)
    host_sock = work / f"host-{n}.sock"
    listener = subprocess.Popen(
        [sys.executable, "-S", str(work / "listener.py"), str(host_sock), str(work / f"l-{n}.ready")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    procs: list[subprocess.Popen[bytes]] = [listener]
    try:
        _wait([work / f"l-{n}.ready"], 10)
        readies = []
        for i in range(n):
            ready = work / f"ct-{n}-{i}.ready"
            readies.append(ready)
            procs.append(
                subprocess.Popen(
                    [
                        "unshare",
                        "--pid",
                        "--net",
                        "--mount",
                        "--fork",
                        "--kill-child",
                        sys.executable,
                        "-S",
                        str(work / "init.py"),
                        str(host_sock),
                        str(ready),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                    close_fds=True,
                )
            )
        _wait(readies, 60 + n)
        found = inventory.scan(full=True)  # warm-up; also a sanity check
        mine = [c for c in found if c.controller_pid in {p.pid for p in procs}]
        assert len(mine) == n, f"expected {n} containers, found {len(mine)}"
        assert all(len(c.externals()) >= 1 for c in mine)
        warm = []
        for _ in range(repeat):
            t = time.perf_counter()
            inventory.scan(full=True)
            warm.append(time.perf_counter() - t)
        commands = {
            "list": [sys.executable, "-m", "ctconsole", "list", "--json"],
            "quick": [sys.executable, "-m", "ctconsole", "list", "--json", "--quick"],
            "lsof": ["lsof", "-n", "-P"],
            "ss": ["ss", "-xap"],
        }
        _median_time(commands["list"], 1)  # warm-up: writes the bytecode cache
        # interleaved, so that load from anything else on the host hits every tool alike
        times: dict[str, list[float]] = {k: [] for k in commands}
        for _ in range(repeat):
            for key, argv in commands.items():
                times[key].append(_median_time(argv, 1))
        out = {k: statistics.median(v) for k, v in times.items()}
        out["procs"] = float(len(os.listdir("/proc")))
        out["warm"] = statistics.median(warm)
        return out
    finally:
        _kill(procs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10,50,200")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (unshare --pid --net --mount)", file=sys.stderr)
        return 2
    sizes = [int(s) for s in args.sizes.split(",") if s]
    rows = []
    with tempfile.TemporaryDirectory(prefix="ctt-bench-") as tmp:
        for n in sizes:
            r = run_size(n, args.repeat, Path(tmp))
            rows.append((n, r))
            print(f"  N={n}: done", file=sys.stderr)
    print(f"median of {args.repeat} runs, seconds (list = whole `ctconsole list --json` process)")
    head = f"{'N':>4} {'/proc':>6} {'list':>7} {'--quick':>8} {'warm':>7} {'lsof':>7} {'ss -xap':>8} {'list/lsof':>9}"
    print(head)
    print("-" * len(head))
    for n, r in rows:
        print(
            f"{n:>4} {int(r['procs']):>6} {r['list']:>7.3f} {r['quick']:>8.3f} {r['warm']:>7.3f} "
            f"{r['lsof']:>7.3f} {r['ss']:>8.3f} {r['list'] / r['lsof']:>9.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
