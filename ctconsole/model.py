"""Frozen dataclasses shared by inventory, feasibility, remap, migrate and the UI.

Why one module: every layer renders or reasons about the same objects, so they
live in one place with no behaviour beyond serialisation. Items that tie a
container to the outside carry an :class:`External` saying why and what
handles it; the UI and CLI only render these, they never compute them.
"""

from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass, field
from typing import Any

# Remedy text used when nothing can make CRIU dump the item.
NO_REMEDY = "none: cannot be checkpointed"


@dataclass(frozen=True)
class External:
    """Why an item is outside the container and what will deal with it.

    ``reason`` is one sentence an operator understands; ``remedy`` names the
    CRIU option or remap rule kind that handles it (or :data:`NO_REMEDY`);
    ``holder`` is who holds the other end when known (e.g. "libvirt_lxc[812]").
    """

    reason: str
    remedy: str
    holder: str = ""


@dataclass(frozen=True)
class Namespace:
    """One namespace of a container's init, by type (``pid``, ``net``...)."""

    kind: str
    inode: int
    shared_with_host: bool


@dataclass(frozen=True)
class Process:
    pid: int  # host view
    ppid: int
    nspid: int  # pid inside the container's pid namespace (last NSpid entry)
    name: str
    cmdline: str
    state: str  # one letter from /proc/PID/stat (R, S, D, T, t, Z, ...)
    uid: int
    sid: int  # session id, host view
    pgid: int
    tracer_pid: int = 0
    threads: int = 1
    sigpnd_trap: bool = False  # a SIGTRAP is pending (CRIU refuses to dump)
    namespaces: dict[str, int] = field(default_factory=dict)  # kind -> inode
    external: External | None = None


@dataclass(frozen=True)
class FdRef:
    """Where an fd lives: a process and its fd number."""

    pid: int
    fd: int


@dataclass(frozen=True)
class Socket:
    family: str  # unix, inet, inet6, netlink, packet, vsock, other
    type: str  # stream, dgram, seqpacket, raw, other
    inode: int
    state: str = ""  # e.g. LISTEN, ESTABLISHED, UNCONN
    path: str = ""  # unix: bound name ("@name" for abstract), "" when unnamed
    peer_inode: int = 0  # unix: inode of the peer socket, 0 if none
    peer_path: str = ""  # unix: the name the peer is bound to
    peer_holder: str = ""  # "comm[pid]" of a process holding the peer
    local: str = ""  # inet: "addr:port"
    remote: str = ""  # inet: "addr:port"
    protocol: str = ""  # netlink/packet protocol name or number
    holders: tuple[FdRef, ...] = ()
    external: External | None = None
    rqueue: int = 0  # bytes queued for reading (unix/inet/netlink); a listener: connections waiting
    wqueue: int = 0  # bytes queued for sending (not yet taken by the peer or the wire)
    icons: tuple[int, ...] = ()  # unix listener: client inodes of unaccepted connections (0: client closed)
    in_flight: bool = False  # unix stream client connected but not accepted yet (peer is a listener's queue)
    peer_elsewhere: bool = False  # unix: the peer socket is not in the container's network namespace(s)
    groups: int = 0  # netlink: multicast group bitmap (bit n-1 = group n); packet: multicast memberships
    group_words: int = 0  # netlink: 32-bit words of group memberships in use (CRIU dumps only the first)


@dataclass(frozen=True)
class Tty:
    path: str  # e.g. /dev/pts/3 (as the fd link shows it)
    kind: str  # pts, ptmx, console, vt, serial, other
    rdev: int  # st_rdev of the device
    index: int = -1  # pts number
    master_holder: str = ""  # "comm[pid]" holding the ptmx master, when known
    holders: tuple[FdRef, ...] = ()
    external: External | None = None


@dataclass(frozen=True)
class Device:
    path: str
    kind: str  # char or block
    major: int
    minor: int
    supported: bool  # CRIU dumps an open fd on it natively
    holders: tuple[FdRef, ...] = ()
    external: External | None = None


@dataclass(frozen=True)
class SpecialFd:
    """An fd that is not a plain file, socket, tty or device."""

    kind: str  # inotify, fanotify, eventfd, signalfd, timerfd, epoll, memfd, io_uring,
    # perf_event, bpf, userfaultfd, pidfd, memfd_secret, pipe, fifo, other_anon
    target: str  # the fd link text
    holders: tuple[FdRef, ...] = ()
    supported: bool = True
    external: External | None = None


@dataclass(frozen=True)
class OpenFile:
    """A regular file (or directory) open in the container."""

    path: str
    mnt_id: int
    inode: int
    size: int = 0
    allocated: int = 0  # bytes actually allocated (st_blocks * 512)
    nlink: int = 1
    deleted: bool = False
    locked: bool = False  # a POSIX/flock/OFD lock or lease is held through it
    holders: tuple[FdRef, ...] = ()
    external: External | None = None


@dataclass(frozen=True)
class Mount:
    mount_id: int
    parent_id: int
    mountpoint: str  # as seen inside the container
    root: str  # root of the mount within its filesystem
    fstype: str
    source: str
    major: int = 0
    minor: int = 0
    options: str = ""
    propagation: str = ""  # shared:N master:N ...
    fuse_server: str = ""  # "comm[pid]" serving a FUSE mount, when known
    external: External | None = None


