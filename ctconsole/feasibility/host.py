"""CRIU and kernel checks for the source and the destination host.

Why a ``HostProbe`` protocol: the destination is this host (``local``) or a
``netns:NAME`` / ``ssh://`` host answering the same questions through the
migration agent (:class:`ctconsole.feasibility.remote.RemoteProbe`), so the
checker never needs to know where the host is. ``LocalProbe`` uses the RPC
client (``ctconsole.criu.client``) and falls back to the ``criu`` CLI when an
RPC call fails (or with ``use_rpc=False``).

Optional extras a probe may have (both probes here do): ``path_kind(path)``
and ``link_kind(name)`` for the resources the remap rules name on the
destination (:func:`resource_checks`), ``images_dir()`` for where the images
would go, ``lookup(paths, links)`` to ask for many at once.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ctconsole.agent import hostprobe
from ctconsole.config import criu_binary
from ctconsole.criu import selftest as lazy_selftest
from ctconsole.criu.client import CriuClient
from ctconsole.feasibility.catalogue import HostFacts
from ctconsole.feasibility.findings import BLOCKER, INFO, NEEDS_RULE, CriuInfo, Finding
from ctconsole.model import Container

MIN_CRIU = (4, 2, 0)


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    message: str = ""


@runtime_checkable
class HostProbe(Protocol):
    """What the checker asks a host. Every method must be cheap and side-effect free
    (apart from scratch files it removes itself)."""

    name: str

    def version(self) -> tuple[tuple[int, int, int], str]: ...

    def kernel(self) -> str: ...

    def features(self) -> dict[str, bool]: ...

    def check(self) -> ProbeResult: ...

    def cpuinfo_dump(self) -> bytes | None: ...

    def cpuinfo_check(self, blob: bytes) -> ProbeResult: ...

    def free_space(self, path: str) -> int: ...

    def path_exists(self, path: str) -> bool: ...


def parse_version(text: str) -> tuple[int, int, int]:
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if not m:
        return (0, 0, 0)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))


def kernel_tuple(release: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


class LocalProbe:
    """This host, probed through CRIU RPC (swrk) or, failing that, the CLI."""

    name = "local"

    def __init__(self, use_rpc: bool = True) -> None:
        self._criu = criu_binary()
        self._use_rpc = use_rpc
        self._cache: dict[str, Any] = {}

    def _rpc(self) -> CriuClient | None:
        """The RPC client (None: the CLI is asked instead, ``use_rpc=False``)."""
        return CriuClient() if self._use_rpc else None

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self._criu, *args], capture_output=True, text=True, timeout=timeout)

    def version(self) -> tuple[tuple[int, int, int], str]:
        if "version" in self._cache:
            return self._cache["version"]
        out: tuple[tuple[int, int, int], str] = ((0, 0, 0), "")
        cl = self._rpc()
        if cl is not None:
            try:
                v = cl.version()
                out = (v.as_tuple(), v.text)
            except Exception:
                out = ((0, 0, 0), "")
        if out[0] == (0, 0, 0):
            try:
                text = self._run("--version", timeout=10).stdout
                ver = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if "Version" in ln), "")
                out = (parse_version(ver), ver)
            except (OSError, subprocess.SubprocessError):
                out = ((0, 0, 0), "")
        self._cache["version"] = out
        return out

    def kernel(self) -> str:
        return platform.release()

    def features(self) -> dict[str, bool]:
        if "features" in self._cache:
            return self._cache["features"]
        feats: dict[str, bool] | None = None
        cl = self._rpc()
        if cl is not None:
            try:
                f = cl.feature_check()
                feats = {"mem_track": f.mem_track, "lazy_pages": f.lazy_pages, "pidfd_store": f.pidfd_store}
            except Exception:
                feats = None
        if feats is None:
            feats = {}
            for name, cli in (("mem_track", "mem_dirty_track"), ("lazy_pages", "uffd-noncoop")):
                try:
                    feats[name] = self._run("check", "--feature", cli, timeout=30).returncode == 0
                except (OSError, subprocess.SubprocessError):
                    feats[name] = False
        self._cache["features"] = feats
        return feats

    def check(self) -> ProbeResult:
        if "check" not in self._cache:
            self._cache["check"] = self._check()
        result: ProbeResult = self._cache["check"]
        return result

    def _check(self) -> ProbeResult:
        cl = self._rpc()
        if cl is not None:
            with tempfile.TemporaryDirectory(prefix="ctconsole-check-") as d:
                try:
                    cl.check(Path(d))
                    return ProbeResult(True, "Looks good.")
                except Exception as exc:
                    return ProbeResult(False, str(exc))
        try:
            r = self._run("check", timeout=60)
        except (OSError, subprocess.SubprocessError) as exc:
            return ProbeResult(False, str(exc))
        text = (r.stdout + r.stderr).strip().splitlines()
        return ProbeResult(r.returncode == 0, text[-1] if text else "")

    def cpuinfo_dump(self) -> bytes | None:
        with tempfile.TemporaryDirectory(prefix="ctconsole-cpu-") as d:
            cl = self._rpc()
            try:
                if cl is not None:
                    cl.cpuinfo_dump(Path(d))
                else:
                    self._run("cpuinfo", "dump", "-D", d, "-o", "cpuinfo.log", timeout=30)
                return (Path(d) / "cpuinfo.img").read_bytes()
            except Exception:
                return None

    def cpuinfo_check(self, blob: bytes) -> ProbeResult:
        with tempfile.TemporaryDirectory(prefix="ctconsole-cpu-") as d:
            (Path(d) / "cpuinfo.img").write_bytes(blob)
            cl = self._rpc()
            try:
                if cl is not None:
                    cl.cpuinfo_check(Path(d))
                    return ProbeResult(True)
                r = self._run("cpuinfo", "check", "-D", d, "-o", "cpuinfo.log", timeout=30)
                return ProbeResult(r.returncode == 0, (r.stdout + r.stderr).strip())
            except Exception as exc:
                return ProbeResult(False, str(exc))

    def free_space(self, path: str) -> int:
        p = Path(path)
        while not p.exists() and p != p.parent:
            p = p.parent
        return shutil.disk_usage(p).free

    def path_exists(self, path: str) -> bool:
        return os.path.exists(path)

    def path_kind(self, path: str) -> str:
        return hostprobe.path_kind(path)

    def link_kind(self, name: str) -> str:
        return hostprobe.link_kind(name)

    def images_dir(self) -> str:
        return images_dir_hint()


_LOCAL: tuple[float, LocalProbe] | None = None
_LOCAL_TTL = 60.0  # CRIU and kernel do not change between two checks; the UI checks many containers


def probe_for(dest: str | None) -> HostProbe:
    """The probe for a ``--to`` destination: ``local`` or a :class:`RemoteProbe` over the agent.

    The local probe (and what it learned: version, features, `criu check`) is reused
    for a minute, so checking a list of containers probes CRIU once. A remote probe
    is new for every call and owns an agent session: the caller must ``close()`` it.
    A malformed DEST raises UsageError (exit 2); an unreachable one only fails on use.
    """
    global _LOCAL
    if dest in (None, "", "local"):
        now = time.monotonic()
        if _LOCAL is None or now - _LOCAL[0] > _LOCAL_TTL:
            _LOCAL = (now, LocalProbe())
        return _LOCAL[1]
    from ctconsole.feasibility.remote import RemoteProbe

    return RemoteProbe(dest)


def images_dir_hint() -> str:
    """Where images would be written on a host (the state dir), for the free-space check."""
    from ctconsole.config import state_dir

    return str(state_dir() / "images")


def dest_subject(dst: HostProbe | None, same_host: bool) -> str:
    """Subject of a finding about the destination: ``host local`` for this host,
    ``destination:netns:NAME`` / ``destination:ssh://...`` for a remote one (so the
    operator sees at once *where* the problem is)."""
    if same_host or dst is None:
        return "host local"
    return f"destination:{dst.name}"


def host_checks(
    container: Container, src: HostProbe, dst: HostProbe | None, facts: HostFacts, same_host: bool
) -> tuple[CriuInfo, list[Finding]]:
    """CRIU version (>= 4.2, destination >= source), features, `criu check`, CPU
    compatibility, free space for the images and the root filesystem on the destination.

    ``dst=None``: the destination could not be reached; only the source is checked
    (the caller reports the unreachable destination itself)."""
    findings: list[Finding] = []
    where_dst = dest_subject(dst, same_host)
    ver, text = src.version()
    kernel = src.kernel()
    feats = src.features()
    chk = src.check()
    if ver == (0, 0, 0):
        findings.append(
            Finding(
                "criu-version",
                BLOCKER,
                "host local",
                "CRIU is not installed or does not answer.",
                "Install CRIU >= 4.2 (scripts/install-criu).",
                source="host",
            )
        )
    elif ver < MIN_CRIU:
        findings.append(
            Finding(
                "criu-version",
                BLOCKER,
                "host local",
                f"CRIU {text} is older than 4.2 (ctconsole needs 4.2 on kernels >= 6.16).",
                "Install CRIU >= 4.2 (scripts/install-criu).",
                source="host",
            )
        )
    if not chk.ok:
        findings.append(
            Finding(
                "criu-check",
                BLOCKER,
                "host local",
                f"`criu check` fails on this host: {chk.message}",
                "Fix the kernel/CRIU installation until `criu check` says 'Looks good.'",
                source="host",
            )
        )
    if not feats.get("mem_track", False):
        findings.append(
            Finding(
                "mem-track",
                INFO,
                "host local",
                "No soft-dirty memory tracking: pre-copy migration (iterative pre-dumps) is impossible; "
                "migration is a single-shot dump.",
                "Nothing to do (the downtime includes copying all memory).",
                source="host",
            )
        )
    lazy_ok: bool | None = None
    lazy_why = ""
    if feats.get("lazy_pages"):
        # never run the (slow) self-test from a check: use its cached verdict only
        cached = lazy_selftest.cached_result()
        if cached is not None:
            lazy_ok, lazy_why = cached
        if lazy_ok is not True:
            findings.append(
                Finding(
                    "lazy-pages",
                    INFO,
                    "host local",
                    "The kernel offers userfaultfd lazy pages, but post-copy "
                    + (
                        f"failed its self-test here ({str(lazy_why)[:100]})."
                        if lazy_ok is False
                        else "has not been self-tested here (ctconsole doctor --selftest run)."
                    ),
                    "ctconsole migrates with a full dump (no post-copy).",
                    source="host",
                )
            )
    if dst is None:
        return CriuInfo(
            version=text, version_tuple=ver, kernel=kernel, features=feats, check_ok=chk.ok, lazy_pages_works=lazy_ok
        ), findings
    dver, dtext = (ver, text) if same_host else dst.version()
    if not same_host:
        dchk = dst.check()
        if not dchk.ok:
            findings.append(
                Finding(
                    "criu-check",
                    BLOCKER,
                    where_dst,
                    f"`criu check` fails on the destination: {dchk.message}",
                    "Fix the kernel/CRIU installation there until `criu check` says 'Looks good.'",
                    source="host",
                )
            )
        if dver < MIN_CRIU:
            findings.append(
                Finding(
                    "criu-version",
                    BLOCKER,
                    where_dst,
                    f"CRIU on the destination is {dtext or 'missing'}; ctconsole needs >= 4.2.",
                    "Install CRIU >= 4.2 on the destination.",
                    source="host",
                )
            )
        elif dver < ver:
            findings.append(
                Finding(
                    "criu-version",
                    BLOCKER,
                    where_dst,
                    f"CRIU on the destination ({dtext}) is older than on the source ({text}); "
                    "it may not read the images.",
                    "Upgrade CRIU on the destination to at least the source's version.",
                    source="host",
                )
            )
        blob = src.cpuinfo_dump()
        if blob is not None:
            res = dst.cpuinfo_check(blob)
            if not res.ok:
                findings.append(
                    Finding(
                        "cpu",
                        BLOCKER,
                        where_dst,
                        "The destination CPU lacks features of the source CPU (CRIU cpuinfo check failed)"
                        + (f": {res.message[:200]}" if res.message else "."),
                        "Pick a destination with the same CPU features, or restore with a lower cpu_cap "
                        "at the risk of the workload using missing instructions.",
                        source="host",
                    )
                )
    need = max(facts.anon_bytes, 0)
    if need:
        images_dir = getattr(dst, "images_dir", None)
        where = images_dir() if callable(images_dir) else images_dir_hint()
        free = dst.free_space(where)
        if free < need * 1.1 + (16 << 20):
            findings.append(
                Finding(
                    "disk-space",
                    BLOCKER,
                    where_dst,
                    f"The images need about {need >> 20} MiB but only {free >> 20} MiB are free at {where}.",
                    "Free space there or set CTCONSOLE_STATE_DIR to a larger filesystem.",
                    source="host",
                )
            )
    if container.root_path and not dst.path_exists(container.root_path):
        # Not a blocker: `migrate` (default --storage auto) carries the root there with rsync while the
        # container is frozen (migrate/storage.py); `check` adds whether it fits (dest-storage). Seen
        # with a plain unshare container to an isolated host: check said INFEASIBLE, migrate worked.
        findings.append(
            Finding(
                "rootfs",
                INFO,
                where_dst,
                f"The container's root filesystem {container.root_path} does not exist on the destination: "
                "ctconsole migrate copies it there (--storage auto or copy).",
                "Nothing to do, unless you migrate with --storage shared: then share the root at the same path.",
                source="host",
            )
        )
    info = CriuInfo(
        version=text,
        version_tuple=ver,
        kernel=kernel,
        features=feats,
        check_ok=chk.ok,
        lazy_pages_works=lazy_ok,
        dest_version="" if same_host else dtext,
    )
    return info, findings


# -- resources the remap rules name on the destination ---------------------------------
_VETH_BR = re.compile(r"^veth\[[^\]]+\]:[^@]+@(?P<br>.+)$")
_MNT = re.compile(r"^mnt\[[^\]]*\]:(?P<path>/.*)$")
_NETDEV = re.compile(r"^(?P<kind>netdev|macvlan)\[[^\]]+\]:(?P<dev>.+)$")
_DEV = re.compile(r"^dev\[[^\]]+\]:(?P<path>/.*)$")


@dataclass(frozen=True)
class DestNeed:
    """One thing a restore option needs on the destination: ``kind`` bridge, link, path, socket or dir."""

    kind: str
    name: str
    why: str  # the option that needs it (``veth[eth0]:h0@br0``, ``inherit_fd socket:[12]``)


def destination_needs(restore: dict[str, Any], inherit: list[tuple[str, str, str, str]]) -> list[DestNeed]:
    """What the compiled restore options need to exist on the destination.

    ``restore``: criu_opts for the restore (its ``external`` list); ``inherit``:
    ``(key, how, path, mode)`` of the fds the destination opens. Why these:
    CRIU attaches a ``veth[IF]:X@BR`` host end to BR, bind-mounts the PATH of
    ``mnt[KEY]:PATH``, moves/uses the device of ``netdev[]``/``macvlan[]``, and
    the agent connects to a ``unix`` rule's socket / opens a ``file`` rule's file
    before the restore; each fails the restore when it is missing there.
    """
    out: list[DestNeed] = []
    for ext in restore.get("external", []) or []:
        ext = str(ext)
        if m := _VETH_BR.match(ext):
            out.append(DestNeed("bridge", m.group("br"), ext))
        elif m := _MNT.match(ext):
            out.append(DestNeed("path", m.group("path"), ext))
        elif m := _NETDEV.match(ext):
            out.append(DestNeed("link", m.group("dev"), ext))
        elif m := _DEV.match(ext):
            out.append(DestNeed("path", m.group("path"), ext))
    for key, how, path, mode in inherit:
        if not path.startswith("/"):
            continue
        if how == "connect-unix":
            out.append(DestNeed("socket", path, f"inherit_fd {key}"))
        elif how == "open-file":
            # a file the agent creates needs its directory; one it only reads must exist
            target = path if mode == "read" else (os.path.dirname(path) or "/")
            out.append(DestNeed("path" if mode == "read" else "dir", target, f"inherit_fd {key}"))
    return list(dict.fromkeys(out))


_KIND_TEXT = {"bridge": "bridge", "link": "network device", "path": "path", "socket": "UNIX socket", "dir": "directory"}


def resource_checks(needs: list[DestNeed], dst: HostProbe, subject: str) -> list[Finding]:
    """``needs-rule`` findings for every need the destination cannot meet.

    Why needs-rule and not blocker: the rule as written cannot work there,
    but the operator's decision fixes it (create the bridge / path on the
    destination, or name one that exists). A probe without ``path_kind`` /
    ``link_kind`` falls back to ``path_exists`` (and skips links).
    """
    path_kind = getattr(dst, "path_kind", None)
    link_kind = getattr(dst, "link_kind", None)
    lookup = getattr(dst, "lookup", None)
    if callable(lookup):  # one round trip for all of them
        lookup(
            [n.name for n in needs if n.kind in ("path", "socket", "dir")],
            [n.name for n in needs if n.kind in ("bridge", "link")],
        )
    findings: list[Finding] = []
    for need in needs:
        what = _KIND_TEXT[need.kind]
        problem = ""
        if need.kind in ("bridge", "link"):
            if not callable(link_kind):
                continue
            got = link_kind(need.name)
            if not got:
                problem = f"{what} {need.name} does not exist on the destination"
            elif need.kind == "bridge" and got != "bridge":
                problem = f"{need.name} exists on the destination but is not a bridge"
        else:
            got = path_kind(need.name) if callable(path_kind) else ("file" if dst.path_exists(need.name) else "")
            if not got:
                problem = f"{what} {need.name} does not exist on the destination"
            elif need.kind == "socket" and callable(path_kind) and got != "socket":
                problem = f"{need.name} on the destination is a {got}, not a UNIX socket"
            elif need.kind == "dir" and got != "dir":
                problem = f"{need.name} on the destination is a {got}, not a directory"
        if problem:
            findings.append(
                Finding(
                    f"dest-{need.kind}",
                    NEEDS_RULE,
                    subject,
                    f"{problem} (needed by {need.why}).",
                    f"Create {need.name} on the destination, or change the rule to name one that exists there.",
                    source="host",
                )
            )
    return findings


_FILE_KEY = re.compile(r"^file\[(?P<mnt>[0-9a-fA-F]+):(?P<ino>[0-9a-fA-F]+)\]$")
_MODE_KINDS = ((stat.S_ISDIR, "dir"), (stat.S_ISREG, "file"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "char"),
               (stat.S_ISBLK, "block"), (stat.S_ISFIFO, "fifo"))


def _source_kind(container: Container, key: str) -> str:
    """The file type (hostprobe's words) of the fd a ``file[MNT:INO]`` inherit replaces, read live from
    the container's fds (a device node such as the host's /dev/null is not among ``container.files``)."""
    m = _FILE_KEY.match(key)
    if not m:
        return ""
    mnt, ino = int(m.group("mnt"), 16), int(m.group("ino"), 16)
    for proc in container.processes:
        try:
            fds = os.listdir(f"/proc/{proc.pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                st = os.stat(f"/proc/{proc.pid}/fd/{fd}")
                if st.st_ino != ino:
                    continue
                info = Path(f"/proc/{proc.pid}/fdinfo/{fd}").read_text()
            except OSError:
                continue
            if f"\nmnt_id:\t{mnt}\n" in f"\n{info}":
                return next((name for test, name in _MODE_KINDS if test(st.st_mode)), "")
    return ""


def inherit_kind_checks(container: Container, inherit: list[tuple[str, str, str, str]], dst: HostProbe,
                        subject: str) -> list[Finding]:
    """A ``file`` rule whose destination is not the same kind of file as the fd it replaces.

    CRIU compares the whole st_mode of an inherited file with the dumped one, type bits included
    (files-reg.c: ``File fd/0 has bad mode 0100644 (expect 020666)``): a stdin on the host's
    /dev/null handed over as a regular file fails the restore after the freeze. ``resource_checks``
    has already looked the paths up (one round trip), so this costs nothing more.
    """
    path_kind = getattr(dst, "path_kind", None)
    if not callable(path_kind):
        return []
    out: list[Finding] = []
    for key, how, path, mode in inherit:
        if how != "open-file" or not path.startswith("/"):
            continue
        src = _source_kind(container, key)
        got = path_kind(path) if src else ""
        if not got and mode != "read":
            got = "file"  # the agent creates a missing destination as a regular file
        if not src or not got:  # unknown, or missing and only read: resource_checks says so
            continue
        if got != src:
            out.append(
                Finding(
                    "dest-file-kind",
                    NEEDS_RULE,
                    subject,
                    f"The file rule hands {path} ({got} on the destination) in place of {key}, which is a {src}: "
                    "CRIU checks the file's type and mode on restore ('File fd/N has bad mode') and would fail "
                    "after the container was frozen.",
                    f"Give a destination that is a {src} too (for a device node: /dev/null, /dev/zero or /dev/full),"
                    " or have the container open its own file.",
                    source="host",
                )
            )
    return out
