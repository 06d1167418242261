"""Benchmark: is ``ctconsole check`` right?  CRIU's own ZDTM static tests, with the real CRIU as judge.

For every ZDTM static test of the CRIU source tree that ``scripts/install-criu``
built (``/var/cache/ctconsole/criu-src/criu-*/test/zdtm``) that builds here and
runs in the host flavour:

1. start it the way zdtm.py does (``make NAME.pid``, same environment: the
   ZDTM_UID/GID/GROUPS of non-suid tests, stdin on /dev/null);
2. ask ``ctconsole check tree:PID --json`` (default mode: static rules) and
   ``ctconsole check tree:PID --json --trial`` (a real leave-running dump);
3. let CRIU decide: dump (killing the tree) and restore through
   ``ctconsole.criu.client`` with exactly the dump/restore options the default
   report proposes, images in a private temp dir; then ``kill -TERM`` and the
   test's own verdict (``NAME.out`` says PASS) as zdtm.py reads it;
4. print per mode: agree / false feasible / false infeasible, and name the
   disagreements.

"Predicted feasible" is the verdict ``feasible`` or ``no-known-blockers``
(nothing known blocks the checkpoint); ``needs-rules`` and ``infeasible``
predict that CRIU fails with these options. Tests whose zdtm.desc needs a
flavour other than ``h``, a CRIU feature this host lacks, a failing
``.checkskip`` or is ``noauto`` are skipped and listed with the reason. A test
that passes C/R but then fails its own check is re-run once without C/R: if it
fails then too it is broken on this host and left out (listed).

Bounded: every step has a timeout, the whole run has ``--budget``; the
benchmark makes itself a child subreaper so the daemonised tests are its
children, and kills only the pids of trees it started (checked by start time).
It does not touch the lab. Needs root.

Usage: .venv/bin/python benchmarks/verdict.py [--jobs 2] [--only REGEX] [--as-root] [--json out.json]
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
CTCONSOLE = [sys.executable, "-m", "ctconsole"]
SRC_CACHE = Path("/var/cache/ctconsole/criu-src")
WORK = Path("/var/tmp/ctconsole-zdtm")
OK_WORDS = ("feasible", "no-known-blockers")
PR_SET_CHILD_SUBREAPER = 36

_lock = threading.Lock()
# Held from a test's start to the end of its restore: both take host-wide names (pids, pts indices) that a
# parallel test's start must not grab while a dumped tree is away (the checks and stops still overlap).
_host_names = threading.Lock()
_started: dict[int, str] = {}  # pid -> /proc start time of every task of every tree we started
_features: dict[str, bool] = {}
AS_ROOT = False  # --as-root: start every test as root (as zdtm does 'suid' tests)


# ---------------------------------------------------------------- building and listing


def zdtm_source() -> Path:
    trees = sorted(SRC_CACHE.glob("criu-*/test/zdtm"))
    if not trees:
        sys.exit(f"no CRIU source tree under {SRC_CACHE} (run scripts/install-criu)")
    return trees[-1]


def prepare(work: Path, jobs: int, rebuild: bool) -> Path:
    """A private copy of test/zdtm (never build in the shared cache), built with make -k."""
    src = zdtm_source()
    if rebuild and work.exists():
        shutil.rmtree(work)
    if not (work / "lib").exists():
        work.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, work, symlinks=True)
    if not (work / "lib/libzdtmtst.a").exists() or rebuild:
        subprocess.run(["make", "-C", str(work / "lib"), f"-j{jobs}"], check=True, capture_output=True, timeout=900)
    stamp = work / "static/.ctconsole-built"
    if not stamp.exists():
        r = subprocess.run(
            ["make", "-k", "-C", str(work / "static"), f"-j{jobs}", "all"], capture_output=True, timeout=3600
        )
        (work / "static/.ctconsole-build.log").write_bytes(r.stdout + r.stderr)
        stamp.touch()
    st = os.stat(work / "static")
    os.chmod(work / "static", st.st_mode | 0o777)  # zdtm's add_wperms: tests drop to uid 18943
    return work / "static"


def test_names(static: Path) -> list[str]:
    """Executables of static/ as zdtm.py's all_tests lists them."""
    names = []
    for p in sorted(static.iterdir()):
        try:
            st = p.lstat()
        except OSError:
            continue
        if not p.is_file() or p.is_symlink() or not st.st_mode & 0o100:
            continue
        if p.suffix in (".checkskip", ".hook", ".sh", ".so", ".py") or p.name == "route_rules":
            continue
        names.append(p.name)
    return names


