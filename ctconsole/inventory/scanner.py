"""One consistent pass over the host: discover containers, then fill in what ties them outside.

Why a snapshot object: deciding that an item is *external* needs global
knowledge (who holds the other end of a socket or pipe, which process holds
a ptmx master or /dev/fuse, which veth is the host-side peer). The snapshot
reads every process's fd table once and every network namespace's sock_diag
and link tables once, caches them, and all containers of a scan share them -
that is what keeps ``ctconsole list`` close to ``lsof`` in cost.

Discovery is kernel-first: a process whose pid namespace differs from its
parent's is a container init; its process tree is the container. Runtimes
only name what the kernel found (see :mod:`ctconsole.inventory.runtimes`).
"""

from __future__ import annotations

import os
import stat as statmod
from collections import defaultdict
from collections.abc import Iterable

from ctconsole.inventory import devices, fds, mounts, netifs, netlink, procfs, sockets, ttys
from ctconsole.inventory.runtimes import HostView, RuntimeInfo, identify, runc
from ctconsole.inventory.runtimes.namespaces import fallback
from ctconsole.model import (
    NO_REMEDY,
    Container,
    Device,
    External,
    FdRef,
    Mount,
    Namespace,
    NetIface,
    OpenFile,
    Process,
    Socket,
    SpecialFd,
    Tty,
)

_O_ACCMODE = 3


