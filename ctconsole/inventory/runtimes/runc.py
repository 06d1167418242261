"""runc (and docker, containerd, podman, which drive it): ``state.json`` under runc root dirs.

Why state files: runc exits after start, so the container init's parent is a
shim (containerd-shim, conmon) or pid 1; state.json maps ``init_process_pid``
to the container id and its rootfs. Docker's own name comes from
/var/lib/docker/containers/ID/config.v2.json when present.
"""

from __future__ import annotations

import glob
import json
import os

from ctconsole.inventory.runtimes import RuntimeInfo

ROOT_GLOBS = (
    "/run/runc",
    "/run/docker/runtime-runc/moby",
    "/run/containerd/runc/*",
    "/run/user/*/runc",
    "/run/runc-ctrs",
)


def _docker_name(cid: str) -> str:
    try:
        with open(f"/var/lib/docker/containers/{cid}/config.v2.json") as f:
            return str(json.load(f).get("Name", "")).lstrip("/")
    except (OSError, ValueError):
        return ""


def states(root_globs: tuple[str, ...] = ROOT_GLOBS) -> dict[int, RuntimeInfo]:
    """init pid -> RuntimeInfo for every runc container whose state.json we can read."""
    out: dict[int, RuntimeInfo] = {}
    for pattern in root_globs:
        for root in glob.glob(pattern):
            try:
                names = os.listdir(root)
            except OSError:
                continue
            for cid in names:
                try:
                    with open(os.path.join(root, cid, "state.json")) as f:
                        st = json.load(f)
                except (OSError, ValueError):
                    continue
                pid = int(st.get("init_process_pid") or 0)
                if pid <= 0:
                    continue
                rootfs = str((st.get("config") or {}).get("rootfs") or "")
                name = _docker_name(cid) if "moby" in root else ""
                out[pid] = RuntimeInfo("runc", str(st.get("id") or cid), name or str(st.get("id") or cid), 0, rootfs)
    return out


def find_state(cid: str, root_globs: tuple[str, ...] = ROOT_GLOBS) -> tuple[str, dict[str, object]] | None:
    """(runc root dir, parsed state.json) of container ``cid``, or None when no root has it.

    Why: a migration sends this to the destination, which rewrites it for the
    restored pid so runc there manages the container (ctconsole/migrate/adopt.py).
    """
    for pattern in root_globs:
        for root in glob.glob(pattern):
            try:
                with open(os.path.join(root, cid, "state.json")) as f:
                    st = json.load(f)
            except (OSError, ValueError):
                continue
            if isinstance(st, dict):
                return root, st
    return None
