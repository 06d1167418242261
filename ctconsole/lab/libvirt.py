"""The ``ctlab-lv`` container: a libvirt-lxc domain, with libvirtd and virtlogd started by the lab.

Why the lab starts the daemons: there is no systemd here. Why libvirtd runs in a
private mount namespace without /sys/fs/cgroup/unified: on this host's hybrid
cgroup layout libvirt picks its cgroup v2 backend (the unified mount lists a
controller) and ``libvirt_lxc`` then fails with "Unable to create directory
/sys/fs/cgroup/unified"; hiding that mount makes libvirt use the v1 hierarchies.
The domain is transient (``virsh create``) so nothing is written to
/etc/libvirt and ``virsh destroy`` removes it completely.
Its console is a pty (``<console type='pty'/>``) as libvirt-lxc always has: the
container's stdio are pts slaves whose master is in the libvirt_lxc controller,
which is why CRIU needs orphan_pts_master (RPC only) for this container.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path

from ctconsole.lab import common, netns, rootfs
from ctconsole.lab.proc import LabError, ProcRef, ref, run, spawn, start_time, wait_for
from ctconsole.lab.state import Ctx, LabContainer

NAME = "ctlab-lv"
RUNTIME = "libvirt-lxc"
HOST_VETH = "vctlab-lv"
ADDRESS_IP = f"{netns.CONTAINER_NET}.5"
ADDRESS = f"{ADDRESS_IP}/24"
URI = "lxc:///"
LIBVIRTD_PIDFILE = Path("/run/libvirtd.pid")
VIRTLOGD_PIDFILE = Path("/run/virtlogd.pid")
UNIFIED = "/sys/fs/cgroup/unified"

DOMAIN_XML = """<domain type='lxc'>
  <name>{name}</name>
  <memory unit='MiB'>128</memory>
  <os>
    <type>exe</type>
    <init>/bin/sh</init>
    <initarg>/lab/counter.sh</initarg>
  </os>
  <devices>
    <filesystem type='mount'>
      <source dir='{rootfs}'/>
      <target dir='/'/>
    </filesystem>
    <interface type='bridge'>
      <source bridge='{bridge}'/>
      <target dev='{veth}'/>
      <guest dev='eth0'/>
      <ip address='{ip}' prefix='24'/>
    </interface>
    <console type='pty'/>
  </devices>
