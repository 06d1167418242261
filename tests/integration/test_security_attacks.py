"""Each attack from issue #10, reproduced against a real ``ctconsole agent --stdio`` and refused.

A small driver speaks the agent protocol as a hostile peer would (valid
frames, hostile fields). Every test shows the refusal names the policy key
that refused, and that nothing was created, no process ran and nothing was
lost. The rules-file attack runs a real migration of a real process with
CRIU: it is refused before anything is frozen and the process keeps running.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ctconsole.proto import agent_pb2
from tests import support_hosts
from tests.support_hosts import CTCONSOLE, ROOT, container_inits, ctenv, pids_running, run_cli, veth_rules

nshost, counter, nsct = support_hosts.nshost, support_hosts.counter, support_hosts.nsct  # fixtures

pytestmark = pytest.mark.usefixtures("needs_root")

AGENT = [sys.executable, "-m", "ctconsole", "agent", "--stdio"]


class Driver:
    """A hostile peer: starts the real agent, sends frames, reads replies (with a deadline, never hangs)."""

    def __init__(self, env: dict[str, str], preexec: Callable[[], None] | None = None) -> None:
        self.proc = subprocess.Popen(AGENT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=env, cwd=ROOT, preexec_fn=preexec, bufsize=0)
        self.next_id = 1

    def call(self, field: str, msg: Any, timeout: float = 60.0) -> agent_pb2.Reply:
        req = agent_pb2.Request(id=self.next_id)
        self.next_id += 1
        getattr(req, field).CopyFrom(msg)
        data = req.SerializeToString()
        assert self.proc.stdin is not None
        self.proc.stdin.write(struct.pack(">I", len(data)) + data)
        return self.read(timeout)

    def read(self, timeout: float) -> agent_pb2.Reply:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        end = time.monotonic() + timeout
        buf = b""
        need = 4
        while len(buf) < need:
            left = end - time.monotonic()
            assert left > 0, "the agent did not answer in time"
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, need - len(buf))
                assert chunk, f"the agent exited: {self.stderr()}"
                buf += chunk
            if len(buf) == 4 and need == 4:
                need = 4 + struct.unpack(">I", buf)[0]
        rep = agent_pb2.Reply()
        rep.ParseFromString(buf[4:])
        return rep

    def close(self) -> str:
        with contextlib.suppress(OSError, AssertionError):
            self.call("bye", agent_pb2.ByeRequest(), timeout=20)
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.stderr()

    def stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read().decode(errors="replace")


def refused(rep: agent_pb2.Reply, key: str) -> str:
    assert rep.WhichOneof("body") == "error", rep
    assert rep.error.code == "policy", rep.error
    text = " ".join([rep.error.message, *rep.error.details])
    assert f"destination policy: {key}" in text, text
    return text


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    os.chmod(tmp_path, 0o755)
    e = ctenv(tmp_path)
    e.pop("CTCONSOLE_AGENT_POLICY", None)
    return e


@pytest.fixture
def agent(env: dict[str, str]) -> Iterator[Driver]:
    d = Driver(env)
    yield d
    err = d.close()
    assert "Traceback" not in err, err


def prepare(d: Driver, mid: str = "") -> str:
    mid = mid or f"sec-{uuid.uuid4().hex[:8]}"
    rep = d.call("prepare", agent_pb2.PrepareRequest(migration_id=mid))
    assert rep.WhichOneof("body") == "prepare", rep
    return mid


def restore(d: Driver, opts: dict[str, Any] | None = None, **kw: Any) -> agent_pb2.Reply:
    return d.call("restore", agent_pb2.RestoreRequest(options_json=json.dumps(opts or {}), timeout=30, **kw))


def agent_children(pid: int) -> list[str]:
    """Command names of every live descendant of ``pid``."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError):
            for t in os.listdir(f"/proc/{p}/task"):
                with contextlib.suppress(OSError):
                    kids = [int(c) for c in Path(f"/proc/{p}/task/{t}/children").read_text().split()]
                    todo.extend(kids)
                    for k in kids:
                        with contextlib.suppress(OSError):
                            out.append(Path(f"/proc/{k}/comm").read_text().strip())
    return out


