"""The destination's own policy: what a peer may ask this agent to do as root.

Why a policy on the destination: the agent runs as root and does what the
console's requests say (restore options, inherited fds, probes). Without a
boundary, whoever speaks the protocol (or writes a rules file) is root here.
The destination's root decides, in ``/etc/ctconsole/agent.toml`` (root-owned,
not group/world-writable; ``$CTCONSOLE_AGENT_POLICY`` names another file for
tests), which host resources a restore may be given. An absent file means the
built-in default below. A file that is unsafe or does not parse refuses every
request (fail closed) with the reason, never a traceback.

Every check is one function per request kind returning :class:`Refusal`
objects that name the policy key that refused (``files.open``,
``restore.roots``, ...), so the console can show "refused by the
destination's policy (files.open)" before anything is frozen.

The file (every key optional; values shown are the built-in defaults)::

    [connect]
    users = ["root"]             # login users that may run the agent (uid 0 always may, when listed)
    groups = []                  # ... or members of these groups
    [restore]
    roots = [...]                # container root dirs: below one of these, root-owned, not g/o-writable
    bind_sources = [...]         # host paths bind-mounted into containers (external mnt[K]:PATH, ext_mnt)
    cgroup_roots = ["/"]         # cg_root paths: strictly below one of these, no ".."
    lsm_labels = []              # lsm_profile / lsm_mount_context values allowed verbatim
    join_ns = false              # may a restore join namespaces that exist on this host
    [files]
    open = [...]                 # inherited open-file fds: files below these dirs
    perm_mask = 0o755            # bits a created file may have (never g/o write, never set-id/sticky)
    sockets = [...]              # inherited connect-unix fds: sockets below these dirs
    [network]
    bridges = [...]              # glob patterns of bridges a veth may join
    netdevs = []                 # glob patterns of host devices that may be moved/used (netdev[], macvlan[])
    vf_pfs = ["*"]               # glob patterns of SR-IOV PFs whose VFs a vf_pool rule may take
    [images]
    max_bytes = 68719476736      # bytes of images one migration may write here
    [probes]
    NAME = ["argv0", "arg", ...] # run in the restored container's namespaces when the source asks --probe NAME
"""

from __future__ import annotations

import fnmatch
import grp
import os
import pwd
import re
import stat
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctconsole import config
from ctconsole.errors import CtError

POLICY_ENV = "CTCONSOLE_AGENT_POLICY"
DEFAULT_PATH = Path("/etc/ctconsole/agent.toml")
MAX_POLICY_BYTES = 256 * 1024
#: a created file never gets these, whatever the policy says (group/other write, set-id, sticky)
NEVER_BITS = 0o7022
IFNAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}$")  # IFNAMSIZ 16 with the NUL
PROBE_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
#: built-in probes that run only the destination's own ``ip`` in the container's network namespace
#: (never a binary of the container, never its mount namespace): ``link:IFNAME``
LINK_PROBE = "link:"
#: InheritFd.how of the stdio pipes the agent makes itself (migrate/pipes.py HOW): no host path involved
PIPE_RELAY = "pipe-relay"

_RUNTIME_DIRS = ("/var/lib/lxc", "/var/lib/machines", "/var/lib/libvirt", "/var/lib/containers",
                 "/var/lib/docker", "/run/containerd", "/run/runc", "/var/lib/ctconsole/lab")
_TEMP_DIRS = ("/tmp", "/var/tmp")
#: what runtimes bind from the host into their containers (libvirt_lxc, LXC, runc): a container's own
#: cgroup directories (never a whole hierarchy: see check_restore_options), per-netns sysctls, and the
#: /proc files lxcfs or libvirt's FUSE virtualise
_RUNTIME_BINDS = ("/sys/fs/cgroup", "/proc/sys/net", "/proc/meminfo", "/proc/cpuinfo", "/proc/stat",
                  "/proc/uptime", "/proc/loadavg", "/proc/diskstats", "/proc/swaps", "/proc/vmstat",
                  "/proc/slabinfo", "/sys/devices/system/cpu")


class PolicyError(CtError):
    """The policy file is unsafe or invalid: the agent refuses everything until root fixes it."""


