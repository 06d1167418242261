"""The checker judged by CRIU itself.

Each row starts a real workload holding one kind of resource, runs
``feasibility.check`` on it, then REALLY dumps and restores it with CRIU using
exactly the options the report proposes:

- ``no-known-blockers`` (the static verdict; ``feasible`` once a trial dump
  confirmed it) => the dump and the restore succeed and the counter keeps going;
- ``infeasible`` => CRIU refuses the dump (a leave-running one: the workload is
  unharmed and keeps counting);
- ``needs-rules`` => with the options ctconsole derives alone the restore does
  not work; with the rule the operator would write, it does.

No verdict may be ``feasible`` where CRIU fails. Only processes started here
are killed (by pid); networking stays on loopback or in namespaces made here.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support import assert_continuous, wait_gone

pytestmark = [pytest.mark.root, pytest.mark.criu]

WORKLOAD = Path(__file__).with_name("test_feasibility_workloads.py")


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    ticks_path: Path
    keep: list[Any] = field(default_factory=list)  # test-side ends (peers, pty masters...)
    extra_pids: list[int] = field(default_factory=list)
    pid: int = 0

    def ticks(self) -> list[int]:
        try:
            return [int(ln.split()[0]) for ln in self.ticks_path.read_text().splitlines() if ln.strip()]
        except FileNotFoundError:
            return []

    def last(self) -> int:
        t = self.ticks()
        return t[-1] if t else 0

    def wait_ticks(self, n: int = 3, timeout: float = 10.0) -> None:
        start, end = self.last(), time.monotonic() + timeout
        while time.monotonic() < end:
            if self.last() >= start + n:
                return
            time.sleep(0.02)
        raise AssertionError(f"workload {self.pid} stalled at {self.last()}")

    def kill(self) -> None:
        for pid in {self.pid, *self.extra_pids}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        for obj in self.keep:
            with contextlib.suppress(Exception):
                obj.close() if hasattr(obj, "close") else os.close(obj)


def start(
    tmp: Path, kind: str, arg: str = "", pass_fds: tuple[int, ...] = (), prefix: tuple[str, ...] = (), **kw: Any
) -> Running:
    ticks = tmp / f"{kind}.ticks"
    argv = [*prefix, sys.executable, "-S", str(WORKLOAD), str(ticks), kind, arg]
    stdio = kw.pop("stdio", subprocess.DEVNULL)
    proc = subprocess.Popen(
        argv,
        stdin=stdio,
        stdout=stdio,
        stderr=stdio,
        start_new_session=True,
        close_fds=True,
        pass_fds=pass_fds,
        **kw,
    )
    r = Running(proc, ticks, pid=proc.pid)
    try:
        r.wait_ticks(2)
    except AssertionError:
        r.kill()
        raise
    return r


def client() -> Any:
    from ctconsole.criu.client import CriuClient

    return CriuClient()


def check(pid: int, **kw: Any) -> Any:
    from ctconsole import feasibility, inventory

    return feasibility.check(inventory.resolve(f"tree:{pid}"), **kw)


def refuse_dump(w: Running, report: Any, tmp: Path) -> list[str]:
    """The CRIU verdict for an infeasible report: the dump must fail; the workload goes on."""
    from ctconsole.criu.client import CriuError

    opts = dict(report.options["dump"], leave_running=True, network_lock="SKIP", log_level=4)
    images = tmp / "refused"
    images.mkdir(mode=0o700)
    with pytest.raises(CriuError) as exc:
        client().dump(opts, images)
    w.wait_ticks(3)
    return exc.value.log_errors


def dump_restore(
    w: Running,
    report: Any,
    tmp: Path,
    restore_extra: dict[str, Any] | None = None,
    inherit: Callable[[], dict[str, int]] | None = None,
    expect_restore_ok: bool = True,
    before_restore: Callable[[], None] | None = None,
) -> Any:
    """Dump (killing) with the report's options, restore with its restore options."""
    from ctconsole.criu.client import CriuError

    images = tmp / "images"
    images.mkdir(mode=0o700, exist_ok=True)
    before = w.last()
    cl = client()
    cl.dump(dict(report.options["dump"], log_level=4), images)
    with contextlib.suppress(subprocess.TimeoutExpired):
        w.proc.wait(timeout=5)
    wait_gone(w.pid)
    assert w.last() >= before
    if before_restore:
        before_restore()
    ropts = dict(report.options["restore"], log_level=4)
    ropts.update(restore_extra or {})
    fds = inherit() if inherit else {}
    if not expect_restore_ok:
        with pytest.raises(CriuError):
            cl.restore(ropts, images, work_dir=_workdir(tmp, "restore-fail"), inherit_fds=fds)
        return None
    res = cl.restore(ropts, images, work_dir=_workdir(tmp, "restore"), inherit_fds=fds)
    w.keep.extend(res.kept_fds)
    assert res.pid == w.pid
    w.wait_ticks(5)
    assert_continuous(w.ticks())
    return res


