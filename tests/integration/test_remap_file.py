"""A ``file`` remap rule, judged by CRIU itself.

The workload is what a runtime produces when it hands a host log file to a
container as an fd: a process in its own mount namespace where the host
tmpfs holding the log is not mounted at all, writing to an fd opened on that
log before the namespace existed. CRIU cannot reopen such an fd ('Can't lookup
mount=N for fd=M path=P'); with a ``file`` rule the fd is dumped as external
``file[MNTID:INO]`` and on restore the task gets a NEW file ctconsole opened,
and keeps writing into it.

Only processes started here are killed (by pid); the tmpfs is mounted and
unmounted here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import assert_continuous, wait_gone

pytestmark = [pytest.mark.root, pytest.mark.criu]

# ticks to its own file (inside its mount namespace) and a line per tick to the inherited fd
WRITER = r"""
import os, sys, time
ticks, fd, interval = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
t = os.open(ticks, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
n = 0
while True:
    n += 1
    os.write(t, b"%d\n" % n)
    os.write(fd, b"line %d\n" % n)
    time.sleep(interval)
"""

# In the new mount namespace: drop other sessions' netns bind mounts (they would be findings of
# their own), make the host tmpfs with the log invisible, unless $6 says to keep the inherited
# /dev/null stdio (an external file too: opened before the namespace existed) put stdio on this
# namespace's /dev/null, then become the writer.
ENTER = r"""
for m in $(awk '$5 ~ /^\/run\/netns\/./ {print $5}' /proc/self/mountinfo); do umount -l "$m"; done
umount -l "$1" || exit 1
[ "$6" = keep-stdio ] || exec </dev/null >/dev/null 2>/dev/null
exec "$2" -S "$3" "$4" "$5" 0.05
"""


@dataclass
class Writer:
    proc: subprocess.Popen[bytes]
    ticks_path: Path
    pid: int
    log_fd: int  # the fd number the writer holds the log on (pass_fds keeps the number)

    def ticks(self) -> list[int]:
        try:
            return [int(x) for x in self.ticks_path.read_text().split()]
        except FileNotFoundError:
            return []

    def wait_ticks(self, n: int = 3, timeout: float = 10.0) -> None:
        start = (self.ticks() or [0])[-1]
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if (self.ticks() or [0])[-1] >= start + n:
                return
            time.sleep(0.02)
        raise AssertionError(f"writer {self.pid} stalled")


@pytest.fixture
def host_tmpfs(workdir: Path, needs_criu: str) -> Iterator[Path]:
    """A tmpfs on the host that the workload's mount namespace will not have."""
    d = workdir / "hostlog"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "ctc-remapfile", str(d)], check=True)
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


