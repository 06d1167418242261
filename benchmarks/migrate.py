"""Benchmark: raw CRIU CLI (dump + copy + restore) vs ctconsole stop-copy over netns.

Why: the engine adds an agent, a journal, a post-dump handover and checks;
this shows what that costs against CRIU alone on the same workload in the
same run. The workload is a Python process in its own pid namespace holding
N MiB of touched memory and writing a timestamped tick every 10 ms; the
downtime "as the workload sees it" is the longest gap between two ticks.
Sizes: 16 MiB, 256 MiB, 1 GiB (``--sizes``). Needs root.

Every method runs ``--repeat`` times (default 5), interleaved (raw, then each
ctconsole variant, then raw again ...) so slow phases of a noisy VM hit all
methods alike, and the table shows medians (gap min-max next to them):

- raw: ``criu dump`` + copy of the images to another directory + ``criu restore -d``
  (the images cross to a "destination" directory, as the issue defines it);
- raw in place: ``criu dump`` + ``criu restore`` from the same directory (no copy:
  the floor for any same-host migration);
- ctconsole default: on a same-filesystem destination (this netns) the images
  are hard-linked into the agent's images dir (``MigrationRequest.shared_images``);
- ctconsole chan: ``--no-page-server`` with linking off (every byte over the agent
  channel, as to another host);
- ctconsole ps: pages to the destination's CRIU page server, linking off.

    .venv/bin/python benchmarks/migrate.py [--sizes 16,256,1024] [--repeat 5]
    .venv/bin/python benchmarks/migrate.py --isolated [--rates unshaped,1gbit,100mbit] [--slow]

``--isolated`` (issue #13) measures over an isolated lab host instead (``ctconsole lab host
add NAME --isolated``, shaped with tbf): raw CRIU by hand over the same SSH link (``criu
page-server`` there, ``criu dump --page-server`` through ``ssh -L`` on one control master, the
other images with tar over it, ``criu restore`` there) against ``ctconsole migrate`` stop-copy
(pages down the page channel during the dump), on the same control master (``ct``, through
``CTCONSOLE_SSH_OPTS``; ctconsole's own kept connection, ``CTCONSOLE_SSH_PERSIST``, after a
``check --to`` is the same case) and with a fresh ssh connection (``ct-own``: the first command
to a host). 1 GiB at 100 Mbit/s is skipped unless ``--slow``.

What is not ours, with figures (this machine: a 2-vCPU Firecracker VM, docs/migration.md):
- SSH's cipher caps the page stream (~105-140 MiB/s), for raw and ctconsole alike.
- At 1 GiB the restore allocates a GiB of memory. raw's dump has just killed its source, and
  the restore gets that memory back warm; ctconsole holds the source frozen until the copy runs
  (the never-lose rule), so its restore needs memory nobody just freed, which this VM must fault
  in from its hypervisor: ``perf record -a`` of a 1 GiB ``criu restore`` shows the kernel's
  ``clear_page_erms`` at 30.5 % of samples with the source held against 6.8 % with it killed
  (CRIU's restore_time, medians of 4: 1.64 s held, 0.63 s killed). The ``raw-held`` control
  (raw CRIU with ``--leave-stopped``, killing the source after the restore) pays the same; between
  two real hosts neither pipeline gets the source's memory back.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def launch_in_pidns(script_argv: list[str], ready: Callable[[], bool],
                    timeout: float = 120.0) -> tuple[subprocess.Popen[bytes], int]:
    """Run ``python -S SCRIPT ARGS`` as pid 1 of its own pid namespace (``unshare --pid --fork``); wait until
    ``ready()``. Returns the launcher (reaped by a thread) and the workload's pid here."""
    launcher = subprocess.Popen(
        ["unshare", "--pid", "--fork", sys.executable, "-S", *script_argv],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True)
    threading.Thread(target=launcher.wait, daemon=True).start()  # reap promptly
    end = time.monotonic() + timeout
    pid = 0
    while time.monotonic() < end:
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()[0])
        if pid and ready():
            return launcher, pid
        time.sleep(0.05)
    raise RuntimeError("workload did not start")


class Workload:
    def __init__(self, d: Path, mib: int) -> None:
        self.ticks = d / f"ticks-{uuid.uuid4().hex[:6]}"
        (d / "w.py").write_text(WORKLOAD)
        self.launcher, self.pid = launch_in_pidns([str(d / "w.py"), str(self.ticks), str(mib)],
                                                  lambda: self.count() > 5)

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