class Snapshot:
    """Cached view of /proc and of the network namespaces, valid for one scan."""

    def __init__(self) -> None:
        self.self_pid = os.getpid()
        # "host" = the namespaces ctconsole itself runs in (PID 1 may be unreadable, e.g. in a sandbox)
        self.host_ns = procfs.namespaces(self.self_pid)
        self.stats: dict[int, procfs.ProcStat] = {}
        for pid in procfs.list_pids():
            st = procfs.read_stat(pid)
            if st is not None:
                self.stats[pid] = st
        self.children: dict[int, list[int]] = defaultdict(list)
        for pid, st in self.stats.items():
            self.children[st.ppid].append(pid)
        self._pidns: dict[int, int] = {}
        self._cmdline: dict[int, str] = {}
        self._ns: dict[int, dict[str, int]] = {}
        self._by_pidns: dict[int, list[int]] | None = None
        self._fd_index_built = False
        self._fds: dict[int, list[tuple[int, str]]] = {}
        self.sock_holders: dict[int, list[FdRef]] = defaultdict(list)
        self.pipe_holders: dict[int, list[FdRef]] = defaultdict(list)
        self.ptmx_fds: list[tuple[int, int, str]] = []
        self.fuse_holders: list[FdRef] = []
        self._masters: list[ttys.Master] | None = None
        self._netns: dict[int, netlink.NetnsReader] = {}
        self._netns_names: dict[int, str] | None = None
        self._locks: set[tuple[int, int, int]] | None = None
        self._host_mounts: list[procfs.MountInfo] | None = None
        self._runc: dict[int, RuntimeInfo] | None = None
        self.view = HostView(self.stats, self.cmdline)
        #: containers a one-process scan would have built before this one's first (set in the
        #: forked half of ``inventory.scan_json``): their network namespaces count as "seen"
        self.earlier_inits: list[int] = []

    # ------------------------------------------------------------ per-process caches

    def alive(self, pid: int) -> bool:
        return pid in self.stats

    def pidns(self, pid: int) -> int:
        if pid not in self._pidns:
            self._pidns[pid] = procfs.ns_inode(pid, "pid")
        return self._pidns[pid]

    def ns_of(self, pid: int) -> dict[str, int]:
        """All namespace inodes of ``pid`` (cached: members, inits and the netns walk share them)."""
        ns = self._ns.get(pid)
        if ns is None:
            ns = self._ns[pid] = procfs.namespaces(pid, self._pidns.get(pid, 0))
            if "pid" in ns:
                self._pidns[pid] = ns["pid"]
        return ns

    def same_pidns(self, pidns: int) -> list[int]:
        """Every pid whose pid namespace is ``pidns`` (index built once per snapshot)."""
        if self._by_pidns is None:
            self._by_pidns = defaultdict(list)
            for pid in self.stats:
                self._by_pidns[self.pidns(pid)].append(pid)
        return self._by_pidns.get(pidns, [])

    def cmdline(self, pid: int) -> str:
        if pid not in self._cmdline:
            self._cmdline[pid] = procfs.read_cmdline(pid)
        return self._cmdline[pid]

    def describe(self, pid: int) -> str:
        """``comm[pid]`` - how items name a process."""
        st = self.stats.get(pid)
        return f"{st.comm}[{pid}]" if st else f"[{pid}]"

    def fds_of(self, pid: int) -> list[tuple[int, str]]:
        self.build_fd_index()
        return self._fds.get(pid, [])

    def build_fd_index(self) -> None:
        """Read every process's fd links once: holders of sockets/pipes, ptmx and /dev/fuse fds."""
        if self._fd_index_built:
            return
        self._fd_index_built = True
        sock_holders, pipe_holders = self.sock_holders, self.pipe_holders
        for pid, st in self.stats.items():
            if pid == 2 or st.ppid == 2:
                continue  # kernel threads have no fds
            lst = procfs.list_fds(pid)
            if lst is None:
                continue
            self._fds[pid] = lst
            for fd, link in lst:
                c = link[:5]
                if c == "socke":
                    sock_holders[fds.link_inode(link)].append(FdRef(pid, fd))
                elif c == "pipe:":
                    pipe_holders[fds.link_inode(link)].append(FdRef(pid, fd))
                elif link.endswith("ptmx"):
                    self.ptmx_fds.append((pid, fd, link))
                elif link == "/dev/fuse":
                    self.fuse_holders.append(FdRef(pid, fd))

    def masters(self) -> list[ttys.Master]:
        if self._masters is None:
            self.build_fd_index()
            self._masters = ttys.find_masters(self.ptmx_fds)
        return self._masters

    def locks(self) -> set[tuple[int, int, int]]:
        if self._locks is None:
            self._locks = procfs.read_locks()
        return self._locks

    def host_mounts(self) -> list[procfs.MountInfo]:
        if self._host_mounts is None:
            self._host_mounts = procfs.read_mountinfo(self.self_pid) or []
        return self._host_mounts

    def runc_states(self) -> dict[int, RuntimeInfo]:
        if self._runc is None:
            self._runc = runc.states()
        return self._runc

    # ------------------------------------------------------------ network namespaces

    def netns(self, ino: int, via_pid: int) -> netlink.NetnsReader:
        """Lazy diag tables and links of netns ``ino``, entered through ``/proc/via_pid/ns/net``."""
        if ino not in self._netns:
            path = None if ino == self.host_ns.get("net") else f"{procfs.PROC}/{via_pid}/ns/net"
            self._netns[ino] = netlink.NetnsReader(path)
        return self._netns[ino]

    def host_netns(self) -> netlink.NetnsReader:
        return self.netns(self.host_ns.get("net", 0), self.self_pid)

    def netns_label(self, ino: int) -> str:
        if ino == self.host_ns.get("net"):
            return "host"
        if self._netns_names is None:
            self._netns_names = {}
            try:
                for name in os.listdir("/run/netns"):
                    try:
                        self._netns_names[os.stat(f"/run/netns/{name}").st_ino] = name
                    except OSError:
                        continue
            except OSError:
                pass
        label = self._netns_names.get(ino)
        return f"netns:{label}" if label else f"netns inode {ino}"

    def known_netns(self) -> dict[int, dict[int, netlink.Link]]:
        """netns inode -> links, for every netns read so far (veth peers are looked up there)."""
        if self.earlier_inits:
            self._meet_earlier_netns()
        return {ino: r.links() for ino, r in self._netns.items()}

    def _meet_earlier_netns(self) -> None:
        """Put the netns of ``earlier_inits``' members first, in the order a one-process scan meets them."""
        earlier: dict[int, netlink.NetnsReader] = {}
        for init in self.earlier_inits:
            if init not in self.stats:
                continue
            for pid in self.members(init)[0]:
                ino = self.ns_of(pid).get("net", 0)
                if ino and ino not in earlier:
                    earlier[ino] = self.netns(ino, pid)
        self.earlier_inits = []
        self._netns = {**earlier, **{k: v for k, v in self._netns.items() if k not in earlier}}

    # ------------------------------------------------------------ discovery

    def container_inits(self) -> list[int]:
        """Processes whose pid namespace differs from their parent's, plus runc inits sharing ours."""
        inits = []
        for pid, st in self.stats.items():
            if st.ppid <= 0 or st.ppid == 2 or pid == self.self_pid:
                continue
            mine, parent = self.pidns(pid), self.pidns(st.ppid)
            if mine and parent and mine != parent:
                inits.append(pid)
        for pid in self.runc_states():
            if pid in self.stats and pid not in inits:
                inits.append(pid)
        return sorted(inits)

    def members(self, init: int) -> tuple[list[int], set[int]]:
        """(member pids, sorted; those that joined the init's pid namespace from outside its tree)."""
        members = self.subtree(init)
        pidns = self.pidns(init)
        joined: set[int] = set()
        if pidns and pidns != self.host_ns.get("pid"):
            tree = set(members)
            joined = {pid for pid in self.same_pidns(pidns) if pid not in tree}
            members = sorted(tree | joined)
        return members, joined

    def subtree(self, root: int) -> list[int]:
        out, todo = [], [root]
        seen = set()
        while todo:
            pid = todo.pop()
            if pid in seen or pid not in self.stats:
                continue
            seen.add(pid)
            out.append(pid)
            todo.extend(self.children.get(pid, ()))
        return sorted(out)

    def runtime_of(self, init: int) -> RuntimeInfo:
        info = identify(init, self.view, self.runc_states())
        if info is None:
            info = fallback(self.stats[init], self.pidns(init))
        if info.controller_pid == 0 and info.runtime == "runc":
            ppid = self.stats[init].ppid
            info.controller_pid = ppid if ppid > 1 else 0
        return info


