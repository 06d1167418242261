"""The ``ctlab-runc`` container: runc 1.1 with the counter workload and pipe stdio.

Why pipes: with stdio on host files (``runc run -d >out.log``) ``runc checkpoint``
fails ("Can't lookup mount=… for fd=1"), because a host file is outside the
container's mounts. Real managers (containerd-shim, conmon) hand runc pipes, so
the lab does the same: ``sleep | runc run -d | cat >> stdout.log``; ``sleep`` and
``cat`` are helpers the lab records and kills on ``down``.
The container keeps runc's default namespaces (pid, net, ipc, uts, mount) and
has no veth (runc itself does not do networking).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from ctconsole.lab import common, rootfs
from ctconsole.lab.proc import LabError, children, ref, run, spawn, wait_for
from ctconsole.lab.state import Ctx, LabContainer

NAME = "ctlab-runc"
RUNTIME = "runc"
RUNC_ROOT = "/run/runc"  # runc's default state root, so `runc list` shows the lab container


def _spec(bundle: Path) -> None:
    cfg_path = bundle / "config.json"
    cfg_path.unlink(missing_ok=True)
    run(["runc", "spec", "--bundle", str(bundle)])
    cfg = json.loads(cfg_path.read_text())
    proc = cfg["process"]
    proc["terminal"] = False
    proc["args"] = ["/bin/sh", "/lab/counter.sh"]
    proc["cwd"] = "/"
    cfg["root"] = {"path": "rootfs", "readonly": False}
    cfg["hostname"] = NAME
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")


def _runc_state() -> dict[str, object] | None:
    cp = run(["runc", "--root", RUNC_ROOT, "state", NAME], check=False)
    if cp.returncode != 0:
        return None
    try:
        data = json.loads(cp.stdout)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def delete() -> None:
    """Remove the runc container named ``ctlab-runc`` (ours by name), killing it if running."""
    if _runc_state() is not None:
        run(["runc", "--root", RUNC_ROOT, "delete", "--force", NAME], check=False)


def record(ctx: Ctx) -> LabContainer:
    base = ctx.lab / "runc"
    bundle = base / "bundle"
    root = bundle / "rootfs"
    return LabContainer(
        name=NAME,
        runtime=RUNTIME,
        rootfs=str(root),
        counter_file=str(root / rootfs.COUNTER_REL),
        owned_dirs=[str(base)],
        runtime_id=NAME,
        runtime_path=str(bundle),
    )


def start(c: LabContainer, ctx: Ctx) -> None:
    bundle = Path(c.runtime_path)
    base = bundle.parent
    root = Path(c.rootfs)
    delete()
    rootfs.make_rootfs(ctx.lab, root)
    common.reset_counter(c.counter_file)
    _spec(bundle)
    pidfile = base / "init.pid"
    pidfile.unlink(missing_ok=True)
    log = base / "stdout.log"
    pipeline = (
        f"sleep 2147483647 | runc --root {RUNC_ROOT} run -d --pid-file {shlex.quote(str(pidfile))} "
        f"--bundle {shlex.quote(str(bundle))} {NAME} 2>&1 | cat >> {shlex.quote(str(log))}"
    )
    sh = spawn(["sh", "-c", pipeline])
    c.helpers = [ref(sh.pid, "sh (stdio keeper)")]
    try:
        wait_for(
            lambda: (pidfile.exists() and pidfile.read_text().strip() != "") or sh.poll() is not None,
            20.0,
            "runc to start ctlab-runc",
        )
        if not pidfile.exists() or not pidfile.read_text().strip():
            raise LabError("runc could not start ctlab-runc", common.log_tail(log))
        c.init = ref(int(pidfile.read_text().strip()), "init")
        c.helpers += [ref(p, "stdio keeper") for p in children(sh.pid)]
        wait_for(
            lambda: common.last_counter(c.counter_file) >= 1 or not c.running(), 5.0, "the ctlab-runc counter to tick"
        )
        if not c.running():
            raise LabError("ctlab-runc exited during start-up", common.log_tail(log))
    except LabError:
        common.stop_processes(c)
        delete()
        raise


def stop(c: LabContainer) -> None:
    delete()
    common.stop_processes(c)


def conflict() -> str:
    """Why starting would touch something this lab did not record ("" when nothing is in the way)."""
    if _runc_state() is not None:
        return f"runc container {NAME} exists (root {RUNC_ROOT}) but is not recorded in this lab's state"
    return ""
