"""What no rules author may ask of the destination: the refusals ``validate`` (and so ``compile``) apply.

Why here and not only in the destination's policy: a rules file is hostile
input (issue #10). Its author must not become root on the destination by
writing one: binding the host's ``/`` (or ``/proc/1/root``) into a container,
opening ``/etc/ld.so.preload`` for the container to write, running the
restored tasks ``apparmor:unconfined``, escaping the cgroup tree with ``..``,
or connecting the container to the docker socket. The destination's policy
(``ctconsole/agent/policy.py``) has the final word on its host; these checks
make sure ``validate`` says why, with file:line, and ``compile`` never
produces such options in the first place.

Every function returns the reason a value is refused, or None.
"""

from __future__ import annotations

import posixpath
import re

#: Host directories whose subtree is the host's own system: never a bind-mount source as a whole,
#: never a place for a file rule to create or append to.
SYSTEM_DIRS = ("/etc", "/boot", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/root",
               "/proc", "/sys", "/dev", "/var", "/var/lib", "/run", "/home")
#: Of those, the ones a file rule must never write into (the others hold logs, data, runtime files).
NO_FILES_UNDER = ("/etc", "/boot", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/root",
                  "/proc", "/sys", "/var/spool/cron", "/var/lib/ctconsole", "/etc/ctconsole")
#: /proc and /sys files that container runtimes bind over their own (lxcfs, libvirt_lxc's FUSE): the only
#: ones a mount rule may take from the host's /proc or /sys.
VIRTUALISED_PROC = ("/proc/cpuinfo", "/proc/diskstats", "/proc/loadavg", "/proc/meminfo", "/proc/stat",
                    "/proc/swaps", "/proc/uptime", "/proc/slabinfo", "/proc/vmstat",
                    "/sys/devices/system/cpu", "/sys/devices/system/cpu/online")
#: cgroup v1 controller hierarchies (and the names systemd gives its own): /sys/fs/cgroup/NAME is a whole tree.
CGROUP_V1_ROOTS = frozenset({"cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "net_cls", "net_prio",
                             "blkio", "perf_event", "hugetlb", "pids", "rdma", "misc", "systemd", "unified",
                             "elogind", "name=systemd"})
#: Device nodes a file rule may open (discarding sinks); any other /dev path is refused.
SAFE_DEV_FILES = ("/dev/null", "/dev/zero", "/dev/full")
#: Sockets that hand their client root on the host (container engines, init, the system bus).
ROOT_SOCKETS = ("/run/docker.sock", "/var/run/docker.sock", "/run/containerd/", "/run/crio/", "/run/podman/",
                "/run/libvirt/", "/var/run/libvirt/", "/run/lxd", "/var/lib/lxd/", "/run/systemd/private",
                "/run/dbus/system_bus_socket", "/var/run/dbus/system_bus_socket", "/run/snapd.socket")
#: SELinux types that are not confined at all (or are the host's own): never a restored container's.
UNCONFINED_TYPES = ("unconfined_t", "spc_t", "kernel_t", "init_t", "initrc_t", "unconfined_service_t",
                    "sysadm_t", "container_runtime_t", "virtd_t", "rpm_t", "setfiles_t", "unlabeled_t")
