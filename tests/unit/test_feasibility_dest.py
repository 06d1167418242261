"""Destination checks without root: the agent's host_probe input rules, what the rules
need on the destination, and how ``check`` reports an unreachable or half-dead destination."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from ctconsole.agent import hostprobe
from ctconsole.agent.channel import ChannelError
from ctconsole.errors import UsageError
from ctconsole.feasibility import check
from ctconsole.feasibility.host import DestNeed, ProbeResult, destination_needs, resource_checks
from ctconsole.proto import agent_pb2
from tests.unit.test_feasibility_checks import FakeProbe, ct


# -- agent side ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "req",
    [
        agent_pb2.HostProbeRequest(paths=["relative/path"]),
        agent_pb2.HostProbeRequest(paths=["/a\0b"]),
        agent_pb2.HostProbeRequest(paths=["/" + "x" * 5000]),
        agent_pb2.HostProbeRequest(paths=[f"/p{i}" for i in range(65)]),
        agent_pb2.HostProbeRequest(links=["eth0; reboot"]),
        agent_pb2.HostProbeRequest(links=["a" * 16]),
        agent_pb2.HostProbeRequest(links=[".."]),
        agent_pb2.HostProbeRequest(links=["../../etc"]),
        agent_pb2.HostProbeRequest(cpuinfo_img=b"x" * (65 << 10)),
    ],
)
def test_host_probe_refuses_bad_input(req: agent_pb2.HostProbeRequest) -> None:
    from ctconsole.migrate.destination import DestinationServer, Refused

    with pytest.raises(hostprobe.BadProbe):
        hostprobe.validate(req)
    agent = DestinationServer.__new__(DestinationServer)  # the handler needs no session state
    with pytest.raises(Refused) as exc:
        agent.on_host_probe(req)
    assert exc.value.code == "bad-request"


def test_host_probe_answers_kinds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTCONSOLE_IMAGES_DIR", str(tmp_path / "not" / "yet"))
    sock = tmp_path / "s.sock"
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(sock))
    (tmp_path / "f").write_text("x")
    try:
        r = hostprobe.answer(agent_pb2.HostProbeRequest(
            images_space=True, paths=[str(tmp_path), str(sock), str(tmp_path / "f"), str(tmp_path / "gone")],
            links=["lo", "cttnosuch0"]))
    finally:
        srv.close()
    assert [x.kind for x in r.paths] == ["dir", "socket", "file", ""]
    assert [x.kind for x in r.links] == ["link", ""]
    assert r.images_dir == str(tmp_path / "not" / "yet") and r.images_free > 0
    assert not (tmp_path / "not").exists()  # asking creates nothing


# -- what the rules need there ----------------------------------------------------------------
def test_destination_needs_from_compiled_rules() -> None:
    restore = {"external": ["veth[eth0]:h0@br0", "veth[eth1]:h1", "mnt[data]:/srv/data", "netdev[eth2]:vf3",
                            "macvlan[mv0]:eno1", "dev[sda]:/dev/sdb", "unix[12]"]}
    inherit = [("socket:[12]", "connect-unix", "/run/d.sock", ""), ("file[1:2]", "open-file", "/var/log/x", "append"),
               ("file[1:3]", "open-file", "/etc/in", "read"), ("orphan-pts-master", "keep-pty-master", "", "")]
    got = {(n.kind, n.name) for n in destination_needs(restore, inherit)}
    assert got == {("bridge", "br0"), ("path", "/srv/data"), ("link", "vf3"), ("link", "eno1"),
                   ("path", "/dev/sdb"), ("socket", "/run/d.sock"), ("dir", "/var/log"), ("path", "/etc/in")}


class KindProbe(FakeProbe):
    name = "netns:lab"

    def __init__(self, paths: dict[str, str], links: dict[str, str]) -> None:
        super().__init__()
        self.kinds, self.links, self.lookups = paths, links, 0

    def lookup(self, paths: list[str], links: list[str]) -> None:
        self.lookups += 1

    def path_kind(self, path: str) -> str:
        return self.kinds.get(path, "")

    def link_kind(self, name: str) -> str:
        return self.links.get(name, "")


def test_resource_checks() -> None:
    needs = [DestNeed("bridge", "br0", "veth[eth0]:h@br0"), DestNeed("bridge", "eth9", "veth[eth1]:h@eth9"),
             DestNeed("socket", "/run/d.sock", "inherit_fd socket:[1]"), DestNeed("dir", "/var/log", "x"),
             DestNeed("path", "/srv", "mnt[a]:/srv")]
    probe = KindProbe({"/run/d.sock": "file", "/var/log": "dir", "/srv": "dir"}, {"eth9": "link"})
    got = resource_checks(needs, probe, "destination:netns:lab")
    assert probe.lookups == 1  # one round trip for all of them
    assert [f.rule for f in got] == ["dest-bridge", "dest-bridge", "dest-socket"]
    assert all(f.severity == "needs-rule" and f.subject == "destination:netns:lab" for f in got)
    assert "bridge br0 does not exist" in got[0].message
    assert "eth9 exists on the destination but is not a bridge" in got[1].message
    assert "not a UNIX socket" in got[2].message


# -- check() with a remote destination ------------------------------------------------------
class Remote(KindProbe):
    """A reachable (or not) remote probe with the RemoteProbe extras."""

    def __init__(self, fail_connect: bool = False, fail_check: bool = False, **kw: Any) -> None:
        super().__init__(kw.get("paths", {}), kw.get("links", {}))
        self.fail_connect, self.fail_check = fail_connect, fail_check

    def connect(self) -> None:
        if self.fail_connect:
            raise ChannelError("the agent on netns:lab exited (status 255)",
                               ['agent: Cannot open network namespace "lab"'])

    def check(self) -> ProbeResult:
        if self.fail_check:
            raise ChannelError("the agent on netns:lab went away")
        return ProbeResult(True, "Looks good.")

    def summary(self) -> dict[str, Any]:
        return {"dest": self.name, "reachable": True, "version": "4.2.1", "features": {}, "checks": {}}


def test_unreachable_destination_is_an_infeasible_finding() -> None:
    c = ct(init_pid=0)
    r = check(c, dest="netns:lab", probe=FakeProbe(), dest_probe=Remote(fail_connect=True))
    assert r.verdict == "infeasible"
    (f,) = [f for f in r.findings if f.rule == "destination-unreachable"]
    assert f.subject == "destination:netns:lab" and "Cannot open network namespace" in f.message
    assert r.to_dict()["destination"]["reachable"] is False
    assert r.criu.version == "4.2.1"  # the source's answers are still there


def test_destination_dying_half_way_is_unreachable_not_a_crash() -> None:
    r = check(ct(init_pid=0), dest="netns:lab", probe=FakeProbe(), dest_probe=Remote(fail_check=True))
    assert [f.rule for f in r.findings if f.severity == "blocker"] == ["destination-unreachable"]
    assert "went away" in r.to_dict()["destination"]["error"]


def test_rules_resources_checked_on_the_destination() -> None:
    compiled = {"dump": {}, "restore": {"external": ["veth[eth0]:h0@br0"]},
                "inherit_fd": [{"key": "socket:[5]", "how": "connect-unix", "path": "/run/d.sock"}]}
    missing = check(ct(init_pid=0), dest="netns:lab", probe=FakeProbe(), dest_probe=Remote(), rules=compiled)
    assert {f.rule for f in missing.findings if f.subject == "destination:netns:lab"} >= {"dest-bridge", "dest-socket"}
    assert missing.verdict == "needs-rules"
    present = check(ct(init_pid=0), dest="netns:lab", probe=FakeProbe(), rules=compiled,
                    dest_probe=Remote(paths={"/run/d.sock": "socket", "/": "dir"}, links={"br0": "bridge"}))
    assert present.verdict == "no-known-blockers", present.to_dict()
    assert present.to_dict()["destination"]["version"] == "4.2.1"


def test_static_only_check_never_starts_an_agent() -> None:
    r = check(ct(init_pid=0), dest="ssh://nowhere.invalid", hosts=False)
    assert r.destination is None and not [f for f in r.findings if f.rule == "destination-unreachable"]


def test_malformed_destination_is_usage_error() -> None:
    from ctconsole.feasibility.remote import RemoteProbe

    with pytest.raises(UsageError):
        RemoteProbe("ftp://x")
    with pytest.raises(UsageError):
        check(ct(init_pid=0), dest="netns:../x", probe=FakeProbe())


class FakeChannel:
    """Stands in for AgentChannel: answers hello and host_probe the way the agent does."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, Any]] = []

    def call(self, field: str, msg: Any, timeout: float = 60) -> Any:
        self.requests.append((field, msg))
        if field == "hello":
            return agent_pb2.HelloReply(criu_version="4.2.1", kernel="6.18.0", hostname="lab", mem_track=True)
        hostprobe.validate(msg)  # the console never sends what the agent would refuse
        r = agent_pb2.HostProbeReply(criu_check_ok=True, criu_check_detail="Looks good.", images_dir="/img",
                                     images_free=1 << 30)
        r.paths.extend(agent_pb2.PathInfo(path=p, kind="dir") for p in msg.paths)
        r.links.extend(agent_pb2.LinkInfo(name=n, kind="bridge") for n in msg.links)
        return r

    def close(self, timeout: float = 10) -> None:
        pass