@dataclass(frozen=True)
class NetIface:
    name: str
    kind: str  # loopback, veth, macvlan, ipvlan, vlan, vxlan, tun, tap, bridge, physical, sriov-vf, ...
    ifindex: int
    mac: str = ""
    mtu: int = 0
    up: bool = False
    addresses: tuple[str, ...] = ()
    peer_ifname: str = ""  # veth: the other end's name
    peer_netns: str = ""  # veth: "host", "netns:NAME" or "netns inode N"
    bridge: str = ""  # veth: bridge the host-side peer is enslaved to
    parent: str = ""  # macvlan/ipvlan/vlan: lower device; VF: its PF
    external: External | None = None


@dataclass(frozen=True)
class Container:
    id: str
    name: str
    runtime: str  # libvirt-lxc, lxc, runc, nspawn, namespaces, tree
    init_pid: int
    namespaces: tuple[Namespace, ...] = ()
    cgroups: dict[str, str] = field(default_factory=dict)  # controller(s) -> path
    root_path: str = ""
    lsm_label: str = ""
    controller_pid: int = 0  # runtime process outside (libvirt_lxc, lxc monitor, conmon...)
    controller: str = ""  # "comm[pid]" of that process
    processes: tuple[Process, ...] = ()
    sockets: tuple[Socket, ...] = ()
    ttys: tuple[Tty, ...] = ()
    devices: tuple[Device, ...] = ()
    fds: tuple[SpecialFd, ...] = ()
    files: tuple[OpenFile, ...] = ()
    mounts: tuple[Mount, ...] = ()
    interfaces: tuple[NetIface, ...] = ()
    # kinds of the namespaces the container does not share with the host
    own_namespaces: tuple[str, ...] = ()
    # how its runtime manages it here, when that needs saying (e.g. restored by a migration and
    # not adoptable by LXC/libvirt: how to stop it and move it back); "" otherwise
    runtime_note: str = ""

    def externals(self) -> list[tuple[str, Any]]:
        """Every external item as (category, item), for counting and listing."""
        out: list[tuple[str, Any]] = []
        for cat in ("processes", "sockets", "ttys", "devices", "fds", "files", "mounts", "interfaces"):
            out.extend((cat, item) for item in getattr(self, cat) if item.external is not None)
        return out

    def has_own(self, kind: str) -> bool:
        return kind in self.own_namespaces


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    """Field names per dataclass, cached: ``list --json`` serialises thousands of items."""
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def _item_dict(obj: Any) -> Any:
    """Serialise a model object: ``external`` becomes a bool with reason/remedy beside it."""
    if obj is None or isinstance(obj, str | int | float | bool):
        return obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        for name in _field_names(type(obj)):
            value = getattr(obj, name)
            if name == "external":
                out["external"] = value is not None
                if value is not None:
                    out["reason"] = value.reason
                    out["remedy"] = value.remedy
                    if value.holder:
                        out["holder"] = value.holder
                continue
            out[name] = _item_dict(value)
        return out
    if isinstance(obj, tuple | list):
        return [_item_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _item_dict(v) for k, v in obj.items()}
    return obj


def to_dict(obj: Any) -> Any:
    """JSON-ready form of any model object (used by ``--json`` and the agent)."""
    return _item_dict(obj)


_JSON_SPECS: dict[type, tuple[tuple[str, ...], Any, bool]] = {}


def json_default(obj: Any) -> Any:
    """``json.dumps(x, default=json_default)``: the same JSON as :func:`to_dict`, built lazily.

    Why: the C JSON encoder walks tuples, lists and dicts itself and calls this
    only for model objects, one level at a time, so ``list --json`` of many
    containers serialises several times faster than building the dict tree
    first. The instance ``__dict__`` already holds the fields in declaration
    order (dataclass ``__init__`` assigns them in order), so it is used as is
    (copied only to turn ``external`` into the flat form): ~35% faster than
    reading the fields one by one. Objects whose ``__dict__`` does not hold
    exactly the fields (an extra cached attribute) take the field-by-field path.
    """
    cls = type(obj)
    spec = _JSON_SPECS.get(cls)
    if spec is None:
        if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
            raise TypeError(f"{cls.__name__} is not JSON serialisable")
        names = _field_names(cls)
        spec = _JSON_SPECS[cls] = (names, operator.attrgetter(*names), "external" in names)
    names, getter, has_external = spec
    d = getattr(obj, "__dict__", None)
    if d is not None and len(d) == len(names) and tuple(d) == names:
        out = d.copy()  # a copy: callers may extend the dict (``list --json`` adds external_count)
        if not has_external:
            return out
    else:
        values = getter(obj)
        out = dict(zip(names, values if len(names) > 1 else (values,), strict=True))
    if has_external:
        ext = out.pop("external")  # the last field of every item, so key order matches to_dict
        out["external"] = ext is not None
        if ext is not None:
            out["reason"] = ext.reason
            out["remedy"] = ext.remedy
            if ext.holder:
                out["holder"] = ext.holder
    return out


def _decode(tp: Any, value: Any) -> Any:
    """One field's value from its JSON form, guided by the field's type."""
    import typing

    origin = typing.get_origin(tp)
    if origin is tuple:
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        return tuple(_decode(inner, v) for v in value or ())
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return from_dict(tp, value)
    return value


def from_dict(cls: type[Any], data: dict[str, Any]) -> Any:
    """The inverse of :func:`to_dict` for a model class (``from_dict(Container, d)``).

    Why: the agent sends a remote host's inventory as ``to_dict`` JSON and the
    console renders model objects. Unknown keys are ignored and missing ones
    take the field's default, so an agent one version apart still decodes.
    """
    import typing

    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name == "external":
            if data.get("external"):
                kwargs["external"] = External(
                    str(data.get("reason", "")), str(data.get("remedy", "")), str(data.get("holder", ""))
                )
            continue
        if f.name in data:
            kwargs[f.name] = _decode(hints[f.name], data[f.name])
    return cls(**kwargs)