def source_names(static: Path) -> list[str]:
    """Tests the Makefile knows (a .c file): those that did not link 'do not build here'."""
    return sorted(p.stem for p in static.glob("*.c") if not p.stem.startswith("criu-rtc"))


def desc_of(static: Path, name: str) -> dict[str, Any]:
    p = static / f"{name}.desc"
    if p.exists() and p.stat().st_size:
        try:
            val = ast.literal_eval(p.read_text())
            return val if isinstance(val, dict) else {}
        except (ValueError, SyntaxError):
            return {}
    return {}


def has_feature(feat: str) -> bool:
    if feat not in _features:
        r = subprocess.run(["criu", "check", "--feature", feat], capture_output=True, timeout=60)
        _features[feat] = r.returncode == 0
    return _features[feat]


def skip_reason(static: Path, name: str, desc: dict[str, Any]) -> str:
    flags = desc.get("flags", "").split()
    if desc.get("arch", "x86_64") not in ("x86_64", os.uname().machine):
        return f"arch {desc['arch']}"
    if "noauto" in flags:
        return "noauto (manual run only)"
    if "h" not in desc.get("flavor", "h ns uns").split():
        return f"needs flavour {desc.get('flavor')} (a private netns/mntns root: zdtm's own container)"
    for feat in desc.get("feature", "").split():
        if not has_feature(feat):
            return f"no CRIU feature {feat} here"
    chk = static / f"{name}.checkskip"
    if chk.exists() and os.access(chk, os.X_OK):
        r = subprocess.run([str(chk)], cwd=static, capture_output=True, timeout=60)
        if r.returncode != 0:
            return "its .checkskip says skip"
    return ""


# ---------------------------------------------------------------- processes we started


def _starttime(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError, ValueError):
                todo.extend(int(c) for c in (task / "children").read_text().split())
    return out


def remember(pid: int) -> list[int]:
    pids = _tree(pid)
    with _lock:
        for p in pids:
            st = _starttime(p)
            if st:
                _started[p] = st
    return pids


def reap(pids: list[int]) -> None:
    """Reap those of ``pids`` that are our (subreaper) children and dead."""
    for p in pids:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(p, os.WNOHANG)


def reap_test_zombies(name: str) -> None:
    """Reap dead children of ours that were processes of test ``name`` (forked after we recorded its
    tree, re-parented to us as the subreaper): left as zombies they would hold pids a restore needs.
    Only zombies whose comm is the test's are touched, never a make/criu/ctconsole child of a Popen."""
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError, ValueError):
            for c in (task / "children").read_text().split():
                stat = Path(f"/proc/{c}/stat").read_text()
                comm, state = stat[stat.index("(") + 1 : stat.rindex(")")], stat.rsplit(")", 1)[1].split()[0]
                if state == "Z" and comm == name[:15]:
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(int(c), os.WNOHANG)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    if state in ("Z", "X"):
        reap([pid])
        return False
    return True