@dataclass(frozen=True)
class Refusal:
    """One thing the policy does not allow, and the key that says so."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.message} (destination policy: {self.key})"


@dataclass(frozen=True)
class Policy:
    """The policy in force. ``source`` is the file it came from, or "built-in default"."""

    source: str = "built-in default"
    users: tuple[str, ...] = ("root",)
    groups: tuple[str, ...] = ()
    roots: tuple[str, ...] = (*_RUNTIME_DIRS, *_TEMP_DIRS)
    bind_sources: tuple[str, ...] = (*_RUNTIME_DIRS, "/srv", *_TEMP_DIRS, *_RUNTIME_BINDS)
    cgroup_roots: tuple[str, ...] = ("/",)
    lsm_labels: tuple[str, ...] = ()
    join_ns: bool = False
    files_open: tuple[str, ...] = ("/var/log", "/srv", *_TEMP_DIRS)
    perm_mask: int = 0o755
    sockets: tuple[str, ...] = ("/var/lib/ctconsole/lab", *_TEMP_DIRS)
    bridges: tuple[str, ...] = ("ctlab*", "ctt*", "lxcbr*", "virbr*", "docker0", "br-*", "cni*")
    netdevs: tuple[str, ...] = ()
    vf_pfs: tuple[str, ...] = ("*",)
    max_image_bytes: int = 64 << 30
    probes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def summary(self) -> list[str]:
        """Human lines for ``ctconsole doctor`` and the docs."""
        probes = ", ".join(sorted(self.probes)) or "none"
        return [
            f"source: {self.source}",
            f"connect: users {_j(self.users)}; groups {_j(self.groups)}",
            f"restore.roots: {_j(self.roots)}",
            f"restore.bind_sources: {_j(self.bind_sources)}",
            f"restore.cgroup_roots: {_j(self.cgroup_roots)} (strictly below; no '..')",
            f"restore.lsm_labels: {_j(self.lsm_labels)}; restore.join_ns: {str(self.join_ns).lower()}",
            f"files.open: {_j(self.files_open)}; files.perm_mask: {self.perm_mask & ~NEVER_BITS:#o}",
            f"files.sockets: {_j(self.sockets)}",
            f"network.bridges: {_j(self.bridges)}; network.netdevs: {_j(self.netdevs)}; "
            f"network.vf_pfs: {_j(self.vf_pfs)}",
            f"images.max_bytes: {self.max_image_bytes} ({self.max_image_bytes >> 20} MiB)",
            f"probes: {probes} (built in: link:IFNAME)",
        ]


def _j(items: Iterable[str]) -> str:
    return ", ".join(items) or "none"


# -- loading ---------------------------------------------------------------------------
_SCHEMA: dict[str, dict[str, tuple[str, str]]] = {
    # section -> key -> (field, kind)
    "connect": {"users": ("users", "names"), "groups": ("groups", "names")},
    "restore": {"roots": ("roots", "paths"), "bind_sources": ("bind_sources", "paths"),
                "cgroup_roots": ("cgroup_roots", "paths"), "lsm_labels": ("lsm_labels", "names"),
                "join_ns": ("join_ns", "bool")},
    "files": {"open": ("files_open", "paths"), "perm_mask": ("perm_mask", "mode"),
              "sockets": ("sockets", "paths")},
    "network": {"bridges": ("bridges", "globs"), "netdevs": ("netdevs", "globs"), "vf_pfs": ("vf_pfs", "globs")},
    "images": {"max_bytes": ("max_image_bytes", "size")},
}


def policy_path() -> Path:
    v = os.environ.get(POLICY_ENV)
    return Path(v) if v else DEFAULT_PATH


def load(path: Path | None = None) -> Policy:
    """The policy in force: ``path`` (default :func:`policy_path`), or the default when the file is absent.

    Raises :class:`PolicyError` (never anything else) when the file is not
    root-owned, is group/world-writable, is reached through a symlink, is too
    large, or does not match the schema.
    """
    explicit = path is not None or bool(os.environ.get(POLICY_ENV))
    p = path or policy_path()
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        if explicit:
            raise PolicyError(f"agent policy {p} does not exist") from None
        return Policy()
    except OSError as exc:
        raise PolicyError(f"agent policy {p}: {exc.strerror or exc}"
                          + (" (a symbolic link is not accepted)" if os.path.islink(p) else "")) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PolicyError(f"agent policy {p} is not a regular file")
        if st.st_uid != 0:
            raise PolicyError(f"agent policy {p} is owned by uid {st.st_uid}; only root's policy is used")
        if st.st_mode & 0o022:
            raise PolicyError(f"agent policy {p} is group/world-writable (mode {st.st_mode & 0o7777:o})")
        parent = os.stat(p.parent)
        if parent.st_uid != 0 or (parent.st_mode & 0o022 and not parent.st_mode & stat.S_ISVTX):
            raise PolicyError(f"agent policy {p}: its directory {p.parent} is writable by others than root")
        data = os.read(fd, MAX_POLICY_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_POLICY_BYTES:
        raise PolicyError(f"agent policy {p} is larger than {MAX_POLICY_BYTES} bytes")
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PolicyError(f"agent policy {p} is not valid TOML: {exc}") from None
    return from_dict(doc, str(p))


def from_dict(doc: Mapping[str, Any], source: str) -> Policy:
    """Build a :class:`Policy` from parsed TOML; unknown keys and bad types are a :class:`PolicyError`."""
    values: dict[str, Any] = {"source": source}
    problems: list[str] = []
    for section, body in doc.items():
        if section == "probes":
            probes = _probes(body, problems)
            values["probes"] = probes
            continue
        schema = _SCHEMA.get(section)
        if schema is None:
            problems.append(f"unknown section [{section}] (known: {', '.join([*_SCHEMA, 'probes'])})")
            continue
        if not isinstance(body, dict):
            problems.append(f"[{section}] must be a table")
            continue
        for key, value in body.items():
            if key not in schema:
                problems.append(f"unknown key {section}.{key} (known: {', '.join(schema)})")
                continue
            fname, kind = schema[key]
            ok, conv = _convert(kind, value)
            if not ok:
                problems.append(f"{section}.{key}: {conv}")
            else:
                values[fname] = conv
    if problems:
        raise PolicyError(f"agent policy {source} is invalid", problems)
    return Policy(**values)


def _probes(body: Any, problems: list[str]) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    if not isinstance(body, dict):
        problems.append("[probes] must be a table of NAME = [argv...]")
        return out
    for name, argv in body.items():
        if not PROBE_NAME_RE.fullmatch(name) or name.startswith(LINK_PROBE):
            problems.append(f"probes.{name}: a probe name is 1-64 of [A-Za-z0-9_.-]")
        elif (not isinstance(argv, list) or not argv or len(argv) > 64
              or not all(isinstance(a, str) and a and "\0" not in a for a in argv)):
            problems.append(f"probes.{name}: expected a non-empty list of strings (the argv)")
        else:
            out[name] = tuple(argv)
    return out


def _convert(kind: str, value: Any) -> tuple[bool, Any]:
    if kind == "bool":
        return (True, value) if isinstance(value, bool) else (False, "expected true or false")
    if kind in ("mode", "size"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return False, "expected a non-negative integer" + (" (e.g. 0o755)" if kind == "mode" else "")
        if kind == "mode" and value > 0o7777:
            return False, "expected permission bits (at most 0o7777)"
        return True, value
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or len(value) > 256:
        return False, "expected a list of strings"
    if kind == "paths":
        bad = [v for v in value if not _normal_abs(v)]
        if bad:
            return False, f"expected absolute paths without '.', '..' or '//': {', '.join(map(repr, bad))}"
    if kind in ("names", "globs"):
        bad = [v for v in value if not v or len(v) > 255 or any(c in v for c in "\0\n/")]
        if bad:
            return False, f"bad entries: {', '.join(map(repr, bad))}"
    return True, tuple(value)


# -- lexical helpers ---------------------------------------------------------------------
def _normal_abs(path: str) -> bool:
    if not path.startswith("/") or "\0" in path or len(path) > 4096:
        return False
    if path == "/":
        return True
    parts = path.rstrip("/").split("/")[1:]
    return all(p not in ("", ".", "..") for p in parts)


def below(path: str, prefixes: Iterable[str], *, strict: bool = False) -> bool:
    """Is normalised absolute ``path`` at (unless ``strict``) or below one of ``prefixes``?"""
    if not _normal_abs(path):
        return False
    path = path.rstrip("/") or "/"
    for pre in prefixes:
        pre = pre.rstrip("/") or "/"
        if path == pre:
            if not strict:
                return True
            continue
        if path.startswith(pre if pre == "/" else pre + "/"):
            return True
    return False


def own_dirs() -> tuple[str, ...]:
    """The agent's own directories (images, run dir, journals): never handed to a container, whatever the policy."""
    state = config.state_dir()
    images = os.environ.get("CTCONSOLE_IMAGES_DIR") or str(state / "images")
    dirs = [str(config.run_dir()), images, *(str(state / d) for d in ("work", "journal", "agent-logs", "selftest"))]
    return tuple(os.path.abspath(d) for d in dirs)


