"""The RPC client against the real CRIU: probes, dump/restore, rollback, errors."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ctconsole.criu.client import CriuClient, CriuError, Notify, NotifyReply
from ctconsole.criu.images import DumpStats, RestoreStats
from ctconsole.criu.rpc import start_service
from tests.support import Workload, assert_continuous, restore_after_page_server, spawn_counter, wait_gone

pytestmark = pytest.mark.criu


@pytest.fixture
def client(criu_bin: str) -> CriuClient:
    return CriuClient(criu=criu_bin, timeout=60)


def test_version_and_features_over_swrk(client: CriuClient) -> None:
    v = client.version()
    assert v.as_tuple() >= (4, 2, 0)
    f = client.feature_check()
    # what this machine kind really has (no soft-dirty tracking; uffd is there)
    assert isinstance(f.mem_track, bool) and isinstance(f.lazy_pages, bool)
    client.check()


def test_version_and_features_over_service(criu_bin: str, tmp_path: Path) -> None:
    svc = start_service(criu_bin, tmp_path / "svc")
    try:
        assert (os.stat(svc.address.parent).st_mode & 0o777) == 0o700
        c = CriuClient(transport="service", address=svc.address, criu=criu_bin, timeout=30)
        swrk = CriuClient(criu=criu_bin)
        assert c.version() == swrk.version()
        assert c.feature_check() == swrk.feature_check()
    finally:
        svc.stop()
    assert not os.path.exists(f"/proc/{svc.pid}") or _is_zombie(svc.pid)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _dump_kill_restore(client: CriuClient, w: Workload, img: Path, opts: dict | None = None) -> int:
    seen: list[str] = []
    res = client.dump({"pid": w.pid, **(opts or {})}, img, on_notify=lambda n: seen.append(n.script))
    assert "post-dump" in seen
    assert isinstance(res.stats, DumpStats)
    assert res.stats.frozen_time_us > 0 and res.stats.pages_written > 0
    w.proc.wait(timeout=10)  # the dump killed it (no leave_running)
    wait_gone(w.pid)
    rr = client.restore(opts or {}, img)
    assert isinstance(rr.stats, RestoreStats) and rr.stats.pages_restored > 0
    assert rr.pid == w.pid, "CRIU restores the same pid"
    return rr.pid


def test_dump_restore_counter_continues(client: CriuClient, workdir: Path) -> None:
    w = spawn_counter(workdir)
    try:
        img = workdir / "img"
        img.mkdir()
        before = w.last()
        pid = _dump_kill_restore(client, w, img)
        w.wait_ticks(5)
        ticks = w.ticks()
        assert ticks[-1] > before
        assert_continuous(ticks)  # no value lost, none repeated
        assert os.path.exists(f"/proc/{pid}")
    finally:
        w.kill()


LISTENER = r"""
import os, socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0)); s.listen(5)
open(sys.argv[1] + ".port", "w").write(str(s.getsockname()[1]))
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
n = 0
s.settimeout(0.05)
while True:
    n += 1
    os.write(fd, b"%d\n" % n)
    try:
        c, _ = s.accept()
        c.sendall(b"alive %d\n" % n); c.close()
    except socket.timeout:
        pass