def test_remote_probe_batches_filters_and_summarises() -> None:
    from ctconsole.feasibility.remote import RemoteProbe

    ch = FakeChannel()
    probe = RemoteProbe("netns:lab", connector=lambda dest, timeout: (ch, ch.call("hello", None)))
    assert probe.version() == ((4, 2, 1), "4.2.1") and probe.features()["mem_track"] is True
    assert probe.check().ok and probe.free_space("/ignored") == 1 << 30 and probe.images_dir() == "/img"
    paths = [f"/p{i}" for i in range(70)] + ["relative", "/a\0b"]
    probe.lookup(paths, ["br0", "bad name"])
    probe_calls = [m for f, m in ch.requests if f == "host_probe" and (m.paths or m.links)]
    assert [len(m.paths) for m in probe_calls] == [64, 6]  # batched under the agent's limit
    assert probe.path_kind("/p69") == "dir" and probe.path_kind("relative") == ""
    assert probe.link_kind("br0") == "bridge" and probe.link_kind("bad name") == ""
    n = len(ch.requests)
    probe.path_kind("/p1")  # cached
    assert len(ch.requests) == n
    s = probe.summary()
    assert s["reachable"] and s["version"] == "4.2.1" and s["checks"]["links"] == {"br0": "bridge",
                                                                                    "bad name": "missing"}
    assert s["checks"]["criu_check"]["ok"] is True and s["checks"]["images"]["free"] == 1 << 30