@contextlib.contextmanager
def writer(tmp: Path, log: Path, keep_stdio: bool = False) -> Iterator[Writer]:
    script = tmp / "writer.py"
    script.write_text(WRITER)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    try:
        proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", ENTER, "sh",
             str(log.parent), sys.executable, str(script), str(tmp / "writer.ticks"), str(fd),
             "keep-stdio" if keep_stdio else "own-stdio"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, close_fds=True, pass_fds=(fd,),
        )
    finally:
        os.close(fd)
    # unshare and sh exec, so the pid is the writer's (and the restored writer has it again)
    w = Writer(proc, tmp / "writer.ticks", proc.pid, fd)
    try:
        w.wait_ticks(2)
        yield w
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(w.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


def _lines(path: Path) -> list[int]:
    return [int(ln.split()[1]) for ln in path.read_text().splitlines() if ln.startswith("line ")]


def _resolve(pid: int) -> Any:
    from ctconsole import inventory

    return inventory.resolve(f"tree:{pid}")


def test_file_rule_moves_a_foreign_fd_to_a_new_file(workdir: Path, host_tmpfs: Path) -> None:
    from ctconsole import feasibility
    from ctconsole.criu.client import CriuClient, CriuError
    from ctconsole.remap.compile import OPEN_FILE, compile_rules, open_inherit_fds
    from ctconsole.remap.parse import load
    from ctconsole.remap.validate import validate_file

    tmp = workdir
    log = host_tmpfs / "out.log"
    new_dir = tmp / "newlog"
    new_dir.mkdir()
    new_log = new_dir / "out.log"
    with writer(tmp, log) as w:
        container = _resolve(w.pid)
        assert "hostlog" not in Path(f"/proc/{w.pid}/mountinfo").read_text()

        # check: the fd is an external file that only a rule can fix
        report = feasibility.check(container)
        ext = [f for f in report.findings if f.rule == "external-file"]
        assert report.verdict == "needs-rules", report.to_dict()
        assert len(ext) == 1 and str(log) in ext[0].subject, report.to_dict()
        key = ext[0].needs[0]
        st = os.stat(log)
        assert key.endswith(f":{st.st_ino:x}]")

        # the suggestion is a file rule for it, with a comment saying why
        from ctconsole.remap.suggest import suggest

        draft = suggest(container, findings=report.findings)
        assert 'kind = "file"' in draft and f'source = "{log}"' in draft and "Can't lookup mount" in draft

        rules = tmp / "rules.toml"
        rules.write_text(
            'version = 1\n[[container]]\nmatch = { name = "*" }\n'
            '  [[container.rule]]\n  kind = "file"\n'
            f'  source = "{log}"\n  destination = "{new_log}"\n'
            '  comment = "the runtime gave it the host log as an fd"\n'
        )
        assert validate_file(rules) == []
        compiled = compile_rules(load(rules), container)
        assert compiled.dump["external"] == [key]
        (spec,) = compiled.inherit
        assert (spec.key, spec.how, spec.path, spec.mode) == (key, OPEN_FILE, str(new_log), "append")
        assert spec.perm == 0o640  # the original's bits, so a created destination passes CRIU's check

        with_rules = feasibility.check(container, rules=str(rules))
        assert with_rules.verdict == "no-known-blockers", with_rules.to_dict()  # static check (#11)
        assert key in with_rules.options["dump"]["external"]

        # dump (killing) with the compiled dump options merged into the report's
        images = tmp / "images"
        images.mkdir(mode=0o700)
        client = CriuClient()
        before = _lines(log)[-1]
        client.dump(dict(with_rules.options["dump"], log_level=4), images)
        with contextlib.suppress(subprocess.TimeoutExpired):
            w.proc.wait(timeout=5)
        wait_gone(w.pid)
        at_dump = _lines(log)[-1]
        assert at_dump >= before

        ropts = dict(with_rules.options["restore"], log_level=4)
        # without the inherited fd CRIU cannot restore the external file
        fail_dir = tmp / "restore-fail"
        fail_dir.mkdir(mode=0o700)
        with pytest.raises(CriuError):
            client.restore(ropts, images, work_dir=fail_dir)
        wait_gone(w.pid)

        # with it, the restored task writes into the NEW file, continuing its count
        fds = open_inherit_fds(compiled.inherit)
        assert set(fds) == {key}
        work = tmp / "restore"
        work.mkdir(mode=0o700)
        try:
            res = client.restore(ropts, images, work_dir=work, inherit_fds=fds)
        finally:
            for fd in fds.values():
                os.close(fd)
        assert res.pid == w.pid
        w.wait_ticks(5)
        assert_continuous(w.ticks())
        moved = _lines(new_log)
        assert moved and moved[0] == at_dump + 1, (at_dump, moved[:3])
        assert_continuous(moved)
        assert _lines(log)[-1] == at_dump  # nothing more went to the old file
        assert os.stat(new_log).st_mode & 0o7777 == 0o640
        assert os.readlink(f"/proc/{w.pid}/fd/{w.log_fd}") == str(new_log)


def test_file_rules_for_a_host_log_and_inherited_dev_null(workdir: Path, host_tmpfs: Path) -> None:
    """stdio on the host's /dev/null (opened before ``unshare -m``) is an external file the
    inventory lists as a device: the finding and the compile's live /proc scan still find it,
    ``suggest`` drafts rules for both, and with them CRIU dumps and restores the writer."""
    from ctconsole import feasibility
    from ctconsole.criu.client import CriuClient
    from ctconsole.remap.compile import compile_rules, open_inherit_fds
    from ctconsole.remap.parse import load
    from ctconsole.remap.suggest import suggest
    from ctconsole.remap.validate import validate_file

    tmp = workdir
    log = host_tmpfs / "out.log"
    new_log = tmp / "moved.log"
    with writer(tmp, log, keep_stdio=True) as w:
        container = _resolve(w.pid)
        report = feasibility.check(container)
        subjects = sorted(f.subject.split(" (")[0] for f in report.findings if f.rule == "external-file")
        assert subjects == ["file /dev/null", f"file {log}"], report.to_dict()
        assert report.verdict == "needs-rules"

        draft = suggest(container, findings=report.findings)
        rules = tmp / "rules.toml"
        # the draft's guesses are the operator's to change: the log goes to a new file
        rules.write_text(draft.replace(f'destination = "{log}"', f'destination = "{new_log}"'))
        assert validate_file(rules) == [], rules.read_text()
        compiled = compile_rules(load(rules), container)
        by_path = {i.path: i for i in compiled.inherit}
        assert set(by_path) == {"/dev/null", str(new_log)}
        assert by_path["/dev/null"].mode == "readwrite"  # stdin read-only, stdout/stderr write-only
        assert by_path[str(new_log)].mode == "append"

        with_rules = feasibility.check(container, rules=compiled)
        assert with_rules.verdict == "no-known-blockers", with_rules.to_dict()  # static check (#11)

        images = tmp / "images"
        images.mkdir(mode=0o700)
        client = CriuClient()
        client.dump(dict(with_rules.options["dump"], log_level=4), images)
        with contextlib.suppress(subprocess.TimeoutExpired):
            w.proc.wait(timeout=5)
        wait_gone(w.pid)
        at_dump = _lines(log)[-1]
        fds = open_inherit_fds(compiled.inherit)
        work = tmp / "restore"
        work.mkdir(mode=0o700)
        try:
            res = client.restore(dict(with_rules.options["restore"], log_level=4), images, work_dir=work,
                                 inherit_fds=fds)
        finally:
            for fd in fds.values():
                os.close(fd)
        assert res.pid == w.pid
        w.wait_ticks(5)
        assert_continuous(w.ticks())
        moved = _lines(new_log)
        assert moved and moved[0] == at_dump + 1
        assert all(os.readlink(f"/proc/{w.pid}/fd/{n}") == "/dev/null" for n in (0, 1, 2))
