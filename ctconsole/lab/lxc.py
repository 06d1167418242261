"""The ``ctlab-lxc`` container: LXC 5.0 with a busybox rootfs and the counter workload.

The config is written by the lab (not by the busybox template) so it carries
the three fixes that make LXC containers checkpointable on this kind of host:
A. ``lxc.tty.max = 0``, ``lxc.pty.max = 0``, ``lxc.console.path = none``: the
   template's ttys are pts slaves whose masters live in the LXC monitor, which
   CRIU cannot dump ("tty: Unable to find a master");
B. no ``lxc.apparmor.profile`` line: with "unconfined" the restore fails on a
   kernel without AppArmor ("apparmor LSM specified but apparmor not supported");
C. no /lib, /lib64 bind mounts from the host (busybox is static): they break
   CRIU's mount-v2 restore ("Failed to move_mount from /lib") on Debian 12,
   where /lib is a symlink. ``mntns-compat-mode`` is the other way out.
The container lives under the lab's own lxcpath, so ``lab down`` never touches
/var/lib/lxc; its veth host end ``vctlab-lxc`` is on ``ctlab0``.
"""

from __future__ import annotations

import time
from pathlib import Path

from ctconsole.lab import common, netns, rootfs
from ctconsole.lab.proc import LabError, ref, run, wait_for
from ctconsole.lab.state import Ctx, LabContainer

NAME = "ctlab-lxc"
RUNTIME = "lxc"
HOST_VETH = "vctlab-lxc"
ADDRESS = f"{netns.CONTAINER_NET}.4/24"

CONFIG = """# written by ctconsole lab (see ctconsole/lab/lxc.py for why each line is here)
lxc.uts.name = {name}
lxc.rootfs.path = dir:{rootfs}
lxc.init.cmd = /bin/sh /lab/counter.sh
lxc.tty.max = 0
lxc.pty.max = 0
lxc.console.path = none
lxc.log.file = {log}
lxc.log.level = WARN
lxc.cap.drop = sys_module mac_admin mac_override sys_time
lxc.mount.auto = cgroup:mixed proc:mixed sys:ro
lxc.mount.entry = shm dev/shm tmpfs defaults,create=dir 0 0
lxc.net.0.type = veth
lxc.net.0.link = {bridge}
lxc.net.0.name = eth0
lxc.net.0.veth.pair = {veth}
lxc.net.0.ipv4.address = {address}
lxc.net.0.flags = up
"""


def _lxcpath(lab: Path) -> Path:
    return lab / "lxc"


def info(lxcpath: str) -> dict[str, str]:
    cp = run(["lxc-info", "-P", lxcpath, "-n", NAME], check=False)
    out: dict[str, str] = {}
    for line in cp.stdout.splitlines():
        k, _, v = line.partition(":")
        out[k.strip()] = v.strip()
    return out


def _stop_runtime(lxcpath: str) -> None:
    if Path(lxcpath, NAME, "config").exists() and info(lxcpath).get("State") == "RUNNING":
        run(["lxc-stop", "-P", lxcpath, "-n", NAME, "-k"], check=False, timeout=20)


def record(ctx: Ctx) -> LabContainer:
    lxcpath = _lxcpath(ctx.lab)
    return common.bridged_record(
        ctx,
        name=NAME,
        runtime=RUNTIME,
        root=lxcpath / NAME / "rootfs",
        owned_dir=lxcpath,
        address=ADDRESS,
        host_veth=HOST_VETH,
        runtime_id=NAME,
        runtime_path=str(lxcpath),
    )


def start(c: LabContainer, ctx: Ctx) -> None:
    lxcpath = Path(c.runtime_path)
    cdir = lxcpath / NAME
    root = Path(c.rootfs)
    bridge = c.bridge
    _stop_runtime(str(lxcpath))
    netns.delete_link(HOST_VETH)
    rootfs.make_rootfs(ctx.lab, root)
    common.reset_counter(c.counter_file)
    log = cdir / "lxc.log"
    rootfs.write_file(
        cdir / "config", CONFIG.format(name=NAME, rootfs=root, log=log, bridge=bridge, veth=HOST_VETH, address=ADDRESS)
    )
    # lxc-start daemonizes: its monitor "[lxc monitor] LXCPATH NAME" is re-parented to PID 1
    run(["lxc-start", "-P", str(lxcpath), "-n", NAME, "-d"], timeout=30)
    try:
        deadline = time.monotonic() + 10
        pid = 0
        while time.monotonic() < deadline:
            i = info(str(lxcpath))
            if i.get("State") == "RUNNING" and i.get("PID", "").isdigit():
                pid = int(i["PID"])
                break
            time.sleep(0.05)
        if not pid:
            raise LabError("lxc-start did not bring ctlab-lxc to RUNNING", common.log_tail(log))
        c.init = ref(pid, "init")
        wait_for(
            lambda: common.last_counter(c.counter_file) >= 1 or not c.running(), 5.0, "the ctlab-lxc counter to tick"
        )
        if not c.running():
            raise LabError("ctlab-lxc exited during start-up", common.log_tail(log))
    except LabError:
        stop(c)
        raise


def stop(c: LabContainer) -> None:
    if c.runtime_path:
        _stop_runtime(c.runtime_path)
    common.stop_processes(c)
    netns.delete_link(HOST_VETH)


def conflict() -> str:
    """Why starting would touch something this lab did not record ("" when nothing is in the way)."""
    return common.veth_conflict(HOST_VETH)
