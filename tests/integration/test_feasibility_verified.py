"""The default verdict never claims more than it knows (issue #11).

Static rules alone answer ``no-known-blockers`` with ``verified: false`` and
exit 3; only ``--trial`` (CRIU's own leave-running dump) turns it into
``feasible`` with ``verified: true`` and exit 0; a trial CRIU refuses makes it
``infeasible`` even where the static rules saw nothing. Real processes, real
CRIU; only the processes started here are killed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root, pytest.mark.criu]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def sleeper(needs_criu: str) -> Iterator[int]:
    proc = subprocess.Popen(
        ["sleep", "600"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )
    try:
        yield proc.pid
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def check(*args: str) -> tuple[int, dict[str, object]]:
    r = subprocess.run(
        [sys.executable, "-m", "ctconsole", "check", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
    )
    return r.returncode, json.loads(r.stdout)


def test_static_is_unverified_and_trial_verifies(sleeper: int) -> None:
    rc, doc = check(f"tree:{sleeper}")
    assert (rc, doc["verdict"], doc["verified"]) == (3, "no-known-blockers", False), doc
    assert "trial" not in doc
    rc, doc = check(f"tree:{sleeper}", "--trial")
    assert (rc, doc["verdict"], doc["verified"]) == (0, "feasible", True), doc
    assert doc["trial"]["ok"] is True  # type: ignore[index]
    os.kill(sleeper, 0)  # the trial left it running


def test_refused_trial_is_infeasible_and_unverified(sleeper: int) -> None:
    """A tree CRIU cannot seize (we trace it): the trial fails, the verdict is infeasible and
    nothing is marked verified."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.ptrace(0x4206, sleeper, None, None) == 0  # PTRACE_SEIZE: we are its tracer now
    rc, doc = check(f"tree:{sleeper}", "--trial")
    assert (rc, doc["verdict"], doc["verified"]) == (1, "infeasible", False), doc
    assert doc["trial"]["ok"] is False  # type: ignore[index]
