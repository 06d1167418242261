"""Pre-copy: when to stop iterating PRE_DUMP rounds, and where and with which options each round dumps.

Why apart from the engine: these are pure functions of the policy, the
round number and the dump's options, shared by the engine (which runs the
rounds on one ``criu swrk`` session, :meth:`Migration._precopy`), the
benchmarks and the tests; the destination mirrors the same directory layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class PrecopyPolicy:
    """When to stop iterating pre-copy rounds and do the final (frozen) dump.

    Stop after ``max_rounds``; or when a round wrote fewer than ``min_pages``
    (what is left is small enough to freeze for); or when the dirty set grows
    by more than ``max_growth`` times the previous round (the workload dirties
    memory faster than we copy it: more rounds would not converge).
    """

    max_rounds: int = 5
    min_pages: int = 1024
    max_growth: float = 1.0


def precopy_should_stop(policy: PrecopyPolicy, written: list[int]) -> tuple[bool, str]:
    """Decide after each pre-copy round (``written`` = pages written per round so far)."""
    if not written:
        return False, ""
    if len(written) >= policy.max_rounds:
        return True, f"reached {policy.max_rounds} rounds"
    if written[-1] < policy.min_pages:
        return True, f"last round wrote {written[-1]} pages (< {policy.min_pages})"
    if len(written) >= 2 and written[-2] > 0 and written[-1] / written[-2] > policy.max_growth:
        return True, f"not converging ({written[-2]} -> {written[-1]} pages)"
    return False, ""


#: pre-copy rounds live in IMAGES/pre/1, IMAGES/pre/2, ... on both sides; the final dump goes to IMAGES
PRECOPY_DIR = "pre"


def precopy_round_dir(images: Path, k: int) -> Path:
    """Where PRE_DUMP round ``k`` (1-based) writes, on the source and (mirrored) on the destination.

    Why inside the final images dir: the agent removes one directory on
    rollback and success, and ``parent`` links stay relative
    (``pre/k/parent -> ../k-1``, ``IMAGES/parent -> pre/N``), so the same
    tree resolves wherever it is copied.
    """
    return images / PRECOPY_DIR / str(k)


def precopy_round_opts(base: dict[str, Any], k: int, ps: dict[str, Any] | None = None) -> dict[str, Any]:
    """The PRE_DUMP options of round ``k``: the dump's own options, ``track_mem``, ``parent_img`` from round 2.

    ``ps`` (page-server mode) sends this round's pages to the destination
    page server started for it; otherwise they stay local and go over the
    agent channel. ``lazy_pages`` and a stale ``ps``/``parent_img`` from the
    base are dropped: they describe the final dump, not a round.
    """
    opts = {key: v for key, v in base.items() if key not in ("ps", "parent_img", "lazy_pages")}
    opts["track_mem"] = True
    if k > 1:
        opts["parent_img"] = f"../{k - 1}"
    if ps:
        opts["ps"] = dict(ps)
    return opts


def precopy_final_opts(base: dict[str, Any], rounds: int, ps: dict[str, Any] | None = None) -> dict[str, Any]:
    """The final DUMP after ``rounds`` pre-dumps: only pages dirtied since the last round are written."""
    opts = {key: v for key, v in base.items() if key not in ("ps", "parent_img", "lazy_pages")}
    opts["track_mem"] = True
    opts["parent_img"] = f"{PRECOPY_DIR}/{rounds}"
    if ps:
        opts["ps"] = dict(ps)
    return opts