"""


def test_tcp_listener_dumps_and_restores(client: CriuClient, workdir: Path) -> None:
    """Proves the CRIU >= 4.2 requirement: 4.1.x cannot dump inet sockets on kernels >= 6.16."""
    script = workdir / "listener.py"
    script.write_text(LISTENER)
    ticks = workdir / "l.ticks"
    proc = subprocess.Popen([sys.executable, "-S", str(script), str(ticks)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    w = Workload(proc, ticks)
    try:
        w.wait_ticks(3)
        port = int(Path(str(ticks) + ".port").read_text())
        img = workdir / "img"
        img.mkdir()
        _dump_kill_restore(client, w, img)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            assert s.recv(64).startswith(b"alive ")
        assert_continuous(w.ticks())
    finally:
        w.kill()


def test_post_dump_failure_resumes_the_source(client: CriuClient, workdir: Path) -> None:
    """The rollback primitive migration stands on: refuse post-dump and the source keeps running."""
    w = spawn_counter(workdir)
    try:
        img = workdir / "img"
        img.mkdir()
        start_time = Path(f"/proc/{w.pid}/stat").read_text().split(")")[1].split()[19]

        def refuse(n: Notify) -> NotifyReply | bool:
            return n.script != "post-dump"

        with pytest.raises(CriuError) as ei:
            client.dump({"pid": w.pid}, img, on_notify=refuse)
        assert "post-dump" in ei.value.message
        before = w.last()
        w.wait_ticks(5)
        assert w.proc.poll() is None, "source died"
        # the same process (not a restarted one) goes on counting
        assert Path(f"/proc/{w.pid}/stat").read_text().split(")")[1].split()[19] == start_time
        assert w.last() >= before + 5
        assert_continuous(w.ticks())
    finally:
        w.kill()


def test_handler_exception_rolls_back(client: CriuClient, workdir: Path) -> None:
    w = spawn_counter(workdir)
    try:
        img = workdir / "img"
        img.mkdir()

        def boom(n: Notify) -> None:
            if n.script == "post-dump":
                raise RuntimeError("destination vanished")

        with pytest.raises(CriuError) as ei:
            client.dump({"pid": w.pid}, img, on_notify=boom)
        assert "destination vanished" in ei.value.message
        w.wait_ticks(3)
        assert w.proc.poll() is None
    finally:
        w.kill()


def test_dump_of_missing_pid_is_a_clear_error(client: CriuClient, workdir: Path) -> None:
    pid = 4_000_000  # above pid_max's default range
    while os.path.exists(f"/proc/{pid}"):
        pid += 1
    with pytest.raises(CriuError) as ei:
        client.dump({"pid": pid}, workdir)
    err = ei.value
    assert err.request == "DUMP"
    assert err.cr_errno == errno.ESRCH
    assert err.log_path is not None and err.log_path.exists()
    assert err.log_errors and all("Error (" in ln for ln in err.log_errors)
    assert not any("RLIMIT_NOFILE" in ln for ln in err.log_errors)
    assert any("does not exist" in e for e in err.explanations), err.explanations


def test_rlimit_line_on_success_is_not_an_error(client: CriuClient, workdir: Path) -> None:
    w = spawn_counter(workdir)
    try:
        res = client.dump({"pid": w.pid, "leave_running": True}, workdir)
        assert res.stats is not None
        assert w.proc.poll() is None
    finally:
        w.kill()


def test_restore_bounded_by_timeout(client: CriuClient, workdir: Path) -> None:
    """A restore that cannot proceed must come back with an error, never hang."""
    t0 = time.monotonic()
    with pytest.raises(CriuError):
        client.restore({}, workdir)  # empty images dir
    assert time.monotonic() - t0 < 60


def test_cpuinfo_dump_and_check_on_this_cpu(client: CriuClient, workdir: Path) -> None:
    img = client.cpuinfo_dump(workdir)
    assert img.exists() and img.stat().st_size > 0
    client.cpuinfo_check(workdir)  # the same CPU is compatible with itself


def test_cpuinfo_check_without_image_fails_clearly(client: CriuClient, workdir: Path) -> None:
    with pytest.raises(CriuError) as ei:
        client.cpuinfo_check(workdir)
    assert ei.value.request == "CPUINFO_CHECK"


def test_page_server_child_then_restore(client: CriuClient, workdir: Path) -> None:
    """Pages go to a page server (as on a destination), the rest is copied, restore continues."""
    w = spawn_counter(workdir)
    try:
        src, dst = workdir / "src", workdir / "dst"
        src.mkdir()
        dst.mkdir()
        with client.page_server_child(dst, "127.0.0.1", 0) as (info, wait):
            assert info.port > 0 and info.pid > 0
            res = client.dump({"pid": w.pid, "ps": {"address": "127.0.0.1", "port": info.port}}, src)
            assert wait(30) == 0  # WAIT_PID: the page server exited cleanly after the dump
        restore_after_page_server(client, w, res, src, dst)
    finally:
        w.kill()


def test_pre_dump_without_dirty_tracking_is_explained(client: CriuClient, workdir: Path) -> None:
    """PRE_DUMP works where soft-dirty tracking exists; elsewhere it fails cleanly, process untouched."""
    if client.feature_check().mem_track:
        pytest.skip("this host has soft-dirty tracking; covered by the migration pre-copy tests")
    w = spawn_counter(workdir)
    try:
        (workdir / "1").mkdir()
        with pytest.raises(CriuError) as ei, client.iterative(timeout=60) as it:
            it.pre_dump({"pid": w.pid}, workdir / "1")
        assert ei.value.request == "PRE_DUMP"
        assert ei.value.log_errors
        assert any("soft-dirty" in e for e in ei.value.explanations), ei.value.explanations
        w.wait_ticks(3)
        assert w.proc.poll() is None
        assert_continuous(w.ticks())
    finally:
        w.kill()
