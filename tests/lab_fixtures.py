"""Pytest fixtures and helpers for tests that need the lab containers.

Use from a test module::

    from tests import lab_fixtures
    from tests.lab_fixtures import lab_counter, wait_ticks

    lab = lab_fixtures.lab  # makes the session fixture visible in this module

    def test_something(lab):
        c = lab.containers["ctlab-ns"]
        wait_ticks(c, 3)

The session fixture brings the lab up once (``ctconsole.lab.up``) and takes it
down at the end, unless the lab was already running before the session (a
developer's ``ctconsole lab up``) or ``CTCONSOLE_LAB_KEEP=1`` is set; then it is
left up. Migration tests that kill or move a source call :func:`fresh` to get
a clean container back.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from collections.abc import Iterator

import pytest

from ctconsole import lab as labmod
from ctconsole.lab import LabContainer, LabHost, LabState


def _already_up() -> bool:
    try:
        st = labmod.status()
    except labmod.LabError:
        return False
    return any(c.init is not None for c in st.containers.values())


@pytest.fixture(scope="session")
def lab(needs_root: None) -> Iterator[LabState]:
    """The lab, up for the whole session; ``lab.containers[name]`` are :class:`LabContainer`."""
    keep = os.environ.get("CTCONSOLE_LAB_KEEP") == "1" or _already_up()
    rep = labmod.up()
    if rep.failed:
        print(f"lab: some containers did not start: {rep.failed}")
    yield labmod.status()
    if not keep:
        labmod.down()


def container(name: str) -> LabContainer:
    """The current record of a lab container (init re-found after a restore)."""
    full = labmod.resolve(name)
    c = labmod.status().containers.get(full)
    if c is None:
        raise AssertionError(f"{full} is not part of the lab")
    return c


def read_counter(c: LabContainer | str) -> list[int]:
    """All counter values the container wrote (one per 0.1 s tick)."""
    rec = container(c) if isinstance(c, str) else c
    return labmod.read_counter(rec.counter_file)


def lab_counter(c: LabContainer | str) -> int:
    """The last counter value (0 before the first tick)."""
    ticks = read_counter(c)
    return ticks[-1] if ticks else 0


def wait_ticks(c: LabContainer | str, n: int = 3, timeout: float = 10.0) -> int:
    """Wait for ``n`` new ticks; returns the last value. Fails if the counter stalls."""
    start = lab_counter(c)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        last = lab_counter(c)
        if last >= start + n:
            return last
        time.sleep(0.05)
    raise AssertionError(f"counter of {c if isinstance(c, str) else c.name} stalled at {lab_counter(c)}")


def assert_continuous(ticks: list[int]) -> None:
    """No gap and no repeat: what a correct checkpoint/restore preserves."""
    assert ticks, "no ticks written"
    for a, b in itertools.pairwise(ticks):
        assert b == a + 1, f"counter jumped from {a} to {b}"


def fresh(name: str) -> LabContainer:
    """Restart one lab container from scratch (kills anything restored from it); counter from 1."""
    c = labmod.restart(name)
    wait_ticks(c, 1)
    return c


@contextlib.contextmanager
def isolated_host(name: str, rate: str = "") -> Iterator[LabHost]:
    """An isolated lab host for the duration of a ``with`` block (removed after, even on failure).

    ``h.dest`` is the ``--to`` string (``ssh://root@198.18.N.2``); ``labmod.host_run(name, argv)``
    runs a command inside it and ``labmod.host_path(name, path)`` reads its files from here.
    A host of that name left over from an interrupted run is removed first.
    """
    if name in {h.name for h in labmod.host_list()}:
        labmod.host_del(name)
    h = labmod.host_add(name, isolated=True, rate=rate)
    try:
        yield h
    finally:
        labmod.host_del(name)
