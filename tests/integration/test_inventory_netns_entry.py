"""The scanner enters a container's network namespace through its init, not through its lowest pid.

Why: after pid wrap-around a short-lived child (ctlab-ns's counter forks a ``sleep`` every 0.1 s) has a
lower pid than the init; entering the netns through it failed whenever it exited first, the netns's
sockets went unread, an external unix socket lost its peer (5% of scans of ctlab-ns), its ``unix`` rule
compiled to nothing and CRIU refused the dump ("External socket is used") although the check was a go.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from ctconsole.inventory import netlink, resolve


def _child_below(init: subprocess.Popen[str]) -> int:
    """Make ``init`` fork a child whose pid is lower than its own (ns_last_pid), return the child's pid."""
    last = Path("/proc/sys/kernel/ns_last_pid")
    for low in range(300, min(init.pid, 30000), 97):
        if any(os.path.exists(f"/proc/{p}") for p in range(low, low + 3)):
            continue
        last.write_text(str(low))
        assert init.stdin is not None and init.stdout is not None
        init.stdin.write("go\n")
        init.stdin.flush()
        child = int(init.stdout.readline())
        if child < init.pid:
            return child
    pytest.skip("could not place a child below its parent's pid (a busy host took the pids)")


def test_netns_entered_through_the_init(needs_root: None, monkeypatch: pytest.MonkeyPatch) -> None:
    script = "while read x; do sleep 300 & echo $!; done"
    init = subprocess.Popen(["unshare", "--net", "sh", "-c", script], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    child = 0
    try:
        child = _child_below(init)
        entered: list[str | None] = []
        real = netlink.NetnsReader.__init__

        def spy(self: netlink.NetnsReader, ns_path: str | None) -> None:
            entered.append(ns_path)
            real(self, ns_path)

        monkeypatch.setattr(netlink.NetnsReader, "__init__", spy)
        c = resolve(f"tree:{init.pid}")
        assert {p.pid for p in c.processes} >= {init.pid, child}
        own = os.readlink(f"/proc/{init.pid}/ns/net")
        assert own != os.readlink("/proc/self/ns/net")
        assert f"/proc/{init.pid}/ns/net" in entered and f"/proc/{child}/ns/net" not in entered, entered
    finally:
        if child:
            os.kill(child, 9)  # the sleep this test's shell started
        init.kill()
        init.wait()