# ------------------------------------------------------------------ building containers


def _process(snap: Snapshot, pid: int, members: set[int], joined: set[int]) -> Process | None:
    st = snap.stats.get(pid)
    status = procfs.read_status(pid)
    if st is None or status is None:
        return None
    ext = None
    if pid in joined:
        ext = External(
            reason=f"entered the container's pid namespace from outside (parent {snap.describe(st.ppid)} "
            "is not in the container); CRIU dumps only the init's process tree",
            remedy=NO_REMEDY + " (let it exit before the dump)",
            holder=snap.describe(st.ppid),
        )
    elif status.tracer_pid and status.tracer_pid not in members:
        ext = External(
            reason=f"traced by {snap.describe(status.tracer_pid)} (a debugger or strace outside); "
            "CRIU cannot seize a traced task",
            remedy=NO_REMEDY + " (detach the tracer)",
            holder=snap.describe(status.tracer_pid),
        )
    return Process(
        pid=pid,
        ppid=st.ppid,
        nspid=status.nspid[-1] if status.nspid else pid,
        name=st.comm,
        cmdline=snap.cmdline(pid),
        state=st.state,
        uid=status.uid,
        sid=st.sid,
        pgid=st.pgid,
        tracer_pid=status.tracer_pid,
        threads=st.threads,
        sigpnd_trap=status.sigpnd_trap,
        namespaces=snap.ns_of(pid),
        external=ext,
    )


def _root_path(snap: Snapshot, init: int, own_mnt: bool, mnts: list[procfs.MountInfo]) -> str:
    """Host path of the container's root: /proc/PID/root when it resolves, else from mountinfo."""
    link = procfs.root_link(init)
    if link and link != "/":
        return link
    if not own_mnt or not mnts:
        return link
    ids = {m.mount_id for m in mnts}
    top = next((m for m in mnts if m.parent_id not in ids), mnts[0])
    for hm in snap.host_mounts():
        if (hm.major, hm.minor) == (top.major, top.minor) and (top.root + "/").startswith(hm.root.rstrip("/") + "/"):
            rel = top.root[len(hm.root.rstrip("/")) :]
            return (hm.mountpoint.rstrip("/") + rel) or "/"
    return link


