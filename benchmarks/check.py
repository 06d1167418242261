"""Benchmark: static feasibility check vs trial dump vs `criu dump --leave-running` (CLI).

For each workload (a counter process we start ourselves, holding one kind of
resource, optionally with extra anonymous memory) we time, on the same process:

- inventory: ``inventory.resolve("tree:PID")`` (what the check needs first);
- static: ``feasibility.check(c, hosts=False)`` (the rules only);
- check: ``feasibility.check(c)`` with the CRIU/kernel probes (swrk VERSION,
  FEATURE_CHECK, CHECK);
- trial: ``feasibility.check(c, trial=True)`` (adds a real leave-running RPC dump);
- criu -R: ``criu dump --leave-running`` through the CLI into a temp dir.

Only processes started here are killed (by pid). Needs root and CRIU >= 4.2.
Usage: .venv/bin/python benchmarks/check.py [--repeat 5] [--mem-mib 0,64]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORKLOAD = Path(__file__).resolve().parents[1] / "tests/integration/test_feasibility_workloads.py"
BALLAST = "import sys; b = bytearray(int(sys.argv[1]) << 20); b[::4096] = b'x' * len(b[::4096])\n"


def spawn(tmp: Path, kind: str, arg: str = "", mem_mib: int = 0) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    argv = [sys.executable, "-S", str(WORKLOAD), str(tmp / f"{kind}.ticks"), kind, arg]
    if mem_mib:
        # touch MEM MiB of anonymous memory, then run the workload in the same process
        wrapper = tmp / "ballast.py"
        wrapper.write_text(
            BALLAST + "sys.argv = sys.argv[2:]\nexec(compile(open(sys.argv[0]).read(), sys.argv[0], 'exec'))\n"
        )
        argv = [sys.executable, "-S", str(wrapper), str(mem_mib), *argv[2:]]  # argv[2:] = WORKLOAD ...
    p = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
        env=env,
    )
    end = time.monotonic() + 20
    while time.monotonic() < end and not (tmp / f"{kind}.ticks").exists():
        time.sleep(0.02)
    time.sleep(0.2)
    return p


def timeit(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def criu_cli(pid: int) -> None:
    from ctconsole.config import criu_binary

    d = tempfile.mkdtemp(prefix="ctconsole-bench-")
    try:
        r = subprocess.run(
            [
                criu_binary(),
                "dump",
                "-t",
                str(pid),
                "-D",
                d,
                "-o",
                "dump.log",
                "-R",
                "--shell-job",
                "--tcp-established",
                "--file-locks",
            ],
            capture_output=True,
        )
        if r.returncode != 0:
            log = Path(d, "dump.log").read_text(errors="replace").splitlines()
            errs = [ln for ln in log if "Error (" in ln and "RLIMIT" not in ln]
            raise RuntimeError(f"criu dump failed for {pid}: {errs[:3]}")
    finally:
        shutil.rmtree(d, ignore_errors=True)


def measure(label: str, pid: int, repeat: int) -> dict[str, object]:
    """One table row: every way of checking the same running process."""
    from ctconsole import feasibility, inventory

    ref = f"tree:{pid}"
    c = inventory.resolve(ref)
    row: dict[str, object] = {
        "workload": label,
        "inventory": timeit(lambda: inventory.resolve(ref), repeat),
        "static": timeit(lambda: feasibility.check(c, hosts=False), repeat),
        "check": timeit(lambda: feasibility.check(c), repeat),
        "trial": timeit(lambda: feasibility.check(c, trial=True), repeat),
        "criu -R": timeit(lambda: criu_cli(pid), repeat),
    }
    verdict = feasibility.check(c, trial=True)
    row["verdict"] = verdict.verdict + ("" if verdict.trial and verdict.trial.ok else " (trial FAILED)")
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--mem-mib", default="0,64")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        port = srv.getsockname()[1]
        cases = [("plain", "", m) for m in (int(x) for x in args.mem_mib.split(","))]
        cases += [("tcp-connect", f"127.0.0.1:{port}", 0), ("flock", str(tmp / "lock"), 0)]
        for kind, arg, mem in cases:
            p = spawn(tmp, kind, arg, mem)
            conn = None
            if kind == "tcp-connect":
                conn, _ = srv.accept()
            try:
                row = measure(kind + (f" +{mem}MiB" if mem else ""), p.pid, args.repeat)
                rows.append(row)
            finally:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
                if conn:
                    conn.close()
        srv.close()
    cols = ["inventory", "static", "check", "trial", "criu -R"]
    print(f"median of {args.repeat} runs, milliseconds")
    print(f"{'workload':<18}" + "".join(f"{c:>11}" for c in cols) + "  verdict")
    for r in rows:
        print(f"{r['workload']!s:<18}" + "".join(f"{r[c]:>11.1f}" for c in cols) + f"  {r['verdict']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
