"""Draft a rules file for one container: one rule per external item that needs a decision.

Why based on ``External.remedy``: the inventory already decides what handles
each external item and names it there (``"veth"``, ``"mnt[...]"``,
``"orphan_pts_master"``, ``"tcp_established"``...). :func:`rule_kind_for` maps
any such remedy text onto a rule kind, so a new item type the inventory learns
about gets a suggestion without touching this module. Items whose remedy is a
plain CRIU option (``shell_job``, ``file_locks``) or :data:`NO_REMEDY` need no
rule and are skipped.

Each suggested rule carries comments saying why it is there and which values
are guesses, so the operator reviews a file that explains itself.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Iterable
from typing import Any

from ctconsole.model import NO_REMEDY, Container, External, Mount, NetIface, OpenFile, Socket, Tty
from ctconsole.remap import safety
from ctconsole.remap.model import RULE_KINDS, Rule, Selector
from ctconsole.remap.store import render_container, render_rule
from ctconsole.remap.validate import ifname_problem

#: remedy words (lower case) that name a rule kind besides the kind names themselves
KIND_ALIASES: dict[str, str] = {
    "mnt": "mount",
    "ext_mnt": "mount",
    "ext_mount": "mount",
    "dev": "device",
    "macvlan": "netdev",
    "ipvlan": "netdev",
    "vf": "netdev",
    "sriov": "netdev",
    "sriov-vf": "netdev",
    "orphan_pts_master": "tty",
    "pty": "tty",
    "console": "tty",
    "tcp_established": "tcp",
    "tcp_close": "tcp",
    "cg_root": "cgroup",
    "cgroup_root": "cgroup",
    "manage_cgroups": "cgroup",
    "manage_cgroups_mode": "cgroup",
    "lsm_profile": "lsm",
    "lsm_mount_context": "lsm",
    "selinux": "lsm",
    "apparmor": "lsm",
    "veths": "veth",
    "unix_sk_ino": "unix",
}


def rule_kind_for(item: Any, category: str = "") -> str | None:
    """The remap rule kind that handles an external inventory item, or None if no rule applies.

    Reads ``item.external.remedy`` word by word (``"veth[eth0]:HOST@BR"``,
    ``"mount rule"``, ``"tcp_established"``, ``"rule: unix"``); the first word
    that is a rule kind or an alias of one wins. A remedy with no such word
    (a CRIU option like ``shell_job``, or :data:`NO_REMEDY`) yields None.
    """
    ext = getattr(item, "external", None)
    if ext is None:
        return None
    remedy = (ext.remedy or "").strip()
    if not remedy or remedy == NO_REMEDY or remedy.lower().startswith("none"):
        return None
    for word in re.findall(r"[a-z0-9_-]+", remedy.lower()):
        if word in RULE_KINDS:
            return word
        if word in KIND_ALIASES:
            return KIND_ALIASES[word]
    return None


def item_slot(item: Any, kind: str) -> str:
    """The rule slot (see :meth:`Rule.slot`) that would cover ``item``; compile uses it for 'no rule' notes."""
    if isinstance(item, NetIface) and kind in ("veth", "netdev"):
        return f"interface:{item.name}"
    if isinstance(item, Mount) and kind == "mount":
        return f"mount:{item.mountpoint}"
    if kind == "device" and hasattr(item, "major"):
        return f"device:{item.major}:{item.minor}"
    if isinstance(item, Socket) and kind == "unix":
        return f"unix:{item.inode}"
    if isinstance(item, OpenFile) and kind == "file":
        return f"file:{item.path}"
    return kind


def item_label(item: Any, category: str = "") -> str:
    """How an operator names the item: ``interface eth0``, ``mount /srv``, ``unix socket 4242``."""
    if isinstance(item, NetIface):
        return f"interface {item.name}"
    if isinstance(item, Mount):
        return f"mount {item.mountpoint}"
    if isinstance(item, Socket):
        return f"{item.family} socket {item.inode}" + (f" (peer {item.peer_path})" if item.peer_path else "")
    if isinstance(item, Tty):
        return f"tty {item.path}"
    if isinstance(item, OpenFile):
        return f"file {item.path} (mount {item.mnt_id})"
    name = getattr(item, "path", "") or getattr(item, "name", "") or "?"
    return f"{category.rstrip('s') or 'item'} {name}"


def _wrap(text: str, width: int = 96) -> list[str]:
    words, out, cur = text.split(), [], ""
    for w in words:
        if cur and len(cur) + 1 + len(w) > width:
            out.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}" if cur else w
    if cur:
        out.append(cur)
    return out


def _host_name_for(iface: NetIface) -> str:
    if iface.peer_ifname and ifname_problem(iface.peer_ifname) is None:
        return iface.peer_ifname
    return f"v{iface.name}"[:15]


_FILE_SUBJECT = re.compile(r"^file (?P<path>/.*?)(?: \(pid \d+ fd \d+(?: \(\+\d+\))?\))?$")


def _finding_items(findings: Iterable[Any]) -> list[tuple[str, Any]]:
    """Extra (category, item) pairs from feasibility findings the inventory has no item for.

    Why: an ``external-file`` finding may come from a live fd the inventory
    files under devices or not at all (an inherited /dev/null opened before the
    container's mount namespace existed); it still needs a ``file`` rule. Only
    unsatisfied needs-rule findings of kind ``file`` are used; the path is the
    finding's subject (``file PATH (pid N fd M)``) and mnt_id/inode its key.
    """
    out: list[tuple[str, Any]] = []
    for f in findings:
        if getattr(f, "rule_kind", "") != "file" or getattr(f, "satisfied", False) or not f.needs:
            continue
        m = _FILE_SUBJECT.match(getattr(f, "subject", ""))
        k = re.match(r"^file\[([0-9a-f]+):([0-9a-f]+)\]$", f.needs[0])
        if not m or not k:
            continue
        out.append(("files", OpenFile(path=m.group("path"), mnt_id=int(k.group(1), 16), inode=int(k.group(2), 16),
                                      external=External(reason=f.message, remedy="rule file"))))
    return out


def suggest_rules(container: Container, dest: str | None = None, findings: Iterable[Any] = ()
                  ) -> list[tuple[Rule, list[str], dict[str, str]]]:
    """Rules for every external item needing a decision: (rule, why-comment lines, per-key comments).

    ``findings`` (a feasibility report's) add items the inventory does not
    list, e.g. an fd on a foreign mount seen only live (see :func:`_finding_items`).
    """
    out: list[tuple[Rule, list[str], dict[str, str]]] = []
    seen: set[str] = set()
    for category, item in [*container.externals(), *_finding_items(findings)]:
        kind = rule_kind_for(item, category)
        if kind is None:
            continue
        slot = item_slot(item, kind)
        if slot in seen:
            continue
        seen.add(slot)
        why = _wrap(f"{item_label(item, category)}: {item.external.reason} (remedy: {item.external.remedy})")
        built = _build(kind, item, container)
        if built is None:
            out.append((Rule(kind=kind, fields={}), [*why, *_wrap(f"{UNDECIDED} every field of this {kind} rule: "
                                                                   "the inventory gives nothing to derive it "
                                                                   "from; fill it in by hand")], {}))
            continue
        fields, comments, extra = built
        out.append((Rule(kind=kind, fields=fields), why + [ln for e in extra for ln in _wrap(e)], comments))
    return out


def _build(kind: str, item: Any, c: Container) -> tuple[dict[str, Any], dict[str, str], list[str]] | None:
    """Fields, per-key comments and extra why-lines for one suggested rule (None = can't guess)."""
    if kind == "veth" and isinstance(item, NetIface):
        fields: dict[str, Any] = {"interface": item.name, "host_name": _host_name_for(item)}
        comments = {"host_name": "host-side name CRIU gives the peer on the destination (max 15 chars)"
                    + ("" if item.peer_ifname else "; GUESS: the source peer's name is unknown")}
        if item.bridge:
            fields["bridge"] = item.bridge
            comments["bridge"] = "guessed: the bridge the peer is in on the source; check the destination"
        else:
            fields["bridge"] = "br0"
            comments["bridge"] = "GUESS: no bridge on the source side; set the destination bridge"
        return fields, comments, []
    if kind == "netdev" and isinstance(item, NetIface):
        if item.kind == "macvlan":
            return ({"interface": item.name, "macvlan_parent": item.parent or "eth0"},
                    {"macvlan_parent": "lower device on the destination" +
                     ("" if item.parent else " (GUESS)")}, [])
        if item.kind == "sriov-vf":
            pf = item.parent or "CHANGE-ME"
            return ({"interface": item.name, "vf_pool": {"pf": pf}},
                    {"vf_pool": "a free VF of this PF is moved in at restore; add vfs = [...] to limit it"},
                    [] if item.parent else [f"{UNDECIDED} which PF on the destination gives {item.name} a VF: "
                                            "its PF on the source is unknown"])
        return ({"interface": item.name, "device": item.name},
                {"device": "a device of that name must exist on the destination"}, [])
    if kind == "unix" and isinstance(item, Socket):
        fields = {}
        comments = {}
        if item.peer_path and not item.peer_path.startswith("@"):
            fields["peer"] = item.peer_path
            fields["connect"] = item.peer_path
            comments["connect"] = "same path as on the source; the destination must listen there"
        else:
            fields["inode"] = item.inode
            fields["connect"] = "/CHANGE-ME"
            comments["connect"] = "the peer has no path: give the socket to connect to on the destination"
            return fields, comments, [f"{UNDECIDED} which socket on the destination socket {item.inode} "
                                      "reconnects to: its peer is not bound to a path, so nothing names it"]
        return fields, comments, []
    if kind == "tty" and isinstance(item, Tty):
        return ({"path": item.path} if item.path.startswith("/dev/") else {},
                {"path": "ctconsole keeps the new PTY's master (the console) after restore"}, [])
    if kind == "mount" and isinstance(item, Mount):
        return _mount_fields(item, c)
    if kind == "device" and hasattr(item, "major"):
        target = getattr(item, "source", "") or getattr(item, "path", "")
        extra: list[str] = []
        if not str(target).startswith("/dev/"):
            target = "/dev/CHANGE-ME"
            extra = [f"{UNDECIDED} which device node on the destination holds the filesystem of device "
                     f"{item.major}:{item.minor}: device numbers differ between hosts"]
        return ({"source": f"{item.major}:{item.minor}", "target": target},
                {"target": "the device node to use on the destination"}, extra)
    if kind == "file" and isinstance(item, OpenFile):
        fields = {"source": item.path, "destination": item.path}
        comments = {"destination": "opened by ctconsole on the destination and handed to CRIU in place of "
                    "the old fd; GUESS: the same path (for a log: a new file there is fine)"}
        extra = ["CRIU cannot reopen this fd inside the container ('Can't lookup mount'): it is dumped as "
                 f"external file[{item.mnt_id:x}:{item.inode:x}] and the restored task gets the destination.",
                 "mode (append/read/write/readwrite) defaults to the original fd's access mode."]
        return fields, comments, extra
    if kind == "tcp":
        return {"mode": "keep"}, {"mode": "keep = TCP repair (same IP on the destination); close = reset"}, []
    if kind == "lsm":
        label = c.lsm_label
        if label.count(":") >= 3:
            return ({"selinux": ":".join(label.split(":")[:3]) + ":s0", "mcs": "auto"},
                    {"mcs": "a category pair no process on the destination uses"}, [])
        if label:
            return ({"apparmor": label.split(" ")[0]}, {}, [])
        return None
    if kind == "cgroup":
        return ({"mode": "soft"}, {"mode": "ignore, cg_none, props, soft, full or strict"}, [])
    return None


#: marks a why-line that names a decision suggest could not make (the CLI repeats these on stderr)
UNDECIDED = "UNDECIDED:"


def _parent_mount(item: Mount, c: Container) -> Mount | None:
    """The container mount ``item`` is laid over: the one at the longest mountpoint above it (what the
    path resolved to before ``item`` was mounted), else its mountinfo parent."""
    under = [m for m in c.mounts if m.mountpoint != item.mountpoint and (m.mountpoint == "/" or
             item.mountpoint.startswith(m.mountpoint.rstrip("/") + "/"))]
    if under:
        return max(under, key=lambda m: len(m.mountpoint))
    return next((m for m in c.mounts if m.mount_id == item.parent_id and m is not item), None)


#: where the host itself has the kernel filesystems a container mount can shadow
_KERNEL_FS_AT = {"proc": "/proc", "sysfs": "/sys"}


def _mount_fields(item: Mount, c: Container) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """The host path for a mount rule (:func:`_mount_path`), never one ``validate`` refuses.

    A container made with ``unshare`` often binds the host's own ``/usr`` or ``/etc`` read-only into
    its root. Proposing ``path = "/usr"`` would hand the operator a draft that ``rules validate`` and
    every destination refuse (safety.bind_source: a rules file must not bind the host's system
    directories into a container). The draft says so and leaves the path to the operator instead.
    """
    fields, comments, extra = _mount_path(item, c)
    path = str(fields.get("path", ""))
    why = safety.bind_source(path) if path and path != "/CHANGE-ME" else None
    if why is None:
        return fields, comments, extra
    fields["path"] = "/CHANGE-ME"
    return fields, {"path": f"not {path}: the destination refuses it"}, [
        f"{UNDECIDED} which host path replaces {item.mountpoint} on the destination. On the source it is a "
        f"bind of the host's {path}, which no rules file may bind into a container ({path!r} {why}). Give "
        f"a directory on the destination that holds what the container needs from {path} (a copy, or a "
        "read-only bind of it made for containers), or give the container its own root."]


def _mount_path(item: Mount, c: Container) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """The host path for a mount rule, derived from how the mount is made (mountinfo root, source, parent).

    1. The inventory found a host mount of the same filesystem containing the bind's root: that path.
    2. A mount whose filesystem no host path reaches (FUSE: libvirt_lxc's /proc/meminfo, lxcfs) laid over
       a file of the container's proc/sysfs: the host's own file at the same place in its proc/sysfs
       (the un-virtualised figures), since the FUSE server stays behind on the source.
    3. Any other bind: its root within the filesystem, a guess that holds when that filesystem is the
       host's root; FUSE and the like: undecided, said so plainly.
    """
    fields: dict[str, Any] = {"mountpoint": item.mountpoint}
    m = re.search(r"mnt\[[^\]]*\]:(/\S*) on restore", item.external.remedy if item.external else "")
    if m:
        fields["path"] = m.group(1).rstrip("),")
        return fields, {"path": "same host path as on the source; it must exist on the destination"}, []
    served = item.fstype == "fuse" or item.fstype.startswith("fuse.")
    parent = _parent_mount(item, c)
    if served and parent is not None and parent.fstype in _KERNEL_FS_AT:
        rel = item.mountpoint[len(parent.mountpoint.rstrip("/")):]
        host = _KERNEL_FS_AT[parent.fstype] + (parent.root.rstrip("/") if parent.root != "/" else "") + rel
        who = item.fuse_server or f"the {item.fstype} server"
        fields["path"] = host
        return fields, {"path": f"the host's own {parent.fstype} file: {who} stays on the source"}, [
            f"{item.mountpoint} is {item.fstype} ({item.source}, {item.root} inside it) laid over the container's "
            f"{parent.fstype} by {who}; no host path reaches that filesystem and its server does not move. "
            f"The destination's own {host} gives the same file without that view (host-wide figures); a "
            "FUSE server of the same kind running on the destination for this container is the alternative."]
    if served or not item.root.startswith("/") or item.root == "/":
        fields["path"] = "/CHANGE-ME"
        what = f"{item.fstype} {item.source}" + (f" served by {item.fuse_server}" if item.fuse_server else "")
        return fields, {"path": "give the host path on the destination"}, [
            f"{UNDECIDED} which host path replaces {item.mountpoint} on the destination: it is {what} "
            f"(root {item.root} inside it) and no mount of that filesystem is visible on this host, so no path "
            "on the source names it."]
    fields["path"] = item.root
    return fields, {"path": "GUESS: the bind's root within its filesystem (right when that filesystem is the "
                            "host's root); it must exist on the destination"}, []


def undecided(text: str) -> list[str]:
    """The decisions a draft left open (its ``UNDECIDED:`` comments, joined back into sentences)."""
    out: list[str] = []
    cur = False
    for line in text.splitlines():
        stripped = line.strip()
        body = stripped.lstrip("#").strip()
        if body.startswith(UNDECIDED):
            out.append(body)
            cur = True
        elif cur and stripped.startswith("#") and body and not body.startswith(("GUESS", "TODO")):
            out[-1] += " " + body
        else:
            cur = False
    return out


def suggest(container: Container, dest: str | None = None, *, now: _dt.datetime | None = None,
            findings: Iterable[Any] = ()) -> str:
    """A complete draft rules file (TOML text) for ``container``, commented for review."""
    now = now or _dt.datetime.now(_dt.UTC)
    rules = suggest_rules(container, dest, findings)
    head = [
        f"Draft remap rules for {container.name} ({container.runtime}, id {container.id})",
        f"generated by 'ctconsole rules suggest' on {now.strftime('%Y-%m-%d %H:%M UTC')}"
        + (f" for destination {dest}" if dest else "") + ".",
        "Review every rule (values marked GUESS or CHANGE-ME in particular), then run",
        "'ctconsole rules validate FILE' on the destination. Format: docs/remap.md.",
    ]
    lines = [f"# {h}" for h in head] + ["version = 1", ""]
    sel = Selector(name=container.name, runtime=container.runtime, to=dest or "")
    if not rules:
        lines += ["# Nothing of this container needs a remap rule: every external item is handled",
                  "# by a CRIU option or cannot be migrated at all (see 'ctconsole check')."]
        lines += render_container(sel)
        return "\n".join(lines) + "\n"
    lines += render_container(sel)
    for rule, why, comments in rules:
        lines.append("")
        lines += render_rule(rule, header_comment=why, comments=comments)
    return "\n".join(lines) + "\n"