def wait_gone(pids: list[int], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        reap(pids)
        if not any(alive(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


def kill_ours(pids: list[int], sig: int = signal.SIGKILL) -> None:
    """Signal only pids we recorded, and only if they are still the same process."""
    for p in pids:
        with _lock:
            st = _started.get(p)
        if st and _starttime(p) == st:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, sig)


# ---------------------------------------------------------------- one test


@dataclass
class Outcome:
    name: str
    verdict: str = ""
    trial_verdict: str = ""
    criu_ok: bool | None = None
    stage: str = ""  # where CRIU (or the test) failed: start, dump, restore, result
    errors: list[str] = field(default_factory=list)
    rules: list[str] = field(default_factory=list)  # blocker/needs-rule findings of the default report
    trial_rules: list[str] = field(default_factory=list)
    broken: bool = False  # fails its own check without any C/R too
    note: str = ""
    seconds: float = 0.0


def _make(static: Path, target: str, env: dict[str, str], timeout: float) -> int:
    with open(static / ".ctconsole-make.log", "ab") as log:
        try:
            r = subprocess.run(
                ["make", "--no-print-directory", "-C", str(static), target],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return -1
    return r.returncode


def _descends_from_us(pid: int) -> bool:
    me = os.getpid()
    for _ in range(64):
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
        if pid == me:
            return True
        if pid <= 1:
            return False
    return False


def strays(name: str) -> list[int]:
    """Processes of test ``name`` we started that never wrote a pidfile (a start that timed out):
    our descendants (we are their subreaper) whose argv[0] is ``./NAME``."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv0 = (d / "cmdline").read_bytes().split(b"\0", 1)[0].decode(errors="replace")
        except OSError:
            continue
        if argv0 in (f"./{name}", name) and _descends_from_us(int(d.name)):
            out.append(int(d.name))
    return out


def _env(desc: dict[str, Any]) -> dict[str, str]:
    env = dict(os.environ, TMPDIR=os.environ.get("TMPDIR", "/tmp"), ZDTM_THREAD_BOMB="5")
    if "suid" not in desc.get("flags", "").split() and not AS_ROOT:
        env.update(ZDTM_UID="18943", ZDTM_GID="58467", ZDTM_GROUPS="27495 48244")
    return env


def start(static: Path, name: str, desc: dict[str, Any], timeout: float) -> int:
    _make(static, f"{name}.cleanout", os.environ.copy(), 60)
    if _make(static, f"{name}.pid", _env(desc), timeout) != 0:
        return 0
    try:
        return int((static / f"{name}.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def passed(static: Path, name: str) -> bool:
    try:
        return "PASS" in (static / f"{name}.out").read_text(errors="replace").split()
    except OSError:
        return False


def stop(static: Path, name: str, pid: int, pids: list[int], timeout: float) -> bool:
    """zdtm's stop: SIGTERM the root, wait for it to go, read NAME.out."""
    kill_ours([pid], signal.SIGTERM)
    if not wait_gone([pid], timeout):
        kill_ours(pids)
        wait_gone(pids, 5)
        return False
    wait_gone(pids, 5)
    return passed(static, name)


def ask(pid: int, trial: bool, timeout: float) -> dict[str, Any]:
    args = [*CTCONSOLE, "check", f"tree:{pid}", "--json"] + (["--trial"] if trial else [])
    try:
        r = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=REPO, stdin=subprocess.DEVNULL)
        return dict(json.loads(r.stdout))
    except (subprocess.TimeoutExpired, ValueError) as exc:
        return {"verdict": "error", "error": str(exc), "findings": [], "options": {}}


def _holding(report: dict[str, Any]) -> list[str]:
    return sorted(
        {
            f["rule"]
            for f in report.get("findings", [])
            if f.get("severity") in ("blocker", "needs-rule") and not f.get("satisfied")
        }
    )


def _criu_errors(log: Path) -> list[str]:
    from ctconsole.criu.errors import error_lines, rule_for

    try:
        text = log.read_text(errors="replace")
    except OSError:
        return []
    return [ln for ln in error_lines(text) if rule_for(ln) not in ("summary", "harmless")][:4]


def judge(pid: int, pids: list[int], report: dict[str, Any], timeout: float) -> tuple[bool, str, list[str]]:
    """Dump (the tree dies) and restore with the report's options: (ok, failed stage, CRIU errors)."""
    from ctconsole.criu.client import CriuClient, CriuError

    opts = report.get("options") or {}
    dump = dict(opts.get("dump") or {})
    dump["pid"] = pid
    restore = dict(opts.get("restore") or {})
    images = Path(tempfile.mkdtemp(prefix="ctconsole-verdict-"))
    os.chmod(images, 0o700)
    client = CriuClient(timeout=timeout)
    try:
        try:
            client.dump(dump, images, work_dir=images, on_notify=lambda n: True)
        except CriuError as exc:
            errs = _criu_errors(images / "dump.log") or [exc.message]
            return False, "dump", errs
        if not wait_gone(pids, 15):
            return False, "dump", ["the dumped tree did not exit"]
        try:
            client.restore(restore, images, work_dir=images, on_notify=lambda n: True)
        except CriuError as exc:
            errs = _criu_errors(images / "restore.log") or [exc.message]
            return False, "restore", errs
        remember(pid)
        return True, "", []
    finally:
        shutil.rmtree(images, ignore_errors=True)


def run_one(static: Path, name: str, desc: dict[str, Any], timeout: float, trial: bool) -> Outcome:
    t0 = time.monotonic()
    out = Outcome(name)
    tmo = float(desc.get("timeout") or 30)
    with _host_names:
        pid = start(static, name, desc, tmo)
    if not pid or not alive(pid):
        out.stage, out.note = "start", "does not start here"
        left = strays(name)
        for p in left:
            with _lock:
                _started.setdefault(p, _starttime(p))
        kill_ours(left)
        wait_gone(left, 5)
        return out
    pids = remember(pid)
    try:
        rep = ask(pid, False, timeout)
        out.verdict, out.rules = rep.get("verdict", "error"), _holding(rep)
        if trial:
            trep = ask(pid, True, timeout)
            out.trial_verdict, out.trial_rules = trep.get("verdict", "error"), _holding(trep)
        pids = remember(pid)
        with _host_names:
            ok, stage, errs = judge(pid, pids, rep, timeout)
        if ok:
            ok = stop(static, name, pid, pids, tmo)
            stage = "" if ok else "result"
            if not ok:  # the test's own words (the baseline run below overwrites NAME.out)
                with contextlib.suppress(OSError):
                    text = (static / f"{name}.out").read_text(errors="replace").splitlines()
                    errs = [ln.strip() for ln in text if "FAIL" in ln or "ERR" in ln or "fail" in ln][-2:]
        else:
            kill_ours(pids, signal.SIGTERM)  # CRIU resumed the tree: end it as zdtm would
            if not wait_gone(pids, tmo):
                kill_ours(pids)
                wait_gone(pids, 5)
        out.criu_ok, out.stage, out.errors = ok, stage, errs
    finally:
        kill_ours(pids)
        wait_gone(pids, 5)
        reap_test_zombies(name)
    if out.criu_ok is False and out.stage == "result":
        out.broken = baseline(static, name, desc, tmo, hold=min(time.monotonic() - t0, 120.0))
    out.seconds = time.monotonic() - t0
    return out


def baseline(static: Path, name: str, desc: dict[str, Any], tmo: float, hold: float = 0.5) -> bool:
    """True when the test fails its own check without any checkpoint (broken on this host), run as
    long as the C/R run took (``hold``): a test that checks host-wide state (cgroup_ifpriomap reads the
    net_prio map of every host interface) fails over time when others change that state."""
    with _host_names:
        pid = start(static, name, desc, tmo)
    if not pid:
        return True
    pids = remember(pid)
    time.sleep(max(0.5, hold))
    try:
        return not stop(static, name, pid, remember(pid) or pids, tmo)
    finally:
        kill_ours(pids)
        wait_gone(pids, 5)


# ---------------------------------------------------------------- table


def classify(verdict: str, criu_ok: bool) -> str:
    predicted = verdict in OK_WORDS
    if predicted == criu_ok:
        return "agree"
    return "false feasible" if predicted else "false infeasible"


def table(results: list[Outcome], skipped: dict[str, str], unbuilt: list[str], trial: bool) -> str:
    judged = [r for r in results if r.criu_ok is not None and not r.broken]
    nostart_n = sum(1 for r in results if r.stage == "start")
    broken_n = sum(1 for r in results if r.broken)
    lines = [
        f"ZDTM static tests: {len(judged)} judged, {len(skipped)} skipped, {len(unbuilt)} do not build here, "
        f"{nostart_n} do not start, {broken_n} broken here "
        f"(fail without C/R); CRIU accepted {sum(1 for r in judged if r.criu_ok)} of {len(judged)}",
        "",
        "| mode | judged | agree | false feasible | false infeasible | agreement |",
        "|---|---|---|---|---|---|",
    ]
    modes = [("default (static)", "verdict")] + ([("--trial", "trial_verdict")] if trial else [])
    dis: list[str] = []
    for label, attr in modes:
        counts = {"agree": 0, "false feasible": 0, "false infeasible": 0}
        for r in judged:
            verdict = getattr(r, attr)
            assert r.criu_ok is not None
            c = classify(verdict, r.criu_ok)
            counts[c] += 1
            if c != "agree":
                why = ", ".join(r.rules if attr == "verdict" else r.trial_rules) or "-"
                crit = f"CRIU {'ok' if r.criu_ok else 'failed at ' + r.stage}"
                err = f": {r.errors[0][:110]}" if r.errors else ""
                dis.append(f"- {label}: {c}: **{r.name}** said {verdict} ({why}); {crit}{err}")
        n = len(judged) or 1
        lines.append(
            f"| {label} | {len(judged)} | {counts['agree']} | {counts['false feasible']} | "
            f"{counts['false infeasible']} | {100.0 * counts['agree'] / n:.1f}% |"
        )
    verdicts: dict[str, int] = {}
    for r in judged:
        verdicts[r.verdict] = verdicts.get(r.verdict, 0) + 1
    lines += ["", "Default verdicts: " + ", ".join(f"{k} {v}" for k, v in sorted(verdicts.items()))]
    lines += ["", "Disagreements:" if dis else "Disagreements: none", *dis]
    broken = [r.name for r in results if r.broken]
    nostart = [r.name for r in results if r.stage == "start"]
    if broken:
        lines += ["", "Broken here (fail their own check without C/R): " + ", ".join(broken)]
    if nostart:
        lines += ["", "Do not start here: " + ", ".join(nostart)]
    if skipped:
        by: dict[str, list[str]] = {}
        for n, why in skipped.items():
            by.setdefault(why, []).append(n)
        lines += ["", "Skipped:"] + [f"- {why}: {', '.join(sorted(ns))}" for why, ns in sorted(by.items())]
    if unbuilt:
        lines += ["", "Do not build here (missing headers/libraries): " + ", ".join(unbuilt)]
    return "\n".join(lines) + "\n"


def unmount_left_under(work: Path) -> None:
    """Detach every mount a killed test left below ``work`` (deepest first).

    Why: a ZDTM test killed mid-run (cgroup_ignore, mnt_* tests) leaves its mount behind; a
    cgroup2 mount left there kept a hierarchy alive on this host after a run.
    """
    base = str(work.resolve()).rstrip("/") + "/"
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].replace("\\040", " ")
            if mp.startswith(base):
                points.append(mp)
    for mp in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", mp], capture_output=True, check=False)
        print(f"unmounted {mp}, left by a test", file=sys.stderr)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=2, help="tests run in parallel (excl tests run alone)")
    ap.add_argument("--only", default="", help="regex: run only the tests whose name matches")
    ap.add_argument("--work", type=Path, default=WORK, help=f"private copy of test/zdtm (default {WORK})")
    ap.add_argument("--rebuild", action="store_true", help="copy and build the tests again")
    ap.add_argument("--no-trial", action="store_true", help="skip the --trial mode (faster)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per CRIU call / check")
    ap.add_argument("--budget", type=float, default=2400.0, help="stop starting tests after this many seconds")
    ap.add_argument("--json", type=Path, help="also write every outcome to this file")
    ap.add_argument(
        "--as-root",
        action="store_true",
        help="start every test as root, not as zdtm's uid 18943 (where CRIU lacks CAP_SYS_RESOURCE, every "
        "non-root test fails on its rlimits first; this exercises the other rules)",
    )
    args = ap.parse_args()
    global AS_ROOT
    AS_ROOT = args.as_root
    if os.geteuid() != 0:
        sys.exit("needs root (CRIU dumps other processes)")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    static = prepare(args.work, max(args.jobs, 2), args.rebuild)
    built = set(test_names(static))
    only = re.compile(args.only) if args.only else None
    unbuilt = [n for n in source_names(static) if n not in built and (not only or only.search(n))]
    skipped: dict[str, str] = {}
    todo: list[tuple[str, dict[str, Any]]] = []
    for name in sorted(built):
        if only and not only.search(name):
            continue
        desc = desc_of(static, name)
        why = skip_reason(static, name, desc)
        if why:
            skipped[name] = why
        else:
            todo.append((name, desc))
    excl = [t for t in todo if "excl" in t[1].get("flags", "").split()]
    para = [t for t in todo if t not in excl]
    trial = not args.no_trial
    t0 = time.monotonic()
    results: list[Outcome] = []

    def one(item: tuple[str, dict[str, Any]]) -> Outcome:
        if time.monotonic() - t0 > args.budget:
            return Outcome(item[0], stage="start", note="over budget")
        try:
            r = run_one(static, item[0], item[1], args.timeout, trial)
        except Exception as exc:  # one test's trouble must not end the run
            r = Outcome(item[0], stage="start", note=f"harness error: {type(exc).__name__}: {exc}")
        print(
            f"{r.name:28} default={r.verdict:18} trial={r.trial_verdict:18} criu="
            f"{'ok' if r.criu_ok else ('FAIL@' + r.stage if r.stage else '-')}"
            f"{' (broken here)' if r.broken else ''} {r.seconds:.1f}s",
            file=sys.stderr,
            flush=True,
        )
        return r

    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            results.extend(pool.map(one, para))
        results.extend(one(t) for t in excl)
    finally:
        with _lock:
            left = list(_started)
        kill_ours(left)
        wait_gone(left, 5)
        unmount_left_under(args.work)
    results = [r for r in results if r.note != "over budget"] + [r for r in results if r.note == "over budget"]
    over = [r.name for r in results if r.note == "over budget"]
    for n in over:
        skipped[n] = "not run: over the time budget"
    results = [r for r in results if r.note != "over budget"]
    print(table(results, skipped, unbuilt, trial))
    print(f"({time.monotonic() - t0:.0f} s, {args.jobs} jobs)")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
