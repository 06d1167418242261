"""Turn a rules file and one container into the exact CRIU options a migration sends.

Why one function: DESIGN.md wants every CRIU option produced by remap compile
(+ feasibility remedies) so the operator can preview exactly what will be sent.
``ctconsole rules compile`` prints this object, the TUI shows it, and the
migration engine merges ``dump``/``restore`` into its own base options and
acts on ``inherit`` and ``setup_ns_actions``.

Option dicts use the field names of ``criu_opts`` (proto/rpc.proto), JSON
ready, as ``ctconsole.criu.client`` expects. External key formats follow
criu-digest §3.9:

====== ======================================= ==========================================
kind   dump                                    restore
====== ======================================= ==========================================
veth   -                                       ``veth[IF]:HOST[@BR]``
netdev -                                       ``netdev[IF]:DEV`` / ``macvlan[IF]:PARENT``
unix   ``unix[INO]``                           inherit_fd ``socket:[INO]`` (connected socket)
tty    orphan_pts_master, notify_scripts       + shell_job; the new master arrives by notify
mount  ``mnt[MOUNTPOINT]:KEY``                 ``mnt[KEY]:PATH``
device ``dev[MAJ/MIN]:NAME``                   ``dev[NAME]:/dev/path``
lsm    -                                       lsm_profile, lsm_mount_context
cgroup manage_cgroups_mode                     cg_root, manage_cgroups_mode
tcp    tcp_established / tcp_close             same
file   ``file[MNTID:INO]`` (hex, from fdinfo)   inherit_fd ``file[MNTID:INO]`` (destination opened)
====== ======================================= ==========================================
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import random
import stat
from dataclasses import asdict, dataclass, field
from typing import Any

from ctconsole.errors import UsageError
from ctconsole.model import Container, FdRef
from ctconsole.remap import mcs, safety, vf
from ctconsole.remap.model import Rule, RuleSet, Scope, Selector
from ctconsole.remap.validate import HostEnv, default_mount_key, parse_majmin, validate_ruleset

# InheritSpec.how values
CONNECT_UNIX = "connect-unix"  # connect a SOCK_STREAM to .path, pass it as inherit_fd .key
KEEP_PTY_MASTER = "keep-pty-master"  # the orphan-pts-master notify carries a new master: keep it
OPEN_FILE = "open-file"  # open .path with .mode (creating it with .perm), pass it as inherit_fd .key
#: open(2) flags per ``file`` rule mode. No O_TRUNC: CRIU reopens the fd with the task's own flags and
#: seeks to the saved offset, so existing content must stay where it is.
FILE_OPEN_FLAGS = {
    "append": os.O_WRONLY | os.O_APPEND | os.O_CREAT,
    "write": os.O_WRONLY | os.O_CREAT,
    "readwrite": os.O_RDWR | os.O_CREAT,
    "read": os.O_RDONLY,
}
# SetupNsAction.action values
MOVE_VF = "move-vf"


@dataclass(frozen=True)
class InheritSpec:
    """An fd the restore needs and how the engine obtains it.

    ``via="inherit_fd"``: the engine opens the fd (``how``/``path``; see
    :func:`open_inherit_fds`) and passes it to ``client.restore(inherit_fds={key: fd})``. ``via="notify"``: CRIU hands
    the fd to us in the ``key`` notification (``orphan-pts-master``); keep it
    open for the container's lifetime.
    """

    key: str
    how: str
    path: str = ""
    via: str = "inherit_fd"
    line: int = 0  # rules-file line of the rule that asked for it
    why: str = ""
    mode: str = ""  # open-file: append, read, write or readwrite (FILE_OPEN_FLAGS)
    # open-file: permission bits for a destination ctconsole creates (the original file's, when the
    # compile saw it; CRIU refuses a file whose bits differ: 'has bad mode'); -1 = 0666 minus umask
    perm: int = -1


@dataclass(frozen=True)
class SetupNsAction:
    """Work the engine does in the restore's ``setup-namespaces`` notify (root pid known, netns empty).

    ``move-vf``: ``vf.pick_free_vf(VfPool(pf, vfs))`` then
    ``vf.move_link_to_netns(chosen, notify.pid, new_name=interface)``.
    ``preview`` is the VF that would be picked on this host now (informative).
    """

    action: str
    interface: str
    pf: str = ""
    vfs: tuple[int, ...] | None = None
    preview: str = ""
    line: int = 0

    def pool(self) -> vf.VfPool:
        return vf.VfPool(pf=self.pf, vfs=self.vfs)


@dataclass(frozen=True)
class AppliedRule:
    """Which rule produced options (for previews: 'line 14: veth eth0 (container[0] ...)')."""

    line: int
    rule: str
    scope: str


@dataclass(frozen=True)
class CarrySpec:
    """A bind-mount source the migration copies to the destination when it is missing there
    (a mount rule with ``carry = true``; issue #13): ``path`` on the source host, mounted at
    ``mountpoint`` in the container; restored from the same ``path`` on the destination."""

    path: str
    mountpoint: str
    line: int = 0


#: Every CRIU option key remap may produce (proto/rpc.proto names). Anything else (``root``,
#: ``join_ns``, ...) is a bug and never leaves compile_rules: a rules author may not ask for it.
ALLOWED_OPTIONS = frozenset({"external", "orphan_pts_master", "notify_scripts", "shell_job", "lsm_profile",
                             "lsm_mount_context", "manage_cgroups_mode", "cg_root", "tcp_established",
                             "tcp_close"})


@dataclass
class CompiledOptions:
    """What remap contributes to the dump and restore requests of one migration."""

    dump: dict[str, Any] = field(default_factory=dict)
    restore: dict[str, Any] = field(default_factory=dict)
    inherit: list[InheritSpec] = field(default_factory=list)
    setup_ns_actions: list[SetupNsAction] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    applied: list[AppliedRule] = field(default_factory=list)
    #: bind-mount sources to copy to the destination when missing there (mount rules with carry = true)
    carry: list[CarrySpec] = field(default_factory=list)

    def inherit_fd_keys(self) -> list[str]:
        """Keys the engine must supply in ``client.restore(inherit_fds=...)``."""
        return [i.key for i in self.inherit if i.via == "inherit_fd"]

    def carry_paths(self) -> list[str]:
        """The host paths the migration engine syncs to the destination (each once, in rule order)."""
        return list(dict.fromkeys(c.path for c in self.carry))

    def to_json(self) -> dict[str, Any]:
        return {
            "dump": self.dump,
            "restore": self.restore,
            "inherit_fd": [asdict(i) for i in self.inherit],
            "setup_ns_actions": [
                {**asdict(a), "vfs": list(a.vfs) if a.vfs is not None else None} for a in self.setup_ns_actions
            ],
            "notes": list(self.notes),
            "applied_rules": [asdict(a) for a in self.applied],
            "carry": [asdict(c) for c in self.carry],
        }


def open_inherit_fds(specs: list[InheritSpec]) -> dict[str, int]:
    """Open the fds the restore needs (``via="inherit_fd"`` specs): key -> fd, for ``client.restore``.

    ``connect-unix``: a SOCK_STREAM connected to ``spec.path``. ``open-file``:
    ``spec.path`` opened with ``spec.mode`` (created when missing, except for
    ``read``, with ``spec.perm``). The caller owns the fds and closes them
    after RESTORE (CRIU has dup'ed them into the restored tasks by then). On
    failure every fd opened so far is closed and a CtError names the path, so
    the migration stops before the restore.
    """
    import socket

    from ctconsole.errors import CtError

    out: dict[str, int] = {}
    try:
        for spec in specs:
            if spec.via != "inherit_fd":
                continue
            if spec.key in out:
                continue  # two rules resolved to the same fd: one inherited fd serves both
            if spec.how == OPEN_FILE:
                out[spec.key] = _open_file(spec)
                continue
            if spec.how != CONNECT_UNIX:
                raise CtError(f"do not know how to open an fd for {spec.key} ({spec.how})")
            sk = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sk.connect(spec.path)
            except OSError as exc:
                sk.close()
                raise CtError(f"cannot connect to {spec.path} for {spec.key} (rules line {spec.line}): "
                              f"{exc.strerror or exc}") from None
            out[spec.key] = sk.detach()
    except BaseException:
        for fd in out.values():
            os.close(fd)
        raise
    return out


def _open_file(spec: InheritSpec) -> int:
    """Open (or create) a ``file`` rule's destination; a file we create gets ``spec.perm``.

    Why create-exclusive first: only a file ctconsole creates may be chmod'ed
    (an operator's existing file keeps its bits); CRIU compares the bits with
    the original's on restore, so a fresh file must carry the original's.
    """
    from ctconsole.errors import CtError

    mode = spec.mode or "append"
    if mode not in FILE_OPEN_FLAGS:
        raise CtError(f"unknown open mode {mode!r} for {spec.key} (rules line {spec.line})")
    flags = FILE_OPEN_FLAGS[mode] | os.O_NOCTTY | os.O_CLOEXEC
    try:
        if flags & os.O_CREAT:
            try:
                fd = os.open(spec.path, flags | os.O_EXCL, 0o600)
            except FileExistsError:
                return os.open(spec.path, flags & ~os.O_CREAT)
            try:
                os.fchmod(fd, spec.perm if spec.perm >= 0 else 0o666 & ~_umask())
            except OSError:
                os.close(fd)
                raise
            return fd
        return os.open(spec.path, flags)
    except OSError as exc:
        raise CtError(f"cannot open {spec.path} ({mode}) for {spec.key} (rules line {spec.line}): "
                      f"{exc.strerror or exc}") from None


def _umask() -> int:
    """The process umask (os.umask can only be read by setting it)."""
    old = os.umask(0o022)
    os.umask(old)
    return old


@dataclass(frozen=True)
class FileFd:
    """A path-backed fd of the container as a ``file`` rule sees it.

    ``dev``, ``flags`` (the open flags of each fd on it) and ``st_mode`` are
    only known for fds read live from /proc (0 / () / -1 otherwise); the
    inventory's :class:`OpenFile` gives path, mnt_id and inode.
    """

    path: str
    mnt_id: int
    inode: int
    dev: int = 0
    flags: tuple[int, ...] = ()
    st_mode: int = -1
    holders: tuple[FdRef, ...] = ()
    external: bool | None = None  # the inventory's verdict; None = unknown (live fd)

    @property
    def perm(self) -> int:
        """Permission bits (-1 when unknown)."""
        return self.st_mode & 0o7777 if self.st_mode >= 0 else -1

    @property
    def size_checked(self) -> bool:
        """Whether CRIU compares the size at restore (files-reg.c should_check_size: regular files
        except fds opened write-only + O_APPEND); unknown counts as checked."""
        if self.st_mode >= 0 and not stat.S_ISREG(self.st_mode):
            return False
        if not self.flags:
            return True
        return any((fl & os.O_ACCMODE) != os.O_WRONLY or not fl & os.O_APPEND for fl in self.flags)

    @property
    def key(self) -> str:
        """CRIU's external id for it (files-reg.c: ``file[%x:%lx]``, mnt_id and inode in hex)."""
        return f"file[{self.mnt_id:x}:{self.inode:x}]"


def _mode_of(flags: int) -> str:
    """The file rule mode that matches an fd's open flags (fdinfo ``flags:``)."""
    acc = flags & os.O_ACCMODE
    if acc == os.O_RDONLY:
        return "read"
    if acc == os.O_WRONLY:
        return "append" if flags & os.O_APPEND else "write"
    return "readwrite"


def _is_local(container: Container) -> bool:
    """Whether the container's processes are this host's (the same pid and name in /proc)."""
    procs = container.processes or ()
    if not procs:
        return bool(container.init_pid) and os.path.exists(f"/proc/{container.init_pid}")
    p = procs[0]
    try:
        with open(f"/proc/{p.pid}/comm") as f:
            return f.read().strip() == p.name[:15]
    except OSError:
        return False


def live_file_fds(container: Container) -> list[FileFd]:
    """Path-backed fds of a container on this host, from /proc (any kind: files, /dev/null...).

    Why besides the inventory: the inventory lists device fds such as an
    inherited /dev/null as devices (no mnt_id), and does not record open flags
    or permission bits, which the rule's default mode and a created
    destination's bits come from.
    """
    if not _is_local(container):
        return []
    pids = [p.pid for p in container.processes] or [container.init_pid]
    found: dict[tuple[int, int], FileFd] = {}
    for pid in pids:
        try:
            names = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for name in names:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{name}")
                if not target.startswith("/") or target.startswith(("/memfd:", "/secretmem")):
                    continue
                mnt_id, flags = 0, -1
                with open(f"/proc/{pid}/fdinfo/{name}") as f:
                    for line in f:
                        if line.startswith("mnt_id:"):
                            mnt_id = int(line.split()[1])
                        elif line.startswith("flags:"):
                            flags = int(line.split()[1], 8)
                st = os.stat(f"/proc/{pid}/fd/{name}")
            except (OSError, ValueError):
                continue
            ref = FdRef(pid, int(name))
            old = found.get((mnt_id, st.st_ino))
            if old is not None:
                found[(mnt_id, st.st_ino)] = dataclasses.replace(
                    old, holders=(*old.holders, ref), flags=(*old.flags, *([flags] if flags >= 0 else [])))
                continue
            found[(mnt_id, st.st_ino)] = FileFd(path=target, mnt_id=mnt_id, inode=st.st_ino, dev=st.st_dev,
                                                flags=(flags,) if flags >= 0 else (), st_mode=st.st_mode,
                                                holders=(ref,))
    return list(found.values())


def selector_matches(sel: Selector, container: Container, dest: str | None) -> bool:
    """fnmatch every non-empty selector field; ``to`` only matters when a destination is known."""
    if sel.name and not fnmatch.fnmatchcase(container.name, sel.name):
        return False
    if sel.runtime and not fnmatch.fnmatchcase(container.runtime, sel.runtime):
        return False
    if sel.id and not fnmatch.fnmatchcase(container.id, sel.id):
        return False
    return not (sel.to and not fnmatch.fnmatchcase(dest or "local", sel.to))


def effective_rules(rs: RuleSet, container: Container, dest: str | None = None,
                    notes: list[str] | None = None) -> list[tuple[Scope, Rule]]:
    """The rules that apply to ``container``: defaults, then matching blocks; later scopes win per slot.

    Why "later wins": a file reads top-down like CSS; a specific block placed
    after a broad ``name = "*"`` block refines it. Each override is noted.
    cgroup rules merge field-wise (mode vs root), all other kinds replace.
    """
    chosen: dict[str, tuple[Scope, Rule]] = {}
    scopes = [rs.defaults] + [s for s in rs.containers if s.selector and selector_matches(s.selector,
                                                                                          container, dest)]
    for scope in scopes:
        for rule in scope.rules:
            slot = rule.slot()
            if slot in chosen and notes is not None:
                old_scope, old = chosen[slot]
                notes.append(f"line {rule.line}: {rule.describe()} in {scope.describe()} overrides "
                             f"line {old.line} in {old_scope.describe()}")
            if rule.kind == "cgroup" and slot in chosen:
                # mode and root(s) are separate decisions: a block that only sets a root keeps
                # the defaults' mode (and vice versa)
                base = dict(chosen[slot][1].fields)
                if "root" in rule.fields or "roots" in rule.fields:
                    base.pop("root", None)
                    base.pop("roots", None)
                rule = dataclasses.replace(rule, fields={**base, **rule.fields})
            chosen[slot] = (scope, rule)
    return sorted(chosen.values(), key=lambda sr: sr[1].line)


def _append(opts: dict[str, Any], key: str, value: Any) -> None:
    lst = opts.setdefault(key, [])
    if value not in lst:
        lst.append(value)


def _set(out: CompiledOptions, where: str, key: str, value: Any, rule: Rule) -> None:
    opts = out.dump if where == "dump" else out.restore
    if key in opts and opts[key] != value:
        out.notes.append(f"line {rule.line}: {key} was {opts[key]!r}, now {value!r}")
    opts[key] = value


class _Compiler:
    def __init__(self, container: Container, dest: str | None, host: HostEnv,
                 used_mcs: set[tuple[int, int]] | None, rng: random.Random | None) -> None:
        self.c = container
        self.dest = dest
        self.host = host
        self.used_mcs = used_mcs
        self.rng = rng
        self.out = CompiledOptions()
        self.handled: set[str] = set()  # slots of the container's externals covered by a rule
        self._files: list[FileFd] | None = None

    def note(self, rule: Rule, text: str) -> None:
        self.out.notes.append(f"line {rule.line}: {text}")

    def veth(self, r: Rule) -> None:
        ifname, host_name, bridge = r.get("interface"), r.get("host_name"), r.get("bridge")
        self._check_iface(r, ifname, ("veth",))
        key = f"veth[{ifname}]:{host_name}" + (f"@{bridge}" if bridge else "")
        _append(self.out.restore, "external", key)
        if not bridge:
            self.note(r, f"no bridge: CRIU leaves host end {host_name} down and unattached")

    def netdev(self, r: Rule) -> None:
        ifname = r.get("interface")
        iface = self._check_iface(r, ifname, ("macvlan", "ipvlan", "sriov-vf", "veth", "physical"))
        if r.get("device"):
            _append(self.out.restore, "external", f"netdev[{ifname}]:{r.get('device')}")
            if iface is not None and iface.kind != "veth":
                self.note(r, f"netdev[] moves a pre-created device; CRIU supports that for veth only, "
                          f"{ifname} is {iface.kind}")
        elif r.get("macvlan_parent"):
            _append(self.out.restore, "external", f"macvlan[{ifname}]:{r.get('macvlan_parent')}")
        elif r.get("vf_pool") is not None:
            pool = vf.pool_from_rule(r.get("vf_pool"))
            promised = tuple(a.preview for a in self.out.setup_ns_actions if a.preview)
            free = vf.free_vfs(pool, self.host.sys_root, exclude=promised)
            preview = free[0].netdev if free else ""
            self.out.setup_ns_actions.append(SetupNsAction(action=MOVE_VF, interface=str(ifname), pf=pool.pf,
                                                           vfs=pool.vfs, preview=preview, line=r.line))
            where = f"this host ({preview})" if preview else "the destination (none free here now)"
            self.note(r, f"a free VF of {pool.pf} is picked at restore time on {where} and moved into the "
                      f"container netns as {ifname} during setup-namespaces")
            self.out.restore["notify_scripts"] = True
            if iface is None or iface.kind in ("sriov-vf", "physical"):
                self.note(r, f"CRIU refuses to dump a plain ethernet device such as a VF ('Unsupported "
                          f"link'): {ifname} must leave the container's netns before the dump")

    def unix(self, r: Rule) -> None:
        peer, ino, connect = r.get("peer"), r.get("inode"), r.get("connect")
        matched = [s for s in self.c.sockets if s.family == "unix" and s.external is not None
                   and ((ino is not None and s.inode == ino) or
                        (ino is None and peer is not None and s.peer_path == peer))]
        if not matched:
            if ino is not None:
                # an explicit inode is enough to build the keys even without inventory data
                matched_inodes = [int(ino)]
            else:
                self.note(r, f"no external unix socket of {self.c.name} has peer {peer!r}; rule unused")
                return
        else:
            matched_inodes = [s.inode for s in matched]
            for s in matched:
                if s.type not in ("stream", "seqpacket"):
                    self.note(r, f"socket {s.inode} is {s.type}: dgram peers with a name only need "
                              "ext_unix_sk; the rule still passes it as an external")
        for inode in matched_inodes:
            _append(self.out.dump, "external", f"unix[{inode}]")
            self.out.inherit.append(InheritSpec(key=f"socket:[{inode}]", how=CONNECT_UNIX, path=str(connect),
                                                line=r.line, why=f"external unix peer {peer or inode}"))
            self.handled.add(f"unix:{inode}")

    def tty(self, r: Rule) -> None:
        for where in ("dump", "restore"):
            _set(self.out, where, "orphan_pts_master", True, r)
            _set(self.out, where, "notify_scripts", True, r)
        _set(self.out, "restore", "shell_job", True, r)
        path = r.get("path", "")
        self.out.inherit.append(InheritSpec(key="orphan-pts-master", how=KEEP_PTY_MASTER, via="notify",
                                            path=path or "", line=r.line,
                                            why="new PTY master for the container's console; "
                                            "closing it hangs up the container"))

    def mount(self, r: Rule) -> None:
        mp, path = r.get("mountpoint"), r.get("path")
        key = r.get("key") or default_mount_key(mp)
        if self.c.mounts and not any(m.mountpoint == mp for m in self.c.mounts):
            self.note(r, f"{self.c.name} has no mount at {mp}; rule sent anyway")
        if self.c.mounts and "mnt" not in self.c.own_namespaces:
            self.note(r, f"{self.c.name} shares the host mount namespace: CRIU dumps no mounts")
        _append(self.out.dump, "external", f"mnt[{mp}]:{key}")
        _append(self.out.restore, "external", f"mnt[{key}]:{path}")
        self.handled.add(f"mount:{mp}")
        if r.get("carry") is True:
            self.out.carry.append(CarrySpec(path=str(path), mountpoint=str(mp), line=r.line))
            self.note(r, f"{path} is copied to the destination when it is missing there (carry = true)")

    def device(self, r: Rule) -> None:
        src, target = str(r.get("source")), r.get("target")
        mm = parse_majmin(src)
        if mm is None:
            try:
                rdev = os.stat(src).st_rdev
            except OSError as exc:
                raise UsageError(f"line {r.line}: device source {src}: {exc.strerror}") from None
            mm = (os.major(rdev), os.minor(rdev))
            if mm == (0, 0):
                raise UsageError(f"line {r.line}: device source {src} is not a device node")
        name = r.get("name") or f"dev_{mm[0]}_{mm[1]}"
        self.handled.add(f"device:{mm[0]}:{mm[1]}")
        _append(self.out.dump, "external", f"dev[{mm[0]}/{mm[1]}]:{name}")
        _append(self.out.restore, "external", f"dev[{name}]:{target}")

    def lsm(self, r: Rule) -> None:
        se, aa, m, mc = r.get("selinux"), r.get("apparmor"), r.get("mcs"), r.get("mount_context")
        level = ""
        if m == "auto":
            used = self.used_mcs if self.used_mcs is not None else mcs.used_pairs(self.host.proc_root)
            level = mcs.allocate(used, self.rng)
            self.note(r, f"MCS pair {level} is free among the processes of the host this compile ran on; "
                      "compile on the destination so the pair is checked against its processes")
        elif isinstance(m, str):
            level = m
        if se:
            ctx = mcs.with_level(se, level) if level else se
            _set(self.out, "restore", "lsm_profile", f"selinux:{ctx}", r)
        elif aa:
            _set(self.out, "restore", "lsm_profile", f"apparmor:{aa}", r)
        if mc:
            _set(self.out, "restore", "lsm_mount_context", mcs.with_level(mc, level) if level else mc, r)

    def cgroup(self, r: Rule) -> None:
        mode = r.get("mode")
        if isinstance(mode, str):
            _set(self.out, "dump", "manage_cgroups_mode", mode.upper(), r)
            _set(self.out, "restore", "manage_cgroups_mode", mode.upper(), r)
        roots: list[dict[str, str]] = []
        if isinstance(r.get("root"), str):
            roots.append({"path": r.get("root")})
        for item in r.get("roots") or []:
            entry = {"path": item["path"]}
            if item.get("ctrl"):
                entry = {"ctrl": item["ctrl"], "path": item["path"]}
            roots.append(entry)
        if roots:
            _set(self.out, "restore", "cg_root", roots, r)

    def tcp(self, r: Rule) -> None:
        keep = r.get("mode") == "keep"
        for where in ("dump", "restore"):
            opts = self.out.dump if where == "dump" else self.out.restore
            opts.pop("tcp_close" if keep else "tcp_established", None)
            _set(self.out, where, "tcp_established" if keep else "tcp_close", True, r)

    def file(self, r: Rule) -> None:
        """Every fd on the rule's file becomes ``external file[MNT:INO]`` plus an ``open-file``
        inherit spec. Why per CRIU key, not per fd: CRIU names the external by mount and inode,
        so all fds (and processes) sharing that file take the one inherited fd."""
        source, fd_path, dest, mode = r.get("source"), r.get("fd_path"), r.get("destination"), r.get("mode")
        source_id: tuple[int, int] | None = None
        if source:
            try:
                st = os.stat(source)
                source_id = (st.st_dev, st.st_ino)
            except OSError:
                pass  # compiled away from the source: match by path only
        matched = [f for f in self._file_fds() if (fd_path and f.path == fd_path) or (source and (
            f.path == source or (source_id is not None and f.dev != 0 and (f.dev, f.inode) == source_id)))]
        what = " or ".join(repr(v) for v in (source, fd_path) if v)
        if not matched:
            self.note(r, f"no fd of {self.c.name} is open on {what}; rule unused")
            return
        for f in matched:
            self.handled.add(f"file:{f.path}")
        by_key: dict[str, list[FileFd]] = {}
        for f in matched:
            by_key.setdefault(f.key, []).append(f)
        for key, fds in by_key.items():
            if key in {i.key for i in self.out.inherit}:
                self.note(r, f"{key} is already given by an earlier file rule; this one adds nothing for it")
                continue
            modes = sorted({_mode_of(fl) for f in fds for fl in f.flags})
            if mode:
                chosen = str(mode)
            elif not modes:
                chosen = "append"
                self.note(r, f"mode append for {key}: the original fd's access mode is unknown here")
            else:
                # fds of one file opened differently: CRIU reopens each with its own flags, so the
                # destination only has to allow them all
                chosen = modes[0] if len(modes) == 1 else "readwrite"
                self.note(r, f"mode {chosen} for {key}: from the original fd's flags")
            seen = [f for f in fds if f.flags or f.st_mode >= 0]  # live: CRIU's own test applies
            if any(f.size_checked for f in seen) if seen else chosen != "append":
                self.note(r, f"CRIU reopens {dest} with the task's own flags and offset and, unless the fd is "
                          "write-only + append, refuses it when its size differs from the original's at dump "
                          "('has bad size'): give it a copy of the file")
            if any(f.external is False for f in fds):
                self.note(r, f"{fds[0].path} is visible in the container; the rule still makes CRIU take it "
                          f"from {dest} on restore")
            original = next((f.perm for f in fds if f.perm >= 0), -1)
            perm = safety.safe_perm(original)
            if perm != original:
                # e.g. /dev/null (0666) as the source: a world-writable root file on the destination would
                # let any local user there become root (issue #10)
                self.note(r, f"{dest} is created {perm:04o}, not {original:04o} as the original: ctconsole never "
                          "creates a file with group/other write or set-id bits; CRIU refuses a mode that differs "
                          "('has bad mode'), so create it with the bits you want before migrating")
            _append(self.out.dump, "external", key)
            self.out.inherit.append(InheritSpec(
                key=key, how=OPEN_FILE, path=str(dest), line=r.line, mode=chosen, perm=perm,
                why=f"fd on {fds[0].path} (mount {fds[0].mnt_id}) taken from {dest} on restore"))

    def _file_fds(self) -> list[FileFd]:
        """Inventory files plus live fds (once per compile), one entry per CRIU file key."""
        if self._files is None:
            by_key: dict[str, FileFd] = {}
            for f in self.c.files:
                if f.deleted:
                    continue
                ff = FileFd(path=f.path, mnt_id=f.mnt_id, inode=f.inode, holders=f.holders,
                            external=f.external is not None)
                by_key[ff.key] = ff
            for ff in live_file_fds(self.c):
                old = by_key.get(ff.key)
                # live data adds flags, dev and bits; the inventory's external verdict is kept
                by_key[ff.key] = ff if old is None else dataclasses.replace(ff, external=old.external)
            self._files = list(by_key.values())
        return self._files

    def _check_iface(self, r: Rule, ifname: Any, kinds: tuple[str, ...]) -> Any:
        self.handled.add(f"interface:{ifname}")
        if not self.c.interfaces:
            return None
        iface = next((i for i in self.c.interfaces if i.name == ifname), None)
        if iface is None:
            self.note(r, f"{self.c.name} has no interface {ifname}; rule sent anyway")
        elif iface.kind not in kinds:
            self.note(r, f"{ifname} is a {iface.kind} interface, not {'/'.join(kinds)}")
        return iface


def _uncovered(container: Container, handled: set[str]) -> list[str]:
    """Notes for external items of the container that need a rule and got none."""
    from ctconsole.remap.suggest import item_label, item_slot, rule_kind_for

    notes: list[str] = []
    for category, item in container.externals():
        kind = rule_kind_for(item, category)
        if kind is None or item_slot(item, kind) in handled:
            continue
        notes.append(f"no {kind} rule for {item_label(item, category)}: {item.external.reason} "
                     f"(see 'ctconsole rules suggest {container.name}')")
    return notes


def compile_rules(rs: RuleSet, container: Container, dest: str | None = None, *,
                  host: HostEnv | None = None, used_mcs: set[tuple[int, int]] | None = None,
                  rng: random.Random | None = None) -> CompiledOptions:
    """Compile ``rs`` for ``container`` migrating to ``dest`` (None/"local" = this host).

    Raises UsageError listing the file's problems when it does not validate
    (structural checks only: host checks belong to the destination). VF
    previews and ``mcs = "auto"`` look at this host (``host``); ``used_mcs``
    and ``rng`` make MCS allocation deterministic for tests.
    """
    problems = validate_ruleset(rs, host_checks=False)
    if problems:
        raise UsageError(f"rules file {rs.path} has {len(problems)} problem(s)", [str(p) for p in problems])
    host = host or HostEnv()
    comp = _Compiler(container, dest, host, used_mcs, rng)
    for scope, rule in effective_rules(rs, container, dest, comp.out.notes):
        getattr(comp, rule.kind)(rule)
        comp.out.applied.append(AppliedRule(line=rule.line, rule=rule.describe(), scope=scope.describe()))
        if rule.kind in ("tcp", "tty", "lsm", "cgroup"):
            comp.handled.add(rule.kind)
    comp.out.notes.extend(_uncovered(container, comp.handled))
    for where, opts in (("dump", comp.out.dump), ("restore", comp.out.restore)):
        bad = sorted(set(opts) - ALLOWED_OPTIONS)
        if bad:  # defence in depth: validate refuses every rule that could lead here
            raise UsageError(f"internal error: the rules produced {where} option(s) {', '.join(bad)}, which no "
                             "rules file may set; nothing was sent")
    return comp.out
