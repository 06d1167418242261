"""Check a rules file and list *every* problem with its file, line and rule.

Why list everything: an operator fixing a migration at 3 a.m. wants one pass,
not one error per run. The validator never raises and never writes: any input
(even binary junk) yields a list of :class:`Problem` (empty = ok).

A rules file is hostile input: besides mistakes, the validator refuses what
no rules author may ask of the destination (``safety``: the host's ``/`` as a
bind source, a file rule writing under ``/etc``, ``apparmor:unconfined``, a
cgroup root with ``..``...), each with its line and the reason; ``compile``
validates first, so it never produces such options.

Host checks (destination paths exist, a VF pool has a free VF, an explicit MCS
pair is not in use, the bridge exists) look at *this* host, so run them on the
destination or for a local migration; ``host_checks=False`` skips them (e.g.
when editing a file on a workstation).
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctconsole.remap import mcs, safety, vf
from ctconsole.remap.model import (
    CGROUP_MODES,
    COMMON_FIELDS,
    FILE_MODES,
    RULE_KINDS,
    TCP_MODES,
    TTY_MODES,
    Problem,
    Rule,
    RuleSet,
    Scope,
)
from ctconsole.remap.parse import MAX_BYTES, parse_text, rule_label

KNOWN_RUNTIMES = ("libvirt-lxc", "lxc", "runc", "nspawn", "namespaces", "tree")
IFNAMSIZ = 16
_KEY_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_SELINUX_RE = re.compile(r"^[^:\s]+:[^:\s]+:[^:\s]+(:\S+)?$")
_MAJMIN = re.compile(r"^\s*(\d+)\s*[:/]\s*(\d+)\s*$")


@dataclass(frozen=True)
class HostEnv:
    """Where host checks look (tests point these at fake trees)."""

    sys_root: str = "/sys"
    proc_root: str = "/proc"


def ifname_problem(name: Any) -> str | None:
    """Why ``name`` is not a valid Linux interface name (kernel ``dev_valid_name``), or None."""
    if not isinstance(name, str):
        return f"interface name must be a string, not {type(name).__name__}"
    if not name:
        return "interface name is empty"
    if len(name.encode()) >= IFNAMSIZ:
        return f"interface name {name!r} is {len(name.encode())} bytes long (at most {IFNAMSIZ - 1})"
    if name in (".", ".."):
        return f"interface name {name!r} is not allowed"
    if "/" in name or ":" in name:
        return f"interface name {name!r} contains '/' or ':'"
    if any(c.isspace() for c in name):
        return f"interface name {name!r} contains whitespace"
    if not _IFNAME_RE.match(name):
        # the kernel takes more, but ']', '@', '$'... would change the meaning of CRIU's veth[IF]:HOST@BR
        # keys and of the agent's bookkeeping (issue #10)
        return f"interface name {name!r} may only contain letters, digits, '_', '.', '-'"
    return None


def parse_majmin(value: str) -> tuple[int, int] | None:
    """``"8:16"`` or ``"8/16"`` -> ``(8, 16)``, else None."""
    m = _MAJMIN.match(value)
    return (int(m.group(1)), int(m.group(2))) if m else None


def default_mount_key(mountpoint: str) -> str:
    """The cookie used for ``mnt[...]`` when a mount rule names none: the mountpoint, slugified."""
    # same spelling as the inventory's remedy text (mnt[/srv/data]:srv-data), so previews agree
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", mountpoint.strip("/").replace("/", "-"))
    return slug or "root"


class _Checker:
    """Collects problems for one rule set; one method per rule kind."""

    def __init__(self, rs: RuleSet, host_checks: bool, host: HostEnv) -> None:
        self.rs = rs
        self.host_checks = host_checks
        self.host = host
        self.problems: list[Problem] = []
        self._used_mcs: set[tuple[int, int]] | None = None
        self._promised_vfs: dict[str, int] = {}

    def add(self, line: int, label: str, message: str) -> None:
        self.problems.append(Problem(file=self.rs.path, line=line, rule=label, message=message))

    # ---- helpers
    def _str(self, rule: Rule, label: str, name: str, required: bool = False) -> str | None:
        v = rule.get(name)
        if v is None:
            if required:
                self.add(rule.line, label, f"missing field {name!r}")
            return None
        if not isinstance(v, str):
            self.add(rule.line_of(name), label, f"{name} must be a string, not {type(v).__name__}")
            return None
        return v

    def _ifname(self, rule: Rule, label: str, name: str, required: bool = False) -> str | None:
        v = rule.get(name)
        if v is None:
            if required:
                self.add(rule.line, label, f"missing field {name!r}")
            return None
        why = ifname_problem(v)
        if why:
            self.add(rule.line_of(name), label, f"{name}: {why}")
            return None
        return str(v)

    def _abs_path(self, rule: Rule, label: str, name: str, *, must_exist: bool, kind: str = "",
                  required: bool = False) -> str | None:
        v = self._str(rule, label, name, required)
        if v is None:
            return None
        if not v.startswith("/"):
            self.add(rule.line_of(name), label, f"{name} {v!r} is not an absolute path")
            return None
        if "\x00" in v:
            self.add(rule.line_of(name), label, f"{name} contains a NUL byte")
            return None
        if must_exist and self.host_checks:
            try:
                st = os.stat(v)
            except OSError:
                self.add(rule.line_of(name), label, f"{name} {v} does not exist on this host")
                return v
            if kind == "socket" and not stat.S_ISSOCK(st.st_mode):
                self.add(rule.line_of(name), label, f"{name} {v} is not a UNIX socket")
            elif kind == "device" and not (stat.S_ISBLK(st.st_mode) or stat.S_ISCHR(st.st_mode)):
                self.add(rule.line_of(name), label, f"{name} {v} is not a device node")
        return v

    # ---- per kind
    def check_rule(self, scope: Scope, idx: int) -> None:
        rule = scope.rules[idx]
        label = rule_label(scope, idx)
        if rule.kind not in RULE_KINDS:
            shown = rule.kind or "(missing)"
            self.add(rule.line_of("kind") if rule.kind else rule.line, label,
                     f"unknown rule kind {shown!r} (known: {', '.join(RULE_KINDS)})")
            return
        required, optional, _ = RULE_KINDS[rule.kind]
        allowed = set(required) | set(optional) | set(COMMON_FIELDS)
        for name in rule.fields:
            if name not in allowed:
                self.add(rule.line_of(name), label, f"unknown field {name!r} for a {rule.kind} rule "
                         f"(allowed: {', '.join(sorted(allowed))})")
        if not isinstance(rule.get("comment", ""), str):
            self.add(rule.line_of("comment"), label, "comment must be a string")
        getattr(self, f"_check_{rule.kind}")(rule, label)

    def _check_veth(self, rule: Rule, label: str) -> None:
        self._ifname(rule, label, "interface", required=True)
        self._ifname(rule, label, "host_name", required=True)
        bridge = self._ifname(rule, label, "bridge")
        if bridge and self.host_checks and not (Path(self.host.sys_root) / "class/net" / bridge /
                                               "bridge").is_dir():
            self.add(rule.line_of("bridge"), label, f"bridge {bridge} does not exist on this host")

    def _check_netdev(self, rule: Rule, label: str) -> None:
        self._ifname(rule, label, "interface", required=True)
        given = [k for k in ("device", "macvlan_parent", "vf_pool") if k in rule.fields]
        if len(given) != 1:
            self.add(rule.line, label, "a netdev rule needs exactly one of device, macvlan_parent, "
                     f"vf_pool (found: {', '.join(given) or 'none'})")
        for k in ("device", "macvlan_parent"):
            name = self._ifname(rule, label, k)
            if name and self.host_checks and not vf.pf_exists(name, self.host.sys_root):
                self.add(rule.line_of(k), label, f"{k} {name} does not exist on this host")
        if "vf_pool" in rule.fields:
            try:
                pool = vf.pool_from_rule(rule.get("vf_pool"))
            except ValueError as exc:
                self.add(rule.line_of("vf_pool"), label, str(exc))
                return
            why = ifname_problem(pool.pf)
            if why:
                self.add(rule.line_of("vf_pool"), label, f"vf_pool.pf: {why}")
                return
            if self.host_checks:
                if not vf.pf_exists(pool.pf, self.host.sys_root):
                    self.add(rule.line_of("vf_pool"), label, f"PF {pool.pf} does not exist on this host")
                    return
                free = vf.free_vfs(pool, self.host.sys_root)
                promised = self._promised_vfs.get(pool.pf, 0)
                if len(free) <= promised:
                    self.add(rule.line_of("vf_pool"), label,
                             f"VF pool on {pool.pf} has no free VF" +
                             (f" left ({promised} already taken by earlier rules)" if promised else "") +
                             " (free = netdev in this netns, down, not enslaved)")
                self._promised_vfs[pool.pf] = promised + 1

    def _check_unix(self, rule: Rule, label: str) -> None:
        conn = self._abs_path(rule, label, "connect", must_exist=True, kind="socket", required=True)
        self._refuse(rule, label, "connect", conn, safety.socket_path)
        peer = self._str(rule, label, "peer")
        if peer is not None and not (peer.startswith("/") or peer.startswith("@")):
            self.add(rule.line_of("peer"), label, f"peer {peer!r} must be an absolute path or "
                     "@abstract name (the name the source-side peer is bound to)")
        ino = rule.get("inode")
        if ino is not None and (not isinstance(ino, int) or isinstance(ino, bool) or ino <= 0):
            self.add(rule.line_of("inode"), label, "inode must be a positive integer (the container "
                     "socket's inode)")
        if peer is None and ino is None and "peer" not in rule.fields:
            self.add(rule.line, label, "a unix rule needs peer (the peer's socket path on the "
                     "source) or inode, to know which socket it applies to")

    def _check_tty(self, rule: Rule, label: str) -> None:
        mode = rule.get("mode", "new-pty")
        if mode not in TTY_MODES:
            self.add(rule.line_of("mode"), label, f"mode {mode!r}: expected one of {', '.join(TTY_MODES)}")
        path = self._str(rule, label, "path")
        if path is not None and not path.startswith("/dev/"):
            self.add(rule.line_of("path"), label, f"path {path!r} must be a /dev/... tty path")

    def _refuse(self, rule: Rule, label: str, name: str, value: str | None, why: Any) -> None:
        """A value no rules author may ask for (safety.py): say which and why, at its line."""
        reason = why(value) if value is not None else None
        if reason:
            self.add(rule.line_of(name), label, f"{name} {value!r} refused: {reason}")

    def _check_mount(self, rule: Rule, label: str) -> None:
        mp = self._abs_path(rule, label, "mountpoint", must_exist=False, required=True)
        self._refuse(rule, label, "mountpoint", mp, safety.path_shape)
        path = self._abs_path(rule, label, "path", must_exist=not rule.get("carry"), required=True)
        self._refuse(rule, label, "path", path, safety.bind_source)
        carry = rule.get("carry")
        if carry is not None and not isinstance(carry, bool):
            self.add(rule.line_of("carry"), label, f"carry must be true or false, not {type(carry).__name__}")
        key = self._str(rule, label, "key")
        if key is not None and not _KEY_RE.match(key):
            self.add(rule.line_of("key"), label, f"key {key!r} may only contain letters, digits, "
                     "'_', '.', '-'")

    def _check_device(self, rule: Rule, label: str) -> None:
        src = self._str(rule, label, "source", required=True)
        if src is not None and parse_majmin(src) is None and not src.startswith("/"):
            self.add(rule.line_of("source"), label, f"source {src!r}: expected \"MAJOR:MINOR\" or an "
                     "absolute /dev path")
        target = self._abs_path(rule, label, "target", must_exist=True, kind="device", required=True)
        self._refuse(rule, label, "target", target, safety.path_shape)
        name = self._str(rule, label, "name")
        if name is not None and not _KEY_RE.match(name):
            self.add(rule.line_of("name"), label, f"name {name!r} may only contain letters, digits, "
                     "'_', '.', '-'")

    def _check_lsm(self, rule: Rule, label: str) -> None:
        se = self._str(rule, label, "selinux")
        aa = self._str(rule, label, "apparmor")
        if "selinux" in rule.fields and "apparmor" in rule.fields:
            self.add(rule.line, label, "give selinux or apparmor, not both")
        if not any(k in rule.fields for k in ("selinux", "apparmor", "mount_context")):
            self.add(rule.line, label, "an lsm rule needs selinux, apparmor or mount_context")
        if se is not None and not _SELINUX_RE.match(se):
            self.add(rule.line_of("selinux"), label, f"selinux {se!r}: expected user:role:type[:level]")
        elif se is not None:
            self._refuse(rule, label, "selinux", se, safety.selinux_context)
        if aa is not None and (not aa or any(c.isspace() for c in aa)):
            self.add(rule.line_of("apparmor"), label, f"apparmor profile {aa!r} is empty or has whitespace")
        elif aa is not None:
            self._refuse(rule, label, "apparmor", aa, safety.apparmor_profile)
        mc = self._str(rule, label, "mount_context")
        if mc is not None and not _SELINUX_RE.match(mc):
            self.add(rule.line_of("mount_context"), label,
                     f"mount_context {mc!r}: expected user:role:type[:level]")
        elif mc is not None:
            self._refuse(rule, label, "mount_context", mc, safety.selinux_context)
        m = self._str(rule, label, "mcs")
        if m is None:
            return
        if "selinux" not in rule.fields:
            self.add(rule.line_of("mcs"), label, "mcs only applies with selinux = \"...\"")
        if m == "auto":
            return
        pair = mcs.parse_level(m)
        if pair is None:
            self.add(rule.line_of("mcs"), label, f"mcs {m!r}: expected \"auto\" or a pair like "
                     "\"s0:c12,c345\"")
            return
        if self.host_checks:
            if self._used_mcs is None:
                self._used_mcs = mcs.used_pairs(self.host.proc_root)
            if pair in self._used_mcs:
                self.add(rule.line_of("mcs"), label, f"MCS pair {m} is already used by a process on "
                         "this host; use mcs = \"auto\" or another pair")

    def _check_cgroup(self, rule: Rule, label: str) -> None:
        mode = rule.get("mode")
        if mode is not None and (not isinstance(mode, str) or mode.upper() not in CGROUP_MODES):
            self.add(rule.line_of("mode"), label, f"mode {mode!r}: expected one of "
                     f"{', '.join(m.lower() for m in CGROUP_MODES)}")
        if "root" in rule.fields and "roots" in rule.fields:
            self.add(rule.line, label, "give root or roots, not both")
        if not any(k in rule.fields for k in ("root", "roots", "mode")):
            self.add(rule.line, label, "a cgroup rule needs root, roots or mode")
        root = self._str(rule, label, "root")
        if root is not None and not root.startswith("/"):
            self.add(rule.line_of("root"), label, f"root {root!r} is not an absolute cgroup path")
        elif root is not None:
            self._refuse(rule, label, "root", root, safety.cgroup_root)
        roots = rule.get("roots")
        if roots is None:
            return
        if not isinstance(roots, list) or not roots:
            self.add(rule.line_of("roots"), label,
                     'roots must be a list like [{ ctrl = "cpu,memory", path = "/ct/web" }]')
            return
        seen: set[str] = set()
        for item in roots:
            if not isinstance(item, dict) or set(item) - {"ctrl", "path"}:
                self.add(rule.line_of("roots"), label, f"roots entry {item!r}: expected "
                         "{ ctrl = \"...\", path = \"/...\" }")
                continue
            path, ctrl = item.get("path"), item.get("ctrl", "")
            if not isinstance(path, str) or not path.startswith("/"):
                self.add(rule.line_of("roots"), label, f"roots entry path {path!r} is not an absolute "
                         "cgroup path")
            elif safety.cgroup_root(path):
                self.add(rule.line_of("roots"), label, f"roots entry path {path!r} refused: "
                         f"{safety.cgroup_root(path)}")
            if not isinstance(ctrl, str):
                self.add(rule.line_of("roots"), label, "roots entry ctrl must be a string")
            elif ctrl in seen:
                self.add(rule.line_of("roots"), label, f"two roots for controller {ctrl or '(all)'!r}")
            else:
                seen.add(ctrl)

    def _check_tcp(self, rule: Rule, label: str) -> None:
        mode = rule.get("mode")
        if mode not in TCP_MODES:
            self.add(rule.line_of("mode"), label, f"tcp mode {mode!r}: expected one of {', '.join(TCP_MODES)}")

    def _check_file(self, rule: Rule, label: str) -> None:
        # source / fd_path name the file as it is on the *source* host: never checked against this host
        src = self._abs_path(rule, label, "source", must_exist=False)
        fdp = self._abs_path(rule, label, "fd_path", must_exist=False)
        if "source" not in rule.fields and "fd_path" not in rule.fields:
            self.add(rule.line, label, "a file rule needs source (the file's path on the source host) or "
                     "fd_path (the fd's path as the inventory shows it), to know which fd it applies to")
        for name, val in (("source", src), ("fd_path", fdp)):
            if val is not None and val.endswith(" (deleted)"):
                self.add(rule.line_of(name), label, f"{name} {val!r} names a deleted file: CRIU dumps "
                         "deleted files itself (ghost files), no file rule is needed")
        mode = rule.get("mode")
        if mode is not None and mode not in FILE_MODES:
            self.add(rule.line_of("mode"), label, f"mode {mode!r}: expected one of {', '.join(FILE_MODES)}")
        dest = self._abs_path(rule, label, "destination", must_exist=False, required=True)
        self._refuse(rule, label, "destination", dest, safety.file_destination)
        if dest is None or not self.host_checks:
            return
        line = rule.line_of("destination")
        p = Path(dest)
        if p.is_dir():
            self.add(line, label, f"destination {dest} is a directory; give the file to open")
        elif mode == "read" and not p.exists():
            self.add(line, label, f"destination {dest} does not exist on this host (mode read does not "
                     "create it)")
        elif not p.parent.is_dir():
            self.add(line, label, f"the directory of destination {dest} does not exist on this host")

    # ---- scope-level
    def check_scope(self, scope: Scope) -> None:
        if scope.selector is not None and scope.selector.runtime:
            rt = scope.selector.runtime
            if not any(c in rt for c in "*?[") and rt not in KNOWN_RUNTIMES:
                self.add(scope.line, scope.describe(), f"unknown runtime {rt!r} (known: "
                         f"{', '.join(KNOWN_RUNTIMES)})")
        seen: dict[str, tuple[int, Rule]] = {}
        keys: dict[str, tuple[int, Rule]] = {}
        file_paths: dict[str, tuple[int, Rule]] = {}
        for idx, rule in enumerate(scope.rules):
            try:
                self.check_rule(scope, idx)
            except Exception as exc:  # a validator must report, never crash
                self.add(rule.line, rule_label(scope, idx), f"cannot check this rule ({type(exc).__name__})")
            if rule.kind not in RULE_KINDS:
                continue
            try:
                slot = rule.slot()
                hash(slot)
            except Exception:
                continue
            if slot in seen:
                j, other = seen[slot]
                what = slot.split(":", 1)[1] if ":" in slot else slot
                self.add(rule.line, rule_label(scope, idx),
                         f"overlaps rule #{j + 1} (line {other.line}): both decide {what} in "
                         f"{scope.describe()}")
            else:
                seen[slot] = (idx, rule)
            if rule.kind == "mount":
                key = rule.get("key")
                mp = rule.get("mountpoint")
                if key is None and isinstance(mp, str):
                    key = default_mount_key(mp)
                if isinstance(key, str):
                    if key in keys and keys[key][1].get("mountpoint") != mp:
                        j, other = keys[key]
                        self.add(rule.line_of("key"), rule_label(scope, idx),
                                 f"mount key {key!r} is also used by rule #{j + 1} (line {other.line})")
                    keys.setdefault(key, (idx, rule))
            if rule.kind == "file":
                self._file_overlaps(scope, idx, rule, file_paths)

    def _file_overlaps(self, scope: Scope, idx: int, rule: Rule, paths: dict[str, tuple[int, Rule]]) -> None:
        """Two file rules of one block that can match the same fd (one's source is the other's
        fd_path): the slot check only sees equal sources, this sees the cross-field case."""
        own = sorted({v for v in (rule.get("source"), rule.get("fd_path")) if isinstance(v, str)})
        for path in own:
            if path in paths:
                j, other = paths[path]
                if other.slot() != rule.slot():  # an equal slot was already reported as an overlap
                    self.add(rule.line, rule_label(scope, idx), f"overlaps rule #{j + 1} (line {other.line}): "
                             f"both decide the fd on {path} in {scope.describe()}")
                break
        for path in own:
            paths.setdefault(path, (idx, rule))


def validate_ruleset(rs: RuleSet, *, host_checks: bool = True, host: HostEnv | None = None) -> list[Problem]:
    """Semantic checks of a parsed rule set (see module doc). Never raises."""
    checker = _Checker(rs, host_checks, host or HostEnv())
    for scope in rs.scopes():
        try:
            checker.check_scope(scope)
        except Exception as exc:
            checker.add(scope.line, scope.describe(), f"cannot check this scope ({type(exc).__name__})")
    return checker.problems


def validate_text(text: str, path: str = "<rules>", *, host_checks: bool = True,
                  host: HostEnv | None = None) -> list[Problem]:
    """Parse and check rules text; every problem, sorted by line. Never raises."""
    try:
        rs, problems = parse_text(text, path)
    except Exception as exc:  # parse_text is not supposed to raise; be safe anyway
        return [Problem(path, 0, "", f"cannot parse ({type(exc).__name__}: {exc})")]
    if problems and not rs.containers and not rs.defaults.rules and problems[0].message.startswith(
            ("malformed TOML", "file is ")):
        return problems
    problems = problems + validate_ruleset(rs, host_checks=host_checks, host=host)
    return sorted(problems, key=lambda p: p.line)


def validate_file(path: str | Path, *, host_checks: bool = True, host: HostEnv | None = None) -> list[Problem]:
    """Read (never write) and check a rules file. Unreadable files are one problem, not an exception."""
    p = str(path)
    try:
        with open(path, "rb") as f:  # never more than the cap: a rules file is hostile input
            raw = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return [Problem(p, 0, "", "file does not exist")]
    except IsADirectoryError:
        return [Problem(p, 0, "", "is a directory, not a rules file")]
    except OSError as exc:
        return [Problem(p, 0, "", f"cannot read: {exc.strerror}")]
    if len(raw) > MAX_BYTES:
        return [Problem(p, 0, "", f"file is larger than {MAX_BYTES} bytes, the most a rules file may have; "
                        "not reading it")]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        return [Problem(p, line, "", f"not UTF-8 text ({exc.reason})")]
    return validate_text(text, p, host_checks=host_checks, host=host)
