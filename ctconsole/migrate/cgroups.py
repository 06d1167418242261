"""The cgroup root a same-kernel migration restores under, and its removal once nothing is in it.

Why: on one kernel the source and the destination share the cgroup tree, and
the engine restores LXC, libvirt-lxc and nspawn containers under a cgroup of
its own, ``/ctconsole-NAME-MIGRATION`` (engine ``_own_cgroup_root``: their
runtimes delete the source's cgroup, and what is in it, once the source is
gone). CRIU creates that cgroup in every hierarchy the container owned and
never removes it; nothing else knew it existed, so each migration left one
empty cgroup per hierarchy behind (245 on this machine after a day of lab
tests). Whoever ends the restored tree removes it here: the keeper, its
parent, once it has reaped the root; the engine after a rollback.

Only what a migration made is touched: a path of exactly the form
:func:`root_path` makes for *that* migration id, and only empty cgroups
(``rmdir`` on a cgroup with tasks or children fails with EBUSY, which is the
kernel's own guarantee that nothing running is touched).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import time
from pathlib import Path

#: the migration id's form (journal.new_id): 20261204-203341-506d8029
ID_RE = r"[0-9]{8}-[0-9]{6}-[0-9a-f]{8}"
NAME_MAX = 40


def root_path(name: str, migration_id: str) -> str:
    """``/ctconsole-NAME-ID``, one level below each hierarchy's root (see the engine for why)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:NAME_MAX]
    return f"/ctconsole-{safe}-{migration_id}"


def made_by(path: str, migration_id: str) -> bool:
    """True if ``path`` is the cgroup root migration ``migration_id`` made (and nothing else)."""
    if not re.fullmatch(ID_RE, migration_id):
        return False
    return re.fullmatch(rf"/ctconsole-[A-Za-z0-9_.-]{{1,{NAME_MAX}}}-{re.escape(migration_id)}", path) is not None


def mounts(mountinfo: str = "/proc/self/mountinfo") -> list[Path]:
    """Where this mount namespace sees each cgroup hierarchy (v1 and v2), deduplicated by hierarchy root."""
    out: list[Path] = []
    with contextlib.suppress(OSError):
        for line in Path(mountinfo).read_text().splitlines():
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            # a bind of a sub-cgroup (root field not "/") would not show the tree from its root
            if len(fields) >= 5 and rfields and rfields[0] in ("cgroup", "cgroup2") and fields[3] == "/":
                mp = Path(fields[4].replace("\\040", " "))
                if mp not in out:
                    out.append(mp)
    return out


def remove_empty(path: str, migration_id: str, wait: float = 0.0) -> list[str]:
    """Remove the empty cgroup ``path`` (and empty cgroups below it) in every hierarchy; what was removed.

    ``wait``: seconds to retry while the kernel still counts exiting tasks
    (EBUSY right after a kill). Never raises: a cgroup that stays busy stays.
    """
    if not made_by(path, migration_id):
        return []
    removed: list[str] = []
    end = time.monotonic() + wait
    for mp in mounts():
        top = mp / path.lstrip("/")
        if not top.is_dir():
            continue
        while True:
            busy = False
            # deepest first: a parent is removable only once its children are gone
            for d, _dirs, _files in sorted(os.walk(top), key=lambda x: -x[0].count("/")):
                try:
                    os.rmdir(d)
                    removed.append(d)
                except OSError as exc:
                    busy = busy or exc.errno == errno.EBUSY
            if not busy or time.monotonic() >= end:
                break
            time.sleep(0.05)
    return removed
