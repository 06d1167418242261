"""Every CRIU refusal the verdict benchmark meets maps to a rule, from a real CRIU log.

Each case starts a small workload holding one resource CRIU refuses, lets the
real CRIU dump it (a leave-running trial: the workload is unharmed), and
checks that the error line CRIU wrote maps (``ctconsole.criu.errors``) to the
rule id whose static check predicts it, with an explanation and a remedy --
and that the static check did predict it (the rule is a blocker of the
report, or for an automatic remedy, the report's options make the dump pass).

Only processes started here are killed, by pid. Sockets are on loopback, in
the abstract namespace or in namespaces made here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root, pytest.mark.criu]

# Each workload sets up its resource, then writes "ready" to argv[1] and sleeps.
PRELUDE = """
import os, socket, struct, sys, threading, time
ready = sys.argv[1]
def done():
    open(ready, "w").write("ready")
    while True:
        time.sleep(1)
"""

WORKLOADS: dict[str, str] = {
    # sk-unix.c: a listener whose queued connection's client already closed
    "unix-closed-in-flight": """
name = "\\0ctc-errors-%d" % os.getpid()
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); srv.bind(name); srv.listen(4)
cli = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); cli.connect(name); cli.send(b"hello"); cli.close()
done()
""",
    # sk-unix.c: an in-flight client that already sent data
    "unix-in-flight-data": """
name = "\\0ctc-errors-%d" % os.getpid()
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); srv.bind(name); srv.listen(4)
cli = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); cli.connect(name); cli.send(b"hello")
done()
""",
    # sk-inet.c: UDP_CORK set with a datagram pending
    "udp-corked": """
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0))
s.setsockopt(socket.SOL_UDP, 1, 1)  # UDP_CORK
s.sendto(b"corked", ("127.0.0.1", 9))
done()
""",
    # pidfd.c: a pidfd of a thread (PIDFD_THREAD == O_EXCL)
    "pidfd-thread": """
ev = threading.Event(); t = threading.Thread(target=ev.wait, daemon=True); t.start()
fd = os.pidfd_open(t.native_id, os.O_EXCL)
done()
""",
    # pidfd.c: a pidfd of a process outside the dumped tree (the test runner)
    "pidfd-outside": """
fd = os.pidfd_open(os.getppid())
done()
""",
    # sk-netlink.c: a netlink socket with an unread answer
    "netlink-unread": """
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0); s.bind((0, 0))
req = struct.pack("=IHHII", 32, 18, 0x301, 1, 0) + struct.pack("=BxHiII", 0, 0, 0, 0, 0)  # RTM_GETLINK dump
s.send(req); time.sleep(0.2)
done()
""",
    # sk-netlink.c: a netlink socket in a multicast group above 32
    "netlink-groups": """
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0); s.bind((0, 0))
s.setsockopt(270, 1, 33)  # NETLINK_ADD_MEMBERSHIP, group 33 (RTNLGRP_ND_USEROPT... any > 32)
done()
""",
    # sk-packet.c: the same multicast membership added twice
    "packet-mc-twice": """
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
mreq = struct.pack("=iHH8s", socket.if_nametoindex("lo"), 1, 0, b"")  # PACKET_MR_PROMISC on lo
s.setsockopt(263, 1, mreq); s.setsockopt(263, 1, mreq)  # SOL_PACKET, PACKET_ADD_MEMBERSHIP
done()
""",
    # sk-inet.c: a TCP listener with a connection not accepted yet
    "tcp-in-flight": """
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(4)
cli = socket.socket(); cli.connect(srv.getsockname())
done()
""",
    # namespaces.c: a time namespace unshared for the children, not entered
    "timens-for-children": """
import ctypes
assert ctypes.CDLL(None, use_errno=True).unshare(0x80) == 0  # CLONE_NEWTIME
done()
""",
    # cr-dump.c: rlimits of a task with other credentials, without CAP_SYS_RESOURCE
    "creds-rlimit": """