# -- files anywhere ----------------------------------------------------------------------------
def test_open_file_setuid_anywhere_refused(agent: Driver, tmp_path: Path) -> None:
    """``open-file /some/dir/x perm=0o6777`` left a -rwsrwsrwx root file even though the restore failed."""
    d = tmp_path / "dir"
    d.mkdir(mode=0o755)
    prepare(agent)
    rep = restore(agent, inherit=[agent_pb2.InheritFd(key="file[1:2]", how="open-file", path=str(d / "x"),
                                                      mode="append", perm=0o6777)])
    assert "set-id" in refused(rep, "files.perm_mask")
    etc = f"/etc/ctconsole-sec-{uuid.uuid4().hex[:6]}"  # stands in for /etc/ld.so.preload
    rep = restore(agent, inherit=[agent_pb2.InheritFd(key="file[1:3]", how="open-file", path=etc,
                                                      mode="append", perm=0o644)])
    refused(rep, "files.open")
    # a symlink planted where the file goes is not followed, even inside an allowed directory
    (d / "link").symlink_to(etc)
    rep = restore(agent, inherit=[agent_pb2.InheritFd(key="file[1:4]", how="open-file", path=str(d / "link"),
                                                      mode="append", perm=0o644)])
    assert rep.WhichOneof("body") == "error" and "symbolic link" in rep.error.message, rep
    assert not (d / "x").exists() and not os.path.lexists(etc) and sorted(os.listdir(d)) == ["link"]
    assert agent_children(agent.proc.pid) == [] or set(agent_children(agent.proc.pid)) <= {"python3", "python"}


def test_connect_unix_to_any_socket_refused(agent: Driver) -> None:
    """A ``connect-unix`` entry gave the peer a root connection to any socket."""
    run = Path(f"/run/ctt-sec-{uuid.uuid4().hex[:6]}")
    run.mkdir(mode=0o755)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        srv.bind(str(run / "daemon.sock"))
        srv.listen(1)
        srv.settimeout(0.5)
        prepare(agent)
        rep = restore(agent, inherit=[agent_pb2.InheritFd(key="socket:[1]", how="connect-unix",
                                                          path=str(run / "daemon.sock"))])
        refused(rep, "files.sockets")
        with pytest.raises(TimeoutError):
            srv.accept()  # nobody connected
    finally:
        srv.close()
        for f in run.iterdir():
            f.unlink()
        run.rmdir()


# -- commands ------------------------------------------------------------------------------------
def test_probe_argv_from_the_peer_refused(agent: Driver, tmp_path: Path) -> None:
    """``probe_argv`` ran as ``nsenter -t PID -a -- argv``: a root shell for a tree in host namespaces."""
    marker = tmp_path / "probe-ran"
    prepare(agent)
    rep = restore(agent, probe_argv=["touch", str(marker)])
    refused(rep, "probes")
    rep = restore(agent, probe_name="sh")
    assert "no probe named 'sh'" in refused(rep, "probes")
    assert not marker.exists()


# -- mounts, namespaces, LSM, cgroups -------------------------------------------------------------
@pytest.mark.parametrize(("opts", "key"), [
    ({"root": "/"}, "restore.roots"),
    ({"root": "/etc"}, "restore.roots"),
    ({"external": ["mnt[k]:/"]}, "restore.bind_sources"),
    ({"external": ["mnt[k]:/etc"]}, "restore.bind_sources"),
    ({"ext_mnt": [{"key": "k", "val": "/root"}]}, "restore.bind_sources"),
    ({"external": ["dev[k]:/dev/sda"]}, "restore.bind_sources"),
    ({"join_ns": [{"ns": "mnt", "ns_file": "/proc/1/ns/mnt"}]}, "restore.join_ns"),
    ({"lsm_profile": "apparmor:unconfined"}, "restore.lsm_labels"),
    ({"cg_root": [{"path": "/x/../../"}]}, "restore.cgroup_roots"),
    ({"cg_root": [{"path": "/"}]}, "restore.cgroup_roots"),
    ({"external": ["netdev[eth0]:lo"]}, "network.netdevs"),
])
def test_mount_namespace_lsm_cgroup_options_refused(agent: Driver, env: dict[str, str], opts: dict[str, Any],
                                                    key: str) -> None:
    """``{"root": "/", "external": ["mnt[k]:/"]}`` reached CRIU; rules could bind /, run unconfined, use '..'."""
    mid = prepare(agent)
    refused(restore(agent, opts), key)
    rep = agent.call("abort", agent_pb2.AbortRequest())
    assert rep.WhichOneof("body") == "abort"
    assert not (Path(env["CTCONSOLE_STATE_DIR"]) / "images" / mid).exists()


