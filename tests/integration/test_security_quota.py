"""The destination's image quota holds while a page server writes, not only at restore time.

A namespaced container holding 32 MiB of memory is migrated (handover, pages
through the destination's page server: ``--copy-images`` so nothing is
linked) to a netns host whose policy allows 4 MiB of images. The agent
watches its images directory while its page server writes and stops that
page server (by pid, start time checked) once the quota is passed; the dump
fails, CRIU resumes the source, and the rollback says which policy key
stopped it. Before, the 32 MiB were all written and only the restore refused.
"""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from ctconsole.migrate import transport
from tests import support_hosts
from tests.support import assert_continuous
from tests.support_hosts import (
    LOOP,
    NetnsHost,
    NsContainer,
    container_inits,
    ctenv,
    kill_pid,
    launch_unshared,
    make_rootfs,
    run_cli,
    sh,
    stop_ns_container,
    veth_rules,
)

nshost = support_hosts.nshost  # fixture

pytestmark = pytest.mark.usefixtures("needs_root")

WORKLOAD = 32 << 20
QUOTA = 4 << 20


@pytest.fixture
def bigct(tmp_path: Path, criu_bin: str) -> Any:
    """The lab's namespaced counter, holding WORKLOAD bytes of non-zero memory in a shell variable."""
    r = make_rootfs(tmp_path)
    for app in ("head", "tr"):
        (r / "bin" / app).symlink_to("busybox")
    os.mknod(r / "dev" / "zero", 0o666 | 0o020000, os.makedev(1, 5))
    script = f"ctt-big-{uuid.uuid4().hex[:8]}.sh"
    hold = f"big=$(head -c {WORKLOAD} /dev/zero | tr '\\0' a); "
    (r / script).write_text(LOOP.replace("n=0;", hold + "n=0;", 1) + "\n")
    outer = (f"mount --make-rprivate /; mount --bind {r} {r}; cd {r}; "
             f"pivot_root . oldroot; exec /bin/busybox setsid /bin/busybox sh /{script}")
    launcher, init = launch_unshared(outer)
    host_veth = f"cttv{uuid.uuid4().hex[:6]}"
    sh("ip", "link", "add", host_veth, "type", "veth", "peer", "name", "eth0", "netns", str(init))
    sh("ip", "link", "set", host_veth, "up")
    c = NsContainer(launcher, init, r, host_veth, script)
    c.wait_ticks(3, timeout=60)
    yield c
    for pid in container_inits(c):
        kill_pid(pid)
    stop_ns_container(c)


def test_page_server_stops_at_the_image_quota(tmp_path: Path, bigct: NsContainer, nshost: NetnsHost) -> None:
    rss = int(Path(f"/proc/{bigct.init_pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    assert rss > 4 * QUOTA, "the workload holds far more memory than the quota"
    pdir = tmp_path / "policy"
    pdir.mkdir(mode=0o755)
    (pdir / "agent.toml").write_text(f"[images]\nmax_bytes = {QUOTA}\n")
    env = ctenv(tmp_path, CTCONSOLE_AGENT_POLICY=str(pdir / "agent.toml"))
    rules = veth_rules(tmp_path, nshost.bridge, "cttq" + uuid.uuid4().hex[:6])
    images = tmp_path / "state" / "images"
    peak = [0]
    stop = threading.Event()

    def sample() -> None:  # the most the destination's images dir ever held
        while not stop.is_set():
            if images.is_dir():
                peak[0] = max(peak[0], transport.tree_bytes(images))
            stop.wait(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        rc, events, err = run_cli(["migrate", f"tree:{bigct.init_pid}", "--to", nshost.dest, "--rules", str(rules),
                                   "--copy-images", "--json"], env, timeout=300)
    finally:
        stop.set()
        sampler.join(10)
    done = events[-1] if events else {}
    assert rc == 1 and done.get("result") == "rolled-back", (done, err[-2000:])
    assert "images.max_bytes" in done["message"], done["message"]
    assert done["details"]["source"] == "running"
    assert any("page server" in e.get("text", "") for e in events), "the pages went through the page server"
    # about the quota, not the workload (each file stops just past it; the watch adds up the files)
    assert 0 < peak[0] <= QUOTA + (2 << 20), peak[0]
    assert not list(images.glob("*")), "the images were removed"
    # the source keeps counting, once, no tick lost
    bigct.wait_ticks(10, timeout=30)
    assert len(container_inits(bigct)) == 1
    assert_continuous(bigct.ticks())
    assert nshost.pids() == [], "destination not cleaned"