#: One sensitivity, optionally one category pair (s0, s0:c1,c2); ranges (s0-s15, c0.c1023) are clearance.
_LEVEL = re.compile(r"^s\d+(:c\d+(,c\d+)?)?$")
_APPARMOR_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*(//[A-Za-z0-9_.+-]+)?$")


def path_shape(value: str) -> str | None:
    """Why ``value`` is not an absolute, normalised path (no ``..``/``.``, ``//``, trailing ``/``)."""
    if not value.startswith("/"):
        return "is not an absolute path"
    if "\x00" in value:
        return "contains a NUL byte"
    parts = value.split("/")[1:]
    if any(p in ("..", ".") for p in parts):
        return "contains '.' or '..' (write the path it leads to)"
    if value != "/" and (value.endswith("/") or "//" in value):
        return f"is not normalised (write {posixpath.normpath(value)})"
    return None


def _under(path: str, roots: tuple[str, ...]) -> str | None:
    for r in roots:
        if r.endswith("/") and path.startswith(r):
            return r.rstrip("/")
        if path == r or path.startswith(r + "/"):
            return r
    return None


def _proc_sys_refusal(path: str) -> str | None:
    """Why a path in the host's /proc or /sys may not be bound: only what runtimes bind is allowed
    (the virtualised files, /proc/sys/net of the container's netns, a cgroup below a controller root)."""
    if path in VIRTUALISED_PROC or path.startswith("/proc/sys/net/") or path == "/proc/sys/net":
        return None
    if path.startswith("/sys/fs/cgroup/"):
        rel = path[len("/sys/fs/cgroup/"):].split("/")
        if len(rel) >= 2 or not set(rel[0].split(",")) <= CGROUP_V1_ROOTS:
            return None  # a cgroup below a v1 controller root, or a v2 cgroup: the container's own
        return "is a whole cgroup controller hierarchy of the host; bind the container's own cgroup below it"
    return ("is in the host's /proc or /sys (a window on the host kernel and its processes: /proc/1/root, "
            "/proc/sys/kernel/core_pattern...); only " + ", ".join(VIRTUALISED_PROC) +
            ", /proc/sys/net/... and cgroups below /sys/fs/cgroup/CONTROLLER may be bound")


def bind_source(path: str) -> str | None:
    """Why a host path may not be bind-mounted into a container (a mount rule's ``path``)."""
    why = path_shape(path)
    if why:
        return why
    if path == "/":
        return "is the host's root: binding it gives the container the whole host"
    if path in SYSTEM_DIRS:
        return f"is the host's {path} as a whole; bind the subdirectory the container needs"
    if _under(path, ("/proc", "/sys")):
        return _proc_sys_refusal(path)
    if path in ("/dev/mem", "/dev/kmem", "/dev/port") or path.startswith(("/dev/sd", "/dev/nvme", "/dev/vd",
                                                                          "/dev/dm-", "/dev/mapper/")):
        return "is a host memory or disk device; use a device rule for a block device"
    return None


def file_destination(path: str) -> str | None:
    """Why a ``file`` rule may not open (and create, and let the container write) ``path``."""
    why = path_shape(path)
    if why:
        return why
    if path in SAFE_DEV_FILES:
        return None
    if posixpath.dirname(path) == "/":
        return "is directly in the host's /; give a file in a directory made for it (e.g. /var/log/...)"
    root = _under(path, (*NO_FILES_UNDER, "/dev"))
    if root:
        return (f"is under {root}, which holds the host's own system files: a restored container must not "
                "write there (it could make itself root)")
    return None


def socket_path(path: str) -> str | None:
    """Why a ``unix`` rule may not connect the container to ``path``."""
    why = path_shape(path)
    if why:
        return why
    root = _under(path, ROOT_SOCKETS)
    if root:
        return f"is (under) {root}, a socket that gives its client root on the host"
    return None


def cgroup_root(path: str) -> str | None:
    """Why ``path`` is not a cgroup root a container may be restored under."""
    why = path_shape(path)
    if why:
        return why
    if path == "/":
        return "is the host's top cgroup: the container would escape every limit"
    return None


def selinux_context(ctx: str) -> str | None:
    """Why an SELinux context is not one a restored container may run (or mount) with."""
    parts = ctx.split(":", 3)
    if len(parts) < 3:
        return "expected user:role:type[:level]"
    t = parts[2]
    if t in UNCONFINED_TYPES or t.endswith("unconfined_t"):
        return f"type {t} is unconfined (or the host's own); a container keeps a confined type such as svirt_lxc_net_t"
    if len(parts) == 4 and not _LEVEL.match(parts[3]):
        return (f"level {parts[3]!r} is a range or clearance; give one sensitivity with at most one category pair "
                "(s0:c12,c345), or mcs = \"auto\"")
    return None


def apparmor_profile(name: str) -> str | None:
    """Why an AppArmor profile is not one a restored container may run under."""
    if not _APPARMOR_NAME.match(name):
        return "is not a profile name (letters, digits, '_', '.', '+', '-'; optionally //hat)"
    if "unconfined" in name.lower():
        return "is unconfined: the container would run without AppArmor confinement"
    return None


#: set-id, sticky, group-write and other-write bits: never on a file ctconsole creates for a container.
UNSAFE_PERM_BITS = 0o7022


def safe_perm(perm: int) -> int:
    """``perm`` without group/other write and set-id/sticky bits (-1, unknown, stays -1)."""
    return perm if perm < 0 else perm & 0o777 & ~UNSAFE_PERM_BITS