# --------------------------------------------------------------------------- conflicts (feasibility/conflicts.py)


class ConflictProbe:
    """A destination host as the agent would describe it (faking the host, not the logic)."""

    def __init__(self, links: dict[str, str], busy_pids: list[int], busy_ports: list[tuple[str, str, int]],
                 cgroups: dict[str, tuple[bool, int]], hostname: str = "elsewhere") -> None:
        self.links, self.busy_pids, self.busy_ports, self.cgroups = links, busy_pids, busy_ports, cgroups
        self.asked: dict[str, Any] = {}
        self.hostname = hostname

    def link_kind(self, name: str) -> str:
        return self.links.get(name, "")

    def conflicts(self, pids: Any = (), ports: Any = (), cgroups: Any = ()) -> dict[str, Any]:
        self.asked = {"pids": list(pids), "ports": list(ports), "cgroups": list(cgroups)}
        return {"busy_pids": [p for p in pids if p in self.busy_pids],
                "busy_ports": [q for q in self.busy_ports if q[2] in {p[2] for p in ports}],
                "cgroups": {c: self.cgroups.get(c, (False, 0)) for c in cgroups}}

    def summary(self) -> dict[str, Any]:
        return {"hostname": self.hostname}


def test_destination_conflicts_rules() -> None:
    from ctconsole.feasibility.conflicts import destination_conflicts
    from ctconsole.model import Socket

    c = ct(
        sockets=(Socket("inet", "stream", 5, state="LISTEN", local="0.0.0.0:8080", protocol="tcp"),),
        cgroups={"unified": "/app.slice"},
    )
    restore = {"external": ["veth[eth0]:vh0@br0"]}
    probe = ConflictProbe({"vh0": "link"}, [100], [("tcp", "0.0.0.0", 8080)], {"/app.slice": (True, 3)})
    fs = destination_conflicts(c, restore, probe, "ssh://h", "destination:ssh://h")
    assert {f.rule: f.severity for f in fs} == {
        "dest-veth-name": "blocker", "dest-pid-busy": "blocker", "dest-port-busy": "blocker",
        "dest-cgroup-busy": "needs-rule",
    }
    assert probe.asked == {"pids": [100], "ports": [("tcp", "0.0.0.0", 8080)], "cgroups": ["/app.slice"]}
    # own pid and net namespaces, a cgroup rule: nothing to collide with but the veth name
    from dataclasses import replace

    own = replace(c, own_namespaces=("pid", "net"))
    probe.asked = {}
    fs = destination_conflicts(own, dict(restore, cgroup_root=["/x"]), probe, "ssh://h", "d")
    assert [f.rule for f in fs] == ["dest-veth-name"] and probe.asked == {}  # nothing else asked
    # a destination on this kernel (netns:, or our own hostname): its pids/cgroups are the source's own
    import os

    same = ConflictProbe({}, [100], [], {"/app.slice": (True, 3)}, hostname=os.uname().nodename)
    assert destination_conflicts(c, {}, same, "ssh://me", "d") == []  # ports are still asked (none busy)
    assert same.asked["ports"] == [("tcp", "0.0.0.0", 8080)]
    assert same.asked["pids"] == [] and same.asked["cgroups"] == []
    assert destination_conflicts(c, {}, same, "netns:lab", "d") == []


def test_lock_on_a_filesystem_the_destination_shares_blocks() -> None:
    """sqlite3 in a write transaction, to a netns host: CRIU's restore waits for the lock (F_SETLKW)
    the frozen source still holds; found in the static check migrate itself runs (hosts=False)."""
    from ctconsole.feasibility.conflicts import shared_locks
    from ctconsole.model import OpenFile

    c = ct(files=(OpenFile(path="/data/db", mnt_id=1, inode=2, locked=True),), own_namespaces=("mnt",))
    (f,) = shared_locks(c, "netns:h", "destination:netns:h")
    assert f.severity == "blocker" and "/data/db" in f.message and "--isolated" in f.remedy
    assert not shared_locks(c, "ssh://far", "destination:ssh://far")  # its own filesystems: a copy
    assert not shared_locks(ct(), "netns:h", "destination:netns:h")  # nothing locked
    report = check(c, dest="netns:h", hosts=False)
    assert "dest-lock-shared" in {x.rule for x in report.findings} and report.verdict == "infeasible"
    assert "dest-lock-shared" not in {x.rule for x in check(c, hosts=False).findings}
