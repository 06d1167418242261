"""Busybox root filesystems for the lab containers.

Why busybox-static: one self-contained binary gives a shell, ``sleep``, ``ip``,
``httpd`` and ``mount`` inside every container, so the containers depend on no
host library path (LXC's default /lib bind mounts are what breaks CRIU's
mount-v2 restore, see docs/lab.md). A base tree is built once and copied per
container (``cp -a`` of ~400 symlinks and one binary is a few milliseconds).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ctconsole.lab.proc import LabError, run

BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
DIRS = (
    "bin",
    "sbin",
    "usr/bin",
    "usr/sbin",
    "proc",
    "sys",
    "dev",
    "dev/pts",
    "tmp",
    "etc",
    "oldroot",
    "lab",
    "www",
    "share",
    "run",
    "var/log",
    "root",
)
# (name, major, minor): the devices the workloads open; CRIU dumps fds on these natively
DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0))

# Path of the counter inside every container; tests read ROOTFS/COUNTER_REL on the host.
COUNTER = "/lab/counter"
COUNTER_REL = COUNTER.lstrip("/")
COUNTER_INTERVAL = "0.1"

# The workload: append an increasing counter every 0.1 s through one open fd.
# The value lives only in the shell's memory, so a restore that lost or replayed
# memory shows up as a gap or a repeat in the file.
COUNTER_SH = f"""# ctconsole lab workload: one line per tick, n = previous + 1
exec 5>>{COUNTER}
n=0
while :; do
  n=$((n+1))
  echo $n >&5
  sleep {COUNTER_INTERVAL}
done
"""


def busybox_path() -> str:
    for p in BUSYBOX_CANDIDATES:
        if os.path.isfile(p) and not os.path.islink(p):
            return p
    raise LabError("busybox is not installed", ["install busybox-static (scripts/setup does)"])


def _build_base(base: Path) -> None:
    tmp = base.with_name(base.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for d in DIRS:
        (tmp / d).mkdir(parents=True, exist_ok=True)
    os.chmod(tmp / "tmp", 0o1777)
    shutil.copy2(busybox_path(), tmp / "bin/busybox")
    os.chmod(tmp / "bin/busybox", 0o755)
    run(["chroot", str(tmp), "/bin/busybox", "--install", "-s", "/bin"])
    for name, major, minor in DEVICES:
        node = tmp / "dev" / name
        os.mknod(node, 0o666 | 0o020000, os.makedev(major, minor))
        os.chmod(node, 0o666)
    (tmp / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (tmp / "etc/group").write_text("root:x:0:\n")
    (tmp / "etc/hostname").write_text("ctlab\n")
    (tmp / "www/index.html").write_text("ctconsole lab\n")
    (tmp / "lab/counter.sh").write_text(COUNTER_SH)
    os.rename(tmp, base)


def ensure_base(root: Path) -> Path:
    """The shared base tree (built on first use; later calls return at once)."""
    base = root / "base-rootfs"
    if not (base / "bin/busybox").is_file():
        remove_tree(base)
        _build_base(base)
    return base


def make_rootfs(root: Path, dest: Path) -> Path:
    """A fresh private copy of the base tree at ``dest`` (replacing what was there)."""
    base = ensure_base(root)
    remove_tree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    run(["cp", "-a", str(base), str(dest)])
    return dest


def write_file(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)


def mounts_under(path: Path) -> list[str]:
    """Mount points in our mount namespace at or below ``path``."""
    prefix = str(path.resolve()).rstrip("/") + "/"
    out: list[str] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].replace("\\040", " ")
            if mp == prefix[:-1] or mp.startswith(prefix):
                out.append(mp)
    return out


def remove_tree(path: Path) -> None:
    """Delete a directory the lab made, refusing when something is mounted inside it.

    Why: a leftover bind mount of a host directory under a rootfs would make
    ``rmtree`` delete the host's files; the lab only deletes plain trees.
    """
    if not path.exists() and not path.is_symlink():
        return
    if mounts := mounts_under(path):
        for mp in sorted(mounts, key=len, reverse=True):
            run(["umount", "-l", mp], check=False)
        if mounts := mounts_under(path):
            raise LabError(f"not deleting {path}: still mounted there: {', '.join(mounts)}")
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
