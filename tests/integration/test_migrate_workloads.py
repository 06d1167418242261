"""Real software nobody here wrote, each in a plain ``unshare`` container, checked and migrated.

The container is what an operator makes by hand: new pid+net+mnt+uts+ipc namespaces, a root
under a temp dir that binds the host's /usr and /etc read-only, ``setsid`` inside, stdio on the
container's own /dev/null. Each case goes the operator's way: ``check --to`` (the verdict must be
the honest one), ``rules suggest --to`` (the draft leaves /usr and /etc to the operator, who gives
read-only binds made for containers), ``check --rules`` (no known blockers), ``migrate``, then
the server answers a real request from the destination's copy, data written before the move is
still there, and the source is gone.

A container started without ``setsid`` is also checked: CRIU refuses it inside a pid namespace
("A session leader of N(1) is outside of its pid namespace", cr-dump.c) and ``check`` must say
so instead of promising ``shell_job``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import support_hosts
from tests.support_hosts import CTCONSOLE, NetnsHost, ctenv, run_cli, sh

nshost = support_hosts.nshost  # fixture


def need(binary: str) -> str:
    path = shutil.which(binary)
    if not path:
        pytest.fail(f"{binary} is not installed (scripts/setup installs it)", pytrace=False)
    return path


@dataclass
class Workload:
    """A server run as the container's init; ``probe(pid)`` talks to it in pid's netns, returns its answer."""

    name: str
    argv: Callable[[Path], list[str]]  # given the container root (to prepare files), the command inside
    probe: Callable[[int, Path], str]  # (a pid of the container, its root) -> the server's answer
    expect: str  # in the probe's answer, before and after the move
    binary: str = "busybox"
    foreign_gid: bool = False  # runs with a gid other than CRIU's (dnsmasq drops to group dip)
    holds_lock: bool = False  # holds a file lock, on a filesystem a netns destination shares
    # after the move: a second request that completes what the first one saw (commit a held transaction)
    finish: Callable[[Path], str] | None = None
    finish_expect: str = ""


def has_cap_sys_resource() -> bool:
    """Whether this process (and so CRIU) has CAP_SYS_RESOURCE (24): without it CRIU may not read the
    rlimits of a task with other uids/gids (kernel/sys.c check_prlimit_permission)."""
    eff = next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("CapEff:"))
    return bool(int(eff.split()[1], 16) >> 24 & 1)


def _in_netns(pid: int, *argv: str, stdin: str = "") -> str:
    p = subprocess.run(["nsenter", "-t", str(pid), "-n", *argv], input=stdin, capture_output=True, text=True,
                       timeout=10)
    return p.stdout  # what the server said (nslookup exits 1 when only the AAAA query is refused)


def _http(port: int) -> Callable[[int, Path], str]:
    return lambda pid, _root: _in_netns(pid, "busybox", "wget", "-q", "-O", "-", f"http://127.0.0.1:{port}/")


def _busybox_httpd(root: Path) -> list[str]:
    (root / "www").mkdir()
    (root / "www" / "index.html").write_text("page written before the move\n")
    return ["busybox", "httpd", "-f", "-p", "127.0.0.1:8080", "-h", "/www"]


PERL_ECHO = r"""
use IO::Socket::INET;
my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1:7007', Listen => 5, ReuseAddr => 1) or die;
open(my $d, '<', '/data/state') or die; my $state = <$d>; close $d; chomp $state;
while (my $c = $s->accept) { my $l = <$c>; print $c "$state $l"; close $c; }
"""


def _perl_echo(root: Path) -> list[str]:
    (root / "data" / "state").write_text("perl-state-42\n")
    return ["perl", "-e", PERL_ECHO]


def _dnsmasq(root: Path) -> list[str]:
    return ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
            "--listen-address=127.0.0.1", "--bind-interfaces", "--address=/w.test/198.18.9.9", "--user=root",
            "--pid-file"]


def _tmux(root: Path) -> list[str]:
    # the server daemonises (as it does for everyone) under a shell init; its session's shell holds a pty
    return ["sh", "-c", "tmux -S /run/tmux.sock new-session -d -s w 'echo held-by-tmux; exec sh'; "
            "exec sleep 1000000"]


def _tmux_probe(pid: int, root: Path) -> str:
    p = subprocess.run(["nsenter", "-t", str(pid), "-m", "-n", "tmux", "-S", "/run/tmux.sock", "capture-pane",
                        "-p", "-t", "w"], capture_output=True, text=True, timeout=10)
    return p.stdout if p.returncode == 0 else ""


SQLITE_INIT = ("mkfifo /tmp/in; sqlite3 /data/db </tmp/in & exec 3>/tmp/in; "
               "echo \"create table t(x); insert into t values('before'); begin exclusive; "
               "insert into t values('during');\" >&3; exec sleep 1000000")


def _sqlite_probe(pid: int, root: Path) -> str:
    """Another client, on the same database file: the container's open transaction keeps it locked."""
    p = subprocess.run(["sqlite3", str(root / "data" / "db"), "select group_concat(x) from t"],
                       capture_output=True, text=True, timeout=10)
    return p.stdout + p.stderr