</domain>
"""


def _pid_from(pidfile: Path) -> int:
    try:
        text = pidfile.read_text().strip()
    except OSError:
        return 0
    return int(text) if text.isdigit() and start_time(int(text)) > 0 else 0


def _unified_visible(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/mountinfo") as f:
            return any(line.split()[4] == UNIFIED for line in f)
    except OSError:
        return False


# directories the Debian packages expect but do not always create (no systemd-tmpfiles here)
DAEMON_DIRS = ("/var/log/libvirt", "/var/log/libvirt/lxc", "/run/libvirt")


def _daemon(lab: Path, argv: list[str], what: str) -> None:
    """Run a self-daemonizing tool with its early stderr going to LAB/WHAT.log."""
    for d in DAEMON_DIRS:
        os.makedirs(d, exist_ok=True)
    with open(lab / f"{what}.log", "ab") as log:
        p = spawn(argv, stdout=log.fileno())
    try:
        rc = p.wait(timeout=20)
    except Exception as exc:
        raise LabError(f"{what} did not daemonize within 20 s") from exc
    if rc != 0:
        raise LabError(f"{what} failed to start (exit {rc})", _tail(lab / f"{what}.log"))


def _wait_pidfile(lab: Path, pidfile: Path, what: str) -> None:
    try:
        wait_for(lambda: _pid_from(pidfile) > 0, 15.0, f"{what} to write {pidfile}")
    except LabError as exc:
        exc.details.extend(_tail(lab / f"{what}.log"))
        raise


def _tail(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-5:]
    except OSError:
        return []


def ensure_daemons(
    lab: Path, virtlogd: ProcRef | None, libvirtd: ProcRef | None
) -> tuple[ProcRef | None, ProcRef | None, str]:
    """Start virtlogd and libvirtd when not running; returns (virtlogd, libvirtd, note).

    A ref is returned only for a daemon the lab started (so ``down`` stops only
    those); a daemon someone else started is used as it is, with a note when it
    can see the cgroup2 mount that breaks libvirt-lxc here.
    """
    note = ""
    if virtlogd is None or not virtlogd.alive():
        virtlogd = None
        if not _pid_from(VIRTLOGD_PIDFILE):
            _daemon(lab, ["virtlogd", "-d"], "virtlogd")
            _wait_pidfile(lab, VIRTLOGD_PIDFILE, "virtlogd")
            virtlogd = ref(_pid_from(VIRTLOGD_PIDFILE), "virtlogd")
    if libvirtd is None or not libvirtd.alive():
        libvirtd = None
        existing = _pid_from(LIBVIRTD_PIDFILE)
        if existing:
            if os.path.ismount(UNIFIED) and _unified_visible(existing):
                note = (
                    f"libvirtd (pid {existing}) was not started by the lab and sees {UNIFIED}; "
                    "libvirt-lxc may fail to start containers"
                )
        else:
            script = f"if mountpoint -q {UNIFIED}; then umount {UNIFIED}; fi; exec libvirtd -d"
            _daemon(lab, ["unshare", "-m", "--propagation", "slave", "sh", "-c", script], "libvirtd")
            _wait_pidfile(lab, LIBVIRTD_PIDFILE, "libvirtd")
            libvirtd = ref(_pid_from(LIBVIRTD_PIDFILE), "libvirtd")
            # the socket appears a moment after the pid file
            wait_for(lambda: virsh("version", check=False).returncode == 0, 15.0, "libvirtd to answer")
    return virtlogd, libvirtd, note


def virsh(*args: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return run(["virsh", "-q", "-c", URI, *args], check=check, timeout=timeout)


def domain_state() -> str:
    cp = run(["virsh", "-q", "-c", URI, "domstate", NAME], check=False, timeout=15)
    return cp.stdout.strip() if cp.returncode == 0 else ""


def destroy() -> None:
    """Stop the ``ctlab-lv`` domain (ours by name) if libvirt knows it."""
    if domain_state():
        run(["virsh", "-q", "-c", URI, "destroy", NAME], check=False, timeout=30)
        run(["virsh", "-q", "-c", URI, "undefine", NAME], check=False, timeout=15)


def init_pid() -> int:
    """The container init: the child of the libvirt_lxc controller (pid in /run/libvirt/lxc)."""
    from ctconsole.lab.proc import children

    ctl = _pid_from(Path(f"/run/libvirt/lxc/{NAME}.pid"))
    kids = children(ctl) if ctl else []
    return kids[0] if kids else 0


def record(ctx: Ctx) -> LabContainer:
    base = ctx.lab / "libvirt"
    return common.bridged_record(
        ctx,
        name=NAME,
        runtime=RUNTIME,
        root=base / "rootfs",
        owned_dir=base,
        address=ADDRESS,
        host_veth=HOST_VETH,
        runtime_id=NAME,
    )


def start(c: LabContainer, ctx: Ctx) -> None:
    """Start the domain; libvirtd must be running (see :func:`ensure_daemons`)."""
    root = Path(c.rootfs)
    base = root.parent
    bridge = c.bridge
    destroy()
    common.kill_rooted(str(root))
    netns.delete_link(HOST_VETH)
    rootfs.make_rootfs(ctx.lab, root)
    common.reset_counter(c.counter_file)
    xml = base / f"{NAME}.xml"
    rootfs.write_file(xml, DOMAIN_XML.format(name=NAME, rootfs=root, bridge=bridge, veth=HOST_VETH, ip=ADDRESS_IP))
    try:
        run(["virsh", "-q", "-c", URI, "create", str(xml)], timeout=60)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not init_pid():
            time.sleep(0.05)
        pid = init_pid()
        if not pid:
            raise LabError("libvirt started ctlab-lv but its init process was not found")
        c.init = ref(pid, "init")
        wait_for(
            lambda: common.last_counter(c.counter_file) >= 1 or not c.running(), 5.0, "the ctlab-lv counter to tick"
        )
        if not c.running():
            raise LabError("ctlab-lv exited during start-up")
    except LabError:
        stop(c)
        raise


# per-domain runtime files libvirt_lxc can leave behind when its controller is killed
# (e.g. by a CRIU dump of the container): named after our domain, so ours to remove
LEFTOVERS = tuple(f"/run/libvirt/lxc/{NAME}{ext}" for ext in (".dev", ".devpts", ".fuse", ".sock", ".pid", ".xml"))
DOMAIN_LOG = f"/var/log/libvirt/lxc/{NAME}.log"


def stop(c: LabContainer) -> None:
    # killing the init first makes libvirt_lxc exit at once; `virsh destroy` of a running
    # domain waits ~2 s for its SIGTERM grace period
    common.stop_processes(c)
    deadline = time.monotonic() + 3
    while domain_state() == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    destroy()
    netns.delete_link(HOST_VETH)
    if not domain_state():
        for path in LEFTOVERS:
            p = Path(path)
            if p.is_dir() and not p.is_symlink():
                if not os.path.ismount(p):
                    with contextlib.suppress(OSError):
                        p.rmdir()  # only when empty: never delete content we did not make
            elif p.exists() or p.is_symlink():
                p.unlink(missing_ok=True)


def stop_daemons(virtlogd: ProcRef | None, libvirtd: ProcRef | None) -> None:
    """Stop the daemons the lab started (SIGTERM, then SIGKILL); others are left alone."""
    import signal

    from ctconsole.lab.proc import kill

    for d in (libvirtd, virtlogd):
        if d is not None and not kill(d, signal.SIGTERM, 5.0):
            kill(d)


def conflict() -> str:
    """Why starting would touch something this lab did not record ("" when nothing is in the way)."""
    if why := common.veth_conflict(HOST_VETH):
        return why
    if _pid_from(LIBVIRTD_PIDFILE) and domain_state():
        return f"libvirt domain {NAME} exists but is not recorded in this lab's state"
    return ""
