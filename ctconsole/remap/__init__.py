"""Remap rules: what changes on the destination, compiled into CRIU options.

Modules: ``model`` (rule dataclasses), ``parse`` (tomlkit: values and line
numbers in one linear pass, size and depth caps), ``validate``, ``safety``
(what no rules author may ask of the destination), ``compile``, ``store``
(tomlkit round-trip edits, atomic save), ``suggest``, ``vf`` (SR-IOV pools),
``mcs`` (SELinux categories). The format is documented in docs/remap.md.

This package namespace is the *editor facade*: what a form-based editor (the
TUI rules screen) needs, with rule values as the strings an operator types.
It keeps one rules file (:func:`default_rules_path`) and edits the
``[[container]]`` block written for one container by name, leaving the rest of
the file (and its comments) alone. Everything here is UI-free and cheap to
import; heavier modules load when a function runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctconsole.model import Container
from ctconsole.remap.model import RULE_KINDS as _SCHEMA
from ctconsole.remap.model import Rule, RuleRef, RuleSet, Scope, Selector


@dataclass(frozen=True)
class FieldSpec:
    """One form field of a rule kind (``example`` doubles as the input placeholder)."""

    name: str
    label: str
    placeholder: str = ""
    required: bool = True
    help: str = ""


@dataclass(frozen=True)
class KindSpec:
    """A rule kind as an editor presents it."""

    name: str
    title: str
    fields: tuple[FieldSpec, ...]
    help: str = ""


def _f(name: str, label: str, placeholder: str, required: bool = True, help: str = "") -> FieldSpec:
    return FieldSpec(name, label, placeholder, required, help)


#: Form fields per kind, in the order an editor shows them. Values are typed as strings and
#: converted by :func:`rule_from_form` (vf_pool as "PF" or "PF:0,1,4-7"; inode as digits).
KINDS: tuple[KindSpec, ...] = (
    KindSpec("veth", "veth -> host bridge", (
        _f("interface", "Interface in the container", "eth0"),
        _f("host_name", "Host-side name on the destination", "vweb0"),
        _f("bridge", "Bridge on the destination", "br0", False),
    ), _SCHEMA["veth"][2]),
    KindSpec("netdev", "External device / macvlan / SR-IOV VF", (
        _f("interface", "Interface in the container", "eth1"),
        _f("device", "Pre-created device on the destination", "pre0", False),
        _f("macvlan_parent", "macvlan parent on the destination", "eno1", False),
        _f("vf_pool", "VF pool: PF[:indexes]", "enp1s0f0:0-7", False),
    ), _SCHEMA["netdev"][2] + " (give exactly one of device, macvlan_parent, vf_pool)"),
    KindSpec("unix", "External UNIX socket peer", (
        _f("peer", "Peer path on the source", "/run/app.sock", False),
        _f("inode", "Container socket inode (if the peer has no path)", "123456", False),
        _f("connect", "Socket to connect to on the destination", "/run/app.sock"),
    ), _SCHEMA["unix"][2]),
    KindSpec("tty", "Console (new PTY)", (
        _f("path", "TTY in the container", "/dev/pts/0", False),
    ), _SCHEMA["tty"][2]),
    KindSpec("mount", "External bind mount", (
        _f("mountpoint", "Mountpoint in the container", "/srv/data"),
        _f("path", "Host path on the destination", "/export/data"),
        _f("key", "Key (optional)", "srv-data", False),
        _f("carry", "Copy it to the destination when missing there (true/false)", "false", False),
    ), _SCHEMA["mount"][2]),
    KindSpec("device", "Mounted block device", (
        _f("source", "Source MAJ:MIN or /dev path", "8:16"),
        _f("target", "Device on the destination", "/dev/sdc"),
        _f("name", "Key (optional)", "data", False),
    ), _SCHEMA["device"][2]),
    KindSpec("lsm", "SELinux / AppArmor", (
        _f("selinux", "SELinux context", "system_u:system_r:svirt_lxc_net_t:s0", False),
        _f("mcs", "MCS pair or auto", "auto", False),
        _f("apparmor", "AppArmor profile", "lxc-container-default", False),
        _f("mount_context", "SELinux mount context", "system_u:object_r:svirt_sandbox_file_t:s0", False),
    ), _SCHEMA["lsm"][2]),
    KindSpec("cgroup", "cgroup root and mode", (
        _f("root", "cgroup root on the destination", "/machine.slice/web", False),
        _f("mode", "Manage mode", "soft", False),
    ), _SCHEMA["cgroup"][2]),
    KindSpec("tcp", "Established TCP", (
        _f("mode", "keep or close", "keep"),
    ), _SCHEMA["tcp"][2]),
    KindSpec("file", "fd on a file outside the container", (
        _f("source", "File's path on the source", "/var/log/app/out.log", False),
        _f("fd_path", "fd path as the inventory shows it", "/var/log/app/out.log", False),
        _f("destination", "File to open on the destination", "/var/log/app/out.log"),
        _f("mode", "append, read, write or readwrite", "append", False),
    ), _SCHEMA["file"][2] + " (give source or fd_path)"),
)


def default_rules_path() -> Path:
    """The operator's rules file: ``$CTCONSOLE_RULES`` or ``<config dir>/rules.toml``."""
    if v := os.environ.get("CTCONSOLE_RULES"):
        return Path(v)
    from ctconsole.config import config_dir

    return config_dir() / "rules.toml"


