"""Shared fixtures.

Tests that need root or a working CRIU use the ``needs_root`` / ``needs_criu``
fixtures. On a developer laptop without them they skip; with
``CTCONSOLE_STRICT=1`` (set by ``make test`` and CI) they fail instead, so a
CI run can never go green by skipping the real tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

STRICT = os.environ.get("CTCONSOLE_STRICT") == "1"


def _missing(what: str) -> None:
    if STRICT:
        pytest.fail(f"{what} (CTCONSOLE_STRICT=1 turns this skip into a failure)", pytrace=False)
    pytest.skip(what)


@pytest.fixture(scope="session")
def needs_root() -> None:
    if os.geteuid() != 0:
        _missing("needs root")


@pytest.fixture(scope="session")
def criu_bin(needs_root: None) -> str:
    from ctconsole.config import criu_binary

    path = criu_binary()
    if not shutil.which(path) and not Path(path).is_file():
        _missing("CRIU is not installed (run scripts/install-criu)")
    out = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
    ver = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Version:")), "")
    parts = [int(p) for p in ver.split(".")[:2] if p.isdigit()]
    if len(parts) < 2 or tuple(parts) < (4, 2):
        _missing(f"CRIU {ver or '?'} at {path} is older than 4.2")
    return path


@pytest.fixture(scope="session")
def needs_criu(criu_bin: str) -> str:
    return criu_bin


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A scratch directory CRIU can use (tmp_path is fine: root-owned, private)."""
    os.chmod(tmp_path, 0o700)
    return tmp_path
