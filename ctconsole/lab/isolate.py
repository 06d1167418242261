"""Inside a new mount namespace: make an isolated lab host's filesystem view, then become its sshd.

Run as ``nsenter --net=NETNS unshare --mount --pid --fork --propagation private
python -m ctconsole.lab.isolate DISK SSHD_DIR`` (see :mod:`ctconsole.lab.isolated`),
so this process is pid 1 of the host's own pid namespace and sshd, exec'ed last,
stays its init (it reaps what is orphaned there; killing it ends everything
inside). In this order, because each step needs what the previous one still shows:

1. unmount (lazily) everything below the directories that become private and
   every ``nsfs`` mount: copies of other namespaces' bind mounts would keep
   those namespaces alive as long as this host lives; a procfs of the new pid
   namespace on /proc (CRIU, ps and ``/proc/self`` must see the host's pids);
2. a tmpfs on /run, the host's ext4 disk image loop-mounted below it, and the
   sshd config and keys copied in - all before anything is read-only: the
   image is opened through a bind mount below /run, never through "/" (a loop
   device is a writer on the mount it was opened through, and "/" could then
   not be made read-only: EBUSY);
3. a sysfs of its own on /sys (mounted from inside its network namespace, so
   ``/sys/class/net`` lists the host's own links, as on a real machine: the
   destination's "does this veth name exist" check reads it), with the real
   host's mounts below /sys (the cgroup hierarchies, which CRIU restores
   through) bound in again; then remount every real filesystem read-only (per
   mount, so the real host is not affected); /dev stays as it is;
4. bind the image's subdirectories on /var/lib, /tmp, /var/tmp and /srv (so
   nothing there shares a filesystem with the real host: no hard link across),
   a tmpfs on /dev/shm, then ``exec sshd -D``: the sshd process holds the
   mount namespace for as long as the host exists.

One exception to "private": the Python environment and the ctconsole checkout
this runs from. When they live below a private directory (a CI clone under
/tmp, say), the host could not run ``ctconsole agent`` at all; they are held
by an ``O_PATH`` descriptor before step 1 and bound back, read-only, at the
same path after step 4 (a real destination has its own install there).

Stdlib only (plus util-linux): it must not depend on anything the private
mounts hide.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys

PSEUDO = {
    "proc", "sysfs", "devtmpfs", "devpts", "mqueue", "cgroup", "cgroup2", "nsfs", "securityfs", "debugfs",
    "tracefs", "bpf", "fusectl", "configfs", "pstore", "hugetlbfs", "binfmt_misc", "autofs", "efivarfs",
    "rpc_pipefs", "fuse.lxcfs",
}
KEEP_UNDER = ("/proc", "/sys", "/dev")
# private dir -> subdirectory of the disk image (/run is a tmpfs of its own)
DISK_DIRS = {"/var/lib": "var-lib", "/tmp": "tmp", "/var/tmp": "var-tmp", "/srv": "srv"}
STAGE = "/run/.ctlab-disk"
SYS_STAGE = "/run/.ctlab-sys"
IMG_DIR = "/run/.ctlab-img"
SSHD_RUN = "/run/ctlab-sshd"
MS_RDONLY, MS_REMOUNT, MS_BIND = 0x1, 0x20, 0x1000


def _unescape(path: str) -> str:
    return path.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def mounts() -> list[tuple[str, str]]:
    """(mount point, fs type) of every mount in this namespace, in mountinfo order."""
    out: list[tuple[str, str]] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            out.append((_unescape(left.split()[4]), right.split()[0]))
    return out


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def sh(*argv: str) -> None:
    cp = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if cp.returncode != 0:
        raise SystemExit(f"isolate: {' '.join(argv)} failed: {cp.stderr.strip()}")


def detach_private_and_nsfs() -> None:
    private = ("/run", *DISK_DIRS)
    doomed = [mp for mp, fs in mounts() if fs == "nsfs" or any(_under(mp, p) for p in private)]
    for mp in sorted(set(doomed), key=len, reverse=True):
        subprocess.run(["umount", "-l", mp], capture_output=True, check=False)


def own_proc() -> None:
    """A procfs of this pid namespace on /proc, when this process is the init of a new one."""
    if os.getpid() == 1:
        sh("mount", "-t", "proc", "-o", "nosuid,nodev,noexec", "proc", "/proc")


def remount_read_only() -> None:
    """Every real filesystem read-only, except our new /run (the disk is staged below it)."""
    for mp, fs in mounts():
        if fs in PSEUDO or any(_under(mp, k) for k in (*KEEP_UNDER, "/run")):
            continue
        sh("mount", "-o", "remount,bind,ro", mp)


def stage_private(disk: str, sshd_dir: str) -> None:
    """A tmpfs /run, the disk image mounted below it, sshd files copied (all before anything is read-only:
    a loop device over a file on a read-only mount would be read-only too)."""
    sh("mount", "-t", "tmpfs", "-o", "mode=0755,nosuid", "ctlab-run", "/run")
    for d in ("/run/sshd", "/run/lock", STAGE, SSHD_RUN):
        os.makedirs(d, mode=0o755, exist_ok=True)
    os.chmod(SSHD_RUN, 0o700)
    for name in os.listdir(sshd_dir):  # still the real host's /var/lib: copy before it is covered
        shutil.copy2(os.path.join(sshd_dir, name), os.path.join(SSHD_RUN, name))
    # the loop device keeps the image open for writing; opened through "/" that would make "/"
    # impossible to remount read-only (EBUSY: a writer on the mount), so open it through a bind
    os.makedirs(IMG_DIR, mode=0o700, exist_ok=True)
    sh("mount", "--bind", os.path.dirname(disk), IMG_DIR)
    sh("mount", "-o", "loop", os.path.join(IMG_DIR, os.path.basename(disk)), STAGE)


def own_sysfs() -> None:
    """A sysfs of this network namespace on /sys, keeping what is mounted below the old one.

    Without it ``/sys/class/net`` shows the real host's links (sysfs shows the
    netns of whoever mounted it): a restore's veth name would seem taken by
    the source's own veth. Each mount directly below /sys (cgroups, debugfs...)
    is bound recursively into the new one before it covers the old.
    """
    os.makedirs(SYS_STAGE, mode=0o755, exist_ok=True)
    sh("mount", "-t", "sysfs", "-o", "nosuid,nodev,noexec", "ctlab-sys", SYS_STAGE)
    below = sorted({mp for mp, _ in mounts() if mp.startswith("/sys/")})
    tops = [mp for mp in below if not any(mp != o and _under(mp, o) for o in below)]
    for mp in tops:
        target = SYS_STAGE + mp[len("/sys"):]
        if os.path.isdir(target):
            sh("mount", "--rbind", mp, target)
    sh("mount", "--move", SYS_STAGE, "/sys")
    os.rmdir(SYS_STAGE)


def private_filesystems() -> None:
    for target, sub in DISK_DIRS.items():
        src = os.path.join(STAGE, sub)
        os.makedirs(src, exist_ok=True)
        os.chmod(src, 0o1777 if target in ("/tmp", "/var/tmp") else 0o755)
        sh("mount", "--bind", src, target)
    for d in (STAGE, IMG_DIR):
        sh("umount", "-l", d)
        os.rmdir(d)
    if os.path.isdir("/dev/shm"):
        sh("mount", "-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "ctlab-shm", "/dev/shm")


def hold_own_install() -> dict[str, int]:
    """O_PATH descriptors of the venv and the checkout this runs from, when a private dir would hide them."""
    checkout = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    held: dict[str, int] = {}
    for path in sorted({os.path.realpath(sys.prefix), os.path.realpath(checkout)}):
        if any(_under(path, p) for p in ("/run", *DISK_DIRS)) and path not in held:
            held[path] = os.open(path, os.O_PATH | os.O_DIRECTORY)
    return held


def rebind_own_install(held: dict[str, int]) -> None:
    """Bind each held directory back at its path, read-only. Through mount(2) itself: mount(8)
    canonicalises ``/proc/self/fd/N`` to the path string, which now names the new, empty directory."""
    libc = ctypes.CDLL(None, use_errno=True)
    for path, fd in held.items():
        os.makedirs(path, exist_ok=True)
        for src, flags in ((f"/proc/self/fd/{fd}".encode(), MS_BIND), (None, MS_REMOUNT | MS_BIND | MS_RDONLY)):
            if libc.mount(src, path.encode(), None, flags, None) != 0:
                raise SystemExit(f"isolate: cannot bind {path}: {os.strerror(ctypes.get_errno())}")
        os.close(fd)


def main(argv: list[str]) -> None:
    disk, sshd_dir = argv
    held = hold_own_install()
    detach_private_and_nsfs()
    own_proc()
    stage_private(disk, sshd_dir)
    own_sysfs()
    remount_read_only()
    private_filesystems()
    rebind_own_install(held)
    config = os.path.join(SSHD_RUN, "sshd_config")
    os.execv("/usr/sbin/sshd", ["/usr/sbin/sshd", "-D", "-e", "-f", config])


if __name__ == "__main__":
    main(sys.argv[1:])
