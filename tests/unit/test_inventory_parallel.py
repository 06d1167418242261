"""``inventory.scan_json``: the forked two-half build gives the same text as one process.

The containers are synthetic (``_build_for_init`` is replaced), so the test
checks the split, the merge order, ids made unique across the halves,
vanished containers and the fallback when the child fails, without root.
"""

from __future__ import annotations

import json
import os

import pytest

import ctconsole.inventory as inv
from ctconsole.model import NO_REMEDY, Container, External, FdRef, Process, SpecialFd


class _Reader:
    def resolve(self, wanted: set[int] | None = None, with_links: bool = False) -> None:
        return None


class FakeSnap:
    """Just what ``_rows_parallel`` calls before and around the build."""

    def __init__(self, inits: list[int], gone: set[int]) -> None:
        self.inits = inits
        self.gone = gone
        self.earlier_inits: list[int] = []

    def alive(self, pid: int) -> bool:
        return pid not in self.gone

    def subtree(self, pid: int) -> list[int]:
        return [pid, pid + 1, pid + 2][: 1 + pid % 3]

    def build_fd_index(self) -> None: ...

    def masters(self) -> list[object]:
        return []

    def host_netns(self) -> _Reader:
        return _Reader()

    def host_mounts(self) -> list[object]:
        return []

    def runc_states(self) -> dict[int, object]:
        return {}

    def same_pidns(self, pidns: int) -> list[int]:
        return []


def _container(init: int) -> Container:
    ext = External(reason="r", remedy=NO_REMEDY, holder=f"x[{init}]") if init % 2 else None
    return Container(
        id="dup" if init in (100, 3000) else f"c{init}",  # one id in both halves
        name=f"n{init}",
        runtime="namespaces",
        init_pid=init,
        processes=(Process(init, 1, 1, "sh", "sh", "S", 0, init, init),),
        fds=(SpecialFd(kind="io_uring", target="anon_inode:[io_uring]", holders=(FdRef(init, 3),), external=ext),),
    )


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeSnap:
    inits = [100 * k for k in range(1, 61)]
    snap = FakeSnap(inits, gone={700, 4000})

    def build(s: FakeSnap, init: int, full: bool) -> Container:
        if init in (1200, 4100):
            raise inv._Vanished  # exited while we looked at it
        return _container(init)

    monkeypatch.setattr(inv, "_build_for_init", build)
    return snap


def _serial(snap: FakeSnap) -> str:
    rows = inv._rows(snap, snap.inits, True, set())  # type: ignore[arg-type]
    return "[" + ",".join(t for _i, _id, t in rows) + "]"


def _parallel(snap: FakeSnap) -> str:
    rows = inv._rows_parallel(snap, snap.inits, True)  # type: ignore[arg-type]
    assert rows is not None
    return "[" + ",".join(t for _i, _id, t in rows) + "]"


def test_two_halves_give_the_one_process_text(fake: FakeSnap) -> None:
    serial = _serial(fake)
    assert _parallel(fake) == serial
    data = json.loads(serial)
    ids = [c["id"] for c in data]
    assert "dup" in ids and "dup@3000" in ids  # renamed as scan() renames a second claimant
    assert all(c["init_pid"] not in (700, 4000, 1200, 4100) for c in data)
    assert [c["init_pid"] for c in data] == sorted(c["init_pid"] for c in data)
    assert data[0]["external_count"] == 0 and data[0]["processes"][0]["pid"] == 100


def test_a_failing_child_is_replaced_by_building_its_half_here(fake: FakeSnap, monkeypatch: pytest.MonkeyPatch) -> None:
    serial = _serial(fake)
    parent = os.getpid()

    def build(s: FakeSnap, init: int, full: bool) -> Container:
        if os.getpid() != parent:
            raise RuntimeError("the child breaks")
        return _container(init)

    monkeypatch.setattr(inv, "_build_for_init", build)
    fake.gone = {700, 4000, 1200, 4100}  # the same containers missing, now seen as gone
    assert _parallel(fake) == serial


def test_json_row_is_the_list_row() -> None:
    c = _container(101)
    from ctconsole.model import json_default

    row = {**json_default(c), "external_count": len(c.externals())}
    assert inv._row_json(c) == json.dumps(row, separators=(",", ":"), default=json_default)
    assert json.loads(inv._row_json(c))["fds"][0]["reason"] == "r"