def test_bad_veth_names_and_bridges_refused(agent: Driver) -> None:
    """veth host names with ']' or '$' escaped the agent's bookkeeping (not checked, not deleted)."""
    prepare(agent)
    for ext, key in (("veth[eth0]:a]b@ctlab0", "network.names"), ("veth[eth0]:x$y", "network.names"),
                     ("veth[eth0]:" + "v" * 16, "network.names"), ("veth[eth0]:ok0@eth0", "network.bridges")):
        refused(restore(agent, {"external": [ext]}), key)
    refused(restore(agent, {"veths": [{"if_in": "eth0", "if_out": "x]$"}]}), "network.names")
    assert not any(n in os.listdir("/sys/class/net") for n in ("a]b", "x$y", "x]$"))


def test_image_quota(env: dict[str, str], tmp_path: Path) -> None:
    """No byte quota on received images: the policy's images.max_bytes stops a peer filling the disk."""
    pdir = tmp_path / "policy"
    pdir.mkdir(mode=0o755)
    (pdir / "agent.toml").write_text("[images]\nmax_bytes = 4096\n")
    d = Driver({**env, "CTCONSOLE_AGENT_POLICY": str(pdir / "agent.toml")})
    try:
        mid = prepare(d)
        ok = d.call("file", agent_pb2.FileChunk(name="pages-1.img", offset=0, data=b"x" * 3000, last=True))
        assert ok.WhichOneof("body") == "file", ok
        rep = d.call("file", agent_pb2.FileChunk(name="pages-2.img", offset=0, data=b"y" * 2000, last=False))
        refused(rep, "images.max_bytes")
        images = Path(env["CTCONSOLE_STATE_DIR"]) / "images" / mid
        assert sorted(os.listdir(images)) == ["pages-1.img"]
    finally:
        assert "Traceback" not in d.close()


def test_allowed_place_but_unsafe_way_refused(env: dict[str, str], tmp_path: Path) -> None:
    """The default allows /tmp: a root-owned private dir there is still refused when another user owns one above it.

    Like OpenSSH's StrictModes: alice owning ``/tmp/.../alice`` can rename the
    root-owned ``rootfs`` (or ``share``, ``logs``) below it away and put her
    own in its place between the check and the use.
    """
    alice = tmp_path / "alice"
    for sub in ("rootfs", "share", "logs"):
        (alice / sub).mkdir(parents=True, mode=0o755)
    os.chown(alice, 65534, 65534)
    d = Driver(env)
    try:
        prepare(d)
        for opts, key in (({"root": str(alice / "rootfs")}, "restore.roots"),
                          ({"external": [f"mnt[k]:{alice / 'share'}"]}, "restore.bind_sources")):
            text = refused(restore(d, opts), key)
            assert "owned by uid 65534" in text, text
        rep = restore(d, inherit=[agent_pb2.InheritFd(key="file[1:2]", how="open-file", path=str(alice / "logs" / "x"),
                                                      mode="append", perm=0o644)])
        assert rep.WhichOneof("body") == "error" and "owned by uid 65534" in rep.error.message, rep
        assert not (alice / "logs" / "x").exists()
        # the same layout owned by root all the way is accepted by the policy (the restore then fails in CRIU)
        os.chown(alice, 0, 0)
        rep = restore(d, {"root": str(alice / "rootfs")})
        assert rep.WhichOneof("body") == "error" and rep.error.code != "policy", rep
    finally:
        assert "Traceback" not in d.close()