def _sqlite_commit(root: Path) -> str:
    with open(root / "tmp" / "in", "w") as fifo:  # the session inside the container reads it
        fifo.write("commit;\n")
    end = time.monotonic() + 10
    out = ""
    while time.monotonic() < end and "during" not in out:
        out = _sqlite_probe(0, root)
        time.sleep(0.1)
    return out


WORKLOADS = {
    "sqlite-write-lock": Workload("sqlite-write-lock", lambda root: ["sh", "-c", SQLITE_INIT], _sqlite_probe,
                                  "database is locked", "sqlite3", finish=_sqlite_commit,
                                  finish_expect="before,during", holds_lock=True),
    "busybox-httpd": Workload("busybox-httpd", _busybox_httpd, _http(8080), "page written before the move"),
    "perl-socket": Workload("perl-socket", _perl_echo,
                            lambda pid, _root: _in_netns(pid, "busybox", "nc", "127.0.0.1", "7007",
                                                         stdin="ping\n"),
                            "perl-state-42 ping", "perl"),
    "dnsmasq": Workload("dnsmasq", _dnsmasq,
                        lambda pid, _root: _in_netns(pid, "busybox", "nslookup", "w.test", "127.0.0.1"),
                        "198.18.9.9", "dnsmasq", foreign_gid=True),
    "tmux": Workload("tmux", _tmux, _tmux_probe, "held-by-tmux", "tmux"),
}


@dataclass
class Box:
    launcher: subprocess.Popen[bytes]
    init: int
    root: Path
    restored: int = 0  # the destination's copy, once migrated


