"""Hypothesis drives a real ``ctconsole agent --stdio`` with hostile request sequences.

Valid frames, hostile fields, any order. After every reply and at the end of
each session: no file outside the agent's own directories (the bait paths the
requests aim at stay absent or untouched), no process other than CRIU, the
keeper (python) and the agent's own ``ip`` queries, no ``internal`` error and
no traceback. The count is bounded (``CTCONSOLE_FUZZ_EXAMPLES``, default 30). The suite runs the
same derandomized sequences every time (reproducible); ``CTCONSOLE_FUZZ_RANDOM=1`` explores new ones.

A random draw once strung together restores that each waited 60 s: a ``prepare`` with a page
server nobody connected, then a restore, and the agent waited ``page_server_wait`` for the page
connection (a thread join) while its keeper idled, whatever the restore's timeout said. Every wait
in a restore now ends by the restore's deadline, and an unconnected page channel fails at once
(test_security_attacks.py::test_restore_waits_no_longer_than_its_deadline); restores here ask for
``page_server_wait`` 600 s with a 5 s timeout, and post-copy's lazy channel is in the mix.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctconsole.proto import agent_pb2
from tests.integration.test_security_attacks import Driver, agent_children
from tests.support_hosts import ctenv

pytestmark = pytest.mark.usefixtures("needs_root")

TAG = uuid.uuid4().hex[:6]
BASE = Path(f"/tmp/ctc-fuzz-{TAG}")
BAIT = BASE / "bait"  # root-owned 0755: the policy allows files here, so only rollback keeps it clean
ETC = f"/etc/ctc-fuzz-{TAG}"
ALLOWED_COMMS = {"criu", "python3", "python", "ip"}
EXAMPLES = int(os.environ.get("CTCONSOLE_FUZZ_EXAMPLES", "30"))

ids = st.sampled_from(["m1", "m1", "m1", "m2", "../m1", "", "x" * 70, "m1/../../etc", "m$1"])
paths = st.sampled_from([f"{BAIT}/made", f"{BAIT}/link", ETC, f"{ETC}/x", "/root/.ssh/authorized_keys2",
                         f"{BAIT}/../../etc/ctc-fuzz-{TAG}-dots", "relative", "", "/proc/self/mem",
                         "/var/lib/ctconsole/lab/hostd.sock", f"{BAIT}/s.sock"])
names = st.sampled_from(["core-1.img", "pages-1.img", "../x", "a/b", ".", "", "x" * 200, "inventory.img"])
ifnames = st.sampled_from(["cttf0", "a]b", "x$y", "v" * 16, "ctlab0", "lo", "eth0", "-x"])
opt_values: dict[str, Any] = {
    "root": st.sampled_from(["/", "/etc", str(BAIT), f"{BAIT}/../..", 3, None]),
    "external": st.lists(st.sampled_from(["mnt[k]:/", f"mnt[k]:{BAIT}", "veth[eth0]:a]b@ctlab0",
                                          "veth[eth0]:cttf0@cttbr0", "netdev[x]:lo", "dev[k]:/dev/sda",
                                          "unix[1]", "weird"]), max_size=3),
    "cg_root": st.sampled_from([[{"path": "/../.."}], [{"path": "/ctc-fuzz"}], "x"]),
    "lsm_profile": st.sampled_from(["apparmor:unconfined", ""]),
    "join_ns": st.sampled_from([[{"ns": "net", "ns_file": "/proc/1/ns/net"}], []]),
    "exec_cmd": st.just(["/bin/sh"]),
    "log_level": st.integers(-1, 9),
    "veths": st.sampled_from([[{"if_in": "eth0", "if_out": "x]$"}], [{"if_in": "e", "if_out": "cttf1"}], 5]),
}
# benign values often enough that sequences get past the checks and reach CRIU, the keeper and rollback
options = st.one_of(st.just("{}"), st.just('{"log_level": 4}'),
                    st.fixed_dictionaries({}, optional=opt_values).map(json.dumps),
                    st.sampled_from(["", "[]", "{", "null"]))
allowed_file = agent_pb2.InheritFd(key="file[1:2]", how="open-file", path=f"{BAIT}/made", mode="append", perm=0o644)
inherits = st.lists(st.just(allowed_file) | st.builds(
    agent_pb2.InheritFd, key=st.sampled_from(["file[1:2]", "socket:[3]", "bad key"]),
    how=st.sampled_from(["open-file", "connect-unix", "pipe-relay", "exec"]), path=paths,
    mode=st.sampled_from(["append", "write", "read", "readwrite", "x"]),
    perm=st.sampled_from([-1, 0o644, 0o666, 0o6777, 0o4755, 0o100000])), max_size=2)

restores = st.builds(lambda o, inh, argv, pn, hold, lazy, psw: ("restore", agent_pb2.RestoreRequest(
    options_json=o, inherit=inh, probe_argv=argv, probe_name=pn, hold=hold, timeout=5, lazy=lazy,
    page_server_wait=psw, lazy_address="127.0.0.1" if lazy and psw else "")),
    options, inherits, st.sampled_from([[], [], [], ["touch", f"{BAIT}/probe-ran"], ["sh", "-c", "id"]]),
    st.sampled_from(["", "", "", "sh", "link:eth0", "link:a]b"]), st.booleans(),
    st.sampled_from([False, False, True]), st.sampled_from([0.0, 600.0]))
requests = st.one_of(
    restores,
    st.builds(lambda: ("hello", agent_pb2.Hello(protocol=1))),
    st.builds(lambda i, ps, lz: ("prepare", agent_pb2.PrepareRequest(migration_id=i, page_server=ps,
                                                                       lazy_pages=lz)), ids,
              st.booleans(), st.sampled_from([False, False, True])),
    st.builds(lambda n, o, d, last, r: ("file", agent_pb2.FileChunk(name=n, offset=o, data=d, last=last, round=r)),
              names, st.sampled_from([0, 0, 5, 1 << 40]), st.binary(max_size=64), st.booleans(),
              st.sampled_from([0, 0, 1, 7])),
    st.builds(lambda r, p: ("round", agent_pb2.RoundRequest(round=r, parent=p)), st.integers(0, 3),
              st.integers(0, 3)),
    st.builds(lambda ns: ("link", agent_pb2.LinkRequest(names=ns)), st.lists(names, max_size=2)),
    st.builds(lambda i, f: (f, {"commit": agent_pb2.CommitRequest, "status": agent_pb2.StatusRequest,
                                "abort": agent_pb2.AbortRequest}[f](migration_id=i)),
              ids, st.sampled_from(["commit", "status", "abort"])),
    st.builds(lambda ps, bs: ("preflight", agent_pb2.PreflightRequest(paths=ps, bridges=bs, memory_bytes=1 << 20)),
              st.lists(paths, max_size=2), st.lists(ifnames, max_size=2)),
    st.builds(lambda ps, ls: ("host_probe", agent_pb2.HostProbeRequest(paths=ps, links=ls)),
              st.lists(paths, max_size=3), st.lists(ifnames, max_size=3)),
)


@pytest.fixture(scope="module")
def bait() -> Any:
    BAIT.mkdir(parents=True, mode=0o755)
    os.chmod(BASE, 0o755)
    (BAIT / "link").symlink_to(f"{ETC}-via-link")
    yield BAIT
    for f in BAIT.iterdir():
        f.unlink()
    BAIT.rmdir()
    BASE.rmdir()


def _check_host() -> None:
    assert sorted(os.listdir(BAIT)) == ["link"], os.listdir(BAIT)
    for p in (ETC, f"{ETC}-via-link", f"/etc/ctc-fuzz-{TAG}-dots", "/root/.ssh/authorized_keys2"):
        assert not os.path.lexists(p), p
    assert not [n for n in os.listdir("/sys/class/net") if n in ("a]b", "x$y", "x]$", "cttf0", "cttf1")]


# most sessions start as a console's would (prepare), so the later hostile requests meet a live migration
PREPARE = ("prepare", agent_pb2.PrepareRequest(migration_id="m1"))
first = st.sampled_from([PREPARE, PREPARE, PREPARE, None]).flatmap(lambda p: st.just(p) if p else requests)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
          derandomize=os.environ.get("CTCONSOLE_FUZZ_RANDOM") != "1")
@given(seq=st.tuples(first, st.lists(st.one_of(restores, requests), max_size=7)).map(lambda t: [t[0], *t[1]]))
def test_hostile_request_sequences(bait: Path, tmp_path_factory: pytest.TempPathFactory,
                                   seq: list[tuple[str, Any]]) -> None:
    tmp = tmp_path_factory.mktemp("fuzz")
    os.chmod(tmp, 0o755)
    etc_before = set(os.listdir("/etc"))
    d = Driver(ctenv(tmp))
    seen: set[str] = set()
    try:
        for field, msg in seq:
            rep = d.call(field, msg, timeout=90)
            assert rep.WhichOneof("body") != "error" or rep.error.code != "internal", (field, rep.error)
            seen.update(agent_children(d.proc.pid))
            assert seen <= ALLOWED_COMMS, (field, seen)
    finally:
        err = d.close()
    assert "Traceback" not in err, err[-3000:]
    _check_host()
    assert set(os.listdir("/etc")) <= etc_before, set(os.listdir("/etc")) - etc_before
    assert not list((tmp / "state" / "images").glob("*")), "images left behind"