def test_restore_waits_no_longer_than_its_deadline(env: dict[str, str]) -> None:
    """The slow random fuzz draw: after a prepare with a page server, a restore sat 60 s per request.

    The agent waited for the page connection (a thread join, a futex wait)
    while its keeper waited on its socket, until ``page_server_wait`` ran out,
    whatever the restore's own timeout said. Now a page channel nobody
    connected fails at once (the dump cannot have sent a page), and every
    wait inside a restore ends by the restore's deadline.
    """
    from ctconsole.migrate import transport

    a, b = Driver(env), Driver(env)
    try:
        rep = a.call("prepare", agent_pb2.PrepareRequest(migration_id=f"sec-{uuid.uuid4().hex[:8]}", page_server=True))
        assert rep.prepare.page_socket, rep
        rep = a.call("restore", agent_pb2.RestoreRequest(options_json="{}", timeout=600, page_server_wait=600),
                     timeout=30)
        assert rep.WhichOneof("body") == "error" and "never connected" in rep.error.message, rep
        # connected, but no dump ever comes: the restore's 3 s bound the wait for the last pages
        rep = b.call("prepare", agent_pb2.PrepareRequest(migration_id=f"sec-{uuid.uuid4().hex[:8]}", page_server=True))
        link = transport.open_page_link(rep.prepare.page_socket)
        try:
            rep = b.call("restore", agent_pb2.RestoreRequest(options_json="{}", timeout=3, page_server_wait=600),
                         timeout=30)
            assert rep.WhichOneof("body") == "error" and rep.error.code != "internal", rep
            assert "within 3 s" in rep.error.message, rep.error.message
        finally:
            link.close()
    finally:
        assert "Traceback" not in b.close()
        assert "Traceback" not in a.close()
    assert not list((Path(env["CTCONSOLE_STATE_DIR"]) / "images").glob("*")), "images left behind"


def test_restore_waits_are_finite_and_a_session_restores_once(env: dict[str, str]) -> None:
    """Waits the peer asks for are bounded, and one session runs one restore.

    A restore ``timeout`` of infinity (or 1e300) reached ``settimeout`` as sent: an ``internal``
    error (and a traceback in the agent's log) after the keeper already had the request. A second
    restore after one that ran would start a second keeper (and, post-copy, a second lazy-pages
    daemon) while rollback only knows the first attempt's partly restored root.
    """
    for kw in ({"timeout": float("inf")}, {"timeout": 1e300, "page_server_wait": float("nan"),
                                           "probe_timeout": float("inf")}):
        d = Driver(env)
        try:
            prepare(d)
            rep = d.call("restore", agent_pb2.RestoreRequest(options_json="{}", **kw), timeout=200)
            assert rep.WhichOneof("body") == "error" and rep.error.code not in ("internal", "state"), rep
            rep = restore(d)
            assert rep.WhichOneof("body") == "error" and rep.error.code == "state", rep
            assert "already ran" in rep.error.message, rep.error
        finally:
            err = d.close()
        assert "Traceback" not in err, err[-3000:]
    assert not list((Path(env["CTCONSOLE_STATE_DIR"]) / "images").glob("*")), "images left behind"


# -- sessions, ids, kills --------------------------------------------------------------------------
def test_abort_of_another_live_session_refused(env: dict[str, str]) -> None:
    """``abort(other_id)`` deleted another live session's images; prepare reused a locked id."""
    a, b = Driver(env), Driver(env)
    try:
        mid = prepare(a)
        assert a.call("file", agent_pb2.FileChunk(name="core-1.img", data=b"c", last=True)).WhichOneof(
            "body") == "file"
        rep = b.call("abort", agent_pb2.AbortRequest(migration_id=mid))
        assert rep.WhichOneof("body") == "error" and rep.error.code == "state" and "in use" in rep.error.message
        rep = b.call("prepare", agent_pb2.PrepareRequest(migration_id=mid))
        assert rep.WhichOneof("body") == "error" and rep.error.code == "state", rep
        assert (Path(env["CTCONSOLE_STATE_DIR"]) / "images" / mid / "core-1.img").exists()
    finally:
        b.close()
        a.close()