def _workdir(tmp: Path, name: str) -> Path:
    d = tmp / name
    d.mkdir(mode=0o700, exist_ok=True)
    return d


def rules_of(report: Any) -> set[str]:
    return {f.rule for f in report.findings if f.severity != "info"}


@pytest.fixture
def tmp(workdir: Path, needs_criu: str) -> Iterator[Path]:
    yield workdir


@contextlib.contextmanager
def workload(*a: Any, **kw: Any) -> Iterator[Running]:
    w = start(*a, **kw)
    try:
        yield w
    finally:
        w.kill()


# --------------------------------------------------------------------------- feasible rows


@pytest.mark.parametrize("kind", ["plain", "socketpair", "memfd", "eventfd", "tcp-listen"])
def test_feasible_plain_resources(tmp: Path, kind: str) -> None:
    with workload(tmp, kind) as w:
        report = check(w.pid)
        assert report.verdict == "no-known-blockers", report.to_dict()
        assert not rules_of(report) - {"session"}
        dump_restore(w, report, tmp)


def test_unix_dgram_named_external_peer(tmp: Path) -> None:
    path = str(tmp / "peer.sock")
    peer = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    peer.bind(path)
    with workload(tmp, "dgram-connect", path) as w:
        w.keep.append(peer)
        report = check(w.pid)
        assert "unix-dgram-external" in rules_of(report)
        assert report.verdict == "no-known-blockers"
        assert report.options["dump"].get("ext_unix_sk") is True
        dump_restore(w, report, tmp)


def test_pty_from_outside(tmp: Path) -> None:
    """A pts slave whose master we hold. CRIU 4.2.1 here: the dump works with
    orphan_pts_master; a restore on the same host fails ('Unable to open dev/pts/ptmx
    with specified index N') while the old master still holds the index, and works
    once it is closed. So for --to local the checker says infeasible."""
    master, slave = os.openpty()
    with workload(tmp, "plain", stdio=slave) as w:
        os.close(slave)
        report = check(w.pid)
        assert "tty-external-master" in rules_of(report), report.to_dict()
        assert report.options["dump"].get("orphan_pts_master") is True
        assert report.verdict == "infeasible"
        assert "tty-index-busy" in {f.rule for f in report.findings if f.severity == "blocker"}
        dump_restore(w, report, tmp, expect_restore_ok=False)
        os.close(master)  # the remedy: the old terminal goes away
        res = dump_restore_again(w, report, tmp, {})
        assert res.kept_fds, "CRIU should hand the new pts master to the client"


def test_tcp_established_loopback(tmp: Path) -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    with workload(tmp, "tcp-connect", f"127.0.0.1:{port}") as w:
        conn, _ = srv.accept()
        w.keep.extend([srv, conn])
        report = check(w.pid)
        assert "tcp-established" in rules_of(report)
        assert report.verdict == "no-known-blockers"
        assert report.options["dump"].get("tcp_established") is True
        dump_restore(w, report, tmp)
        # the connection survived: the server end still talks to the restored workload
        conn.sendall(b"ping")


