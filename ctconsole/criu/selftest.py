"""Does post-copy (lazy pages) really work here? A short, bounded, real lazy migration.

Why: CRIU's FEATURE_CHECK answers ``lazy_pages=true`` from kernel data alone
(userfaultfd present), yet on some hosts the lazy page transfer itself fails
(``page-pipe: tee: ... Operation not permitted``) and the restore side can
then hang forever. Post-copy is the one strategy that cannot resume the
source once it has started, so it is gated on this test instead.

The test migrates a throwaway Python process (4 MiB of patterned memory) with
``criu dump --lazy-pages``, ``criu lazy-pages`` and ``criu restore
--lazy-pages`` (the lazy daemon has no RPC; the CLI is the only interface).
The dump and the daemon talk over a socketpair (``--ps-socket`` on both
ends), exactly as a post-copy migration does over its page channel
(migrate/transport.py): nothing listens, so no other local user can read the
throwaway's memory or steal the connection.
The restore runs as PID 1 of a fresh pid namespace so the restored pid does
not clash with the frozen original. Every process started here is bounded by
a timeout and SIGKILLed by pid. The verdict is cached per CRIU version and
kernel release in ``<state_dir>/selftest.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ctconsole.config import criu_binary, private_dir, state_dir

THROWAWAY = r"""
import os, sys, time
d = sys.argv[1]
buf = bytearray((i * 7) & 0xff for i in range(4 << 20))
expect = sum(buf[::4096])
open(os.path.join(d, "ready"), "w").close()
while not os.path.exists(os.path.join(d, "go")):
    time.sleep(0.01)
ok = sum(buf[::4096]) == expect and buf[12345] == (12345 * 7) & 0xff
with open(os.path.join(d, "result"), "w") as f:
    f.write("ok" if ok else "bad")
"""


def _cache_path() -> Path:
    return state_dir() / "selftest.json"


def _criu_version(criu: str) -> str:
    try:
        out = subprocess.run([criu, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Version:")), "?")


def cache_key(criu: str | None = None) -> str:
    return f"criu {_criu_version(criu or criu_binary())} / kernel {platform.release()}"


def cached_result(criu: str | None = None) -> tuple[bool, str] | None:
    """The cached verdict for this CRIU + kernel, or None (never runs the test)."""
    try:
        data = json.loads(_cache_path().read_text())
        rec = data.get(cache_key(criu))
        return (bool(rec["ok"]), str(rec["reason"])) if rec else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _store(criu: str, ok: bool, reason: str) -> None:
    p = _cache_path()
    private_dir(p.parent)
    try:
        data = json.loads(p.read_text())
        if not isinstance(data, dict):
            data = {}
    except (OSError, ValueError):
        data = {}
    data[cache_key(criu)] = {"ok": ok, "reason": reason, "time": time.time()}
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, p)


def _errors(*logs: Path) -> list[str]:
    out = []
    for log in logs:
        with contextlib.suppress(OSError):
            for line in log.read_text(errors="replace").splitlines():
                if "Error (" in line and "RLIMIT_NOFILE" not in line:
                    out.append(f"{log.name}: {line.strip()}")
    return out


def _kill(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def lazy_dump_argv(criu: str, pid: int, images: Path, ps_fd: int) -> list[str]:
    """``criu dump --lazy-pages`` serving its pages on the connected socket ``ps_fd`` (never on TCP)."""
    return [criu, "dump", "-t", str(pid), "-D", str(images), "-o", "dump.log", "-v4", "--lazy-pages",
            "--ps-socket", str(ps_fd)]


def run_selftest(criu: str | None = None, timeout: float = 20.0) -> tuple[bool, str]:
    """Run the lazy migration now (root only); returns (works, reason). Not cached."""
    criu = criu or criu_binary()
    base = private_dir(state_dir() / "selftest")
    work = Path(tempfile.mkdtemp(prefix="lazy-", dir=base))
    src, dst, flag = work / "src", work / "dst", work / "flag"
    for d in (src, dst, flag):
        d.mkdir(mode=0o700)
    (work / "t.py").write_text(THROWAWAY)
    procs: list[subprocess.Popen[bytes]] = []
    # the page channel: the lazy dump serves on one end, the lazy-pages daemon asks on the other
    src_end, dst_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

    def start(argv: list[str], fd: int = -1) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True, close_fds=True, pass_fds=(fd,) if fd >= 0 else ())
        procs.append(p)
        return p

    try:
        victim = start([sys.executable, "-S", str(work / "t.py"), str(flag)])
        end = time.monotonic() + timeout
        while not (flag / "ready").exists():
            if time.monotonic() > end or victim.poll() is not None:
                return False, "the throwaway process did not start"
            time.sleep(0.02)
        start(lazy_dump_argv(criu, victim.pid, src, src_end.fileno()), src_end.fileno())
        src_end.close()
        dump_log = src / "dump.log"
        while "reusing ps socket" not in (dump_log.read_text(errors="replace") if dump_log.exists() else "").lower():
            if time.monotonic() > end:
                return False, "lazy dump did not reach its page server: " + "; ".join(_errors(dump_log)[:3])
            if procs[-1].poll() is not None:
                return False, "lazy dump failed: " + "; ".join(_errors(dump_log)[:3])
            time.sleep(0.02)
        for f in src.iterdir():
            if f.is_file() and f.suffix == ".img":
                shutil.copy2(f, dst / f.name)
        start([criu, "lazy-pages", "--page-server", "--ps-socket", str(dst_end.fileno()),
               "-D", str(dst), "-o", "lazy-pages.log", "-v4"], dst_end.fileno())
        dst_end.close()
        time.sleep(0.2)
        (flag / "go").touch()
        rst = start(["unshare", "--pid", "--fork", "--mount-proc", criu, "restore", "-D", str(dst),
                     "--lazy-pages", "-o", "restore.log", "-v4"])
        while rst.poll() is None and time.monotonic() < end and not (flag / "result").exists():
            time.sleep(0.05)
        result = (flag / "result").read_text() if (flag / "result").exists() else ""
        # the original might have been resumed by CRIU after a failure; only trust a restored run
        errs = _errors(src / "dump.log", dst / "lazy-pages.log", dst / "restore.log")
        if result == "ok" and not errs:
            return True, "a lazy migration of a test process succeeded"
        if time.monotonic() > end and not result:
            return False, f"lazy migration hung (killed after {timeout:.0f} s); " + "; ".join(errs[:3])
        return False, "lazy migration failed: " + ("; ".join(errs[:3]) or f"result {result!r}")
    finally:
        src_end.close()
        dst_end.close()
        for p in reversed(procs):
            _kill(p)
        shutil.rmtree(work, ignore_errors=True)


def lazy_pages_works(criu: str | None = None, force: bool = False, cached_only: bool = False) -> tuple[bool, str]:
    """Cached verdict on post-copy for this CRIU + kernel (runs the test once when unknown).

    ``force`` re-runs it; ``cached_only`` never runs it (answers "not run yet").
    """
    criu = criu or criu_binary()
    if not force:
        got = cached_result(criu)
        if got is not None:
            return got
        if cached_only:
            return False, "the lazy-pages self-test has not run yet (ctconsole doctor --selftest run)"
    if os.geteuid() != 0:
        return False, "the lazy-pages self-test needs root"
    ok, reason = run_selftest(criu)
    _store(criu, ok, reason)
    return ok, reason
