"""What the lab created, persisted so ``lab down`` removes exactly that and nothing else.

Why a file: ``lab up`` and ``lab down`` run in different processes (and tests
bring the lab up once per session), so every pid, link, netns, directory and
runtime object the lab makes is written down here as soon as it exists. A
lock file serialises concurrent ``lab`` commands.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctconsole import config
from ctconsole.lab.proc import ProcRef

STATE_VERSION = 1
# what an isolated lab host has of its own (everything else is the real host's tree, read-only)
PRIVATE_DIRS = ("/var/lib", "/run", "/tmp", "/var/tmp", "/srv")


def lab_dir() -> Path:
    """Root of everything the lab makes on disk (default /var/lib/ctconsole/lab)."""
    return config.state_dir() / "lab"


def state_file() -> Path:
    return lab_dir() / "state.json"


@dataclass(frozen=True)
class Ctx:
    """What every runtime needs to start: the lab root, the bridge, the host daemon's socket."""

    lab: Path
    bridge: str
    hostd_socket: str


@dataclass
class LabContainer:
    """One lab container: how to find it, where its counter is, and what was made for it.

    ``init_pid`` is the container's init in the host pid namespace; ``counter_file``
    is the host path of the file the workload appends an increasing counter to.
    ``owned_*`` list what ``down``/``restart`` must remove for this container.
    """

    name: str
    runtime: str  # namespaces | runc | lxc | libvirt-lxc (model.Container.runtime values)
    rootfs: str
    counter_file: str
    init: ProcRef | None = None
    address: str = ""  # IPv4/prefix of eth0 inside the container, "" without a veth
    host_veth: str = ""  # host end of the container's veth (on the lab bridge)
    bridge: str = ""
    helpers: list[ProcRef] = field(default_factory=list)  # launcher/stdio keepers we started
    owned_links: list[str] = field(default_factory=list)
    owned_dirs: list[str] = field(default_factory=list)
    runtime_id: str = ""  # runc id, lxc name, libvirt domain name
    runtime_path: str = ""  # lxcpath for LXC, bundle for runc
    share_dir: str = ""  # host dir bind-mounted into the container (ns only)
    share_target: str = ""  # where it is mounted inside
    unix_socket: str = ""  # host listener the container is connected to (ns only)
    tcp_port: int = 0  # TCP listener inside the container
    error: str = ""  # why it is not running, when ``up`` could not start it
    note: str = ""  # a warning about how it runs (e.g. a libvirtd the lab did not start)
    host: str = ""  # isolated lab host it runs on after a migration there ("" = this host)

    @property
    def init_pid(self) -> int:
        return self.init.pid if self.init else 0

    def running(self) -> bool:
        return self.init is not None and self.init.alive()


@dataclass
class LabHost:
    """A network namespace standing in for a destination host.

    ``address`` is the destination's address inside ``netns``; ``src_netns`` and
    ``src_address`` are the matching source end (run CRIU's dump or the page-server
    client there to reach the destination without any address on the real host).
    """

    name: str
    netns: str
    address: str
    src_netns: str
    src_address: str
    bridge: str
    index: int
    src_link: str = ""  # veth end inside src_netns
    link: str = ""  # veth end inside netns
    # isolated hosts (``kind == "isolated"``): own mount namespace, sshd, private filesystems
    kind: str = "netns"  # netns | isolated
    rate: str = ""  # tc tbf rate on both ends of the link ("" = unshaped)
    delay: str = ""  # tc netem delay on both ends of the link (one way)
    sshd: ProcRef | None = None  # the host's sshd: it holds the mount namespace
    mnt_ns: int = 0  # inode of the host's mount namespace
    net_ns: int = 0  # inode of the host's network namespace
    pid_ns: int = 0  # inode of the host's pid namespace (0: pids shared with this host, older records)
    private_devs: list[int] = field(default_factory=list)  # st_dev of its private filesystems
    host_dir: str = ""  # lab-side files of this host (disk image, sshd keys, log)

    @property
    def dest(self) -> str:
        """The exact ``--to`` string for this host."""
        return f"ssh://root@{self.address}" if self.kind == "isolated" else f"netns:{self.netns}"

    @property
    def private_dirs(self) -> tuple[str, ...]:
        """Directories that are private to an isolated host (same paths as on the real host)."""
        return PRIVATE_DIRS if self.kind == "isolated" else ()


@dataclass
class LabState:
    """Everything the lab made. ``bridge_created`` etc. say whether *we* created shared pieces."""

    version: int = STATE_VERSION
    root: str = ""
    bridge: str = ""
    bridge_created: bool = False
    hostd: ProcRef | None = None
    libvirtd: ProcRef | None = None
    virtlogd: ProcRef | None = None
    src_netns_created: bool = False
    containers: dict[str, LabContainer] = field(default_factory=dict)
    hosts: dict[str, LabHost] = field(default_factory=dict)
    owned_dirs: list[str] = field(default_factory=list)


def _ref(d: Any) -> ProcRef | None:
    return ProcRef(int(d["pid"]), int(d["start"]), d.get("what", "")) if d else None


def _container(d: dict[str, Any]) -> LabContainer:
    d = dict(d)
    d["init"] = _ref(d.get("init"))
    d["helpers"] = [r for r in (_ref(x) for x in d.get("helpers", [])) if r]
    known = {f.name for f in dataclasses.fields(LabContainer)}
    return LabContainer(**{k: v for k, v in d.items() if k in known})


def _host(d: dict[str, Any]) -> LabHost:
    known = {f.name for f in dataclasses.fields(LabHost)}
    d = {k: v for k, v in d.items() if k in known}
    d["sshd"] = _ref(d.get("sshd"))
    return LabHost(**d)


def from_dict(d: dict[str, Any]) -> LabState:
    st = LabState()
    for key in ("version", "root", "bridge", "bridge_created", "src_netns_created", "owned_dirs"):
        if key in d:
            setattr(st, key, d[key])
    st.hostd = _ref(d.get("hostd"))
    st.libvirtd = _ref(d.get("libvirtd"))
    st.virtlogd = _ref(d.get("virtlogd"))
    st.containers = {k: _container(v) for k, v in d.get("containers", {}).items()}
    st.hosts = {k: _host(v) for k, v in d.get("hosts", {}).items()}
    return st


def load() -> LabState:
    """The recorded lab state (an empty one when the lab was never brought up)."""
    try:
        data = json.loads(state_file().read_text())
    except FileNotFoundError:
        return LabState(root=str(lab_dir()))
    except (OSError, ValueError) as exc:
        from ctconsole.lab.proc import LabError

        raise LabError(f"lab state file {state_file()} is unreadable: {exc}") from exc
    return from_dict(data)


def save(st: LabState) -> None:
    """Write atomically (temp file + rename) so a crash never leaves half a state file."""
    path = state_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(dataclasses.asdict(st), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def locked() -> Iterator[None]:
    """Hold the lab lock (one ``lab`` command changes things at a time)."""
    d = lab_dir()
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o755)
    with open(d / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
