"""`auto` picks the best strategy both hosts support; explicit choices are refused before freezing."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from ctconsole.migrate.engine import Migration, MigrationRequest
from ctconsole.migrate.options import Refusal


def _choose(strategy: str, src_track: bool, dst_track: bool) -> str:
    m = Migration(MigrationRequest(ref="tree:1", dest="local", strategy=strategy), emit=lambda e: None)
    m.info = lambda *a, **k: None  # type: ignore[method-assign]
    local = SimpleNamespace(mem_track=src_track, lazy_pages=False)
    hello = SimpleNamespace(mem_track=dst_track, lazy_pages=False, lazy_selftest_ok=False, lazy_selftest_reason="")
    return m._choose_strategy(local, hello)


def test_auto_prefers_pre_copy_when_both_hosts_track_memory() -> None:
    assert _choose("auto", True, True) == "pre-copy"


@pytest.mark.parametrize("src, dst", [(False, False), (True, False), (False, True)])
def test_auto_falls_back_to_stop_copy(src: bool, dst: bool) -> None:
    assert _choose("auto", src, dst) == "stop-copy"


def test_explicit_pre_copy_without_tracking_is_refused() -> None:
    with pytest.raises(Refusal, match="soft-dirty"):
        _choose("pre-copy", True, False)


def test_post_copy_without_lazy_pages_is_refused() -> None:
    with pytest.raises(Refusal, match="lazy pages"):
        _choose("post-copy", True, True)