def test_tcp_close_by_rule(tmp: Path) -> None:
    """A 'tcp' rule with mode close replaces tcp_established: the connection is dropped."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    rules = tmp / "rules.toml"
    rules.write_text('version = 1\n[defaults]\ntcp = "close"\n')
    with workload(tmp, "tcp-connect", f"127.0.0.1:{port}") as w:
        conn, _ = srv.accept()
        w.keep.extend([srv, conn])
        report = check(w.pid, rules=str(rules))
        assert report.verdict == "no-known-blockers", report.to_dict()
        assert report.options["dump"].get("tcp_close") and "tcp_established" not in report.options["dump"]
        dump_restore(w, report, tmp)
        conn.settimeout(5)
        assert conn.recv(10) == b""  # the server sees the connection closed


def test_file_lock(tmp: Path) -> None:
    with workload(tmp, "flock", str(tmp / "lockfile")) as w:
        report = check(w.pid)
        assert "file-lock" in rules_of(report)
        assert report.verdict == "no-known-blockers"
        assert report.options["dump"].get("file_locks") is True
        dump_restore(w, report, tmp)


@pytest.mark.parametrize("size", [64 << 10, 3 << 20])
def test_deleted_file(tmp: Path, size: int) -> None:
    with workload(tmp, "deleted", f"{tmp / 'gone'}:{size}") as w:
        report = check(w.pid)
        assert report.verdict == "no-known-blockers", report.to_dict()
        if size > 1 << 20:
            assert report.options["dump"].get("ghost_limit", 0) >= size
        dump_restore(w, report, tmp)


# --------------------------------------------------------------------------- needs-rules rows


def test_unix_stream_external_peer(tmp: Path) -> None:
    """What CRIU 4.2.1 really does: without the rule restore fails; with unix[INO] +
    inherit_fd socket:[INO] (what the 'unix' rule compiles to) it works."""
    path = str(tmp / "srv.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(4)
    cli = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    cli.connect(path)
    conn, _ = srv.accept()
    os.set_inheritable(cli.fileno(), True)
    with workload(tmp, "fd", str(cli.fileno()), pass_fds=(cli.fileno(),)) as w:
        cli.close()
        w.keep.extend([srv, conn])
        report = check(w.pid)
        stream = [f for f in report.findings if f.rule == "unix-stream-external"]
        assert stream and report.verdict == "needs-rules", report.to_dict()
        ino = int(stream[0].needs[0].split("[")[1].rstrip("]"))
        assert f"unix[{ino}]" in report.options["dump"]["external"]

        rules = tmp / "rules.toml"
        rules.write_text(
            'version = 1\n[[container]]\nmatch = { name = "*" }\n'
            f'  [[container.rule]]\n  kind = "unix"\n  inode = {ino}\n  connect = "{path}"\n'
        )
        with_rules = check(w.pid, rules=str(rules))
        assert with_rules.verdict == "no-known-blockers", with_rules.to_dict()

        # ctconsole's own options dump fine, but restore without the inherited socket fails
        dump_restore(w, report, tmp, expect_restore_ok=False)
        new = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        new.connect(path)
        w.keep.append(new)
        images_ok = dump_restore_again(w, with_rules, tmp, {f"socket:[{ino}]": new.fileno()})
        assert images_ok


def dump_restore_again(w: Running, report: Any, tmp: Path, inherit: dict[str, int]) -> Any:
    """Restore the images of the previous (killing) dump again, now with the rule's fds."""
    wait_gone(w.pid)  # the failed restore's task is killed; PID 1 here reaps slowly
    cl = client()
    ropts = dict(report.options["restore"], log_level=4)
    res = cl.restore(ropts, tmp / "images", work_dir=_workdir(tmp, "restore-rule"), inherit_fds=inherit)
    w.keep.extend(res.kept_fds)
    assert res.pid == w.pid
    w.wait_ticks(5)
    assert_continuous(w.ticks())
    return res


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def test_veth_in_private_netns(tmp: Path) -> None:
    tag = f"zf{os.getpid() % 10000}"
    host_if, ct_if = f"{tag}h", f"{tag}c"
    with workload(tmp, "plain", prefix=("unshare", "--net", "--")) as w:
        try:
            _ip("link", "add", host_if, "type", "veth", "peer", "name", ct_if, "netns", str(w.pid))
            subprocess.run(
                ["nsenter", "-t", str(w.pid), "-n", "ip", "addr", "add", "198.18.77.2/24", "dev", ct_if],
                check=True,
            )
            subprocess.run(["nsenter", "-t", str(w.pid), "-n", "ip", "link", "set", ct_if, "up"], check=True)
            down = check(w.pid)  # host end still down: the connected route is "linkdown"
            assert "route-linkdown" in rules_of(down) and down.verdict == "infeasible", down.to_dict()
            _ip("link", "set", host_if, "up")
            time.sleep(0.2)
            report = check(w.pid)
            assert "veth-external" in rules_of(report), report.to_dict()
            assert report.verdict == "needs-rules"
            before = _iptables(w.pid)
            trial = check(w.pid, trial=True)
            assert trial.trial is not None and trial.trial.ok, trial.to_dict()
            assert _iptables(w.pid) == before, "the trial dump left iptables state behind"
            w.wait_ticks(3)
            rules = tmp / "rules.toml"
            rules.write_text(
                'version = 1\n[[container]]\nmatch = { name = "*" }\n'
                f'  [[container.rule]]\n  kind = "veth"\n  interface = "{ct_if}"\n  host_name = "{host_if}"\n'
            )
            ok = check(w.pid, rules=str(rules))
            assert ok.verdict == "no-known-blockers", ok.to_dict()
            # the old netns (and with it the host end) is torn down asynchronously after the dump
            dump_restore(w, ok, tmp, before_restore=lambda: _wait_no_link(host_if))
            assert Path(f"/sys/class/net/{host_if}").exists(), "CRIU should recreate the host end"
        finally:
            subprocess.run(["ip", "link", "del", host_if], capture_output=True)