def test_commit_of_another_live_session_refused(env: dict[str, str]) -> None:
    """``commit(other_id)`` while the session that owns the id lives: refused, its record left alone (a
    commit continues a held tree and drops the record: only the owner, or recovery after it died, may)."""
    a, b = Driver(env), Driver(env)
    try:
        mid = prepare(a)
        pend = Path(env["CTCONSOLE_RUN_DIR"]) / "agent-pending"
        pend.mkdir(parents=True, mode=0o700, exist_ok=True)
        rec = pend / f"{mid}.json"  # as if a's restore had run and written its record
        rec.write_text(json.dumps({"pid": 0, "start": 0, "links": [], "time": time.time()}))
        rep = b.call("commit", agent_pb2.CommitRequest(migration_id=mid))
        assert rep.WhichOneof("body") == "error" and rep.error.code == "state" and "in use" in rep.error.message, rep
        assert rec.exists()
    finally:
        b.close()
        a.close()


def test_pending_record_id_cannot_be_prepared_again(env: dict[str, str]) -> None:
    """prepare reused an id whose pending record existed, and deleted the record on exit."""
    mid = f"sec-{uuid.uuid4().hex[:8]}"
    pend = Path(env["CTCONSOLE_RUN_DIR"]) / "agent-pending"
    pend.mkdir(parents=True, mode=0o700)
    (pend / f"{mid}.json").write_text(json.dumps({"pid": 0, "start": 0, "links": [], "time": time.time()}))
    d = Driver(env)
    try:
        rep = d.call("prepare", agent_pb2.PrepareRequest(migration_id=mid))
        assert rep.WhichOneof("body") == "error" and rep.error.code == "state" and "pending" in rep.error.message
    finally:
        d.close()
    assert (pend / f"{mid}.json").exists()


def test_a_refused_prepare_keeps_no_lock(env: dict[str, str]) -> None:
    """A prepare refused for a stale images directory kept the id locked (and its fd) for the session's life.

    Recovery (another session) could then not abort that id to clean the stale directory while the
    first session lived, and a later prepare of another id leaked the first lock's fd.
    """
    mid = f"sec-{uuid.uuid4().hex[:8]}"
    images = Path(env["CTCONSOLE_STATE_DIR"]) / "images"
    images.mkdir(parents=True, mode=0o700, exist_ok=True)
    (images / mid).mkdir(mode=0o700)  # left by an agent that died
    a, b = Driver(env), Driver(env)
    try:
        rep = a.call("prepare", agent_pb2.PrepareRequest(migration_id=mid))
        assert rep.WhichOneof("body") == "error" and "already exists" in rep.error.message, rep
        rep = b.call("abort", agent_pb2.AbortRequest(migration_id=mid))  # a is still alive
        assert rep.WhichOneof("body") == "abort", rep
        assert any(mid in c for c in rep.abort.cleaned) and not (images / mid).exists(), rep
        prepare(a)  # the session goes on with another id
    finally:
        assert "Traceback" not in b.close()
        assert "Traceback" not in a.close()


def test_kills_check_the_start_time(env: dict[str, str]) -> None:
    """kill_tree on a pending record's pid/keeper without a start-time check (pid reuse kills a stranger)."""
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        mid = f"sec-{uuid.uuid4().hex[:8]}"
        pend = Path(env["CTCONSOLE_RUN_DIR"]) / "agent-pending"
        pend.mkdir(parents=True, mode=0o700)
        # what a record looks like after the restored tree and keeper died and their pids were reused
        (pend / f"{mid}.json").write_text(json.dumps({"pid": stranger.pid, "start": 1, "links": [],
                                                      "keeper": stranger.pid, "keeper_start": 0,
                                                      "time": time.time()}))
        d = Driver(env)
        try:
            rep = d.call("abort", agent_pb2.AbortRequest(migration_id=mid))
            assert rep.WhichOneof("body") == "abort", rep
        finally:
            d.close()
        time.sleep(0.2)
        assert stranger.poll() is None, "a process that merely reused the pid was killed"
    finally:
        stranger.send_signal(signal.SIGKILL)
        stranger.wait()


