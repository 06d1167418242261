"""Rule dataclasses for remap files (what changes on the destination).

Why a separate module: the parser, validator, compiler, store, suggester and
the TUI editor all speak these objects. They are plain frozen data with the
source line attached, so every problem and every compiled option can point the
operator back to the line of the rules file it came from.

A rule is a ``kind`` plus a flat mapping of fields exactly as written in the
TOML file (``fields``). Keeping the raw fields (instead of one class per kind)
means a rule with a typo still loads, so the validator can report *every*
problem at once and the editor can show and fix it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: The current (and only) schema version. Files must say ``version = 1``.
SCHEMA_VERSION = 1

#: Every rule kind, with the fields it accepts (required first) and a one-line purpose.
RULE_KINDS: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    # kind: (required fields, optional fields, purpose)
    "veth": (
        ("interface", "host_name"),
        ("bridge",),
        "container veth -> host-side name (and bridge) created by CRIU on restore",
    ),
    "netdev": (
        ("interface",),
        ("device", "macvlan_parent", "vf_pool"),
        "external device (macvlan, ipvlan, SR-IOV VF) -> a device the destination provides",
    ),
    "unix": (
        ("connect",),
        ("peer", "inode"),
        "external UNIX stream peer -> socket path on the destination to connect to",
    ),
    "tty": (
        (),
        ("path", "mode"),
        "external PTY (console) -> a new PTY whose master ctconsole keeps",
    ),
    "mount": (
        ("mountpoint", "path"),
        ("key", "carry"),
        "external bind mount -> a host path on the destination (carry = true: copied there when missing)",
    ),
    "device": (
        ("source", "target"),
        ("name",),
        "mounted block device (major:minor or path) -> destination device",
    ),
    "lsm": (
        (),
        ("selinux", "apparmor", "mcs", "mount_context"),
        "SELinux context / AppArmor profile for restored tasks and mounts",
    ),
    "cgroup": (
        (),
        ("root", "roots", "mode"),
        "cgroup root remap and cgroup manage mode",
    ),
    "tcp": (
        ("mode",),
        (),
        "established TCP connections: keep (TCP repair) or close",
    ),
    "file": (
        ("destination",),
        ("source", "fd_path", "mode"),
        "fd on a file the container cannot see (e.g. a host log as stdout) -> a file opened on the destination",
    ),
}

#: Accepted spellings of ``manage_cgroups_mode`` (criu_cg_mode enum names).
CGROUP_MODES = ("IGNORE", "CG_NONE", "PROPS", "SOFT", "FULL", "STRICT")
TCP_MODES = ("keep", "close")
#: Fields every rule may carry besides its kind's own: free text shown by the editor.
COMMON_FIELDS = ("comment",)
TTY_MODES = ("new-pty",)
#: How ctconsole opens a ``file`` rule's destination before the restore (see compile.open_inherit_fds).
FILE_MODES = ("append", "read", "write", "readwrite")


@dataclass(frozen=True)
class Selector:
    """Which containers (and destinations) a ``[[container]]`` block applies to.

    Every field is an fnmatch glob; an empty field matches anything. ``to``
    matches the destination (``ssh://host``, ``netns:NAME``, ``local``) so one
    file can hold per-destination differences.
    """

    name: str = ""
    runtime: str = ""
    id: str = ""
    to: str = ""

    def describe(self) -> str:
        parts = [f"{k}={v!r}" for k, v in (("name", self.name), ("runtime", self.runtime),
                                             ("id", self.id), ("to", self.to)) if v]
        return ", ".join(parts) or "any container"


@dataclass(frozen=True)
class Rule:
    """One ``[[container.rule]]`` / ``[[defaults.rule]]`` entry.

    ``fields`` holds every key of the table except ``kind`` (raw TOML values);
    ``line`` is the 1-based line of its header (0 when unknown, e.g. built in
    memory); ``key_lines`` maps each field to its own line for precise errors.
    """

    kind: str
    fields: dict[str, Any] = field(default_factory=dict)
    line: int = 0
    key_lines: dict[str, int] = field(default_factory=dict, compare=False)
    # set when the rule comes from a [defaults] shorthand key ("tcp", "cgroup_mode"), not a table
    shorthand: str = ""

    def get(self, name: str, default: Any = None) -> Any:
        return self.fields.get(name, default)

    def line_of(self, name: str) -> int:
        """The line of field ``name`` if known, else the rule's header line."""
        return self.key_lines.get(name, self.line)

    def slot(self) -> str:
        """What this rule decides; two rules with the same slot in one scope overlap.

        Interface rules are keyed by interface name, mounts by mountpoint,
        unix rules by peer, devices by source, files by the source path (or
        the fd path when no source is given); single-valued kinds (tcp, lsm,
        cgroup, tty) have one slot each.
        """
        k = self.kind
        if k in ("veth", "netdev"):
            return f"interface:{self.get('interface')}"
        if k == "mount":
            return f"mount:{self.get('mountpoint')}"
        if k == "unix":
            ident = self.get("inode") if self.get("inode") is not None else self.get("peer", "*")
            return f"unix:{ident}"
        if k == "device":
            return f"device:{self.get('source')}"
        if k == "file":
            return f"file:{self.get('source') or self.get('fd_path')}"
        return k

    def describe(self) -> str:
        """Short human label, e.g. ``veth eth0`` or ``mount /srv/data``."""
        ident = {
            "veth": "interface", "netdev": "interface", "mount": "mountpoint",
            "unix": "peer", "device": "source", "tcp": "mode", "tty": "path", "file": "source",
        }.get(self.kind)
        val = self.get(ident) if ident else None
        if self.kind == "file" and val is None:
            val = self.get("fd_path")
        if self.kind == "unix" and val is None and self.get("inode") is not None:
            val = f"inode {self.get('inode')}"
        return f"{self.kind} {val}" if val not in (None, "") else str(self.kind)


@dataclass(frozen=True)
class Scope:
    """Either the host-wide ``[defaults]`` (``selector is None``) or one ``[[container]]`` block."""

    selector: Selector | None
    rules: tuple[Rule, ...] = ()
    line: int = 0
    index: int = -1  # position among [[container]] blocks; -1 for defaults
    comment: str = ""  # optional ``comment = "..."`` field: free text for the operator

    @property
    def is_defaults(self) -> bool:
        return self.selector is None

    def describe(self) -> str:
        if self.selector is None:
            return "defaults"
        return f"container[{self.index}] ({self.selector.describe()})"


@dataclass(frozen=True)
class RuleSet:
    """A whole rules file: defaults plus container scopes, in file order."""

    version: int = SCHEMA_VERSION
    defaults: Scope = field(default_factory=lambda: Scope(selector=None))
    containers: tuple[Scope, ...] = ()
    path: str = ""

    def scopes(self) -> list[Scope]:
        return [self.defaults, *self.containers]


@dataclass(frozen=True)
class RuleRef:
    """Where a rule lives in a file: ``container`` index (None = defaults) and rule index."""

    container: int | None
    rule: int


@dataclass(frozen=True)
class Problem:
    """One validation finding: where (file, line, rule) and what is wrong."""

    file: str
    line: int
    rule: str  # e.g. "container[0] (name='web-*') rule 2 (veth eth0)", or "" for file-level
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.rule + ': ' if self.rule else ''}{self.message}"