MNT_SETUP = """
for m in $(awk '$5 ~ /^\\/run\\/netns\\/./ {print $5}' /proc/self/mountinfo); do umount -l "$m"; done
mount -t tmpfs ctcfsrc "$A"
mkdir "$A/sub"
mount --bind "$A/sub" "$B"
umount -l "$A"
exec "$@"
"""


def test_bind_mount_from_outside_in_private_mntns(tmp: Path) -> None:
    """A bind whose filesystem has no root mount in the tree's mount namespace, plus stdio
    (/dev/null) opened before the namespace existed. CRIU 4.2.1: 'doesn't have a proper
    root mount' and then 'Can't lookup mount=N for fd=0 path=/dev/null'; with mnt[] and
    file[] externals the dump works and the restore needs the mount path and the fd."""
    a, b, host = tmp / "a", tmp / "b", tmp / "hostsub"
    for d in (a, b, host):
        d.mkdir()
    script = tmp / "mnt.sh"
    script.write_text(MNT_SETUP)
    env = dict(os.environ, A=str(a), B=str(b))
    prefix = ("unshare", "--mount", "--propagation", "private", "sh", str(script))
    with workload(tmp, "plain", prefix=prefix, env=env) as w:
        report = check(w.pid)
        rules = rules_of(report)
        assert {"bind-mount-external", "external-file"} <= rules, report.to_dict()
        assert report.verdict == "needs-rules"
        trial = check(w.pid, trial=True)
        assert trial.trial is not None and not trial.trial.ok  # CRIU agrees: not without rules
        assert any("proper root mount" in e for e in trial.trial.errors)
        w.wait_ticks(3)
        file_keys = [f.needs[0] for f in report.findings if f.rule == "external-file"]
        compiled = {
            "dump": {"external": [f"mnt[{b}]:share", *file_keys]},
            "restore": {"external": [f"mnt[share]:{host}"], "inherit_fd": [{"key": k} for k in file_keys]},
        }
        ok = check(w.pid, rules=compiled, trial=True)
        assert ok.verdict == "feasible", ok.to_dict()
        assert ok.trial is not None and ok.trial.ok, ok.trial
        restore_opts = {k: v for k, v in ok.options["restore"].items() if k != "inherit_fd"}
        devnull = os.open("/dev/null", os.O_RDWR)
        w.keep.append(devnull)
        ok_report = _with_restore(ok, restore_opts)
        dump_restore(w, ok_report, tmp, inherit=lambda: {k: devnull for k in file_keys})
        mounts = Path(f"/proc/{w.pid}/mountinfo").read_text()
        assert f" {b} " in mounts and str(host) in mounts  # the bind now comes from the host path


