"""Storage that follows the container: its root (and bind-mount sources marked ``carry = true``).

Why: a destination that shares nothing with the source has no copy of the
container's files, and CRIU restores processes, not filesystems. This is what
libvirt's ``--copy-storage-all``, LXD's move and P.Haul's filesystem migration
do, with ``rsync`` over the SSH connection the agent already uses:

1. **decide** (``carry`` request, before anything is frozen): the console
   measures each item and sends its identity; the *destination* decides
   (:func:`decide`): already there (the same directory on the same kernel,
   an identical ``.ctconsole-shared`` marker on shared storage, or
   ``--storage shared``) or carried into a fresh directory of its own,
   ``STATE/storage/ID/N``. The console never names a destination path. Not
   enough room there is a problem (a blocker for ``check --to`` too).
2. **full sync** while the container runs (:func:`sync`, ``rsync -aHAXx
   --numeric-ids --delete``);
3. **final delta** while it is frozen, inside the dump's ``post-dump``
   notification, before the restore: only what changed since step 2. A
   failure there fails the handover: CRIU resumes the source.
4. **rollback** (:func:`discard`): the destination removes ``STATE/storage/ID``,
   so it is left as it was. After a successful migration the copy is the
   container's storage there; the source's copy is left alone (it is the
   operator's data; a later migration back carries the live copy again).

Bytes and seconds of each sync go to the journal and out as ``Transfer``
events (kind ``storage``).
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shlex
import shutil
import stat
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctconsole.config import state_dir
from ctconsole.errors import CtError

MARKER = ".ctconsole-shared"
MODES = ("auto", "shared", "copy")
#: room kept free on the destination beyond the carried bytes (metadata, logs, rounding)
HEADROOM = 64 << 20
_MIGRATION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_PROGRESS = re.compile(r"^\s*([\d,]+)\s+(\d+)%\s+(\S+)\s")
_STAT_LINE = re.compile(r"^(Total bytes sent|Total transferred file size|Number of regular files transferred"
                        r"|Total file size): ([\d,]+)")


class StorageError(CtError):
    """Carrying the container's storage failed (rsync, room, a refused path)."""


@dataclass(frozen=True)
class Item:
    """One directory to carry: ``key`` "root", or ``mount:PATH`` for a bind-mount source (:func:`mount_key`)."""

    key: str
    path: str
    bytes: int = 0
    files: int = 0
    marker: str = ""
    dev: int = 0
    ino: int = 0


@dataclass(frozen=True)
class Target:
    """The destination's decision for one item."""

    key: str
    action: str  # carry | shared
    path: str
    reason: str = ""


@dataclass(frozen=True)
class SyncResult:
    bytes_sent: int
    bytes_total: int
    files: int
    seconds: float


# -- the source's side ---------------------------------------------------------------
def measure(path: str | Path) -> tuple[int, int]:
    """(bytes, files) of the regular files under ``path`` on its own filesystem (what rsync -aHx copies)."""
    root = Path(path)
    dev = os.lstat(root).st_dev
    total = files = 0
    seen: set[tuple[int, int]] = set()  # hard links are copied once (rsync -H)
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except OSError:
            continue
        with it:
            for e in it:
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    if st.st_dev == dev:
                        stack.append(Path(e.path))
                elif stat.S_ISREG(st.st_mode):
                    if st.st_nlink > 1:
                        if (st.st_dev, st.st_ino) in seen:
                            continue
                        seen.add((st.st_dev, st.st_ino))
                    total += st.st_size
                    files += 1
    return total, files