def _fallback_family(snap: Snapshot, inode: int, pids: Iterable[int]) -> str:
    """Sockets sock_diag did not report: look for raw/icmp sockets in /proc/PID/net."""
    for pid in pids:
        for name, fam in (("raw", "inet"), ("raw6", "inet6"), ("icmp", "inet"), ("icmp6", "inet6")):
            try:
                with open(f"{procfs.PROC}/{pid}/net/{name}") as f:
                    for line in f:
                        cols = line.split()
                        if len(cols) > 9 and cols[9] == str(inode):
                            return fam
            except OSError:
                continue
    return ""


def build_container(
    snap: Snapshot,
    init: int,
    members_list: list[int],
    info: RuntimeInfo,
    deep: bool,
    joined: set[int] | None = None,
) -> Container:
    """A Container for ``init`` and its member pids; ``deep`` adds fds, mounts and interfaces."""
    joined = joined or set()
    members = set(members_list)
    init_ns = snap.ns_of(init)
    nss = tuple(
        Namespace(kind=k, inode=ino, shared_with_host=(ino == snap.host_ns.get(k)))
        for k, ino in sorted(init_ns.items())
    )
    own = tuple(n.kind for n in nss if not n.shared_with_host)
    procs = tuple(p for p in (_process(snap, pid, members, joined) for pid in members_list) if p is not None)
    controller = snap.describe(info.controller_pid) if info.controller_pid else ""
    mnt_table = procfs.read_mountinfo(init) if "mnt" in own else None
    root_path = info.root_path or _root_path(snap, init, "mnt" in own, mnt_table or [])
    base = Container(
        id=info.id,
        name=info.name,
        runtime=info.runtime,
        init_pid=init,
        namespaces=nss,
        cgroups=procfs.read_cgroups(init),
        root_path=root_path,
        lsm_label=procfs.read_lsm_label(init),
        controller_pid=info.controller_pid,
        controller=controller,
        processes=procs,
        own_namespaces=own,
        runtime_note=info.note,
    )
    if not deep:
        return base
    return _deepen(snap, base, members, mnt_table)