def start_box(root: Path, argv: list[str], setsid: bool = True, host_stdio: bool = False) -> Box:
    """``argv`` as init of new namespaces, pivoted into ``root`` (host /usr, /etc bound read-only)."""
    for d in ("usr", "etc", "proc", "dev", "tmp", "data", "run", "oldroot"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for link in ("bin", "sbin", "lib", "lib64"):
        (root / link).symlink_to(f"usr/{link}")
    for dev, minor in (("null", 3), ("zero", 5), ("random", 8), ("urandom", 9)):
        os.mknod(root / "dev" / dev, 0o666 | 0o020000, os.makedev(1, minor))
    os.chmod(root / "tmp", 0o1777)
    r = str(root)
    inner = (f"mount --make-rprivate /; mount --bind {r} {r}; mount --bind -o ro /usr {r}/usr; "
             f"mount --bind -o ro /etc {r}/etc; cd {r}; pivot_root . oldroot; mount -t proc proc /proc; "
             "umount -l /oldroot; mkdir -p /dev/pts; ln -sf pts/ptmx /dev/ptmx; "
             "mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts; ip link set lo up; cd /; "
             f'{"" if host_stdio else "exec </dev/null >/dev/null 2>&1; "}exec {"setsid " if setsid else ""}"$@"')
    launcher = subprocess.Popen(["unshare", "--pid", "--net", "--mount", "--uts", "--ipc", "--fork",
                                 "sh", "-c", inner, "sh", *argv], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                                close_fds=True)
    end = time.monotonic() + 10
    while time.monotonic() < end:
        with contextlib.suppress(OSError, ValueError, IndexError):
            kids = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
            if kids:
                return Box(launcher, int(kids[0]), root)
        time.sleep(0.02)
    raise AssertionError("the container's init did not start")


def wait_answer(w: Workload, pid: int, root: Path, timeout: float = 20) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        out = w.probe(pid, root)
        if w.expect in out:
            return out
        time.sleep(0.1)
    raise AssertionError(f"{w.name} in pid {pid}'s netns did not answer {w.expect!r}")


def stop_box(b: Box) -> None:
    for pid in (b.restored, b.init, b.launcher.pid):
        if not pid:
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    b.launcher.wait(timeout=10)


def cli_json(args: list[str], env: dict[str, str]) -> tuple[int, Any, str]:
    p = subprocess.run([*CTCONSOLE, *args], capture_output=True, text=True, env=env, timeout=120,
                       cwd=support_hosts.ROOT)
    return p.returncode, json.loads(p.stdout) if p.stdout.strip() else None, p.stderr


@pytest.fixture
def host_binds(tmp_path: Path, needs_root: None) -> Iterator[dict[str, Path]]:
    """Read-only binds of the host's /usr and /etc made for containers: the operator's answer to the draft."""
    out = {}
    for d in ("usr", "etc"):
        p = tmp_path / f"host-{d}"
        p.mkdir()
        sh("mount", "--bind", "-o", "ro", f"/{d}", str(p))
        out[d] = p
    yield out
    for p in out.values():
        sh("umount", "-l", str(p), check=False)


# -- tests ----------------------------------------------------------------------------------
def test_unshare_without_setsid_is_a_blocker(tmp_path: Path, criu_bin: str) -> None:
    need("busybox")
    w = WORKLOADS["busybox-httpd"]
    root = tmp_path / "root"
    root.mkdir()
    b = start_box(root, w.argv(root), setsid=False)
    try:
        wait_answer(w, b.init, root)
        rc, report, _ = cli_json(["check", f"pid:{b.init}", "--json"], ctenv(tmp_path))
        session = [f for f in report["findings"] if f["rule"] == "session"]
        assert session and session[0]["severity"] == "blocker", session
        assert "setsid" in session[0]["remedy"] and report["verdict"] == "infeasible"
        assert rc == 1
        # and CRIU agrees: the trial dump fails for exactly that reason
        rc, report, _ = cli_json(["check", f"pid:{b.init}", "--trial", "--json"], ctenv(tmp_path))
        assert rc == 1 and "session leader" in json.dumps(report).lower(), report
        wait_answer(w, b.init, root)
    finally:
        stop_box(b)


def suggested_rules(pid: int, nshost: NetnsHost, env: dict[str, str], host_binds: dict[str, Path],
                    tmp: Path) -> tuple[str, Path]:
    """`rules suggest pid:PID --to DEST`, with the operator's one decision filled in (which host paths
    replace the host's /usr and /etc binds: the draft leaves them /CHANGE-ME); the draft and its file."""
    p = subprocess.run([*CTCONSOLE, "rules", "suggest", f"pid:{pid}", "--to", nshost.dest],
                       capture_output=True, text=True, env=env, timeout=60, cwd=support_hosts.ROOT)
    assert p.returncode == 0, p.stderr
    draft = p.stdout
    filled = draft
    for d, path in host_binds.items():
        filled, n = re.subn(rf'(mountpoint = "/{d}"\n\s*path = )"/CHANGE-ME"[^\n]*', rf'\1"{path}"', filled)
        assert n == 1, draft
    rules = tmp / "rules.toml"
    rules.write_text(filled)
    return draft, rules


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_workload_check_suggest_migrate(name: str, tmp_path: Path, nshost: NetnsHost,
                                        host_binds: dict[str, Path], criu_bin: str) -> None:
    need("busybox")
    w = WORKLOADS[name]
    need(w.binary)
    env = ctenv(tmp_path)
    root = tmp_path / "root"
    root.mkdir()
    (root / "data").mkdir()
    b = start_box(root, w.argv(root))
    try:
        before = wait_answer(w, b.init, root)
        # 1. check: the host's /usr and /etc binds need a decision; a task CRIU may not read the rlimits of
        #    (where CRIU runs without CAP_SYS_RESOURCE) is a blocker CRIU confirms ("Can't get rlimit")
        expect_blockers = ({"creds-rlimit"} if w.foreign_gid and not has_cap_sys_resource() else set()) | (
            {"dest-lock-shared"} if w.holds_lock else set())
        blocked = bool(expect_blockers)
        rc, report, err = cli_json(["check", f"pid:{b.init}", "--to", nshost.dest, "--json"], env)
        assert report, err
        need_rule = {f["subject"] for f in report["findings"] if f["severity"] == "needs-rule"}
        blockers = {f["rule"] for f in report["findings"] if f["severity"] == "blocker"}
        assert need_rule == {"mount /usr", "mount /etc"}, report["findings"]
        assert blockers == expect_blockers, report["findings"]
        assert report["verdict"] == ("infeasible" if blocked else "needs-rules") and rc == 1
        # 2. the draft never proposes the host's /usr or /etc as a whole (every destination refuses them)
        draft, rules = suggested_rules(b.init, nshost, env, host_binds, tmp_path)
        assert "UNDECIDED: which host path replaces /usr" in draft, draft
        rc, report, err = cli_json(["check", f"pid:{b.init}", "--to", nshost.dest, "--rules", str(rules),
                                    "--trial", "--json"], env)
        if blocked:
            assert report["verdict"] == "infeasible" and rc == 1, (report, err)
            assert expect_blockers <= {f["rule"].removeprefix("trial:") for f in report["findings"]}, report
        else:
            assert report["verdict"] == "feasible" and rc == 0, (report, err)
        # 3. migrate, under the operator's rules
        rc, events, err = run_cli(["migrate", f"pid:{b.init}", "--to", nshost.dest, "--rules", str(rules),
                                   "--json"], env)
        if blocked:  # the operator went ahead anyway: refused before anything froze, the source still answers
            assert events and events[-1].get("result") != "migrated" and rc != 0, events[-3:]
            assert not any(e.get("phase") == "perform" for e in events), events
            assert w.expect in wait_answer(w, b.init, root)
            if w.finish is not None:
                assert w.finish_expect in w.finish(root)
            return
        assert events and events[-1].get("result") == "migrated", (events[-3:], err)
        assert rc == 0
        restored = int(events[-1]["restored_pid"])
        b.restored = restored
        # 4. the server answers from the destination's copy, with what it held before; the source is gone
        after = wait_answer(w, restored, root)
        assert w.expect in before and w.expect in after
        if w.finish is not None:
            assert w.finish_expect in w.finish(root)
        end = time.monotonic() + 10
        while os.path.exists(f"/proc/{b.init}") and time.monotonic() < end:
            time.sleep(0.05)
        assert not os.path.exists(f"/proc/{b.init}") or b.init == restored, "the source still runs"
    finally:
        stop_box(b)


def httpd_on_host_stdio(tmp: Path) -> tuple[Workload, Path, Box]:
    """busybox httpd in a box of its own whose stdio is still the host's /dev/null (a char device): the
    workload, its root and the box."""
    need("busybox")
    w = WORKLOADS["busybox-httpd"]
    root = tmp / "root"
    root.mkdir()
    return w, root, start_box(root, w.argv(root), host_stdio=True)


def test_file_rule_of_another_kind_is_caught_before_the_freeze(tmp_path: Path, nshost: NetnsHost,
                                                                host_binds: dict[str, Path], criu_bin: str) -> None:
    """stdio left on the host's /dev/null (a char device), handed over as a regular file: CRIU compares
    the whole st_mode on restore ('File fd/0 has bad mode 0100644 (expect 020666)', files-reg.c), so
    ``check --to`` must say so instead of 'no known blockers'."""
    w, root, b = httpd_on_host_stdio(tmp_path)
    env = ctenv(tmp_path)
    try:
        wait_answer(w, b.init, root)
        stand_in = tmp_path / "stdin-stand-in"
        stand_in.write_text("")
        rules = tmp_path / "rules.toml"
        rules.write_text(
            'version = 1\n[[container]]\nmatch = { name = "*" }\n'
            f'[[container.rule]]\nkind = "mount"\nmountpoint = "/usr"\npath = "{host_binds["usr"]}"\n'
            f'[[container.rule]]\nkind = "mount"\nmountpoint = "/etc"\npath = "{host_binds["etc"]}"\n'
            f'[[container.rule]]\nkind = "file"\nsource = "/dev/null"\ndestination = "{stand_in}"\n')
        rc, report, err = cli_json(["check", f"pid:{b.init}", "--to", nshost.dest, "--rules", str(rules), "--json"],
                                   env)
        kinds = [f for f in report["findings"] if f["rule"] == "dest-file-kind"]
        assert kinds and "char" in kinds[0]["message"] and "/dev/null" in kinds[0]["remedy"], report["findings"]
        assert report["verdict"] == "needs-rules" and rc == 1, (report["verdict"], err)
        wait_answer(w, b.init, root)
    finally:
        stop_box(b)


def test_stdio_on_the_hosts_dev_null_migrates_with_the_suggested_rule(tmp_path: Path, nshost: NetnsHost,
                                                                       host_binds: dict[str, Path],
                                                                       criu_bin: str) -> None:
    """stdio left on the host's /dev/null (``unshare ... </dev/null``, a runtime's stdio): the draft hands the
    destination's own /dev/null over (a `file` rule), and the destination's policy lets the agent open the
    kernel's /dev/null (never create it, never another device): the workload migrates and answers."""
    w, root, b = httpd_on_host_stdio(tmp_path)
    env = ctenv(tmp_path)
    try:
        before = wait_answer(w, b.init, root)
        draft, rules = suggested_rules(b.init, nshost, env, host_binds, tmp_path)
        assert 'destination = "/dev/null"' in draft, draft
        rc, events, err = run_cli(["migrate", f"pid:{b.init}", "--to", nshost.dest, "--rules", str(rules),
                                   "--json"], env)
        assert rc == 0 and events and events[-1].get("result") == "migrated", (events[-3:], err)
        b.restored = int(events[-1]["restored_pid"])
        assert w.expect in before and w.expect in wait_answer(w, b.restored, root)
        assert os.readlink(f"/proc/{b.restored}/fd/0") == "/dev/null"
    finally:
        stop_box(b)