def describe(key: str, path: str | Path) -> Item:
    """Measure ``path`` and take its identity (dev/inode, shared marker) for the destination to compare."""
    p = Path(path)
    try:
        st = os.stat(p)
    except OSError as exc:
        raise StorageError(f"cannot read {p} to carry it: {exc.strerror or exc}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise StorageError(f"{p} is not a directory; only directories can be carried")
    size, files = measure(p)
    return Item(key=key, path=str(p), bytes=size, files=files, marker=read_marker(p), dev=st.st_dev, ino=st.st_ino)


def read_marker(path: Path) -> str:
    """The shared-storage marker's content (first line, at most 256 bytes), "" if none."""
    try:
        fd = os.open(path / MARKER, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return ""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return ""
        lines = os.read(fd, 256).decode(errors="replace").strip().splitlines()
        return lines[0] if lines else ""
    except OSError:
        return ""
    finally:
        os.close(fd)


def rsync_argv(src: str, dest: str, ssh: list[str] | None, final: bool) -> list[str]:
    """The rsync command: archive with hard links, ACLs, xattrs, numeric ids, one filesystem, exact mirror.

    ``ssh``: the remote shell argv (the agent's control master: no second
    login); ``dest`` is then ``[user@]host:PATH``. ``final``: the frozen delta
    (no progress lines, so nothing slows it down).
    """
    argv = ["rsync", "-aHAXx", "--numeric-ids", "--delete", "--protect-args", "--stats", "--timeout=60"]
    if not final:
        argv += ["--info=progress2", "--no-inc-recursive"]
    if ssh:
        argv += ["-e", shlex.join(ssh)]
    return [*argv, "--", src.rstrip("/") + "/", dest.rstrip("/") + "/"]


def sync(item: Item, target: Target, remote: tuple[list[str], str] | None, final: bool,
         progress: Callable[[int, int, float], None] | None = None, timeout: float | None = None,
         should_abort: Callable[[], bool] = lambda: False) -> SyncResult:
    """Copy ``item`` to where the destination decided (``remote`` = (ssh argv, "[user@]host") or None).

    ``progress(done, total, rate)`` is called as rsync reports. Raises
    :class:`StorageError` with rsync's last lines on failure or timeout.
    """
    dest = f"{remote[1]}:{target.path}" if remote else target.path
    argv = rsync_argv(item.path, dest, remote[0] if remote else None, final)
    if shutil.which("rsync") is None:
        raise StorageError("rsync is not installed here", ["install it (scripts/setup does)"])
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    out: list[str] = []
    assert proc.stdout is not None
    buf = b""
    try:
        while True:
            if should_abort():
                raise StorageError("aborted by the operator during the storage copy")
            if timeout is not None and time.monotonic() - t0 > timeout:
                raise StorageError(f"the storage copy of {item.path} took longer than {timeout:.0f} s")
            # short waits, so a stalled rsync (a dead link) cannot outlive the timeout or an abort
            ready, _, _ = select.select([proc.stdout], [], [], 0.5)
            if not ready:
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            buf += chunk
            *lines, buf = re.split(rb"[\r\n]", buf)
            for raw in lines:
                line = raw.decode(errors="replace")
                m = _PROGRESS.match(line)
                if m and progress is not None:
                    done = int(m.group(1).replace(",", ""))
                    pct = int(m.group(2))
                    progress(done, item.bytes or (done * 100 // pct if pct else 0), _rate(m.group(3)))
                elif line.strip():
                    out.append(line)
        rc = proc.wait()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        proc.wait()
        raise
    err = proc.stderr.read().decode(errors="replace").splitlines() if proc.stderr else []
    if rc != 0:
        raise StorageError(f"rsync of {item.path} to {dest} failed (exit {rc})", [*err[-8:]])
    stats = {m.group(1): int(m.group(2).replace(",", "")) for ln in out if (m := _STAT_LINE.match(ln))}
    return SyncResult(bytes_sent=stats.get("Total bytes sent", 0),
                      bytes_total=stats.get("Total file size", item.bytes),
                      files=stats.get("Number of regular files transferred", 0),
                      seconds=time.monotonic() - t0)


def _rate(text: str) -> float:
    m = re.match(r"([\d.]+)([kMGT]?)B/s", text)
    if not m:
        return 0.0
    return float(m.group(1)) * {"": 1, "k": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[m.group(2)]


# -- the destination's side ------------------------------------------------------------
def storage_root() -> Path:
    """Where carried storage lives on this host: ``STATE/storage`` (the agent's own state dir)."""
    return state_dir() / "storage"


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def decide(migration_id: str, mode: str, items: Iterable[Item], source_boot: str, dry_run: bool = False
           ) -> tuple[list[Target], list[str], int]:
    """(targets, problems, free bytes): where each item goes on this host, and why not if it cannot.

    Already here (nothing copied): ``mode == "shared"`` (the path must
    exist), the very same directory (same kernel, device and inode: a
    ``local`` or ``netns:`` destination), or a ``.ctconsole-shared`` marker
    with the same content on both sides (shared storage). Otherwise the item
    is carried into ``STATE/storage/ID/N``, a fresh directory this function
    creates (unless ``dry_run``). Not enough free space there is a problem.
    """
    if mode not in MODES:
        raise StorageError(f"unknown storage mode {mode!r} (use {', '.join(MODES)})")
    if not _MIGRATION_ID.fullmatch(migration_id):
        raise StorageError(f"bad migration id {migration_id!r}")
    root = storage_root()
    targets: list[Target] = []
    problems: list[str] = []
    need = 0
    same_kernel = bool(source_boot) and source_boot == boot_id()
    for n, it in enumerate(items):
        here = Path(it.path)
        if not here.is_absolute() or ".." in here.parts:
            problems.append(f"{it.key}: {it.path!r} is not a plain absolute path")
            continue
        st = None
        with contextlib.suppress(OSError):
            st = os.stat(here)
        if mode == "shared":
            if st is None or not stat.S_ISDIR(st.st_mode):
                problems.append(f"{it.key}: {it.path} does not exist here (--storage shared)")
            targets.append(Target(it.key, "shared", it.path, "--storage shared"))
            continue
        if mode == "auto" and st is not None and stat.S_ISDIR(st.st_mode):
            if same_kernel and (st.st_dev, st.st_ino) == (it.dev, it.ino):
                targets.append(Target(it.key, "shared", it.path, "the same directory (shared filesystem)"))
                continue
            if it.marker and read_marker(here) == it.marker:
                targets.append(Target(it.key, "shared", it.path, f"identical {MARKER} marker"))
                continue
        need += it.bytes
        targets.append(Target(it.key, "carry", str(root / migration_id / str(n)),
                              "not here" if st is None else "a different copy is here; carrying the source's"))
    free = _free_bytes(root)
    if need and free < need + HEADROOM:
        problems.append(f"not enough room for the container's storage: {_mib(need)} to carry, "
                        f"{_mib(free)} free in {root}")
    if not dry_run and not problems and any(t.action == "carry" for t in targets):
        _make_dirs(root, migration_id, [t for t in targets if t.action == "carry"])
    return targets, problems, free


def _free_bytes(root: Path) -> int:
    p = root
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        st = os.statvfs(p)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _make_dirs(root: Path, migration_id: str, targets: list[Target]) -> None:
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = os.lstat(root)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise StorageError(f"{root} must be our own directory, not writable by others")
    base = root / migration_id
    try:
        os.mkdir(base, 0o700)  # fresh: an existing one belongs to another (or a stale) migration
    except FileExistsError as exc:
        raise StorageError(f"{base} already exists") from exc
    for t in targets:
        os.mkdir(t.path, 0o755)


def discard(migration_id: str) -> bool:
    """Rollback: remove everything carried for this migration (True if there was something)."""
    if not _MIGRATION_ID.fullmatch(migration_id):
        return False
    base = storage_root() / migration_id
    if not base.is_dir() or base.is_symlink():
        return False
    shutil.rmtree(base, ignore_errors=True)
    return True


def rewrite_restore_opts(opts: dict[str, Any], items: list[Item], targets: list[Target]) -> dict[str, Any]:
    """The restore options with carried paths: ``root``, and ``mnt[KEY]:PATH`` externals whose PATH was carried."""
    where = {t.key: t.path for t in targets if t.action == "carry"}
    moved = {it.path: where[it.key] for it in items if it.key in where and it.key != "root"}
    out = dict(opts)
    if "root" in where:
        out["root"] = where["root"]
    ext = out.get("external")
    if isinstance(ext, list):
        new = []
        for e in ext:
            m = re.match(r"^(mnt\[[^\]]*\]):(.*)$", str(e))
            new.append(f"{m.group(1)}:{moved[m.group(2)]}" if m and m.group(2) in moved else e)
        out["external"] = new
    return out


def mount_key(path: str) -> str:
    """The item key of a carried bind-mount source (remap's ``CarrySpec.path``)."""
    return f"mount:{path}"


# -- the conversation (console side; the agent answers with decide()) ---------------------
@dataclass(frozen=True)
class Plan:
    """The destination's answer for a set of items: where each goes, blockers, free bytes there."""

    items: list[Item]
    targets: list[Target]
    problems: list[str]
    free_bytes: int

    @property
    def carried(self) -> list[tuple[Item, Target]]:
        by_key = {t.key: t for t in self.targets}
        return [(it, by_key[it.key]) for it in self.items if by_key.get(it.key, Target("", "", "")).action == "carry"]

    @property
    def carried_bytes(self) -> int:
        return sum(it.bytes for it, _ in self.carried)

    def summary(self) -> list[str]:
        """One line per item, as ``check --to`` and the migration log show them."""
        out = []
        by_key = {t.key: t for t in self.targets}
        for it in self.items:
            t = by_key.get(it.key)
            what = "root" if it.key == "root" else f"bind-mount source {it.path}"
            if t is None:
                out.append(f"{what} {it.path}: no answer from the destination")
            elif t.action == "shared":
                out.append(f"{what} {it.path}: already on the destination ({t.reason}); nothing copied")
            else:
                out.append(f"{what} {it.path}: carried, {_mib(it.bytes)} in {it.files} files ({t.reason})")
        return out


def items_for(root: str, carry_paths: Iterable[str]) -> list[Item]:
    """Describe what may have to follow the container: its root (if it has its own) and carried mount sources.

    ``root``: ``Container.root_path`` when the container has its own mount
    namespace ("" otherwise); ``carry_paths``: remap's ``CompiledOptions.carry_paths()``.
    """
    items = [describe("root", root)] if root and root != "/" else []
    items += [describe(mount_key(p), p) for p in dict.fromkeys(carry_paths)]
    return items


def ask(channel: Any, migration_id: str, items: list[Item], mode: str = "auto", dry_run: bool = False,
        timeout: float = 60.0) -> Plan:
    """Send a ``carry`` request to the destination agent and return its plan (``dry_run``: create nothing)."""
    from ctconsole.proto import agent_pb2

    req = agent_pb2.CarryRequest(migration_id=migration_id, mode=mode, dry_run=dry_run, items=[
        agent_pb2.CarryItem(key=it.key, path=it.path, bytes=it.bytes, files=it.files, marker=it.marker,
                            boot_id=boot_id(), dev=it.dev, ino=it.ino) for it in items])
    reply = channel.call("carry", req, timeout=timeout)
    targets = [Target(t.key, t.action, t.path, t.reason) for t in reply.targets]
    return Plan(items, targets, list(reply.problems), int(reply.free_bytes))


def answer(req: Any) -> Any:
    """The agent's side of ``carry``: :func:`decide` on this host, as a ``CarryReply``."""
    from ctconsole.proto import agent_pb2

    items = [Item(i.key, i.path, i.bytes, i.files, i.marker, i.dev, i.ino) for i in req.items]
    boots = {i.boot_id for i in req.items}
    targets, problems, free = decide(req.migration_id, req.mode or "auto", items,
                                     boots.pop() if len(boots) == 1 else "", dry_run=req.dry_run)
    return agent_pb2.CarryReply(free_bytes=free, problems=problems, targets=[
        agent_pb2.CarryTarget(key=t.key, action=t.action, path=t.path, reason=t.reason) for t in targets])


def preview(channel: Any, root: str, carry_paths: Iterable[str], mode: str = "auto") -> Plan:
    """For ``ctconsole check --to DEST``: what would be carried, how much, and blockers (no room).

    ``channel`` is an open agent session (``ctconsole.agent``); nothing is created there.
    """
    import secrets

    return ask(channel, f"check-{secrets.token_hex(6)}", items_for(root, carry_paths), mode, dry_run=True)
