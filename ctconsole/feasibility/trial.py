"""Trial dump: a real CRIU dump that leaves the container running, then is thrown away.

Why: the static rules predict, CRIU decides. A leave-running dump into a private
temporary directory (mode 0700, removed afterwards) is the ground truth. It
uses ``network_lock=SKIP`` because a leave-running dump of a container with its
own netns otherwise leaves an empty CRIU iptables chain behind (iptables-nft
fails to delete it during unlock). CRIU's error lines are mapped back to
operator sentences by :mod:`ctconsole.criu.errors`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from ctconsole.config import criu_binary
from ctconsole.criu.errors import error_lines, explain, rule_for
from ctconsole.feasibility.findings import AUTO, BLOCKER, Finding, TrialResult

# criu_opts booleans -> CLI flags (for the CLI fallback, tests and the benchmark)
_BOOL_FLAGS = {
    "leave_running": "--leave-running",
    "shell_job": "--shell-job",
    "file_locks": "--file-locks",
    "ext_unix_sk": "--ext-unix-sk",
    "tcp_established": "--tcp-established",
    "tcp_close": "--tcp-close",
    "tcp_skip_in_flight": "--skip-in-flight",
    "link_remap": "--link-remap",
    "evasive_devices": "--evasive-devices",
    "force_irmap": "--force-irmap",
    "ext_sharing": "--enable-external-sharing",
    "ext_masters": "--enable-external-masters",
    "mntns_compat_mode": "--mntns-compat-mode",
    "weak_sysctls": "--weak-sysctls",
    "skip_file_rwx_check": "--skip-file-rwx-check",
}
_VALUE_FLAGS = {
    "ghost_limit": "--ghost-limit",
    "root": "--root",
    "lsm_profile": "--lsm-profile",
    "freeze_cgroup": "--freeze-cgroup",
    "timeout": "--timeout",
}
_LIST_FLAGS = {"external": "--external", "skip_mnt": "--skip-mnt", "enable_fs": "--enable-fs"}


def to_cli_args(opts: dict[str, Any]) -> list[str]:
    """Translate a criu_opts dict to ``criu`` CLI arguments.

    orphan_pts_master exists only over RPC; on the CLI the nearest equivalent is
    shell_job (the tty is inherited from criu's own stdin on restore).
    """
    args: list[str] = []
    for key, value in opts.items():
        if key in _BOOL_FLAGS:
            if value:
                args.append(_BOOL_FLAGS[key])
        elif key in _VALUE_FLAGS:
            args += [_VALUE_FLAGS[key], str(value)]
        elif key in _LIST_FLAGS:
            for v in value:
                args += [_LIST_FLAGS[key], str(v)]
        elif key == "orphan_pts_master" and value and "--shell-job" not in args:
            if not opts.get("shell_job"):
                args.append("--shell-job")
        elif key == "network_lock":
            args += ["--network-lock", str(value).lower()]
        elif key in ("manage_cgroups_mode",):
            args += ["--manage-cgroups", str(value).lower()]
        elif key == "log_level":
            args.append(f"-v{int(value)}")
        elif key == "auto_ext_mnt" and value:
            args += ["--ext-mount-map", "auto"]
        elif key == "pid":
            args += ["-t", str(value)]
    return args


def _private_tmp() -> Path:
    d = Path(tempfile.mkdtemp(prefix="ctconsole-trial-"))
    os.chmod(d, 0o700)
    return d


def trial_options(pid: int, dump_opts: dict[str, Any]) -> dict[str, Any]:
    """The dump options of a trial: the derived ones plus leave_running and no network lock."""
    opts = dict(dump_opts)
    opts.update({"pid": pid, "leave_running": True, "network_lock": "SKIP", "log_level": 4})
    opts.pop("leave_stopped", None)
    return opts


def _result(ok: bool, elapsed: float, log_text: str) -> TrialResult:
    errs = error_lines(log_text) if not ok else []
    expl: list[str] = []
    for ln in errs:
        e = explain(ln)
        if e and rule_for(ln) != "summary" and e not in expl:
            expl.append(e)
    tail = tuple(log_text.splitlines()[-15:]) if not ok else ()
    return TrialResult(ok, elapsed, tuple(errs), tuple(expl), tail)


def _dump_rpc(client: Any, opts: dict[str, Any], images: Path) -> TrialResult:
    from ctconsole.criu.client import CriuError

    t0 = time.monotonic()
    try:
        client.dump(opts, images, work_dir=images, on_notify=lambda n: True)
        ok = True
    except CriuError:
        ok = False
    elapsed = time.monotonic() - t0
    log = images / "dump.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    return _result(ok, elapsed, text)


def _dump_cli(opts: dict[str, Any], images: Path) -> TrialResult:
    args = [criu_binary(), "dump", "-D", str(images), "-o", "dump.log", *to_cli_args(opts)]
    t0 = time.monotonic()
    r = subprocess.run(args, capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - t0
    log = images / "dump.log"
    text = log.read_text(errors="replace") if log.exists() else r.stderr
    return _result(r.returncode == 0, elapsed, text)


def trial_dump(pid: int, dump_opts: dict[str, Any], use_rpc: bool = True) -> TrialResult:
    """Dump ``pid``'s tree with ``dump_opts`` leaving it running; remove the images."""
    opts = trial_options(pid, dump_opts)
    images = _private_tmp()
    try:
        client = None
        if use_rpc:
            try:
                from ctconsole.criu.client import CriuClient

                client = CriuClient()
            except Exception:
                client = None
        res = _dump_rpc(client, opts, images) if client is not None else _dump_cli(opts, images)
        if res.ok:
            from ctconsole.criu.images import ImageError, root_pdeath_sig

            with contextlib.suppress(ImageError):
                res = dataclasses.replace(res, pdeath_sig=root_pdeath_sig(images))
        return res
    finally:
        shutil.rmtree(images, ignore_errors=True)


def trial_findings(result: TrialResult) -> list[Finding]:
    """A failed trial becomes blocker findings, one per explained CRIU error.

    A successful one can still tell what /proc cannot: the root's parent-death
    signal (LXC sets SIGKILL on the container init). CRIU restores it, so a
    root whose parent exits right after the restore (a detached ``criu
    restore -d``, the swrk worker) is killed at once; ctconsole restores
    through a keeper that stays the root's parent (migrate/keeper.py).
    """
    if result.ok:
        if not result.pdeath_sig:
            return []
        import signal

        try:
            name = signal.Signals(result.pdeath_sig).name
        except ValueError:
            name = f"signal {result.pdeath_sig}"
        return [
            Finding(
                "trial:pdeath-sig",
                AUTO,
                "container init",
                f"The init has a parent-death signal ({name}, PR_SET_PDEATHSIG); CRIU restores it, so the "
                "init dies as soon as the process that restored it exits.",
                "ctconsole restores with rst_sibling through a keeper that stays the init's parent and reaps "
                "it (`ctconsole keepers`); a manual `criu restore -d` would kill it.",
                source="trial",
            )
        ]
    out: list[Finding] = []
    for ln in result.errors:
        rid = rule_for(ln)
        if rid in ("summary", "harmless"):
            continue
        msg = ln.split("): ", 1)[-1].strip()
        out.append(
            Finding(
                f"trial:{rid or 'unknown'}",
                BLOCKER,
                "trial dump",
                f"CRIU refused the dump: {msg}",
                explain(ln) or "See the CRIU log lines; ctconsole does not know this error yet.",
                source="trial",
            )
        )
    if not out:
        out.append(
            Finding(
                "trial:unknown",
                BLOCKER,
                "trial dump",
                "CRIU refused the dump without a recognisable error line.",
                "Run again with --json to see the log tail.",
                source="trial",
            )
        )
    return out
