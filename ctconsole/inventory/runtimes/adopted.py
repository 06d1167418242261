"""Containers ctconsole restored on this host: their runtime, id and name from the adoption record.

Why: after a migration the restored tree has lost what named it on the source
(an LXC monitor, a libvirt_lxc controller); the destination writes
``RUN/adopted/ID.json`` (ctconsole/migrate/adopt.py) with the runtime, id,
name and the restored init's pid *and start time*, so a reused pid is never
taken for the container. ``note`` says when the runtime does not manage it
here; ``show`` prints it with how to stop it and move it back.
"""

from __future__ import annotations

import json
import os

from ctconsole import config
from ctconsole.inventory.procfs import ProcStat
from ctconsole.inventory.runtimes import RuntimeInfo

MAX_RECORD = 64 << 10


def record_dir() -> str:
    return str(config.run_dir() / "adopted")


def records(stats: dict[int, ProcStat], directory: str | None = None) -> dict[int, RuntimeInfo]:
    """init pid -> RuntimeInfo for every adoption record whose pid is alive with the recorded start time."""
    d = directory or record_dir()
    try:
        names = os.listdir(d)
    except OSError:
        return {}
    out: dict[int, RuntimeInfo] = {}
    for n in names:
        if not n.endswith(".json"):
            continue
        try:
            with open(os.path.join(d, n)) as f:
                rec = json.loads(f.read(MAX_RECORD))
            pid, start = int(rec["pid"]), int(rec["start"])
            st = stats.get(pid)
            if st is None or st.start_time != start:
                continue
            note = str(rec.get("note") or "")
            if note and rec.get("stop"):
                note += f". To stop it: {rec['stop']}. To move it back: {rec.get('back', '')}"
            out[pid] = RuntimeInfo(str(rec["runtime"]), str(rec["id"]), str(rec["name"]), note=note)
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out
