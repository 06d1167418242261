"""The ``ctlab-ns`` container: plain namespaces (unshare + pivot_root), no container runtime.

What it carries, each on purpose so inventory/feasibility/migration have real items:
- own pid, net, mount, uts and ipc namespaces; init is its own session leader
  (``setsid``: CRIU refuses a session leader outside the pid namespace);
- a veth ``eth0`` (198.18.0.2/24, only inside) whose host end is on ``ctlab0``;
- fd 3: a UNIX stream socket connected to the lab's host daemon (an external peer);
- a TCP listener (busybox httpd on :8080), /dev/zero open on fd 4;
- a host directory bind-mounted at /share (an external mount);
- the counter workload (fd 5, /lab/counter).
stdio goes to /lab/init.log inside the rootfs; the launcher closes every inherited fd.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ctconsole.lab import common, netns, rootfs
from ctconsole.lab.proc import LabError, ref, wait_for
from ctconsole.lab.state import Ctx, LabContainer

NAME = "ctlab-ns"
RUNTIME = "namespaces"
HOST_VETH = "vctlab-ns"
ADDRESS = f"{netns.CONTAINER_NET}.2/24"
TCP_PORT = 8080
SHARE_TARGET = "/share"

INIT_SH = f"""# ctlab-ns init (pid 1 of its pid namespace, session leader)
mount -t proc proc /proc
umount -l /oldroot
hostname {NAME}
exec </dev/null >/lab/init.log 2>&1
echo "hello from {NAME}" >&3
httpd -f -p {TCP_PORT} -h /www 3>&- &
exec 4</dev/zero
. /lab/counter.sh
"""


CONNECT_PY = (
    "import os,socket,sys\n"
    "s=socket.socket(socket.AF_UNIX,socket.SOCK_STREAM)\n"
    "s.connect(sys.argv[1])\n"
    "fd=s.detach()\n"
    "if fd!=3:\n os.dup2(fd,3)\n os.close(fd)\n"
    "os.set_inheritable(3,True)\n"
    "os.execvp(sys.argv[2],sys.argv[2:])\n"
)


def _launch_script(root: str, share: str) -> str:
    return (
        "set -e; mount --make-rprivate /; "
        f"mount --bind {root} {root}; mount --bind {share} {root}{SHARE_TARGET}; "
        f"cd {root}; pivot_root . oldroot; "
        "exec /bin/busybox setsid /bin/busybox sh /lab/init.sh"
    )


def record(ctx: Ctx) -> LabContainer:
    """What this container is made of (saved before anything is created, so ``down`` finds it)."""
    base = ctx.lab / "ns"
    return common.bridged_record(
        ctx,
        name=NAME,
        runtime=RUNTIME,
        root=base / "rootfs",
        owned_dir=base,
        address=ADDRESS,
        host_veth=HOST_VETH,
        share_dir=str(base / "share"),
        share_target=SHARE_TARGET,
        unix_socket=ctx.hostd_socket,
        tcp_port=TCP_PORT,
    )


def start(c: LabContainer, ctx: Ctx) -> None:
    """Build a fresh rootfs and start the container, filling in ``c.init`` and ``c.helpers``."""
    root = Path(c.rootfs)
    share = Path(c.share_dir)
    hostd_socket, bridge = c.unix_socket, c.bridge
    rootfs.make_rootfs(ctx.lab, root)
    share.mkdir(parents=True, exist_ok=True)
    (share / "README").write_text("host directory bind-mounted into ctlab-ns at /share\n")
    rootfs.write_file(root / "lab/init.sh", INIT_SH)
    common.reset_counter(c.counter_file)
    netns.delete_link(HOST_VETH)  # a stale host end from an earlier run would block the name

    # The socket must be created inside the container's network namespace (CRIU
    # finds unix sockets through sock_diag of that netns), so a small python step
    # running after unshare connects it, makes it fd 3 and execs the launch script.
    argv = [
        "unshare",
        "--pid",
        "--net",
        "--mount",
        "--uts",
        "--ipc",
        "--fork",
        sys.executable,
        "-I",
        "-S",
        "-c",
        CONNECT_PY,
        hostd_socket,
        "sh",
        "-c",
        _launch_script(str(root), str(share)),
    ]
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        close_fds=True,
    )
    c.helpers = [ref(proc.pid, "unshare")]
    init = common.find_init(proc.pid)
    try:
        if init is None:
            raise LabError("ctlab-ns: unshare exited before starting the container init")
        c.init = init
        wait_for(
            lambda: common.last_counter(c.counter_file) >= 1 or not init.alive(), 5.0, "the ctlab-ns counter to tick"
        )
        if not init.alive():
            raise LabError("ctlab-ns: the container init exited during start-up")
        netns.veth_into_pid(HOST_VETH, init.pid, "eth0", ADDRESS, bridge)
    except LabError as exc:
        if proc.poll() is not None and proc.stderr:
            exc.details.extend(proc.stderr.read().decode(errors="replace").splitlines()[-5:])
        raise
    finally:
        if proc.stderr:
            proc.stderr.close()  # start-up errors only; the container logs to /lab/init.log


def stop(c: LabContainer) -> None:
    common.stop_processes(c)
    netns.delete_link(HOST_VETH)


def conflict() -> str:
    """Why starting would touch something this lab did not record ("" when nothing is in the way)."""
    return common.veth_conflict(HOST_VETH)