def _deepen(snap: Snapshot, c: Container, members: set[int], mnt_table: list[procfs.MountInfo] | None) -> Container:
    from dataclasses import replace

    snap.build_fd_index()
    own_net = c.has_own("net")
    own_mnt = c.has_own("mnt")
    init_mntns = snap.ns_of(c.init_pid).get("mnt", 0)
    mount_ids = {m.mount_id for m in mnt_table or []}

    sock_fds: dict[int, list[FdRef]] = defaultdict(list)
    pipe_fds: dict[str, list[FdRef]] = defaultdict(list)
    anon_fds: dict[tuple[str, str, int], list[FdRef]] = defaultdict(list)
    # (rdev, devpts st_dev, master tty-index or -1) -> (path, kind, holders)
    tty_fds: dict[tuple[int, int, int], tuple[str, str, list[FdRef]]] = {}
    dev_fds: dict[tuple[str, int], tuple[bool, list[FdRef]]] = {}
    # (st_dev, ino) -> (link, stat, holders, mnt_id, locked via fdinfo, opened from a mount outside)
    file_fds: dict[tuple[int, int], tuple[str, os.stat_result, list[FdRef], int, bool, bool]] = {}
    netns_of: dict[int, int] = {}  # netns inode -> a member pid in it
    # enter the init's netns through the init: the lowest pid may be a short-lived child (after pid
    # wrap-around, a `sleep` of ctlab-ns's counter) that exits before setns, and its netns's sockets then
    # went unread (5% of scans: an external unix socket lost its peer and its `unix` rule compiled to nothing)
    if init_net := snap.ns_of(c.init_pid).get("net", 0):
        netns_of[init_net] = c.init_pid

    for pid in sorted(members):
        pns = snap.ns_of(pid)
        ino = pns.get("net", 0)
        if ino:
            netns_of.setdefault(ino, pid)
        proc_mntns = pns.get("mnt", 0)
        for fd, link in snap.fds_of(pid):
            ref = FdRef(pid, fd)
            cat = fds.category(link)
            if cat == "socket":
                sock_fds[fds.link_inode(link)].append(ref)
            elif cat == "pipe":
                pipe_fds[link].append(ref)
            elif cat == "anon":
                kind, _ok = fds.anon_kind(link)
                anon_fds[(kind, link, pid)].append(ref)
            elif cat in ("memfd", "memfd_secret"):
                anon_fds[(cat, link, pid)].append(ref)
            elif cat == "nsfs":
                anon_fds[("nsfs", link, pid)].append(ref)
            elif cat == "path":
                st = procfs.fd_stat(pid, fd)
                if st is None:
                    continue
                mode = st.st_mode
                if statmod.S_ISCHR(mode) or statmod.S_ISBLK(mode):
                    rdev = st.st_rdev
                    tkind = devices.tty_kind(os.major(rdev), os.minor(rdev)) if statmod.S_ISCHR(mode) else None
                    if tkind is not None:
                        midx = -1
                        if tkind == "ptmx":  # each open of ptmx is its own pty: tell them apart
                            finfo = procfs.read_fdinfo(pid, fd)
                            midx = finfo.tty_index if finfo else -1
                        tty_fds.setdefault((rdev, st.st_dev, midx), (link, tkind, []))[2].append(ref)
                    else:
                        dkey = (link, rdev)
                        dev_fds.setdefault(dkey, (statmod.S_ISBLK(mode), []))[1].append(ref)
                elif statmod.S_ISFIFO(mode):
                    anon_fds[("fifo", link, 0)].append(ref)
                else:
                    info = procfs.read_fdinfo(pid, fd)
                    mnt_id = info.mnt_id if info else 0
                    locked = bool(info and info.locks)
                    fkey = (st.st_dev, st.st_ino)
                    ext_mnt = own_mnt and proc_mntns == init_mntns and bool(mount_ids) and mnt_id not in mount_ids
                    if fkey in file_fds:
                        file_fds[fkey][2].append(ref)
                        if locked and not file_fds[fkey][4]:  # fdinfo shows a lock only on its own open file
                            file_fds[fkey] = (*file_fds[fkey][:4], True, file_fds[fkey][5])
                    else:
                        file_fds[fkey] = (link, st, [ref], mnt_id, locked, ext_mnt)

    # --- sockets: diag the container's netns(es) first, then the host's
    wanted = set(sock_fds)
    # the init's netns links are needed below for the interfaces: read them in the same netns trip
    links_of = snap.ns_of(c.init_pid).get("net", 0) if own_net else 0
    tables: list[netlink.DiagTables] = [
        snap.netns(ino, via).resolve(wanted if wanted else set(), with_links=ino == links_of)
        for ino, via in netns_of.items()
    ]
    host_tables = snap.host_netns().resolve(set())  # unix only: peers and their names
    if all(t is not host_tables for t in tables):
        tables.append(host_tables)
    socks: list[Socket] = sockets.build(
        {k: tuple(v) for k, v in sock_fds.items()},
        tables,
        snap.sock_holders,
        members,
        snap.describe,
        fallback_family=lambda inode: _fallback_family(snap, inode, [r.pid for r in sock_fds.get(inode, [])]),
    )

    # --- ttys
    tty_items: list[Tty] = [
        ttys.make_tty(path, kind, rdev, dev, tuple(refs), snap.masters(), members, snap.describe, midx)
        for (rdev, dev, midx), (path, kind, refs) in sorted(tty_fds.items())
    ]

    # --- devices
    dev_items: list[Device] = [
        devices.make_device(path, blk, os.major(rdev), os.minor(rdev), own_net, tuple(refs))
        for (path, rdev), (blk, refs) in sorted(dev_fds.items())
    ]

    # --- special fds and pipes
    special: list[SpecialFd] = []
    for target, refs in sorted(pipe_fds.items()):
        others = [h for h in snap.pipe_holders.get(fds.link_inode(target), []) if h.pid not in members]
        outside = sorted({snap.describe(h.pid) for h in others})
        special.append(fds.pipe_item(target, tuple(refs), outside))
    for (kind, target, _pid), refs in sorted(anon_fds.items()):
        if kind in ("memfd", "fifo", "nsfs"):
            ok = True
        elif kind == "memfd_secret":
            ok = False
        else:
            kind, ok = fds.anon_kind(target)
        special.append(fds.special(kind, target, ok, tuple(refs)))

    # --- regular files
    files: list[OpenFile] = []
    for (dev, ino), (link, st, refs, mnt_id, flocked, outside_mnt) in sorted(file_fds.items()):
        deleted = link.endswith(" (deleted)")
        path = link[: -len(" (deleted)")] if deleted else link
        # fdinfo "lock:" lines already list locks taken through the fd; /proc/locks (slow to read
        # on a busy host) is only consulted when an fdinfo could not be read
        locked = flocked or (mnt_id == 0 and (os.major(dev), os.minor(dev), ino) in snap.locks())
        ext = None
        if outside_mnt:
            ext_key = f"file[{mnt_id:x}:{ino:x}]"
            ext = External(
                reason=f"{path} is open from a mount that is not in the container (mnt_id {mnt_id}); "
                "typically a log or socket file the runtime passed in",
                remedy=f"CRIU external {ext_key} on dump + inherit_fd {ext_key} on restore",
            )
        files.append(
            OpenFile(
                path=path,
                mnt_id=mnt_id,
                inode=ino,
                size=st.st_size,
                allocated=st.st_blocks * 512,
                nlink=st.st_nlink,
                deleted=deleted,
                locked=locked,
                holders=tuple(refs),
                external=ext,
            )
        )

    # --- mounts
    mount_items: list[Mount] = []
    if own_mnt and mnt_table:
        fuse_outside = [h for h in snap.fuse_holders if h.pid not in members]
        server = ""
        if fuse_outside:
            pref = [h for h in fuse_outside if h.pid == c.controller_pid]
            pids = sorted({h.pid for h in (pref or fuse_outside)})
            server = ", ".join(snap.describe(p) for p in pids[:3])
        fuse_servers = {
            (m.major, m.minor): server for m in mnt_table if m.fstype == "fuse" or m.fstype.startswith("fuse.")
        }
        mount_items = mounts.build(mnt_table, fuse_servers, snap.host_mounts())

    # --- interfaces
    ifaces: list[NetIface] = []
    if own_net:
        init_net = snap.ns_of(c.init_pid).get("net", 0)
        own_links = snap.netns(init_net, c.init_pid).links()
        other_ns: dict[str, dict[int, netlink.Link]] = {"host": snap.host_netns().links()}
        sysfs = f"{procfs.PROC}/{c.init_pid}/root/sys/class/net"
        sysfs_dir = sysfs if os.path.isdir(sysfs) else None
        ifaces = netifs.build(own_links, other_ns, sysfs_dir)
        if any(i.peer_netns.startswith("netnsid") for i in ifaces):
            # a peer not on the host: look in the other namespaces this scan has seen
            for ino, olk in snap.known_netns().items():
                if ino not in (init_net, snap.host_ns.get("net")):
                    other_ns[snap.netns_label(ino)] = olk
            ifaces = netifs.build(own_links, other_ns, sysfs_dir)

    return replace(
        c,
        sockets=tuple(socks),
        ttys=tuple(tty_items),
        devices=tuple(dev_items),
        fds=tuple(special),
        files=tuple(files),
        mounts=tuple(mount_items),
        interfaces=tuple(ifaces),
    )
