"""What this host's CRIU and kernel can do, gathered once: used by ``doctor``, the
feasibility check and the migration planner.

Why: FEATURE_CHECK alone is not the truth here (it says lazy_pages is
available while a real lazy transfer fails), and CRIU < 4.2 on kernels >= 6.16
cannot dump any inet socket; both must be known before anything is frozen.
"""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from typing import Any

from ctconsole.config import criu_binary
from ctconsole.criu import selftest as lazy_selftest
from ctconsole.errors import CtError

MIN_CRIU = (4, 2, 0)
# `criu check --feature NAME` names worth reporting, with what depends on them
CLI_FEATURES = {
    "mem_dirty_track": "pre-copy (iterative PRE_DUMP) needs soft-dirty tracking",
    "uffd-noncoop": "post-copy (lazy pages) needs non-cooperative userfaultfd",
    "tcp_half_closed": "half-closed TCP connections",
    "newifindex": "netdev[]/veth restore keeps the original ifindex",
    "timens": "time namespaces",
    "network_lock_nftables": "nftables network lock",
    "move_mount_set_group": "mount-v2 restore engine",
    "pidfd_store": "pid reuse detection across pre-dump rounds",
}


@dataclass
class HostCapabilities:
    criu_path: str
    criu_version: str
    criu_ok: bool
    kernel: str
    features: dict[str, bool] = field(default_factory=dict)  # FEATURE_CHECK
    check_ok: bool = False
    check_errors: list[str] = field(default_factory=list)
    cli_features: dict[str, bool] = field(default_factory=dict)
    lazy_selftest: bool | None = None
    lazy_selftest_reason: str = ""
    quirks: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def precopy(self) -> bool:
        return bool(self.features.get("mem_track"))

    @property
    def postcopy(self) -> bool:
        return bool(self.features.get("lazy_pages")) and self.lazy_selftest is True

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["strategies"] = {"stop-copy": self.criu_ok, "pre-copy": self.precopy, "post-copy": self.postcopy}
        return d


def cli_feature(criu: str, name: str) -> bool:
    try:
        res = subprocess.run([criu, "check", "--feature", name], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0


def _quirks() -> list[str]:
    out = []
    try:
        with open("/proc/self/status") as f:
            cap = next(int(ln.split()[1], 16) for ln in f if ln.startswith("CapEff:"))
        if not cap & (1 << 24):
            out.append("CAP_SYS_RESOURCE missing: every CRIU run logs a harmless "
                       "'rlimit: Can't setup RLIMIT_NOFILE' error line (ignored)")
    except (OSError, StopIteration, ValueError):
        pass
    try:
        with open("/proc/1/comm") as f:
            init = f.read().strip()
        if init not in ("systemd", "init", "runit", "openrc-init", "tini", "dumb-init", "s6-svscan"):
            out.append(f"PID 1 is '{init}', not an init system: zombies are reaped slowly, so "
                       "ctconsole waits for old pids to vanish before restoring")
    except OSError:
        pass
    try:
        res = subprocess.run(["iptables", "--version"], capture_output=True, text=True, timeout=5)
        if "nf_tables" in res.stdout:
            out.append("iptables-nft: a leave-running dump with CRIU's iptables network lock leaves an "
                       "empty CRIU chain in the container's netns; trial dumps use network_lock=SKIP")
    except (OSError, subprocess.TimeoutExpired):
        pass
    return out


def probe(criu: str | None = None, with_cli_features: bool = True, selftest: str = "cached") -> HostCapabilities:
    """Probe the local CRIU and kernel. ``selftest``: "cached" (default), "run" or "skip"."""
    from ctconsole.criu.client import CriuClient, CriuError

    path = criu or criu_binary()
    caps = HostCapabilities(criu_path=path, criu_version="", criu_ok=False, kernel=platform.release())
    client = CriuClient(criu=path, timeout=60)
    try:
        v = client.version()
    except CtError as exc:
        caps.problems.append(f"cannot run CRIU: {exc.message}")
        return caps
    caps.criu_version = v.text
    if v.as_tuple() < MIN_CRIU:
        why = "CRIU < 4.2 cannot dump TCP/UDP sockets on kernels >= 6.16" if v.major == 4 else \
            "this CRIU is too old for this kernel"
        caps.problems.append(f"CRIU {v.text} is older than 4.2: {why} (run scripts/install-criu)")
    try:
        f = client.feature_check()
        caps.features = {"mem_track": f.mem_track, "lazy_pages": f.lazy_pages, "pidfd_store": f.pidfd_store}
    except CtError as exc:
        caps.problems.append(f"FEATURE_CHECK failed: {exc.message}")
    try:
        client.check()
        caps.check_ok = True
    except CriuError as exc:
        caps.check_errors = exc.log_errors
        caps.problems.append("`criu check` fails on this host")
    if os.geteuid() != 0:
        caps.problems.append("not running as root: CRIU needs root (or CAP_CHECKPOINT_RESTORE) to dump others")
    caps.criu_ok = not caps.problems
    if with_cli_features:
        caps.cli_features = {name: cli_feature(path, name) for name in CLI_FEATURES}
    caps.quirks = _quirks()
    if selftest != "skip":
        if caps.features.get("lazy_pages"):
            ok, reason = lazy_selftest.lazy_pages_works(criu=path, force=(selftest == "run"),
                                                        cached_only=(selftest == "cached-only"))
            caps.lazy_selftest, caps.lazy_selftest_reason = ok, reason
        else:
            caps.lazy_selftest, caps.lazy_selftest_reason = False, "FEATURE_CHECK: lazy_pages is false"
    return caps