# -- who may connect -------------------------------------------------------------------------------
def test_unprivileged_user_cannot_use_the_agent(env: dict[str, str]) -> None:
    """The ssh user must be root or in an allowed group: here nobody (loginuid 65534) used sudo."""
    def as_nobody_login() -> None:
        Path("/proc/self/loginuid").write_text("65534")

    d = Driver(env, preexec=as_nobody_login)
    try:
        rep = d.call("hello", agent_pb2.Hello(protocol=1))
        assert "nobody" in refused(rep, "connect.users")
        rep = d.call("prepare", agent_pb2.PrepareRequest(migration_id="sec-nobody"))
        refused(rep, "connect.users")
    finally:
        d.close()
    assert not (Path(env["CTCONSOLE_STATE_DIR"]) / "images" / "sec-nobody").exists()


def test_broken_policy_fails_closed(env: dict[str, str], tmp_path: Path) -> None:
    pdir = tmp_path / "policy"
    pdir.mkdir(mode=0o755)
    (pdir / "agent.toml").write_text("[files]\nopne = []\n")
    d = Driver({**env, "CTCONSOLE_AGENT_POLICY": str(pdir / "agent.toml")})
    try:
        rep = d.call("prepare", agent_pb2.PrepareRequest(migration_id="sec-broken"))
        assert rep.WhichOneof("body") == "error" and rep.error.code == "policy"
        assert "unknown key files.opne" in " ".join([rep.error.message, *rep.error.details])
    finally:
        assert "Traceback" not in d.close()


