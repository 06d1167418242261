"""Fixtures for the console tests: a deterministic fake backend and a private config dir."""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path

import pytest

from ctconsole.ui.app import CtConsoleApp, create_app
from ctconsole.ui.fake import FakeBackend


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run ``async def`` tests with asyncio.run (no async plugin is a dependency)."""
    if inspect.iscoroutinefunction(pyfuncitem.obj):
        args = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
        asyncio.run(pyfuncitem.obj(**args))
        return True
    return None


@pytest.fixture(autouse=True)
def _private_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Never read or write the operator's config from a test."""
    cfg = tmp_path / "config"
    monkeypatch.setenv("CTCONSOLE_CONFIG_DIR", str(cfg))
    monkeypatch.delenv("CTCONSOLE_FAKE", raising=False)
    return cfg


@pytest.fixture
def fake() -> FakeBackend:
    return FakeBackend(n_containers=12, speed=200.0)


@pytest.fixture
def make_app(fake: FakeBackend):
    def _make(**kw: object) -> CtConsoleApp:
        kw.setdefault("backend", fake)
        kw.setdefault("refresh_interval", 0)  # no background re-scan unless a test asks
        kw.setdefault("remember", False)
        return create_app(**kw)  # type: ignore[arg-type]

    return _make
