"""The container's mounts, and which of them CRIU cannot recreate by itself (digest §3.6).

Why these rules: CRIU recreates a bind mount by binding from another mount
of the same filesystem *inside* the dumped mount namespace. A bind whose
source exists only outside (host procfs/sysfs binds, host directories, a
libvirt FUSE file) fails with "doesn't have a proper root mount" unless it is
declared external (``mnt[MOUNTPOINT]:KEY`` on dump, ``mnt[KEY]:PATH`` on
restore). FUSE is always external: its server is a process outside.
"""

from __future__ import annotations

from ctconsole.inventory.procfs import MountInfo
from ctconsole.model import External, Mount

#: filesystems CRIU mounts afresh when the mount shows the fs root (root field "/")
AUTO_FS = frozenset(
    {
        "proc",
        "sysfs",
        "devtmpfs",
        "binfmt_misc",
        "tmpfs",
        "devpts",
        "simfs",
        "pstore",
        "mqueue",
        "securityfs",
        "fusectl",
        "debugfs",
        "tracefs",
        "cgroup",
        "cgroup2",
        "aufs",
        "overlay",
        "autofs",
        "bpf",
        "nsfs",
    }
)


def _contains(outer: str, inner: str) -> bool:
    return outer == "/" or inner == outer or inner.startswith(outer.rstrip("/") + "/")


def _mount_remedy(mountpoint: str, host_path: str = "") -> str:
    key = mountpoint.strip("/").replace("/", "-") or "root"
    return (
        f"remap rule `mount` (CRIU external mnt[{mountpoint}]:{key} on dump, "
        f"mnt[{key}]:{host_path or 'HOST_PATH'} on restore)"
    )


def host_path(m: MountInfo, host_mounts: list[MountInfo]) -> str:
    """Where the bind's source is visible on the host: a host mount of the same fs containing its root."""
    for hm in host_mounts:
        if (hm.major, hm.minor) == (m.major, m.minor) and _contains(hm.root, m.root):
            rel = m.root[len(hm.root.rstrip("/")) :] if hm.root != "/" else m.root
            return hm.mountpoint.rstrip("/") + rel if rel != "/" else hm.mountpoint
    return ""


def build(
    mounts: list[MountInfo],
    fuse_servers: dict[tuple[int, int], str] | None = None,
    host_mounts: list[MountInfo] | None = None,
) -> list[Mount]:
    """Mount items for one mount namespace (the container's own), in mountinfo order.

    ``host_mounts`` (ctconsole's own mountinfo) lets remedies name the host
    path a bind comes from, so the suggested ``mnt[KEY]:PATH`` is complete.
    """
    fuse_servers = fuse_servers or {}
    host_mounts = host_mounts or []
    if not mounts:
        return []
    ids = {m.mount_id for m in mounts}
    # the namespace root: the mount whose parent is not in this table (shown as "/")
    ns_root = next((m for m in mounts if m.parent_id not in ids), mounts[0])
    # candidate bind sources by filesystem (dev), in table order: the search below runs for
    # every bind, and a linear scan of the whole table each time was quadratic per container
    by_dev: dict[tuple[int, int], list[tuple[int, MountInfo]]] = {}
    for j, o in enumerate(mounts):
        by_dev.setdefault((o.major, o.minor), []).append((j, o))
    out = []
    for i, m in enumerate(mounts):
        ext = None
        server = ""
        if m is ns_root:
            pass  # restored from --root; never external
        elif m.fstype == "fuse" or m.fstype.startswith("fuse."):
            server = fuse_servers.get((m.major, m.minor), "")
            served = f"served by {server} outside the container" if server else "served by a FUSE daemon"
            ext = External(
                reason=f"FUSE mount {m.mountpoint} ({m.fstype} {m.source}) {served}; CRIU cannot dump FUSE",
                remedy=_mount_remedy(m.mountpoint),
                holder=server,
            )
        elif m.root != "/" or m.fstype not in AUTO_FS:
            # a bind (or a disk fs): is there a mount of the same fs inside whose root contains it?
            source = next(
                (
                    o
                    for j, o in by_dev[(m.major, m.minor)]
                    if o is not m and _contains(o.root, m.root) and (o.root != m.root or j < i)
                ),
                None,
            )
            if source is None:
                if m.root == "/":
                    ext = External(
                        reason=f"{m.mountpoint} is a {m.fstype} filesystem ({m.source}, dev "
                        f"{m.major}:{m.minor}) CRIU does not mount by itself",
                        remedy=f"remap rule `device` (CRIU external dev[{m.major}/{m.minor}]:NAME on dump, "
                        "dev[NAME]:/dev/PATH on restore) or enable_fs",
                    )
                elif m.fstype in ("proc", "sysfs"):
                    ext = External(
                        reason=f"{m.mountpoint} is a bind of the host's {m.fstype} ({m.root}), which is "
                        "not mounted in the container",
                        remedy=_mount_remedy(m.mountpoint, host_path(m, host_mounts)),
                    )
                else:
                    ext = External(
                        reason=f"{m.mountpoint} is a bind mount of {m.root} ({m.fstype} {m.major}:{m.minor}) "
                        "from outside the container's mounts",
                        remedy=_mount_remedy(m.mountpoint, host_path(m, host_mounts)),
                    )
        out.append(
            Mount(
                mount_id=m.mount_id,
                parent_id=m.parent_id,
                mountpoint=m.mountpoint,
                root=m.root,
                fstype=m.fstype,
                source=m.source,
                major=m.major,
                minor=m.minor,
                options=m.options,
                propagation=m.propagation,
                fuse_server=server,
                external=ext,
            )
        )
    return out