fh = open(ready, "w")  # the workdir is private: open it before giving up root
os.setgroups([]); os.setgid(65534); os.setuid(65534)
fh.write("ready"); fh.close()
while True:
    time.sleep(1)
""",
}

# case -> (rule id, the CRIU log text, whether the static report must hold a blocker for it)
EXPECT: dict[str, tuple[str, str, bool]] = {
    "unix-closed-in-flight": ("unix-in-flight", "Found a closed in-flight socket", True),
    "unix-in-flight-data": ("unix-in-flight", "Non-empty write queue on an in-flight socket", True),
    "udp-corked": ("udp-corked", "Can't dump corked dgram socket", True),
    "pidfd-thread": ("pidfd", "PIDFD_THREAD flag is currently not supported", True),
    "pidfd-outside": ("pidfd", "is not a part of process tree", True),
    "netlink-unread": ("netlink-socket", "The socket has data to read", True),
    "netlink-groups": ("netlink-socket", "has more than 32 groups", True),
    "packet-mc-twice": ("packet-socket", "Multiple MC membership not supported", True),
    "tcp-in-flight": ("tcp-in-flight", "In-flight connection (l)", False),
    "creds-rlimit": ("creds-rlimit", "Can't get rlimit", True),
    "timens-for-children": ("nested-namespace", "Can't dump nested time namespace", True),
}


def _has_cap_sys_resource() -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) & (1 << 24))
    return False


@contextlib.contextmanager
def running(tmp: Path, code: str, prefix: tuple[str, ...] = ()) -> Iterator[int]:
    ready = tmp / "ready"
    ready.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [*prefix, sys.executable, "-S", "-c", PRELUDE + code, str(ready)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        close_fds=True,
    )
    try:
        end = time.monotonic() + 10
        while not (ready.exists() and ready.read_text() == "ready"):
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                pytest.skip(f"workload could not set up here: {err.strip()[-300:]}")
            assert time.monotonic() < end, "workload did not get ready"
            time.sleep(0.02)
        yield proc.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # its own session/group: only what we started
        proc.wait(timeout=10)


def _report(pid: int) -> object:
    from ctconsole import feasibility, inventory

    return feasibility.check(inventory.resolve(f"tree:{pid}"), hosts=False)


def _criu_lines(pid: int, dump_opts: dict[str, object]) -> list[str]:
    from ctconsole.feasibility.trial import trial_dump

    res = trial_dump(pid, {k: v for k, v in dump_opts.items() if k != "pid"})
    assert not res.ok, "CRIU accepted the dump this case is about"
    return list(res.errors)


@pytest.mark.parametrize("case", sorted(EXPECT))
def test_criu_error_maps_to_rule(workdir: Path, needs_criu: str, case: str) -> None:
    from ctconsole.criu.errors import explain, rule_for

    rule, text, blocker = EXPECT[case]
    if case == "creds-rlimit" and _has_cap_sys_resource():
        pytest.skip("CRIU has CAP_SYS_RESOURCE here: it reads anyone's rlimits")
    with running(workdir, WORKLOADS[case]) as pid:
        report = _report(pid)
        opts = dict(report.options["dump"])  # type: ignore[attr-defined]
        if not blocker:
            # an automatic remedy: the report sets the option; without it CRIU refuses
            auto = {f.rule for f in report.findings if f.severity == "auto"}  # type: ignore[attr-defined]
            assert rule in auto, report.to_dict()  # type: ignore[attr-defined]
            from ctconsole.feasibility.trial import trial_dump

            assert trial_dump(pid, {k: v for k, v in opts.items() if k != "pid"}).ok
            opts = {k: v for k, v in opts.items() if k not in ("tcp_skip_in_flight",)}
        else:
            blockers = {f.rule for f in report.findings if f.severity == "blocker"}  # type: ignore[attr-defined]
            assert rule in blockers, report.to_dict()  # type: ignore[attr-defined]
            assert report.verdict == "infeasible"  # type: ignore[attr-defined]
        lines = _criu_lines(pid, opts)
    hits = [ln for ln in lines if text in ln]
    assert hits, lines
    for ln in hits:
        assert rule_for(ln) == rule, ln
        why = explain(ln)
        assert why and "{" not in why and len(why) > 40, why


def test_unix_peer_in_another_netns(workdir: Path, needs_criu: str) -> None:
    """A datagram socket connected to a host daemon's named socket, from a private netns: the static
    check says infeasible (no rule helps), and CRIU indeed refuses with 'Unix socket N without peer M'
    even with ext_unix_sk."""
    from ctconsole.criu.errors import explain, rule_for

    path = workdir / "log.sock"
    daemon = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    daemon.bind(str(path))
    try:
        code = f"""
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.connect({str(path)!r}); s.send(b"<14>hello")
done()
"""
        with running(workdir, code, prefix=("unshare", "--net")) as pid:
            report = _report(pid)
            blockers = {f.rule for f in report.findings if f.severity == "blocker"}  # type: ignore[attr-defined]
            assert "unix-peer-netns" in blockers, report.to_dict()  # type: ignore[attr-defined]
            assert "unix-dgram-external" not in {f.rule for f in report.findings}  # type: ignore[attr-defined]
            opts = dict(report.options["dump"], ext_unix_sk=True)  # type: ignore[attr-defined]
            lines = _criu_lines(pid, opts)
    finally:
        daemon.close()
    hits = [ln for ln in lines if "without peer" in ln]
    assert hits, lines
    assert rule_for(hits[0]) == "unix-peer-netns"
    assert "network namespace" in (explain(hits[0]) or "")


RESET_TCP = """
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
cli = socket.socket(); cli.connect(srv.getsockname())
conn, _ = srv.accept()
conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)); conn.close(); srv.close()
time.sleep(0.2)  # the RST has arrived: cli is closed, unhashed, but keeps its peer port
done()
"""


def _wait_free(pid: int, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < end:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{pid}"), f"pid {pid} still taken"


def test_reset_tcp_needs_tcp_established_on_restore(workdir: Path, needs_criu: str) -> None:
    """A TCP socket reset by its peer: no diag reports it, CRIU dumps it fine, and its restore needs
    tcp_established ('Connected TCP socket in image'); the static check proposes it."""
    from ctconsole.criu.client import CriuClient, CriuError
    from ctconsole.criu.errors import error_lines, explain, rule_for

    with running(workdir, RESET_TCP) as pid:
        report = _report(pid)
        auto = {f.rule: f for f in report.findings if f.severity == "auto"}  # type: ignore[attr-defined]
        assert "tcp-established" in auto, report.to_dict()  # type: ignore[attr-defined]
        restore = dict(report.options["restore"])  # type: ignore[attr-defined]
        assert restore.get("tcp_established") is True
        images = workdir / "images"
        images.mkdir(mode=0o700)
        client = CriuClient(timeout=60)
        client.dump(dict(report.options["dump"], log_level=4), images)  # type: ignore[attr-defined]
        _wait_free(pid)
        bare = {k: v for k, v in restore.items() if k != "tcp_established"}
        with pytest.raises(CriuError):
            client.restore(dict(bare, log_level=4), images, work_dir=images)
        lines = error_lines((images / "restore.log").read_text(errors="replace"))
        hits = [ln for ln in lines if "Connected TCP socket in image" in ln]
        assert hits, lines
        assert rule_for(hits[0]) == "tcp-established" and "tcp_established" in (explain(hits[0]) or "")
        _wait_free(pid)  # the failed restore's task must be gone (PID 1 reaps slowly here)
        res = client.restore(dict(restore, log_level=4), images, work_dir=workdir)  # the report's options work
        assert res.pid == pid
        os.kill(pid, 0)