def raw_criu(tmp: Path, mib: int, copy: bool = True) -> dict[str, float]:
    """criu dump; copy the images to another dir (``copy``); criu restore -d from there."""
    from ctconsole.config import criu_binary

    criu = criu_binary()
    w = Workload(tmp, mib)
    tag = uuid.uuid4().hex[:6]
    src, dst = tmp / f"raw-src-{mib}-{tag}", tmp / f"raw-dst-{mib}-{tag}"
    src.mkdir()
    try:
        t0 = time.monotonic()
        sh(criu, "dump", "-t", str(w.pid), "-D", str(src), "-o", "dump.log")
        t1 = time.monotonic()
        if copy:
            shutil.copytree(src, dst)
        else:
            dst = src
        t2 = time.monotonic()
        sh(criu, "restore", "-D", str(dst), "-d", "-o", "restore.log", "--pidfile", str(dst / "rst.pid"))
        t3 = time.monotonic()
        w.wait_more(20)
        return {"total": t3 - t0, "dump": t1 - t0, "copy": t2 - t1, "restore": t3 - t2,
                "frozen_ms": frozen_ms(src / "stats-dump"), "gap": w.max_gap(), "ok": float(w.continuous())}
    finally:
        kill_marked(str(w.ticks))
        shutil.rmtree(src, ignore_errors=True)
        shutil.rmtree(dst, ignore_errors=True)


def _timings(got: dict[str, float]) -> Callable[[object], None]:
    """An engine callback that keeps the downtime (s) and frozen time (ms) events in ``got``."""
    from ctconsole.migrate import events as ev

    def on(e: object) -> None:
        if isinstance(e, ev.Downtime):
            got["downtime"] = e.seconds
        elif isinstance(e, ev.FrozenTime):
            got["frozen_ms"] = e.seconds * 1000
        elif isinstance(e, ev.RestoreTime):
            got["restore_time"] = e.seconds  # CRIU's stats-restore restore_time

    return on


def ctconsole_stop_copy(tmp: Path, mib: int, dest: str, page_server: bool = True,
                        shared_images: bool = True) -> dict[str, Any]:
    from ctconsole.migrate.engine import Migration, MigrationRequest

    w = Workload(tmp, mib)
    got: dict[str, float] = {}
    on = _timings(got)

    try:
        t0 = time.monotonic()
        done = Migration(MigrationRequest(ref=f"tree:{w.pid}", dest=dest, timeout=600, page_server=page_server,
                                          shared_images=shared_images), on).run()
        t1 = time.monotonic()
        if done.result != "migrated":
            raise RuntimeError(f"{done.result}: {done.message} {done.details.get('errors')}")
        w.wait_more(20)
        return {"total": t1 - t0, "frozen_ms": got.get("frozen_ms", float("nan")),
                "downtime": got.get("downtime", float("nan")), "gap": w.max_gap(), "ok": float(w.continuous()),
                "timeline": done.details.get("timeline", {})}
    finally:
        kill_marked(str(w.ticks))


#: (key, label, runner kwargs); "raw" is the reference every ratio is taken against
METHODS: list[tuple[str, str, dict[str, Any]]] = [
    ("raw", "raw criu dump+cp+restore", {"copy": True}),
    ("raw0", "raw criu dump+restore (in place)", {"copy": False}),
    ("ct", "ctconsole stop-copy (default)", {}),
    ("chan", "ctconsole stop-copy (chan)", {"page_server": False, "shared_images": False}),
    ("ps", "ctconsole stop-copy (ps)", {"page_server": True, "shared_images": False}),
]


