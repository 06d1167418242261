"""Migrations to an isolated lab host over real ``ssh://``: storage carried, no listener anyone can use.

The destination shares only the kernel with us (``ctconsole lab host add f2i --isolated``): its own
netns, its own /var/lib, /run, /tmp (so the container's root is not there and nothing can be
hard-linked), its own sshd. A busybox container in its own pid+net+mnt namespaces, rooted in this
test's tmp dir, moves there with its root carried by rsync over the agent's SSH connection; the
pages go down the page channel (a unix socket in a root-only directory, reached through the SSH
master), which uid 65534 cannot connect to on either host. Failures (a failed frozen delta, the
link cut while frozen) roll back with the source running and leave the destination as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ctconsole import lab
from ctconsole import process as proc
from tests.support import assert_continuous
from tests.support_hosts import (
    CTCONSOLE,
    NsContainer,
    container_inits,
    ctenv,
    journal_records,
    kill_pid,
    start_ns_container,
    stop_ns_container,
    throwaway_sshd,
    veth_rules,
)

pytestmark = [pytest.mark.root, pytest.mark.lab]

HOST = "f2i"
NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
PROBE = ("import socket,sys\nfor p in sys.argv[1:]:\n s=socket.socket(socket.AF_UNIX)\n"
         " try:\n  s.connect(p); print(p, 'connected')\n"
         " except OSError as e: print(p, type(e).__name__)\n")


@pytest.fixture(scope="module")
def host(needs_root: None) -> Iterator[lab.LabHost]:
    os.environ.setdefault("CTCONSOLE_LAB_KEEP", "1")
    h = lab.host_add(HOST, isolated=True)
    yield h
    lab.host_del(HOST)


@pytest.fixture
def ct(tmp_path: Path, criu_bin: str) -> Iterator[NsContainer]:
    c = start_ns_container(tmp_path)
    yield c
    for pid in container_inits(c):
        kill_pid(pid)
    stop_ns_container(c)


def in_host(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return lab.host_run(HOST, argv)


def dest_state_leftovers() -> dict[str, list[str]]:
    """What the destination's state and run dirs hold that a finished migration must not leave."""
    out = {}
    for d in ("/var/lib/ctconsole/images", "/var/lib/ctconsole/work", "/var/lib/ctconsole/agent-pending",
              "/run/ctconsole/pages", "/run/ctconsole/agent-pending"):
        p = Path(lab.host_path(HOST, d))
        out[d] = sorted(os.listdir(p)) if p.is_dir() else []
    return out


def source_leftovers(tmp: Path) -> dict[str, list[str]]:
    out = {}
    for d in (tmp / "state" / "work", tmp / "state" / "images", tmp / "run" / "pages-out"):
        out[str(d)] = sorted(os.listdir(d)) if d.is_dir() else []
    return out


def listening_unix(ns_prefix: list[str]) -> dict[str, set[int]]:
    """Listening unix sockets (path -> owning pids) as ``ss`` shows them in a namespace."""
    res = subprocess.run([*ns_prefix, "ss", "-Hxlpn"], capture_output=True, text=True, timeout=30)
    out: dict[str, set[int]] = {}
    for ln in res.stdout.splitlines():
        parts = ln.split()
        if len(parts) < 5:
            continue
        path = parts[4]
        pids = {int(x.split("=")[1]) for x in ln.replace(")", ",").split(",") if x.startswith("pid=")}
        out.setdefault(path, set()).update(pids)
    return out


def listening_tcp(ns_prefix: list[str]) -> dict[str, set[int]]:
    res = subprocess.run([*ns_prefix, "ss", "-Htlpn"], capture_output=True, text=True, timeout=30)
    out: dict[str, set[int]] = {}
    for ln in res.stdout.splitlines():
        parts = ln.split()
        if len(parts) >= 4:
            pids = {int(x.split("=")[1]) for x in ln.replace(")", ",").split(",") if x.startswith("pid=")}
            out.setdefault(parts[3], set()).update(pids)
    return out


