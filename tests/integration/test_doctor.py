"""`ctconsole doctor` tells the truth about this host, checked against CRIU's own CLI."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.criu


def _cli_ok(criu: str, feature: str) -> bool:
    return subprocess.run([criu, "check", "--feature", feature], capture_output=True).returncode == 0


def test_doctor_json_matches_criu_cli(criu_bin: str) -> None:
    res = subprocess.run([sys.executable, "-m", "ctconsole", "doctor", "--json", "--selftest", "skip"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout)
    version = subprocess.run([criu_bin, "--version"], capture_output=True, text=True).stdout
    assert f"Version: {d['criu_version']}" in version
    assert d["kernel"] == platform.release()
    assert d["check_ok"] is True
    # FEATURE_CHECK over RPC agrees with the CLI's own feature checks
    assert d["features"]["mem_track"] == _cli_ok(criu_bin, "mem_dirty_track")
    assert d["features"]["lazy_pages"] == _cli_ok(criu_bin, "uffd-noncoop")
    assert d["strategies"]["pre-copy"] == d["features"]["mem_track"]
    assert d["strategies"]["stop-copy"] is True


def test_doctor_table_is_readable(criu_bin: str) -> None:
    res = subprocess.run([sys.executable, "-m", "ctconsole", "doctor", "--selftest", "skip"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0
    assert "Traceback" not in res.stderr
    assert "pre-copy" in res.stdout and "version" in res.stdout


def test_doctor_with_a_missing_criu_fails_clearly(tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {"CTCONSOLE_CRIU": str(tmp_path / "no-criu"), "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, "-m", "ctconsole", "doctor", "--selftest", "skip"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 1
    assert "Traceback" not in res.stderr + res.stdout
    assert "criu not found" in res.stdout
