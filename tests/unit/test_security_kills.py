"""The page channel kills its page server by pid only while that pid is still the page server.

Why: ``PagePort.stop`` (rollback, end of session) used to SIGKILL ``self.pid``
as it was, the one kill on the destination without the start-time check every
other kill has (docs/security.md, "Every kill ... checks the process start
time"). A stranger under a reused pid must survive it.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from ctconsole import process
from ctconsole.migrate import transport


def test_page_port_stop_never_kills_a_reused_pid() -> None:
    stranger = subprocess.Popen(["sleep", "30"])
    try:
        port = transport.PagePort("sec-kill")
        # what stop() meets when its page server is gone and the pid now belongs to someone else
        port.pid, port.pid_start = stranger.pid, process.start_time(stranger.pid) - 1
        assert port.stop() == []
        assert stranger.poll() is None, "a process that merely reused the pid was killed"
        # the page server itself (same pid, same start time) is stopped
        port.pid, port.pid_start = stranger.pid, process.start_time(stranger.pid)
        assert port.stop() == [f"stopped page server {stranger.pid}"]
        assert stranger.wait(5) == -signal.SIGKILL
    finally:
        stranger.kill()
        stranger.wait()


def test_an_ssh_client_that_cannot_run_is_a_page_channel_error(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """``ssh -O forward`` that cannot start (or hangs) is the page channel's TransportError, not a stray OSError."""
    monkeypatch.setenv("CTCONSOLE_RUN_DIR", str(tmp_path / "run"))
    mux = transport.SshMux([str(tmp_path / "no-such-ssh")], tmp_path / "ctl", ["--", "host"])
    assert mux.ctl("-O", "check").returncode == 255
    with pytest.raises(transport.TransportError, match="cannot forward the page channel"):
        transport.open_page_link("/run/x/s", mux, name="sec-mux")
    assert not list((tmp_path / "run" / "pages-out").iterdir()), "the forward's directory is removed"
