"""Benchmark: raw CRIU CLI (dump + copy + restore) vs ctconsole stop-copy over netns.

Why: the engine adds an agent, a journal, a page server, a post-dump handover
and checks; this shows what that costs against CRIU alone on the same
workload in the same run. The workload is a Python process in its own pid
namespace holding N MiB of touched memory and writing a timestamped tick every
10 ms; the downtime "as the workload sees it" is the longest gap between two
ticks. Sizes: 16 MiB, 256 MiB, 1 GiB (``--sizes`` to change). Needs root.

    .venv/bin/python benchmarks/migrate.py [--sizes 16,256,1024]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORKLOAD = r"""
import os, sys, time
os.setsid()
path, mib = sys.argv[1], int(sys.argv[2])
buf = bytearray(mib << 20)
for i in range(0, len(buf), 4096):
    buf[i] = 1
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
n = 0
while True:
    n += 1
    os.write(fd, b"%d %.6f\n" % (n, time.time()))
    time.sleep(0.01)
"""


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=600)


class Workload:
    def __init__(self, d: Path, mib: int) -> None:
        self.ticks = d / f"ticks-{uuid.uuid4().hex[:6]}"
        (d / "w.py").write_text(WORKLOAD)
        self.launcher = subprocess.Popen(
            ["unshare", "--pid", "--fork", sys.executable, "-S", str(d / "w.py"), str(self.ticks), str(mib)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, close_fds=True)
        threading.Thread(target=self.launcher.wait, daemon=True).start()  # reap promptly
        end = time.monotonic() + 120
        self.pid = 0
        while time.monotonic() < end:
            with contextlib.suppress(OSError, ValueError, IndexError):
                kids = Path(f"/proc/{self.launcher.pid}/task/{self.launcher.pid}/children").read_text().split()
                self.pid = int(kids[0])
            if self.pid and self.count() > 5:
                return
            time.sleep(0.05)
        raise RuntimeError("workload did not start")

    def lines(self) -> list[tuple[int, float]]:
        out = []
        with contextlib.suppress(OSError):
            for ln in self.ticks.read_text().splitlines():
                a, b = ln.split()
                out.append((int(a), float(b)))
        return out

    def count(self) -> int:
        return len(self.lines())

    def wait_more(self, n: int, timeout: float = 30) -> None:
        start, end = self.count(), time.monotonic() + timeout
        while self.count() < start + n and time.monotonic() < end:
            time.sleep(0.02)

    def max_gap(self) -> float:
        ts = [t for _, t in self.lines()]
        return max((b - a for a, b in itertools.pairwise(ts)), default=0.0)

    def continuous(self) -> bool:
        ns = [n for n, _ in self.lines()]
        return all(b == a + 1 for a, b in itertools.pairwise(ns))


def kill_marked(marker: str) -> None:
    for d in os.listdir("/proc"):
        if d.isdigit():
            with contextlib.suppress(OSError):
                if marker.encode() in Path(f"/proc/{d}/cmdline").read_bytes():
                    os.kill(int(d), signal.SIGKILL)


def frozen_ms(stats: Path) -> float:
    from ctconsole.criu.images import read_stats

    try:
        return read_stats(stats).frozen_time_us / 1000  # type: ignore[union-attr]
    except Exception:
        return float("nan")


def raw_criu(tmp: Path, mib: int) -> dict[str, float]:
    from ctconsole.config import criu_binary

    criu = criu_binary()
    w = Workload(tmp, mib)
    src, dst = tmp / f"raw-src-{mib}", tmp / f"raw-dst-{mib}"
    src.mkdir()
    try:
        t0 = time.monotonic()
        sh(criu, "dump", "-t", str(w.pid), "-D", str(src), "-o", "dump.log")
        t1 = time.monotonic()
        shutil.copytree(src, dst)
        t2 = time.monotonic()
        sh(criu, "restore", "-D", str(dst), "-d", "-o", "restore.log", "--pidfile", str(dst / "rst.pid"))
        t3 = time.monotonic()
        w.wait_more(20)
        return {"total": t3 - t0, "dump": t1 - t0, "copy": t2 - t1, "restore": t3 - t2,
                "frozen_ms": frozen_ms(src / "stats-dump"), "gap": w.max_gap(), "ok": float(w.continuous())}
    finally:
        kill_marked(str(w.ticks))


def ctconsole_stop_copy(tmp: Path, mib: int, dest: str, page_server: bool = True) -> dict[str, float]:
    from ctconsole.migrate import events as ev
    from ctconsole.migrate.engine import Migration, MigrationRequest

    w = Workload(tmp, mib)
    got: dict[str, float] = {}

    def on(e: object) -> None:
        if isinstance(e, ev.Downtime):
            got["downtime"] = e.seconds
        elif isinstance(e, ev.FrozenTime):
            got["frozen_ms"] = e.seconds * 1000

    try:
        t0 = time.monotonic()
        done = Migration(MigrationRequest(ref=f"tree:{w.pid}", dest=dest, timeout=600,
                                                  page_server=page_server), on).run()
        t1 = time.monotonic()
        if done.result != "migrated":
            raise RuntimeError(f"{done.result}: {done.message} {done.details.get('errors')}")
        w.wait_more(20)
        return {"total": t1 - t0, "frozen_ms": got.get("frozen_ms", float("nan")),
                "downtime": got.get("downtime", float("nan")), "gap": w.max_gap(), "ok": float(w.continuous())}
    finally:
        kill_marked(str(w.ticks))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="16,256,1024", help="MiB, comma separated")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("benchmarks/migrate.py needs root", file=sys.stderr)
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="ctbench-", dir="/var/tmp"))
    os.chmod(tmp, 0o700)
    os.environ.setdefault("CTCONSOLE_STATE_DIR", str(tmp / "state"))
    os.environ.setdefault("CTCONSOLE_RUN_DIR", str(tmp / "run"))
    ns = f"ctb-{uuid.uuid4().hex[:6]}"
    hv = f"ctbh{ns[-6:]}"
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "link", "add", hv, "type", "veth", "peer", "name", "uplink", "netns", ns)
        sh("ip", "addr", "add", "198.19.254.1/30", "dev", hv)
        sh("ip", "link", "set", hv, "up")
        sh("ip", "-n", ns, "addr", "add", "198.19.254.2/30", "dev", "uplink")
        sh("ip", "-n", ns, "link", "set", "uplink", "up")
        from ctconsole.migrate.selftest import lazy_pages_works

        lazy_ok, lazy_reason = lazy_pages_works()
        rows = []
        for mib in [int(x) for x in a.sizes.split(",")]:
            raw = raw_criu(tmp, mib)
            ct = ctconsole_stop_copy(tmp, mib, f"netns:{ns}")
            ct2 = ctconsole_stop_copy(tmp, mib, f"netns:{ns}", page_server=False)
            rows.append((mib, raw, ct, ct2))
            print(f"{mib} MiB done", file=sys.stderr, flush=True)
        print()
        print("workload: python in its own pid namespace, N MiB touched, tick every 10 ms; "
              "gap = longest pause between two ticks (downtime as the workload sees it)")
        hdr = (f"{'size':>8}  {'method':<26} {'total s':>8} {'frozen ms':>10} {'gap ms':>8} "
               f"{'total/raw':>9} {'gap/raw':>8} {'ok':>3}")
        print(hdr)
        print("-" * len(hdr))
        for mib, raw, ct, ct2 in rows:
            print(f"{mib:>5}MiB  {'raw criu dump+cp+restore':<26} {raw['total']:8.3f} {raw['frozen_ms']:10.1f} "
                  f"{raw['gap'] * 1000:8.1f} {1.0:9.2f} {1.0:8.2f} {'yes' if raw['ok'] else 'NO':>3}")
            for label, r in (("ctconsole stop-copy (ps)", ct), ("ctconsole stop-copy (chan)", ct2)):
                print(f"{'':>8}  {label:<26} {r['total']:8.3f} {r['frozen_ms']:10.1f} "
                      f"{r['gap'] * 1000:8.1f} {r['total'] / raw['total']:9.2f} {r['gap'] / raw['gap']:8.2f} "
                      f"{'yes' if r['ok'] else 'NO':>3}")
            print(f"{'':>8}    (raw: dump {raw['dump']:.3f} s, copy {raw['copy']:.3f} s, restore "
                  f"{raw['restore']:.3f} s; ctconsole freeze->running {ct['downtime'] * 1000:.1f} / "
                  f"{ct2['downtime'] * 1000:.1f} ms)")
        print("ps = pages streamed to the destination's CRIU page server during the dump; chan = local dump, "
              "all images over the agent channel (--no-page-server)")
        print()
        print(f"post-copy: {'measured separately' if lazy_ok else 'not available here: ' + lazy_reason}")
        runc = shutil.which("runc")
        print("runc checkpoint/restore: not measured (needs the lab runc container; "
              f"runc {'present' if runc else 'absent'})")
    finally:
        sh("ip", "link", "del", hv, check=False)
        sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