def med(runs: list[dict[str, Any]], key: str) -> float:
    vals = [float(r[key]) for r in runs if key in r]
    return statistics.median(vals) if vals else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="16,256,1024", help="MiB, comma separated")
    ap.add_argument("--repeat", type=int, default=5, help="runs per method and size (medians are reported)")
    ap.add_argument("--methods", default=",".join(k for k, _, _ in METHODS),
                    help="comma separated subset of " + ",".join(k for k, _, _ in METHODS))
    ap.add_argument("--isolated", action="store_true",
                    help="the isolated-host table: raw CRIU over the same SSH link vs ctconsole stop-copy")
    ap.add_argument("--rates", default="unshaped,1gbit,100mbit", help="--isolated: link rates to measure")
    ap.add_argument("--slow", action="store_true", help="--isolated: also run 1 GiB at 100mbit (~90 s a run)")
    ap.add_argument("--host", default="f2bench", help="--isolated: the lab host's name")
    ap.add_argument("--keep-host", action="store_true", help="--isolated: leave the lab host up")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("benchmarks/migrate.py needs root", file=sys.stderr)
        return 1
    if a.isolated:
        return isolated_main(a)
    wanted = [m for m in METHODS if m[0] in a.methods.split(",") or m[0] == "raw"]
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
        from ctconsole.criu.selftest import lazy_pages_works

        lazy_ok, lazy_reason = lazy_pages_works()
        results: dict[int, dict[str, list[dict[str, Any]]]] = {}
        for mib in [int(x) for x in a.sizes.split(",")]:
            per: dict[str, list[dict[str, Any]]] = {k: [] for k, _, _ in wanted}
            for i in range(a.repeat):
                for key, _label, kw in wanted:
                    r = (raw_criu(tmp, mib, **kw) if key.startswith("raw")
                         else ctconsole_stop_copy(tmp, mib, f"netns:{ns}", **kw))
                    per[key].append(r)
                    print(f"{mib} MiB run {i + 1} {key}: gap {r['gap'] * 1000:.1f} ms, total {r['total']:.3f} s"
                          + (f", timeline {r['timeline']}" if r.get("timeline") else ""), file=sys.stderr, flush=True)
            results[mib] = per
        print()
        print("workload: python in its own pid namespace, N MiB touched, tick every 10 ms; "
              "gap = longest pause between two ticks (downtime as the workload sees it)")
        print(f"medians of {a.repeat} interleaved runs; gap range = min-max")
        hdr = (f"{'size':>8}  {'method':<33} {'total s':>8} {'frozen ms':>10} {'gap ms':>8} {'gap range':>15} "
               f"{'total/raw':>9} {'gap/raw':>8} {'ok':>4}")
        print(hdr)
        print("-" * len(hdr))
        for mib, per in results.items():
            raw_total, raw_gap = med(per["raw"], "total"), med(per["raw"], "gap")
            for n, (key, label, _kw) in enumerate(wanted):
                runs = per[key]
                gaps = [r["gap"] * 1000 for r in runs]
                ok = sum(1 for r in runs if r["ok"])
                print(f"{(f'{mib}MiB' if n == 0 else ''):>8}  {label:<33} {med(runs, 'total'):8.3f} "
                      f"{med(runs, 'frozen_ms'):10.1f} {med(runs, 'gap') * 1000:8.1f} "
                      f"{f'{min(gaps):.0f}-{max(gaps):.0f}':>15} {med(runs, 'total') / raw_total:9.2f} "
                      f"{med(runs, 'gap') / raw_gap:8.2f} {f'{ok}/{len(runs)}':>4}")
            if "raw" in per:
                raw = per["raw"]
                print(f"{'':>8}    (raw medians: dump {med(raw, 'dump'):.3f} s, copy {med(raw, 'copy'):.3f} s, "
                      f"restore {med(raw, 'restore'):.3f} s)")
            if per.get("ct"):
                mid = sorted(per["ct"], key=lambda r: r["gap"])[len(per["ct"]) // 2]
                print(f"{'':>8}    (ctconsole default, median run, ms after the freeze: {mid['timeline']})")
        print("default = same-filesystem destination: local dump, images hard-linked into the agent's dir; "
              "chan = local dump, every image over the agent channel (--no-page-server); ps = pages streamed "
              "to the destination's CRIU page server during the dump")
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



# -- over an isolated lab host (issue #13): raw CRIU through the same SSH link vs ctconsole -------------
UDP_WORKLOAD = r"""
import os, socket, sys, time
os.setsid()
addr, port, mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
buf = bytearray(mib << 20)
for i in range(0, len(buf), 4096):
    buf[i] = 1
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
n = 0
while True:
    n += 1
    try:
        s.sendto(b"%d" % n, (addr, port))
    except OSError:
        pass
    time.sleep(0.01)
"""


class UdpTicks:
    """The workload's ticks as seen from here: UDP datagrams to 127.0.0.1:PORT, wherever it runs.

    Why UDP on loopback, twice: the isolated host shares no writable path with
    us, so a tick file cannot follow the workload, and lab addresses exist only
    in namespaces the lab made (the source end of the link sits in the lab's
    edge namespace, not here). So the workload sends every tick to 127.0.0.1:PORT;
    one socket here receives them before the migration, one made in the isolated
    host's network namespace (the same port on its own loopback) after it. Both
    are read in this process: the receive times are on one clock, ours.
    """

    def __init__(self, netns: str) -> None:
        import socket

        from ctconsole.lab import edge
        from ctconsole.lab.isolated import netns_path

        here = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        here.bind(("127.0.0.1", 0))
        self.port = here.getsockname()[1]
        there = edge.socket_in(netns_path(netns), socket.AF_INET, socket.SOCK_DGRAM)
        there.bind(("127.0.0.1", self.port))
        self.socks = [here, there]
        self.got: list[tuple[int, float]] = []
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import select

        while not self.stop:
            ready, _, _ = select.select(self.socks, [], [], 0.2)
            now = time.monotonic()
            for sock in ready:
                with contextlib.suppress(OSError, ValueError):
                    self.got.append((int(sock.recv(64)), now))

    def count(self) -> int:
        return len(self.got)

    def wait_more(self, n: int, timeout: float = 60) -> None:
        start, end = self.count(), time.monotonic() + timeout
        while self.count() < start + n and time.monotonic() < end:
            time.sleep(0.02)

    def max_gap(self) -> float:
        ts = sorted(t for _, t in self.got)
        return max((b - a for a, b in itertools.pairwise(ts)), default=0.0)

    def close(self) -> None:
        self.stop = True
        self.thread.join(1)
        for sock in self.socks:
            sock.close()


class UdpWorkload:
    def __init__(self, d: Path, mib: int, netns: str) -> None:
        self.ticks = UdpTicks(netns)
        self.marker = f"ctbw-{uuid.uuid4().hex[:8]}"
        (d / f"{self.marker}.py").write_text(UDP_WORKLOAD)
        self.launcher, self.pid = launch_in_pidns(
            [str(d / f"{self.marker}.py"), "127.0.0.1", str(self.ticks.port), str(mib)],
            lambda: self.ticks.count() > 5)

    def continuous(self) -> bool:
        ns = sorted(n for n, _ in self.ticks.got)
        return all(b == a + 1 for a, b in itertools.pairwise(ns))

    def close(self) -> None:
        kill_marked(self.marker)  # here or on the isolated host: the same kernel, real pids
        self.ticks.close()


class SshLink:
    """A control master to the isolated host, as ctconsole opens one (same options: same cipher)."""

    def __init__(self, tmp: Path, address: str) -> None:
        self.target = f"root@{address}"
        self.ctl = tmp / f"raw-ctl-{uuid.uuid4().hex[:6]}"
        self.master = subprocess.Popen(["ssh", "-o", "BatchMode=yes", "-o", "ControlMaster=yes", "-o",
                                        f"ControlPath={self.ctl}", "-N", "-T", self.target],
                                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + 20
        while not self.ctl.exists() and time.monotonic() < end:
            time.sleep(0.05)

    def argv(self, *args: str) -> list[str]:
        return ["ssh", "-o", "BatchMode=yes", "-o", f"ControlPath={self.ctl}", *args, self.target]

    def run(self, cmd: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.argv(), cmd], capture_output=True, text=True, timeout=600, **kw)

    def close(self) -> None:
        self.master.kill()
        self.master.wait()


def raw_over_ssh(tmp: Path, mib: int, host: Any, link: SshLink, hold: bool = False) -> dict[str, Any]:
    """By hand: criu page-server there, criu dump --page-server through an ssh -L forward, tar the rest, restore.

    ``hold`` (the ``raw-held`` control): ``criu dump --leave-stopped``, the source killed only after the
    restore, as anyone who wants a way back must do (and as ctconsole does); not the raw baseline.
    """
    from ctconsole.config import criu_binary

    criu = criu_binary()
    w = UdpWorkload(tmp, mib, host.netns)
    tag = uuid.uuid4().hex[:6]
    src = tmp / f"raw-src-{tag}"
    src.mkdir()
    dst = f"/var/tmp/rawbench-{tag}"
    rport, lport = 27000 + int(tag[:3], 16) % 2000, free_port()
    try:
        link.run(f"mkdir -p {dst}")
        ps = subprocess.Popen([*link.argv(), f"{criu} page-server -D {dst} --address 127.0.0.1 --port {rport} "
                               "-o ps.log"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
        subprocess.run(link.argv("-O", "forward", "-L", f"127.0.0.1:{lport}:127.0.0.1:{rport}"), check=True,
                       capture_output=True, timeout=30)
        end = time.monotonic() + 20
        while time.monotonic() < end and link.run(f"ss -Htln 'sport = :{rport}'").stdout.strip() == "":
            time.sleep(0.05)
        t0 = time.monotonic()
        sh(criu, "dump", "-t", str(w.pid), "-D", str(src), "-o", "dump.log", "--page-server", "--address",
           "127.0.0.1", "--port", str(lport), *(["--leave-stopped"] if hold else []))
        t1 = time.monotonic()
        ps.wait(timeout=120)
        tar = subprocess.Popen(["tar", "-C", str(src), "-cf", "-", "."], stdout=subprocess.PIPE)
        subprocess.run([*link.argv(), f"tar -C {dst} -xf -"], stdin=tar.stdout, check=True, timeout=600,
                       capture_output=True)
        tar.wait()
        t2 = time.monotonic()
        r = link.run(f"{criu} restore -D {dst} -d -o restore.log")
        t3 = time.monotonic()
        if hold:
            os.kill(w.pid, signal.SIGKILL)  # the stopped source: its pid namespace goes with it
        if r.returncode != 0:
            raise RuntimeError(f"raw restore failed: {r.stderr[-500:]}")
        w.ticks.wait_more(20)
        return {"total": t3 - t0, "dump": t1 - t0, "copy": t2 - t1, "restore": t3 - t2,
                "frozen_ms": frozen_ms(src / "stats-dump"), "gap": w.ticks.max_gap(),
                "ok": float(w.continuous()), "restore_time": _remote_restore_time(link, dst)}
    finally:
        subprocess.run(link.argv("-O", "cancel", "-L", f"127.0.0.1:{lport}:127.0.0.1:{rport}"),
                       capture_output=True, timeout=30, check=False)
        w.close()
        link.run(f"rm -rf {dst}")
        shutil.rmtree(src, ignore_errors=True)


def _remote_restore_time(link: SshLink, dst: str) -> float:
    """CRIU's restore_time (s) from the stats-restore the raw restore left on the isolated host."""
    from ctconsole.criu.images import parse_stats

    r = subprocess.run([*link.argv(), f"cat {dst}/stats-restore"], capture_output=True, timeout=30)
    try:
        return parse_stats(r.stdout, "stats-restore").restore_time_us / 1e6  # type: ignore[union-attr]
    except Exception:
        return float("nan")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (raw CRIU's page server listens on it)."""
    import socket as _socket

    with _socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ctconsole_over_ssh(tmp: Path, mib: int, host: Any, master: Path | None = None) -> dict[str, Any]:
    """``ctconsole migrate`` stop-copy; ``master``: ride that ssh control master (the one raw uses),
    through ``CTCONSOLE_SSH_OPTS`` as an operator with ``ControlMaster auto`` would; None: its own."""
    from ctconsole.migrate.engine import Migration, MigrationRequest

    w = UdpWorkload(tmp, mib, host.netns)
    got: dict[str, float] = {}
    on = _timings(got)
    saved = os.environ.get("CTCONSOLE_SSH_OPTS")
    if master is not None:
        os.environ["CTCONSOLE_SSH_OPTS"] = f"-o ControlPath={master} -o ControlMaster=auto"
    # ct-own is the cold case: a fresh ssh connection, as the first command to a host pays it (ctconsole
    # otherwise keeps its connection open for the next one, CTCONSOLE_SSH_PERSIST, like ``ct``)
    saved_persist = os.environ.get("CTCONSOLE_SSH_PERSIST")
    os.environ["CTCONSOLE_SSH_PERSIST"] = "0" if master is None else "60"
    try:
        t0 = time.monotonic()
        try:
            done = Migration(MigrationRequest(ref=f"tree:{w.pid}", dest=host.dest, timeout=600), on).run()
        finally:
            if saved is None:
                os.environ.pop("CTCONSOLE_SSH_OPTS", None)
            else:
                os.environ["CTCONSOLE_SSH_OPTS"] = saved
            if saved_persist is None:
                os.environ.pop("CTCONSOLE_SSH_PERSIST", None)
            else:
                os.environ["CTCONSOLE_SSH_PERSIST"] = saved_persist
        t1 = time.monotonic()
        if done.result != "migrated":
            raise RuntimeError(f"{done.result}: {done.message} {done.details.get('errors')}")
        w.ticks.wait_more(20)
        return {"total": t1 - t0, "frozen_ms": got.get("frozen_ms", float("nan")),
                "downtime": got.get("downtime", float("nan")), "gap": w.ticks.max_gap(), "ok": float(w.continuous()),
                "restore_time": got.get("restore_time", float("nan")), "timeline": done.details.get("timeline", {})}
    finally:
        w.close()


def page_reporting() -> str:
    """Whether this (virtual) machine hands freed memory back to its hypervisor, and how we know.

    Why it matters here: memory this VM has not touched lately (or handed back
    through free page reporting) costs a hypervisor fault per page when the
    kernel clears it. raw CRIU's restore allocates right after its dump killed
    the source, so it gets that warm memory back; ctconsole keeps the source
    frozen until the destination runs (the never-lose rule), so its restore
    allocates other memory: the ``raw-held`` control shows raw in that situation.
    """
    for dev in Path("/sys/bus/virtio/devices").glob("*"):
        with contextlib.suppress(OSError):
            if (dev / "device").read_text().strip() == "0x0005":
                feats = (dev / "features").read_text().strip()
                on = len(feats) > 5 and feats[5] == "1"  # VIRTIO_BALLOON_F_REPORTING
                return ("on (virtio-balloon feature REPORTING)" if on else "off (virtio-balloon without REPORTING)")
    return "off (no virtio balloon)"


def isolated_main(a: argparse.Namespace) -> int:
    """The isolated-host table: raw CRIU over the same SSH link vs ctconsole stop-copy, per size and rate.

    Methods, interleaved per repeat: ``raw``; ``ct``: ctconsole riding the control
    master raw uses (``CTCONSOLE_SSH_OPTS=-o ControlPath=... -o ControlMaster=auto``,
    as an operator with ``ControlMaster auto`` in ~/.ssh/config would: both pipelines
    then start on an open connection); ``ct-own``: ctconsole opening its own ssh
    connection (the default without such a master); ``raw-held`` (256 MiB and up):
    raw with the source held stopped until the restore is done (see
    :func:`page_reporting`).
    """
    from ctconsole import lab

    # an installed package has its bytecode; this work tree may not (PYTHONDONTWRITEBYTECODE), and on
    # the isolated host it is read-only, so a missing .pyc would be compiled again at every agent start
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "ctconsole")], check=False,
                   capture_output=True, env={k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"})
    tmp = Path(tempfile.mkdtemp(prefix="ctbench-", dir="/var/tmp"))
    os.chmod(tmp, 0o700)
    os.environ.setdefault("CTCONSOLE_STATE_DIR", str(tmp / "state"))
    os.environ.setdefault("CTCONSOLE_RUN_DIR", str(tmp / "run"))
    name = a.host
    if name in {h.name for h in lab.host_list()}:
        lab.host_del(name)  # left over from an interrupted run
    host = lab.host_add(name, isolated=True)
    link = SshLink(tmp, host.address)
    rates = [r for r in a.rates.split(",")]
    keys = ("raw", "ct", "ct-own", "raw-held")
    rows: list[tuple[str, int, dict[str, list[dict[str, Any]]]]] = []
    try:
        for rate in rates:
            lab.host_shape(name, "" if rate == "unshaped" else rate, "")
            for mib in [int(x) for x in a.sizes.split(",")]:
                if mib >= 1024 and rate == "100mbit" and not a.slow:
                    print(f"skipping {mib} MiB at 100mbit (about {mib * 8 / 100:.0f} s a run; --slow runs it)",
                          file=sys.stderr)
                    continue
                per: dict[str, list[dict[str, Any]]] = {k: [] for k in keys}
                for i in range(a.repeat):
                    # rotated each repeat: on this VM a run is faster when the run before it touched as much
                    # memory as it needs (ctconsole and raw-held need the source's size more than raw), so
                    # no method may always follow the same one
                    for key in keys[i % len(keys):] + keys[:i % len(keys)]:
                        if key == "raw-held" and mib < 256:
                            continue
                        try:
                            if key.startswith("raw"):
                                r = raw_over_ssh(tmp, mib, host, link, hold=key == "raw-held")
                            else:
                                r = ctconsole_over_ssh(tmp, mib, host, link.ctl if key == "ct" else None)
                        except Exception as exc:  # one failed run must not lose the table
                            print(f"{rate} {mib} MiB run {i + 1} {key}: FAILED {exc}", file=sys.stderr, flush=True)
                            continue
                        per[key].append(r)
                        print(f"{rate} {mib} MiB run {i + 1} {key}: gap {r['gap'] * 1000:.0f} ms, total "
                              f"{r['total']:.2f} s, restore {r['restore_time']:.2f} s"
                              + (f", timeline {r['timeline']}" if r.get("timeline") else ""),
                              file=sys.stderr, flush=True)
                rows.append((rate, mib, per))
        print()
        print("isolated host (own netns + mount ns + sshd; same kernel), ssh://root@" + host.address)
        print("workload: python in its own pid ns, N MiB touched, a UDP tick every 10 ms to 127.0.0.1 (received "
              "here, and in the isolated host's netns after the move); gap = longest pause between two ticks")
        print("raw = criu page-server there + criu dump --page-server through ssh -L on one control master + "
              "tar of the other images over it + criu restore -d there (no checks, no way back)")
        print("ct = ctconsole migrate (stop-copy) on the same control master (as on ctconsole's own kept "
              "connection after a check --to); ct-own = a fresh ssh connection (the first command to a host)")
        print(f"medians of {a.repeat} interleaved runs (order rotated per repeat); "
              "restore = CRIU's stats-restore restore_time (s)")
        hdr = (f"{'rate':>9} {'size':>8}  {'raw total':>9} {'raw gap':>8}  {'ct total':>9} {'ct gap':>8}  "
               f"{'total x':>7} {'gap x':>6}  {'own total':>9} {'own x':>6}  {'held gap':>8} {'ct/held':>7}  "
               f"{'restore raw/held/ct':>20} {'ok':>5}")
        print(hdr)
        print("-" * len(hdr))
        for rate, mib, per in rows:
            if not per["raw"] or not per["ct"]:
                print(f"{rate:>9} {f'{mib}MiB':>8}  (no successful run of {'raw' if not per['raw'] else 'ctconsole'})")
                continue
            rt, rg = med(per["raw"], "total"), med(per["raw"], "gap")
            ct, cg = med(per["ct"], "total"), med(per["ct"], "gap")
            own = med(per["ct-own"], "total") if per["ct-own"] else float("nan")
            held = med(per["raw-held"], "restore_time") if per["raw-held"] else float("nan")
            hg = med(per["raw-held"], "gap") if per["raw-held"] else float("nan")
            rst = f"{med(per['raw'], 'restore_time'):.2f}/{held:.2f}/{med(per['ct'], 'restore_time'):.2f}"
            runs = [r for k in keys for r in per[k]]
            oks = f"{sum(1 for r in runs if r['ok'])}/{len(runs)}"
            print(f"{rate:>9} {f'{mib}MiB':>8}  {rt:9.2f} {rg * 1000:8.0f}  {ct:9.2f} {cg * 1000:8.0f}  "
                  f"{ct / rt:7.2f} {cg / rg:6.2f}  {own:9.2f} {own / rt:6.2f}  {hg * 1000:8.0f} {cg / hg:7.2f}  "
                  f"{rst:>20} {oks:>5}")
        print("goal: gap x <= 1.10, total x <= 1.20; pages stream during the dump in both (page server)")
        print(f"raw-held = raw with criu dump --leave-stopped, the source killed after the restore (a way back, "
              f"as ctconsole keeps): the restore no longer gets the killed source's memory back warm; free page "
              f"reporting to the hypervisor: {page_reporting()}")
    finally:
        link.close()
        with contextlib.suppress(Exception):
            lab.host_shape(name, "", "")
        if not a.keep_host:
            lab.host_del(name)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