# ---------------------------------------------------------------- form <-> rule


def _vf_pool_from_text(text: str) -> Any:
    pf, _, idx = text.partition(":")
    pool: dict[str, Any] = {"pf": pf.strip()}
    if idx.strip():
        items: list[Any] = []
        for part in idx.split(","):
            part = part.strip()
            items.append(int(part) if part.isdigit() else part)
        pool["vfs"] = items
    return pool


def _vf_pool_to_text(pool: Any) -> str:
    if not isinstance(pool, dict):
        return str(pool)
    vfs = pool.get("vfs")
    return str(pool.get("pf", "")) + (":" + ",".join(str(v) for v in vfs) if vfs else "")


def rule_from_form(values: dict[str, Any]) -> Rule:
    """A :class:`Rule` from a form dict (``{"kind": ..., field: "typed text"}``); blanks are dropped."""
    kind = str(values.get("kind", ""))
    fields: dict[str, Any] = {}
    for k, v in values.items():
        if k == "kind" or v is None or (isinstance(v, str) and not v.strip()):
            continue
        if isinstance(v, str):
            v = v.strip()
            if k == "inode" and v.isdigit():
                v = int(v)
            elif k == "vf_pool":
                v = _vf_pool_from_text(v)
            elif kind == "cgroup" and k == "mode":
                v = v.lower()
            elif k == "carry" and v.lower() in ("true", "false"):
                v = v.lower() == "true"
        fields[k] = v
    return Rule(kind=kind, fields=fields)


def rule_to_form(rule: Rule) -> dict[str, str]:
    """The inverse of :func:`rule_from_form`: ``{"kind": ..., field: text}``."""
    out = {"kind": rule.kind}
    for k, v in rule.fields.items():
        if k == "vf_pool":
            out[k] = _vf_pool_to_text(v)
        elif k == "roots" and isinstance(v, list):
            out[k] = "; ".join(f"{d.get('ctrl', '*')}={d.get('path', '')}" if isinstance(d, dict) else str(d)
                               for d in v)
        else:
            out[k] = str(v).lower() if isinstance(v, bool) else str(v)
    return out


def from_dicts(items: list[dict[str, Any]], selector: Selector | None = None) -> RuleSet:
    """A one-block rule set from form dicts (``selector`` defaults to every container)."""
    rules = tuple(rule_from_form(d) for d in items)
    scope = Scope(selector=selector or Selector(name="*"), rules=rules, index=0)
    return RuleSet(containers=(scope,), path="<editor>")


