"""SELinux MCS category pairs for restored containers.

Why: sVirt-style isolation gives each container a unique pair of categories
(``s0:c12,c345``). A restored container must not reuse a pair that another
container or process on the destination already runs with, or the two could
read each other's files. ``mcs = "auto"`` allocates a pair that no process on
this host uses (scanning ``/proc/*/attr/current``); an explicit pair is
checked against the same scan by the validator.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

MAX_CATEGORY = 1023  # c0..c1023, the usual MCS policy range

_PAIR = re.compile(r"^s(\d+):c(\d+),c(\d+)$")


def parse_level(level: str) -> tuple[int, int] | None:
    """``s0:c1,c2`` -> ``(1, 2)`` (sorted); anything else (ranges, single categories) -> None."""
    m = _PAIR.match(level.strip())
    if not m:
        return None
    a, b = int(m.group(2)), int(m.group(3))
    if a == b or max(a, b) > MAX_CATEGORY:
        return None
    return (min(a, b), max(a, b))


def level_of(context: str) -> str:
    """The MLS/MCS level of an SELinux context (``u:r:t:s0:c1,c2`` -> ``s0:c1,c2``), "" if none."""
    parts = context.strip().rstrip("\x00").split(":", 3)
    return parts[3] if len(parts) == 4 else ""


def with_level(context: str, level: str) -> str:
    """Replace (or add) the level of an SELinux context."""
    parts = context.split(":", 3)
    return ":".join([*parts[:3], level]) if len(parts) >= 3 else context


def used_pairs(proc_root: str | Path = "/proc") -> set[tuple[int, int]]:
    """Category pairs in use by any process on this host (unreadable entries are skipped)."""
    used: set[tuple[int, int]] = set()
    root = Path(proc_root)
    try:
        entries = os.listdir(root)
    except OSError:
        return used
    for name in entries:
        if not name.isdigit():
            continue
        try:
            ctx = (root / name / "attr" / "current").read_text()
        except (OSError, UnicodeDecodeError):
            continue
        pair = parse_level(level_of(ctx))
        if pair is not None:
            used.add(pair)
    return used


def allocate(used: set[tuple[int, int]], rng: random.Random | None = None, sensitivity: int = 0) -> str:
    """A fresh ``sN:cX,cY`` not in ``used``; random like libvirt's allocator, so retries spread out."""
    rng = rng or random.SystemRandom()
    total = (MAX_CATEGORY + 1) * MAX_CATEGORY // 2
    if len(used) >= total:
        raise RuntimeError("every MCS category pair is in use")
    while True:
        a, b = rng.randrange(MAX_CATEGORY + 1), rng.randrange(MAX_CATEGORY + 1)
        if a == b:
            continue
        pair = (min(a, b), max(a, b))
        if pair not in used:
            return f"s{sensitivity}:c{pair[0]},c{pair[1]}"
