"""Post-copy (lazy pages) without a listener: real CRIU, real processes, the migration's own page channel.

Post-copy's success path stays gated by the lazy-pages self-test (on this
machine CRIU's lazy transfer fails: ``page-pipe: tee``), so these tests show
what can be shown here, each failing with the old TCP path:

- the lazy dump serves its pages on the connected socket it was handed (a
  CRIU config file with ``ps-socket N``, since RPC ignores ``ps`` with
  ``lazy_pages``): while it waits for the lazy-pages daemon, no CRIU process
  listens on anything; a failed transfer resumes the source, which keeps
  counting;
- the destination agent's lazy channel is a unix socket in a fresh 0700
  directory: uid 65534 is refused, root gets the one connection, nothing of
  the agent listens on TCP, and a restore that names an address is refused;
- a forced post-copy migration to a netns host: the lazy-pages daemon there
  runs with ``--ps-socket`` (no ``--address``/``--port``), no CRIU process
  listens on TCP on either side, and the rollback leaves the source running
  exactly once, no tick lost.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from ctconsole import process
from ctconsole.criu.client import CriuClient
from ctconsole.errors import CtError
from ctconsole.migrate import transport
from ctconsole.proto import agent_pb2
from tests import support_hosts
from tests.integration.test_security_attacks import Driver
from tests.integration.test_transport import connect_as_nobody
from tests.support import assert_continuous, spawn_counter
from tests.support_hosts import NetnsHost, NsContainer, container_inits, ctenv, run_cli, sh, veth_rules

nshost, nsct = support_hosts.nshost, support_hosts.nsct  # fixtures

pytestmark = pytest.mark.usefixtures("needs_root")


def listeners(pids: set[int], netns: str = "") -> list[str]:
    """Listening sockets (any family) held by ``pids``, as ``ss`` shows them."""
    argv = ["ss", "-Hlnp"]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False).stdout
    return [ln for ln in out.splitlines() if not ln.startswith("nl") and any(f"pid={p}," in ln for p in pids)]


def criu_pids() -> set[int]:
    """Every running criu process (under the lab lock: ours)."""
    out = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if Path(f"/proc/{d}/comm").read_text().strip() == "criu":
                    out.add(int(d))
            except OSError:
                pass
    return out


def test_lazy_dump_serves_on_the_page_channel_only(criu_bin: str, workdir: Path) -> None:
    client = CriuClient(criu=criu_bin, timeout=60)
    w = spawn_counter(workdir)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    images = workdir / "images"
    images.mkdir(mode=0o700)
    result: dict[str, Any] = {}

    def dump() -> None:
        try:
            client.dump({"pid": w.pid, "lazy_pages": True}, images, ps_fd=ours.fileno())
            result["ok"] = True
        except CtError as exc:
            result["error"] = exc

    t = threading.Thread(target=dump)
    t.start()
    try:
        log = images / "dump.log"
        end = time.monotonic() + 60
        text = ""
        while time.monotonic() < end and t.is_alive():
            text = log.read_text(errors="replace") if log.exists() else ""
            if "Reusing ps socket" in text or " port\n" in text:  # ps socket, or a TCP port (the old way)
                break
            time.sleep(0.05)
        # the lazy page server is up and waits for requests: on our socket, listening nowhere
        assert "Reusing ps socket" in text, text[-2000:]
        dumping = {p for p in process.descendants(os.getpid()) if p in criu_pids()}
        assert dumping, "the dumping CRIU is ours"
        # (CRIU's own parasite control socket, abstract and named with a random run id, is the only
        # listener: it exists in every dump, stop-copy too, and serves no pages)
        assert [ln for ln in listeners(dumping) if "@/crtools-pr-" not in ln] == []
        assert not list(images.glob("lazy-ps.conf")), "the config file is not an image (it would be sent)"
        # a peer that speaks nonsense: the transfer fails and CRIU resumes the source
        theirs.sendall(b"\xff" * 64)
        t.join(60)
        assert not t.is_alive() and "error" in result, result
        assert process.alive(w.pid), "the source runs on"
        w.wait_ticks(5)
        assert_continuous(w.ticks())
    finally:
        theirs.close()
        t.join(60)
        ours.close()
        w.kill()


def test_agent_lazy_channel_is_root_only(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    d = Driver(ctenv(tmp_path))
    try:
        rep = d.call("prepare", agent_pb2.PrepareRequest(migration_id="pc1", lazy_pages=True))
        assert rep.WhichOneof("body") == "prepare", rep
        path = Path(rep.prepare.page_socket)
        assert path.name == "s" and (path.parent.stat().st_mode & 0o777) == 0o700
        agent_tree = {d.proc.pid, *process.descendants(d.proc.pid)}
        assert not [ln for ln in listeners(agent_tree) if not ln.startswith("u_str")], "no TCP/UDP listener"
        assert connect_as_nobody(path) == "PermissionError 13"
        link = transport.open_page_link(str(path))
        try:
            end = time.monotonic() + 10
            while path.parent.exists() and time.monotonic() < end:
                time.sleep(0.05)
            assert not path.parent.exists(), "the socket and its directory go once the console connected"
            rep = d.call("restore", agent_pb2.RestoreRequest(options_json="{}", lazy=True, lazy_address="127.0.0.1",
                                                             lazy_port=4242, timeout=5))
            assert rep.WhichOneof("body") == "error" and "never travel over TCP" in rep.error.message, rep
            # no images: the lazy-pages daemon gets the channel, fails, and everything is rolled back
            rep = d.call("restore", agent_pb2.RestoreRequest(options_json="{}", lazy=True, timeout=10), timeout=60)
            assert rep.WhichOneof("body") == "error", rep
            assert rep.error.code != "internal", rep.error
        finally:
            link.close()
    finally:
        err = d.close()
    assert "Traceback" not in err, err[-3000:]
    assert not list((tmp_path / "state" / "images").glob("*")), "images left behind"


def test_forced_post_copy_uses_the_page_channel_and_rolls_back(tmp_path: Path, nsct: NsContainer,
                                                               nshost: NetnsHost) -> None:
    """Post-copy forced past its self-test: the lazy transfer fails here, the source runs on, nothing listened."""
    rules = veth_rules(tmp_path, nshost.bridge, "cttr" + uuid.uuid4().hex[:6])
    env = ctenv(tmp_path, CTCONSOLE_FAULT="skip:selftest")
    seen: dict[str, list[Any]] = {"lazy_argv": [], "tcp": []}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            pids = criu_pids()
            for p in pids:
                try:
                    argv = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if b"lazy-pages" in argv and b"restore" not in argv and b"dump" not in argv:
                    seen["lazy_argv"].append([a.decode() for a in argv if a])
            if pids:
                for ns in ("", nshost.name):
                    seen["tcp"] += [ln for ln in listeners(pids, ns) if ln.startswith("tcp")]
            stop.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        rc, events, err = run_cli(["migrate", f"tree:{nsct.init_pid}", "--to", nshost.dest, "--rules", str(rules),
                                   "--strategy", "post-copy", "--timeout", "20", "--json"], env, timeout=300)
    finally:
        stop.set()
        sampler.join(30)
    assert rc == 1 and events[-1]["result"] == "rolled-back", (events[-1:], err[-1000:])
    assert events[-1]["details"]["strategy"] == "post-copy"
    assert any("over the page channel" in e.get("text", "") for e in events), "post-copy did not use the channel"
    assert seen["tcp"] == [], seen["tcp"]
    assert seen["lazy_argv"], "the destination's lazy-pages daemon was never seen"
    for argv in seen["lazy_argv"]:
        assert "--ps-socket" in argv and "--address" not in argv and "--port" not in argv, argv
    # the source runs on, once, no tick lost; the destination is clean
    nsct.wait_ticks(5, timeout=20)
    assert len(container_inits(nsct)) == 1
    assert_continuous(nsct.ticks())
    rules_now = sh("nsenter", "-t", str(container_inits(nsct)[0]), "-n", "iptables", "-S").stdout
    assert "CRIU" not in rules_now, rules_now
    assert nshost.pids() == [], "destination not cleaned"