def migrate(ct: NsContainer, tmp: Path, host: lab.LabHost, *args: str, fault: str = "",
            during: Any = None) -> dict[str, Any]:
    rules = veth_rules(tmp, "ctlab0", "f2v" + uuid.uuid4().hex[:6])
    env = ctenv(tmp, **({"CTCONSOLE_FAULT": fault} if fault else {}))
    p = subprocess.Popen([*CTCONSOLE, "migrate", f"tree:{ct.init_pid}", "--to", host.dest, "--rules", str(rules),
                          "--json", "--timeout", "60", *args], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    seen: dict[str, Any] = {}
    if during is not None:
        seen = during(p)
    out, err = p.communicate(timeout=300)
    events = [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]
    assert events, err
    return {"done": events[-1], "events": events, "stderr": err, "rc": p.returncode, **seen}


def carried_root(tmp: Path) -> str:
    rec = next(r for r in journal_records(tmp) if r.get("kind") == "carry")
    return next(t["path"] for t in rec["targets"] if t["key"] == "root")


def dest_ticks(path: str) -> list[int]:
    try:
        return [int(x) for x in Path(lab.host_path(HOST, path + "/ticks")).read_text().split()]
    except (FileNotFoundError, ValueError):
        return []


def test_root_carried_no_listener_for_others(host: lab.LabHost, ct: NsContainer, tmp_path: Path) -> None:
    """The ns container moves with its root; while the page socket listens, uid 65534 gets nowhere."""
    start_ticks = len(ct.ticks())
    src_start = proc.start_time(ct.init_pid)
    src_before = listening_unix([])
    dst_prefix = lab.host_argv(HOST)
    dst_before = {**listening_unix(dst_prefix), **listening_tcp(dst_prefix)}

    def probe(p: subprocess.Popen[str]) -> dict[str, Any]:
        """At the page-link pause: everything new that listens, on both hosts, tried as uid 65534."""
        end = time.monotonic() + 60
        pages = Path(lab.host_path(HOST, "/run/ctconsole/pages"))
        while time.monotonic() < end and not (pages.is_dir() and any(pages.iterdir())):
            time.sleep(0.05)
        ours = {p.pid, *proc.descendants(p.pid)}
        src_new = sorted(a for a, pids in listening_unix([]).items() if pids & ours and a not in src_before)
        dst_unix = {a for a in listening_unix(dst_prefix) if a not in dst_before}
        dst_tcp = {a for a in listening_tcp(dst_prefix) if a not in dst_before}
        src_tcp = sorted(a for a, pids in listening_tcp([]).items() if pids & ours)
        tried_src = subprocess.run([*NOBODY, "/usr/bin/python3", "-c", PROBE, *src_new], capture_output=True,
                                   text=True, timeout=30).stdout
        tried_dst = subprocess.run([*dst_prefix, *NOBODY, "/usr/bin/python3", "-c", PROBE, *sorted(dst_unix)],
                                   capture_output=True, text=True, timeout=30).stdout
        return {"src_new": src_new, "dst_unix": sorted(dst_unix), "dst_tcp": sorted(dst_tcp), "src_tcp": src_tcp,
                "tried_src": tried_src, "tried_dst": tried_dst}

    r = migrate(ct, tmp_path, host, fault="pause:page-link:3", during=probe)
    done = r["done"]
    assert done["result"] == "migrated", (done.get("message"), done.get("errors"), r["stderr"][-2000:])
    # what listened during the migration: unix sockets only, and uid 65534 reached none of them
    assert r["dst_tcp"] == [] and r["src_tcp"] == [], (r["dst_tcp"], r["src_tcp"])
    assert any(a.startswith("/run/ctconsole/pages/") for a in r["dst_unix"]), r["dst_unix"]
    assert not any(a.startswith("@") for a in [*r["dst_unix"], *r["src_new"]]), "abstract sockets have no perms"
    for out in (r["tried_src"], r["tried_dst"]):
        assert "connected" not in out, out
    assert r["tried_dst"].count("PermissionError") == len(r["dst_unix"]), r["tried_dst"]
    assert r["tried_src"].count("PermissionError") == len(r["src_new"]), r["tried_src"]
    # the root was carried into the destination's own storage dir; the counter goes on there
    root = carried_root(tmp_path)
    assert root.startswith("/var/lib/ctconsole/storage/")
    assert not Path(lab.host_path(HOST, str(ct.rootfs))).exists(), "the source path itself is not used there"
    end = time.monotonic() + 15
    while time.monotonic() < end and len(dest_ticks(root)) < start_ticks + 20:
        time.sleep(0.1)
    ticks = dest_ticks(root)
    assert len(ticks) >= start_ticks + 20, "the counter does not go on on the destination"
    assert_continuous(ticks)
    # the source is gone, both sides' state dirs are clean
    assert not proc.alive(ct.init_pid, src_start)
    kinds = [r["kind"] for r in journal_records(tmp_path)]
    assert "carried" in kinds and "carry" in kinds
    assert all(not v for v in dest_state_leftovers().values()), dest_state_leftovers()
    assert all(not v for v in source_leftovers(tmp_path).values()), source_leftovers(tmp_path)
    timeline = done["details"]["timeline"]
    assert timeline["storage-delta"] <= timeline["restored"], timeline
    # stop the copy there (its pids are real pids on this kernel)
    for pid in container_inits(ct):
        kill_pid(pid)


def dest_storage() -> list[str]:
    """Carried copies on the destination (earlier successful migrations keep theirs: they are in use)."""
    storage = Path(lab.host_path(HOST, "/var/lib/ctconsole/storage"))
    return sorted(os.listdir(storage)) if storage.is_dir() else []


def _assert_rolled_back(ct: NsContainer, tmp: Path, r: dict[str, Any], src_start: int,
                        storage_before: list[str], settle: float = 60) -> None:
    done = r["done"]
    assert done["result"] == "rolled-back", (done.get("message"), r["stderr"][-2000:])
    assert done["details"]["source"] == "running"
    assert proc.alive(ct.init_pid, src_start), "the source must run on"
    ct.wait_ticks(10)
    assert_continuous(ct.ticks())
    # the destination is as it was: no carried copy, no images, no page socket, no restored tree
    # (after a cut link the agent there cleans up when its sshd session learns the console is gone:
    # the console's FIN is retransmitted once the link is back, with TCP's backoff)
    end = time.monotonic() + settle
    while time.monotonic() < end:
        left = dest_state_leftovers()
        carried = [d for d in dest_storage() if d not in storage_before]
        if not any(left.values()) and not carried:
            break
        time.sleep(0.5)
    assert not any(left.values()) and not carried, (left, carried)
    assert len(container_inits(ct)) == 1


def test_failed_final_sync_rolls_back(host: lab.LabHost, ct: NsContainer, tmp_path: Path) -> None:
    src_start = proc.start_time(ct.init_pid)
    before = dest_storage()
    r = migrate(ct, tmp_path, host, fault="fail:final-sync")
    assert "injected failure at final-sync" in json.dumps(r["done"]), r["done"].get("message")
    _assert_rolled_back(ct, tmp_path, r, src_start, before)


def test_link_cut_while_frozen_rolls_back(host: lab.LabHost, ct: NsContainer, tmp_path: Path) -> None:
    """``ip link set down`` on the lab link inside post-dump: ssh dies, CRIU resumes the source."""
    src_start = proc.start_time(ct.init_pid)
    before = dest_storage()
    link = ["ip", *(["-n", host.src_netns] if host.src_netns else []), "link", "set", host.src_link]

    def cut(p: subprocess.Popen[str]) -> dict[str, Any]:
        end = time.monotonic() + 60
        while time.monotonic() < end:
            if any(rec.get("kind") == "phase" and rec.get("phase") == "transfer" for rec in journal_records(tmp_path)):
                break
            time.sleep(0.05)
        subprocess.run([*link, "down"], check=True)

        def restore_link() -> None:
            p.wait(timeout=300)
            subprocess.run([*link, "up"], check=False)

        threading.Thread(target=restore_link, daemon=True).start()
        return {}

    try:
        r = migrate(ct, tmp_path, host, fault="pause:transfer:2", during=cut)
    finally:
        subprocess.run([*link, "up"], check=False)
    _assert_rolled_back(ct, tmp_path, r, src_start, before, settle=240)


def test_there_and_back_again(host: lab.LabHost, ct: NsContainer, tmp_path: Path) -> None:
    """To the isolated host, then back: the console runs there, this host's sshd is the destination.

    The way back carries the live copy of the root (the one on the isolated host) into this host's
    agent storage: the original here is stale and is not used.
    """
    r = migrate(ct, tmp_path, host)
    assert r["done"]["result"] == "migrated", r["done"].get("message")
    there_pid = int(r["done"]["details"]["restored_pid"])  # the isolated host's pid (its own pid namespace)
    there_real = lab.host_real_pid(HOST, there_pid)  # the same process as this host numbers it
    assert there_real and there_real in container_inits(ct), (there_pid, there_real, container_inits(ct))
    there_start = proc.start_time(there_real)
    there_root = carried_root(tmp_path)
    # keys and known_hosts where the isolated host can read them (it sees this tree read-only, not /tmp)
    shared = Path(tempfile.mkdtemp(prefix="ctc-f2-back-", dir="/var/cache"))
    try:
        with throwaway_sshd(shared, host.src_address, edge_netns=host.src_netns) as sshd:
            rules = shared / "back.toml"
            rules.write_text('version = 1\n[[container]]\nmatch = { name = "*" }\n[[container.rule]]\n'
                             f'kind = "veth"\ninterface = "eth0"\nhost_name = "f2b{uuid.uuid4().hex[:6]}"\n')
            env = [f"{k}={v}" for k, v in sshd.env.items()
                   if k in ("CTCONSOLE_REMOTE_CMD", "CTCONSOLE_SSH_OPTS", "PYTHONPATH")]
            back = lab.host_run(HOST, ["env", *env, sys.executable, "-m", "ctconsole", "migrate", f"tree:{there_pid}",
                                       "--to", f"ssh://root@{host.src_address}:{sshd.port}", "--rules", str(rules),
                                       "--json"], timeout=300)
            events = [json.loads(ln) for ln in back.stdout.splitlines() if ln.startswith("{")]
            assert events and events[-1]["result"] == "migrated", (events[-1:], back.stderr[-2000:])
            home_pid = int(events[-1]["details"]["restored_pid"])
            assert not proc.alive(there_real, there_start), "the copy on the isolated host is gone"
            storage_here = sshd.remote_state / "storage"
            (home_root,) = [p / "0" for p in storage_here.iterdir()]
            before = len(dest_ticks(there_root))
            end = time.monotonic() + 15
            ticks: list[int] = []
            while time.monotonic() < end:
                with contextlib.suppress(FileNotFoundError, ValueError):
                    ticks = [int(x) for x in (home_root / "ticks").read_text().split()]
                if len(ticks) >= before + 20:
                    break
                time.sleep(0.1)
            assert len(ticks) >= before + 20, "the counter does not go on back here"
            assert_continuous(ticks)
            kill_pid(home_pid)
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_runs_are_independent(host: lab.LabHost) -> None:
    """The module's host still answers over plain ssh after the failures above (the link is up again)."""
    res = subprocess.run(["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", f"root@{host.address}", "true"],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr
    with contextlib.suppress(Exception):
        sys.stdout.flush()


def test_check_judges_the_carried_root_where_it_will_be(host: lab.LabHost, ct: NsContainer, tmp_path: Path) -> None:
    """`check --to` an isolated host: the container's root does not exist there yet (migrate carries it),
    so the destination's policy is asked about the place the copy will go, as migrate asks it after the
    carry; the check used to block on "container root refused: ...: No such file or directory"."""
    rules = veth_rules(tmp_path, "ctlab0", "f2c" + uuid.uuid4().hex[:6])
    p = subprocess.run([*CTCONSOLE, "check", f"tree:{ct.init_pid}", "--to", host.dest, "--rules", str(rules),
                        "--json"], env=ctenv(tmp_path), capture_output=True, text=True, timeout=120)
    report = json.loads(p.stdout)
    policy = [f for f in report["findings"] if f["rule"] == "dest-policy"]
    assert policy == [], policy
    storage = [f for f in report["findings"] if f["rule"] == "dest-storage"]
    assert storage and all(f["severity"] == "info" for f in storage), storage
    assert report["verdict"] in ("no-known-blockers", "feasible"), (report["verdict"], report["findings"])