def validate_rule(values: dict[str, Any] | Rule, host_checks: bool = False) -> list[str]:
    """Problems of one rule as an editor shows them under its form (no file, no line numbers)."""
    from ctconsole.remap.validate import validate_ruleset

    rule = values if isinstance(values, Rule) else rule_from_form(values)
    rs = RuleSet(containers=(Scope(selector=Selector(name="*"), rules=(rule,), index=0),), path="<editor>")
    return [p.message for p in validate_ruleset(rs, host_checks=host_checks)]


# ---------------------------------------------------------------- one container's block in the rules file


def _own_block(rs: RuleSet, container: Container) -> int | None:
    """Index of the block written for exactly this container (match name == its name), if any."""
    for scope in rs.containers:
        sel = scope.selector
        if sel and sel.name == container.name and sel.runtime in ("", container.runtime) and not sel.id \
                and not sel.to:
            return scope.index
    return None


def load_rules(container: Container, path: str | Path | None = None) -> list[dict[str, str]]:
    """The rules of the block written for ``container``, as form dicts (``rule_to_form``); [] when none.

    Rules from ``[defaults]`` and from glob blocks also apply at compile time;
    :func:`applicable_rules` lists those.
    """
    from ctconsole.remap.store import RulesDocument

    doc = RulesDocument.open(path or default_rules_path())
    idx = _own_block(doc.rules, container)
    return [] if idx is None else [rule_to_form(r) for r in doc.rules.containers[idx].rules]


# the UI probes ``load`` as well as ``load_rules``
load = load_rules


def applicable_rules(container: Container, dest: str | None = None,
                     path: str | Path | None = None) -> list[tuple[Scope, Rule]]:
    """Every rule that applies to ``container`` from the rules file (defaults and globs included)."""
    from ctconsole.remap.compile import effective_rules
    from ctconsole.remap.store import RulesDocument

    doc = RulesDocument.open(path or default_rules_path())
    return effective_rules(doc.rules, container, dest)


def save_rules(container: Container, rules: RuleSet | list[Rule] | list[dict[str, Any]],
               path: str | Path | None = None) -> str:
    """Write ``rules`` as the block for ``container`` in the rules file; returns the file's path.

    Edits in place (rule by rule) so comments in that block and everywhere
    else survive; creates the block (and the file) when missing.
    """
    from ctconsole.remap.store import RulesDocument

    if isinstance(rules, RuleSet):
        new = [r for s in rules.containers for r in s.rules]
    else:
        new = [r if isinstance(r, Rule) else rule_from_form(r) for r in rules]
    p = Path(path or default_rules_path())
    p.parent.mkdir(parents=True, exist_ok=True)
    doc = RulesDocument.open(p)
    idx = _own_block(doc.rules, container)
    if idx is None:
        doc = doc.add_container(Selector(name=container.name, runtime=container.runtime), new,
                                header_comment=[f"{container.name}: written by the ctconsole rules editor"])
    else:
        old = doc.rules.containers[idx].rules
        for i, rule in enumerate(new[: len(old)]):
            if (old[i].kind, old[i].fields) != (rule.kind, rule.fields):
                doc = doc.replace_rule(RuleRef(idx, i), rule)
        for i in range(len(old) - 1, len(new) - 1, -1):
            doc = doc.delete_rule(RuleRef(idx, i))
        for rule in new[len(old):]:
            doc = doc.add_rule(idx, rule)
    if doc.dirty:
        doc.save()
    return str(p)


save = save_rules


def compile_rules(rules: RuleSet, container: Container, dest: str | None = None, **kw: Any) -> Any:
    """See :func:`ctconsole.remap.compile.compile_rules` (re-exported lazily)."""
    from ctconsole.remap.compile import compile_rules as _compile

    return _compile(rules, container, dest, **kw)


__all__ = [
    "KINDS",
    "FieldSpec",
    "KindSpec",
    "Rule",
    "RuleRef",
    "RuleSet",
    "Scope",
    "Selector",
    "applicable_rules",
    "compile_rules",
    "default_rules_path",
    "from_dicts",
    "load_rules",
    "rule_from_form",
    "rule_to_form",
    "save_rules",
    "validate_rule",
]