def _with_restore(report: Any, restore: dict[str, Any]) -> Any:
    import dataclasses

    return dataclasses.replace(report, options={"dump": report.options["dump"], "restore": restore})


def _wait_no_link(name: str, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while Path(f"/sys/class/net/{name}").exists():
        assert time.monotonic() < end, f"{name} still exists"
        time.sleep(0.05)


def _iptables(pid: int) -> str:
    out = subprocess.run(["nsenter", "-t", str(pid), "-n", "iptables-save"], capture_output=True, text=True).stdout
    return "\n".join(ln for ln in out.splitlines() if not ln.startswith("#"))


# --------------------------------------------------------------------------- infeasible rows


def _infeasible(tmp: Path, w: Running, rule: str) -> list[str]:
    report = check(w.pid)
    assert report.verdict == "infeasible", report.to_dict()
    assert rule in {f.rule for f in report.findings if f.severity == "blocker"}, report.to_dict()
    return refuse_dump(w, report, tmp)


def test_io_uring(tmp: Path) -> None:
    with workload(tmp, "io_uring") as w:
        errs = _infeasible(tmp, w, "unsupported-fd")
        assert errs


def test_perf_event(tmp: Path) -> None:
    with workload(tmp, "perf") as w:
        _infeasible(tmp, w, "unsupported-fd")


@pytest.mark.parametrize("dev", ["/dev/kvm", "/dev/fuse"])
def test_unsupported_device(tmp: Path, dev: str) -> None:
    if not os.path.exists(dev):
        pytest.skip(f"{dev} absent")
    with workload(tmp, "device", dev) as w:
        errs = _infeasible(tmp, w, "device")
        assert any("of that type" in e for e in errs), errs


def test_sysv_shm_in_host_ipc_ns(tmp: Path) -> None:
    with workload(tmp, "sysv-shm") as w:
        errs = _infeasible(tmp, w, "sysv-shm")
        assert any("IPC ns" in e or "SysV" in e for e in errs), errs


def test_vsock(tmp: Path) -> None:
    try:
        socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM).close()
    except OSError:
        pytest.skip("no vsock support in this kernel")
    with workload(tmp, "vsock") as w:
        _infeasible(tmp, w, "socket-family")


def test_traced(tmp: Path) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    with workload(tmp, "plain") as w:
        assert libc.ptrace(0x4206, w.pid, None, None) == 0  # PTRACE_SEIZE: we are the tracer
        try:
            _infeasible(tmp, w, "traced")
        finally:
            libc.ptrace(17, w.pid, None, None)  # PTRACE_DETACH (needs a stop; kill cleans up anyway)


def test_nested_pid_namespace(tmp: Path) -> None:
    with workload(tmp, "plain") as w:
        child = subprocess.Popen(
            ["unshare", "--pid", "--fork", "sleep", "600"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=True,
            preexec_fn=None,
        )
        w.extra_pids.append(child.pid)
        # re-parent: check the tree rooted at unshare's parent is not possible, so check
        # a tree that contains the nested namespace: unshare itself (host pidns) -> sleep (new pidns)
        time.sleep(0.3)
        report = check(child.pid)
        assert report.verdict == "infeasible", report.to_dict()
        assert "nested-namespace" in {f.rule for f in report.findings}
        from ctconsole.criu.client import CriuError

        images = tmp / "nested"
        images.mkdir(mode=0o700)
        with pytest.raises(CriuError):
            client().dump(dict(report.options["dump"], leave_running=True, network_lock="SKIP", log_level=4), images)
        child.kill()
        child.wait()


def test_no_leftovers(tmp: Path) -> None:
    """A trial leaves no image dir behind and the workload undisturbed."""
    before = set(os.listdir(tempfile_dir()))
    with workload(tmp, "plain") as w:
        r = check(w.pid, trial=True)
        assert r.trial is not None and r.trial.ok
        w.wait_ticks(3)
        assert_continuous(w.ticks())
    assert not [n for n in set(os.listdir(tempfile_dir())) - before if n.startswith("ctconsole-trial-")]


def tempfile_dir() -> str:
    import tempfile

    return tempfile.gettempdir()


_ = shutil  # kept for debugging helpers