# -- the rules path: a file rule to /etc/ld.so.preload, refused before freezing ---------------------
def test_rules_file_rule_to_ld_so_preload_refused_before_freezing(tmp_path: Path, counter: Any,
                                                                 nshost: Any) -> None:
    """A ``file`` rule (source fd /dev/null) to /etc/ld.so.preload compiled to perm=0o666, as root.

    The rules compile now refuses /etc itself and never asks for group/other write (docs/remap.md). A
    destination the rules accept still meets the destination's policy: outside ``files.open`` it is
    refused; ``check --to`` shows it as a blocker naming the key, and ``migrate`` stops before freezing.
    """
    env = ctenv(tmp_path)

    def rules_to(target: str) -> Path:
        rules = tmp_path / "rules.toml"
        rules.write_text(f'version = 1\n[[container]]\nmatch = {{ name = "*" }}\n  [[container.rule]]\n'
                         f'  kind = "file"\n  source = "/dev/null"\n  destination = "{target}"\n')
        return rules

    etc = f"/etc/ctconsole-sec-{uuid.uuid4().hex[:6]}.preload"  # the real ld.so.preload is never risked
    p = subprocess.run([*CTCONSOLE, "check", f"tree:{counter.pid}", "--to", nshost.dest, "--rules", rules_to(etc),
                        "--json"], capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
    assert p.returncode != 0 and "/etc" in p.stderr and "Traceback" not in p.stderr, (p.stdout, p.stderr)
    opt = Path(f"/opt/ctc-sec-{uuid.uuid4().hex[:6]}")  # not in the default policy's files.open
    opt.mkdir(mode=0o755, parents=True)
    target = str(opt / "app.log")
    try:
        p = subprocess.run([*CTCONSOLE, "check", f"tree:{counter.pid}", "--to", nshost.dest, "--rules",
                            rules_to(target), "--json"], capture_output=True, text=True, env=env, timeout=120,
                           cwd=ROOT)
        assert p.returncode != 0 and "Traceback" not in p.stderr, (p.stdout, p.stderr)
        doc = json.loads(p.stdout)
        blockers = [f for f in doc["findings"] if f["rule"] == "dest-policy"]
        assert blockers and blockers[0]["severity"] == "blocker", doc["findings"]
        assert "files.open" in blockers[0]["message"] and target in blockers[0]["message"], blockers
        assert "source: built-in default" in doc["destination"]["checks"]["policy"], doc["destination"]
        rc, events, err = run_cli(["migrate", f"tree:{counter.pid}", "--to", nshost.dest, "--rules",
                                   str(rules_to(target)), "--json"], env)
        assert rc != 0 and events and events[-1]["event"] == "done", (events[-3:], err[-2000:])
        assert events[-1]["result"] != "migrated" and "files.open" in json.dumps(events[-1]), events[-1]
        assert "Traceback" not in err
        phases = [e["phase"] for e in events if e["event"] == "phase_changed"]
        assert "perform" not in phases, phases  # refused before the source was frozen
        assert not os.path.lexists(etc) and os.listdir(opt) == []
    finally:
        for f in opt.iterdir():
            f.unlink()
        opt.rmdir()
    counter.wait_ticks(3)  # the source kept running
    assert pids_running(str(counter.counter_file)) == [counter.pid]


# -- stranding -------------------------------------------------------------------------------------
HALF_FRAME_AGENT = """
import os, struct, sys, time
sys.stdin.buffer.read(4)              # a request header arrives: answer with 2 bytes of a 4-byte header
os.write(1, struct.pack(">I", 100)[:2])
time.sleep(30)
"""


def test_half_frame_from_the_agent_has_a_deadline(tmp_path: Path) -> None:
    """After the first byte the frame read had no deadline: ``timeout=2`` still blocked at 6 s."""
    from ctconsole.agent.channel import AgentChannel, ChannelError, parse_destination

    script = tmp_path / "half.py"
    script.write_text(HALF_FRAME_AGENT)

    class HalfFrameAgent(AgentChannel):
        def argv(self) -> list[str]:
            return [sys.executable, str(script)]

    ch = HalfFrameAgent(parse_destination("local"), log_dir=tmp_path)
    ch.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(ChannelError):
            ch.call("hello", agent_pb2.Hello(protocol=1), timeout=2)
        assert time.monotonic() - t0 < 4, "the read outlived its deadline"
    finally:
        ch.kill()


def test_failed_commit_is_not_migrated_and_recovery_finishes_it(tmp_path: Path, nsct: Any, nshost: Any) -> None:
    """A failed ``commit`` was swallowed, journaled as committed, reported "migrated": the held copy stayed
    stopped forever. Now: not "migrated", no end record, and recovery (history) commits the held copy; while
    the destination cannot be reached, history says "unresolved: destination unreachable"."""
    env = ctenv(tmp_path, CTCONSOLE_FAULT="fail:agent-commit")
    rules = veth_rules(tmp_path, nshost.bridge, "cttr" + uuid.uuid4().hex[:6])
    rc, events, err = run_cli(["migrate", f"tree:{nsct.init_pid}", "--to", nshost.dest, "--rules", str(rules),
                               "--json"], env)
    assert events and events[-1]["event"] == "done", err[-2000:]
    assert events[-1]["details"]["mode"] == "handover", events[-1]
    assert events[-1]["result"] != "migrated" and rc != 0, events[-1]
    assert "did not confirm the commit" in events[-1]["message"], events[-1]
    journal = next((tmp_path / "state" / "journal").glob("*.jsonl"))
    recs = [json.loads(x) for x in journal.read_text().splitlines()]
    assert not [r for r in recs if r["kind"] in ("end", "committed")], recs[-3:]
    held = container_inits(nsct)
    assert len(held) == 1, held  # the copy on the destination, held (stopped), not lost
    assert Path(f"/proc/{held[0]}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("T", "t")
    # the destination becomes unreachable: recovery must leave the journal open and say so
    subprocess.run(["ip", "netns", "del", nshost.name], check=True)  # its processes keep the namespace
    env.pop("CTCONSOLE_FAULT")
    rc, hist, err = run_cli(["history", "--json"], env)
    assert "Traceback" not in err and hist[-1]["result"] == "unresolved", hist
    assert "destination unreachable" in hist[-1]["message"], hist[-1]
    p = subprocess.run([*CTCONSOLE, "history"], capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
    assert "unresolved: destination unreachable" in p.stdout, p.stdout
    assert not [r for r in (json.loads(x) for x in journal.read_text().splitlines()) if r["kind"] == "end"]
    assert list((tmp_path / "state" / "work").iterdir()), "recovery removed the work directory"
    # reachable again (the same namespace, named again): recovery commits the held copy
    subprocess.run(["ip", "netns", "attach", nshost.name, str(held[0])], check=True)
    rc, hist, err = run_cli(["history", "--json"], env)
    assert hist[-1]["result"] == "migrated", (hist, err[-2000:])
    nsct.wait_ticks(3)  # the copy runs again
    assert container_inits(nsct) == held


def test_probes_are_named_and_run_the_destinations_argv(tmp_path: Path, nsct: Any, nshost: Any) -> None:
    """``--probe NAME``: an unknown name is refused before the freeze; a defined one runs the policy's argv."""
    pdir = tmp_path / "policy"
    pdir.mkdir(mode=0o755)
    (pdir / "agent.toml").write_text('[probes]\nticks = ["sh", "-c", "test -s /ticks && echo ticking"]\n')
    env = ctenv(tmp_path, CTCONSOLE_AGENT_POLICY=str(pdir / "agent.toml"))
    rules = veth_rules(tmp_path, nshost.bridge, "cttr" + uuid.uuid4().hex[:6])
    rc, events, err = run_cli(["migrate", f"tree:{nsct.init_pid}", "--to", nshost.dest, "--rules", str(rules),
                               "--probe", "id -u", "--json"], env)
    assert rc != 0 and events[-1]["result"] != "migrated", events[-1]
    assert "no probe named 'id -u'" in events[-1]["message"] and "probes" in events[-1]["message"], events[-1]
    assert "perform" not in [e.get("phase") for e in events], "frozen before the refusal"
    assert container_inits(nsct) == [nsct.init_pid]
    rc, events, err = run_cli(["migrate", f"tree:{nsct.init_pid}", "--to", nshost.dest, "--rules", str(rules),
                               "--probe", "ticks", "--json"], env)
    assert rc == 0 and events[-1]["result"] == "migrated", (events[-1], err[-2000:])
    assert any("probe passed (ticking)" in str(e.get("text", "")) for e in events), events
    nsct.wait_ticks(3)


def test_host_probe_reports_refusals_without_doing_anything(agent: Driver, tmp_path: Path) -> None:
    """``check --to``'s half: the same checks as the restore, answered as findings, nothing opened or made."""
    target = tmp_path / "d" / "x"
    target.parent.mkdir(mode=0o755)
    rep = agent.call("host_probe", agent_pb2.HostProbeRequest(
        policy=True, restore_options_json=json.dumps({"root": "/", "external": ["mnt[k]:/etc"]}),
        inherit=[agent_pb2.InheritFd(key="file[1:2]", how="open-file", path=str(target), mode="append",
                                     perm=0o666)],
        probe_name="sh", image_bytes=1 << 50))
    assert rep.WhichOneof("body") == "host_probe", rep
    assert [r.key for r in rep.host_probe.refusals] == ["restore.roots", "restore.bind_sources", "files.perm_mask",
                                                        "probes", "images.max_bytes"]
    assert "source: built-in default" in rep.host_probe.policy_lines
    assert not target.exists()
    rep = agent.call("host_probe", agent_pb2.HostProbeRequest(restore_options_json='{"exec_cmd": ["/bin/sh"]}'))
    assert [r.key for r in rep.host_probe.refusals] == ["restore.options"]


def test_state_dirs_in_shared_places_are_not_followed(tmp_path: Path) -> None:
    """``CTCONSOLE_*_DIR`` under /tmp was created following symlinks, without an owner check."""
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o1777)  # like /tmp
    target = tmp_path / "victim"
    target.mkdir(mode=0o755)
    (shared / "state").symlink_to(target)  # planted by another user before ctconsole ran
    foreign = shared / "run"
    foreign.mkdir()
    os.chown(foreign, 65534, 65534)
    env = {**ctenv(tmp_path), "CTCONSOLE_STATE_DIR": str(shared / "state"),
           "CTCONSOLE_RUN_DIR": str(tmp_path / "run")}

    def agent_refuses(why: str) -> None:
        p = subprocess.run(AGENT, input=b"", capture_output=True, env=env, cwd=ROOT, timeout=60)
        err = p.stderr.decode(errors="replace")
        assert p.returncode != 0 and why in err and "Traceback" not in err, err

    agent_refuses("is a symbolic link")
    env["CTCONSOLE_STATE_DIR"], env["CTCONSOLE_RUN_DIR"] = str(tmp_path / "state"), str(foreign)
    agent_refuses("owned by uid 65534")
    assert os.listdir(target) == [] and os.listdir(foreign) == []