def _own(path: str) -> bool:
    return below(path, own_dirs())


def _cgroup_hierarchy(path: str) -> bool:
    """/sys/fs/cgroup itself or one controller's root below it (/sys/fs/cgroup/memory, .../unified)."""
    parts = path.rstrip("/").split("/")[1:]
    return parts[:3] == ["sys", "fs", "cgroup"] and len(parts) <= 4


def agent_storage() -> str:
    """Where this agent puts storage it carried for a container (migrate/storage.py): always a valid root."""
    return os.path.abspath(config.state_dir() / "storage")


def valid_ifname(name: str) -> bool:
    """A network device name the kernel accepts and our bookkeeping can hold (no ']', '$', '@', '/')."""
    return bool(IFNAME_RE.fullmatch(name)) and name not in (".", "..")


def _glob(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


# -- checks: one per request kind ---------------------------------------------------------
def check_connect(policy: Policy, uid: int | None = None, loginuid: int | None = None,
                  groups: Iterable[int] | None = None) -> list[Refusal]:
    """Who runs this agent: the login user (kernel loginuid, kept across sudo) must be allowed.

    ``uid`` is the real uid; the login user is ``loginuid`` when the session
    has one (ssh logins do), else the real uid. Allowed: a user named in
    ``connect.users`` (``root`` stands for uid 0), or a member of a group in
    ``connect.groups``.
    """
    uid = os.getuid() if uid is None else uid
    if loginuid is None:
        loginuid = _loginuid()
    who = uid if loginuid in (None, 0xFFFFFFFF) else loginuid
    name = _user_name(who)
    if name in policy.users or (who == 0 and "root" in policy.users):
        return []
    member = set(groups if groups is not None else _user_gids(who))
    allowed = {g for g in (_group_gid(n) for n in policy.groups) if g is not None}
    if member & allowed:
        return []
    return [Refusal("connect.users", f"user {name or who} may not use this agent "
                                     f"(allowed: users {_j(policy.users)}; groups {_j(policy.groups)})")]


def _loginuid() -> int | None:
    try:
        return int(Path("/proc/self/loginuid").read_text().strip())
    except (OSError, ValueError):
        return None


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return ""


def _user_gids(uid: int) -> set[int]:
    try:
        pw = pwd.getpwuid(uid)
    except KeyError:
        return set()
    return {pw.pw_gid, *os.getgrouplist(pw.pw_name, pw.pw_gid)}


def _group_gid(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def check_inherit(policy: Policy, how: str, path: str, perm: int = -1, creates: bool = True) -> list[Refusal]:
    """An inherited fd: ``open-file`` PATH (created with ``perm`` when missing) or ``connect-unix`` PATH."""
    if _normal_abs(path) and _own(path):
        key = "files.sockets" if how == "connect-unix" else "files.open"
        return [Refusal(key, f"{path!r} is inside the agent's own directories (never handed to a container)")]
    if how == "connect-unix":
        if not below(path, policy.sockets, strict=True):
            return [Refusal("files.sockets", f"connecting to {path!r} is not allowed "
                                             f"(sockets below: {_j(policy.sockets)})")]
        return []
    if how != "open-file":
        return [Refusal("files.open", f"unknown inherited fd kind {how!r}")]
    from ctconsole.agent.safefs import DEV_FILES

    if path in DEV_FILES:
        return []  # the kernel's own /dev/null, /dev/zero, /dev/full: opened as they are, never created
    out = []
    if not below(path, policy.files_open, strict=True):
        out.append(Refusal("files.open", f"opening {path!r} is not allowed (files below: {_j(policy.files_open)})"))
    if creates and perm >= 0:
        allowed = policy.perm_mask & ~NEVER_BITS
        extra = perm & ~allowed
        if extra:
            what = []
            if extra & 0o6000:
                what.append("set-id")
            if extra & 0o1000:
                what.append("sticky")
            if extra & 0o022:
                what.append("group/world-writable")
            if extra & ~0o7022:
                what.append(f"bits {extra & ~0o7022:#o}")
            out.append(Refusal("files.perm_mask", f"{path}: permission {perm:#o} would make a "
                                                   f"{' '.join(what)} file (allowed bits {allowed:#o})"))
    return out


def check_probe(policy: Policy, name: str) -> tuple[tuple[str, ...], list[Refusal]]:
    """The argv for probe ``name`` on this host (its namespaces flag first), or a refusal.

    Returns ``(("net", "ip", "link", "show", IF), [])`` for the built-in
    ``link:IF`` probe (the destination's own ``ip`` in the container's network
    namespace only) and ``(("all", *argv), [])`` for a probe the policy defines.
    """
    if name.startswith(LINK_PROBE):
        ifname = name[len(LINK_PROBE):]
        if not valid_ifname(ifname):
            return (), [Refusal("probes", f"link probe: bad interface name {ifname!r}")]
        return ("net", "ip", "link", "show", "dev", ifname), []
    argv = policy.probes.get(name)
    if argv is None:
        known = ", ".join(sorted(policy.probes)) or "none defined"
        return (), [Refusal("probes", f"no probe named {name!r} on the destination "
                                      f"(defined: {known}; built in: link:IFNAME)")]
    return ("all", *argv), []


def check_image_bytes(policy: Policy, total: int) -> list[Refusal]:
    if total > policy.max_image_bytes:
        return [Refusal("images.max_bytes", f"images would exceed {policy.max_image_bytes} bytes "
                                            f"({policy.max_image_bytes / (1 << 20):.1f} MiB): {total} bytes "
                                            "received, written or announced")]
    return []


def check_setup_ns(policy: Policy, actions: Iterable[tuple[str, str, str]]) -> list[Refusal]:
    """Remap setup-namespaces actions ``(action, interface, pf)``: VF pools of allowed PFs only."""
    out = []
    for action, interface, pf in actions:
        if action != "move-vf":
            out.append(Refusal("network.vf_pfs", f"unknown setup-namespaces action {action!r}"))
        elif not valid_ifname(interface) or not valid_ifname(pf):
            out.append(Refusal("network.vf_pfs", f"bad interface or PF name ({interface!r}, {pf!r})"))
        elif not _glob(pf, policy.vf_pfs):
            out.append(Refusal("network.vf_pfs", f"VFs of {pf} may not be used (allowed: {_j(policy.vf_pfs)})"))
    return out


_EXT_RE = re.compile(r"^([a-z]+)\[([^\]]*)\](?::(.*))?$")


def check_restore_options(policy: Policy, opts: Mapping[str, Any], *, look: bool = True) -> list[Refusal]:
    """Every host resource a restore's criu_opts would hand to the container.

    ``look``: also check the file system (roots root-owned and private, bind
    sources not world-writable, no symlinks on the way).
    """
    from ctconsole.agent import safefs  # same layer; imported here so the pure checks stay cheap

    out: list[Refusal] = []
    root = opts.get("root")
    if root is not None:
        if isinstance(root, str) and _normal_abs(root) and _own(root):
            out.append(Refusal("restore.roots", f"container root {root!r} is inside the agent's own directories"))
        elif not isinstance(root, str) or not below(root, (*policy.roots, agent_storage()), strict=True):
            out.append(Refusal("restore.roots", f"container root {root!r} is not below an allowed directory "
                                                f"({_j(policy.roots)})"))
        elif look and not (below(root, (agent_storage(),), strict=True) and not os.path.lexists(root)):
            # (a carried root not made yet, as `check --to` asks before any carry: the agent makes it itself)
            why = safefs.dir_problem(root, root_owned=True, no_write=0o022)
            if why:
                out.append(Refusal("restore.roots", f"container root refused: {why}"))
    binds: list[tuple[str, str]] = []
    for ext in _strs(opts.get("external"), "external", out):
        m = _EXT_RE.match(ext)
        if not m:
            out.append(Refusal("restore.options", f"malformed external {ext!r}"))
            continue
        kind, key, val = m.group(1), m.group(2), m.group(3) or ""
        if kind in ("mnt", "dev"):
            binds.append((ext, val))
        elif kind == "veth":
            name, _, bridge = val.partition("@")
            if not valid_ifname(name):
                out.append(Refusal("network.names", f"veth host name {name!r} is not a valid device name "
                                                    "(1-15 of [A-Za-z0-9_.-])"))
            if bridge and not (valid_ifname(bridge) and _glob(bridge, policy.bridges)):
                out.append(Refusal("network.bridges", f"bridge {bridge!r} may not be used "
                                                      f"(allowed: {_j(policy.bridges)})"))
        elif kind in ("netdev", "macvlan"):
            if not (valid_ifname(val) and _glob(val, policy.netdevs)):
                out.append(Refusal("network.netdevs", f"host device {val!r} may not be given to a container "
                                                      f"({ext}; allowed: {_j(policy.netdevs)})"))
        elif kind not in ("unix", "tty", "file"):
            out.append(Refusal("restore.options", f"external kind {kind!r} is not accepted ({ext})"))
    for item in _dicts(opts.get("ext_mnt"), "ext_mnt", out):
        binds.append((f"ext_mnt {item.get('key')}", str(item.get("val", ""))))
    for what, src in binds:
        if _normal_abs(src) and _own(src):
            out.append(Refusal("restore.bind_sources", f"{what}: {src!r} is inside the agent's own directories"))
        elif _normal_abs(src) and _cgroup_hierarchy(src):
            out.append(Refusal("restore.bind_sources", f"{what}: {src!r} is a whole cgroup hierarchy of this host "
                                                       "(only a container's own cgroup directory may be bound)"))
        elif not below(src, (*policy.bind_sources, agent_storage())):
            out.append(Refusal("restore.bind_sources", f"{what}: host path {src!r} may not be mounted into a "
                                                       f"container (allowed: {_j(policy.bind_sources)})"))
        elif look:
            why = (safefs.dir_problem(src, root_owned=False, no_write=0o002) if os.path.isdir(src)
                   else safefs.ancestors_problem(src))
            if why:
                out.append(Refusal("restore.bind_sources", f"{what}: {why}"))
    for v in _dicts(opts.get("veths"), "veths", out):
        name = str(v.get("if_out", ""))
        if not valid_ifname(name):
            out.append(Refusal("network.names", f"veth host name {name!r} is not a valid device name"))
    for item in _dicts(opts.get("cg_root"), "cg_root", out):
        path = item.get("path")
        if not isinstance(path, str) or not below(path, policy.cgroup_roots, strict=True):
            out.append(Refusal("restore.cgroup_roots", f"cgroup root {path!r} is not strictly below "
                                                       f"{_j(policy.cgroup_roots)} (no '..', no '.')"))
    for key in ("cgroup_yard", "freeze_cgroup"):
        if opts.get(key):
            out.append(Refusal("restore.options", f"{key} names a host directory or cgroup; not accepted from "
                                                  "the peer"))
    for key in ("lsm_profile", "lsm_mount_context"):
        label = opts.get(key)
        if label and label not in policy.lsm_labels:
            out.append(Refusal("restore.lsm_labels", f"{key} {label!r} is not allowed "
                                                     f"(allowed: {_j(policy.lsm_labels)})"))
    if opts.get("join_ns") and not policy.join_ns:
        out.append(Refusal("restore.join_ns", "joining existing namespaces of this host is not allowed"))
    return out


def _strs(value: Any, what: str, out: list[Refusal]) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        out.append(Refusal("restore.options", f"{what} must be a list of strings"))
        return []
    return value


def _dicts(value: Any, what: str, out: list[Refusal]) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        out.append(Refusal("restore.options", f"{what} must be a list of objects"))
        return []
    return value


@dataclass(frozen=True)
class InheritAsk:
    """One inherited fd a restore asks for (the fields of agent.proto's InheritFd that matter here)."""

    how: str
    path: str
    mode: str = ""
    perm: int = -1


def check_restore(policy: Policy, opts: Mapping[str, Any], inherit: Iterable[InheritAsk] = (),
                  probe_name: str = "", probe_argv: Iterable[str] = (),
                  setup_ns: Iterable[tuple[str, str, str]] = (), *, look: bool = True) -> list[Refusal]:
    """Everything one restore request asks for; the agent's restore and ``check --to``'s host probe share it."""
    out = check_restore_options(policy, opts, look=look)
    for ask in inherit:
        if ask.how == PIPE_RELAY:
            continue
        out.extend(check_inherit(policy, ask.how, ask.path, ask.perm, creates=(ask.mode or "append") != "read"))
    if list(probe_argv):
        out.append(Refusal("probes", "a probe command from the peer is not accepted: the source names a probe "
                                     "(--probe NAME) and its argv comes from this host's policy"))
    if probe_name:
        out.extend(check_probe(policy, probe_name)[1])
    out.extend(check_setup_ns(policy, setup_ns))
    return out
