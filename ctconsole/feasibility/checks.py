"""The static rules: what CRIU cannot dump, derived from how CRIU and the kernel behave.

Each function looks at one kind of item in the inventory and yields findings.
The reasoning comes from CRIU 4.2's dump code (files.c dispatch, sk-unix.c,
sk-inet.c, tty.c, mount.c, net.c, namespaces.c, seize.c); the digest §3 lists
the error strings. Rules never look at *names* of workloads, only at the kind
of resource, so an unseen workload gets the same verdict CRIU would give.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

from ctconsole.feasibility.catalogue import Context, rule
from ctconsole.feasibility.findings import AUTO, BLOCKER, INFO, NEEDS_RULE, Finding
from ctconsole.inventory.mounts import AUTO_FS
from ctconsole.model import FdRef, Mount, Socket, Tty

DEFAULT_GHOST_LIMIT = 1 << 20  # CRIU's DEFAULT_GHOST_LIMIT (1 MiB of allocated blocks)
MIB = 1 << 20

# Filesystems CRIU recreates itself when mounted at their fs root (mount.c fstypes[]): one list,
# shared with the inventory that marks the other mounts external.
KNOWN_FS = AUTO_FS
# Link kinds net.c dumps natively (others: "Unsupported link").
NATIVE_LINKS = frozenset({"loopback", "veth", "macvlan", "tun", "tap", "bridge", "sit", "venet"})
# Fallback devices CRIU skips by name.
IGNORED_LINK_NAMES = frozenset({"gre0", "gretap0", "sit0"})
# Special fds CRIU has no dumper for in this build (no libbpf, no plugins).
UNSUPPORTED_FDS = {
    "io_uring": "an io_uring instance (CRIU cannot pass it out of the process, and its ring mapping is not "
    "a regular file)",
    "perf_event": "a perf_event fd",
    "bpf": "a BPF object (this CRIU build has no libbpf; programs and links are never supported)",
    "userfaultfd": "a userfaultfd",
    "memfd_secret": "a memfd_secret area (its memory is invisible to CRIU)",
    "other_anon": "an anonymous-inode fd of a kind CRIU does not know",
}
NESTED_NS_KINDS = ("pid", "uts", "ipc", "user", "cgroup", "time")
CLOSED_TCP_STATES = frozenset({"", "CLOSE", "LISTEN", "UNCONN"})


def _where(holders: tuple[FdRef, ...]) -> str:
    if not holders:
        return ""
    h = holders[0]
    more = f" (+{len(holders) - 1})" if len(holders) > 1 else ""
    return f"pid {h.pid} fd {h.fd}{more}"


def _subject(kind: str, ident: str, holders: tuple[FdRef, ...] = ()) -> str:
    where = _where(holders)
    return f"{kind} {ident}" + (f" ({where})" if where else "")


def _pid_of_holder(holder: str) -> int:
    m = re.search(r"\[(\d+)\]\s*$", holder)
    return int(m.group(1)) if m else 0


# --------------------------------------------------------------------------- processes


@rule("session", AUTO, "Root not a session leader / session inherited from outside", "shell_job")
def session_leader(ctx: Context) -> Iterator[Finding]:
    """CRIU restores sessions from inside the tree; a session whose leader is outside
    (root started from a shell without setsid) needs shell_job on dump and restore.

    Except across a pid namespace: a task of the container's own pid namespace whose session
    leader is outside it has session id 0 *in that namespace*, and CRIU refuses it whatever the
    options ("A session leader of PID(VPID) is outside of its pid namespace", cr-dump.c
    dump_task_threads/dump_one_task; also for zombies). ``unshare --pid --fork CMD`` from a shell
    makes exactly that container: shell_job does not help, only a setsid inside does.
    """
    root = ctx.root
    if root is None:
        return
    pids = ctx.pids
    outside = sorted({p.pid for p in ctx.container.processes if p.sid and p.sid not in pids})
    if outside and ctx.container.has_own("pid"):
        yield Finding(
            "session",
            BLOCKER,
            f"process {outside[0]}",
            f"The container has its own pid namespace but its process(es) {outside[:5]} belong to a session "
            "whose leader is outside it (the container was started without setsid): in the namespace their "
            "session id is 0 and CRIU refuses to dump them ('A session leader of ... is outside of its pid "
            "namespace'); shell_job does not help across a pid namespace.",
            "Start the container's init in a session of its own (e.g. `unshare --pid --fork setsid CMD`, "
            "or setsid in its init script).",
        )
        return
    if root.sid != root.pid or outside:
        who = f"process {root.pid}" if root.sid != root.pid else f"processes {outside[:5]}"
        yield Finding(
            "session",
            AUTO,
            f"process {root.pid}",
            f"The container's {who} belongs to session {root.sid}, whose leader is outside the "
            "container (started from a shell or runtime without setsid).",
            "ctconsole sets shell_job on dump and restore (the restored tree joins ctconsole's session).",
            dump={"shell_job": True},
            restore={"shell_job": True},
        )


@rule("pidns-init", BLOCKER, "Root is not the init of its pid namespace", "dump from the namespace's init")
def pidns_init(ctx: Context) -> Iterator[Finding]:
    """CRIU recreates a pid namespace only from its init ('Can't dump a pid namespace
    without the process init')."""
    root = ctx.root
    if root is None or not ctx.container.has_own("pid"):
        return
    if root.nspid not in (0, 1):
        yield Finding(
            "pidns-init",
            BLOCKER,
            f"process {root.pid}",
            f"The dump root {root.pid} is pid {root.nspid} inside its pid namespace, not its init (pid 1).",
            "Check the container by its init process instead (ctconsole check pid:INIT or tree:INIT).",
        )


@rule("nested-namespace", BLOCKER, "Process in a nested pid/uts/ipc/user/cgroup/time namespace")
def nested_namespaces(ctx: Context) -> Iterator[Finding]:
    """CRIU dumps one namespace of each kind per tree (mnt and net may nest); anything
    else fails with 'Can't dump nested %s namespace'."""
    root = ctx.root
    if root is None or not root.namespaces:
        return
    for p in ctx.container.processes:
        if p.pid == root.pid or not p.namespaces:
            continue
        for kind in NESTED_NS_KINDS:
            a, b = root.namespaces.get(kind), p.namespaces.get(kind)
            if a and b and a != b:
                yield Finding(
                    "nested-namespace",
                    BLOCKER,
                    f"process {p.pid}",
                    f"Process {p.pid} ({p.name}) lives in a nested {kind} namespace (CRIU cannot dump it).",
                    "Checkpoint the inner container on its own, or stop that process first.",
                )
                break
    # A time namespace prepared for children (unshare --time without exec) is refused too.
    for p in ctx.container.processes:
        t, tfc = p.namespaces.get("time"), p.namespaces.get("time_for_children")
        if (t and tfc and t != tfc) or p.pid in ctx.facts.timens_for_children:
            yield Finding(
                "nested-namespace",
                BLOCKER,
                f"process {p.pid}",
                f"Process {p.pid} prepared a new time namespace for its children; CRIU cannot dump it.",
                "Let the process exec into the namespace (or stop it) before checkpointing.",
            )


@rule("traced", BLOCKER, "Task traced by a debugger (TracerPid)", "detach the tracer")
def traced(ctx: Context) -> Iterator[Finding]:
    """CRIU freezes with PTRACE_SEIZE; a task that already has a tracer gives EPERM
    ('Unseizable non-zombie')."""
    for p in ctx.container.processes:
        if p.tracer_pid:
            yield Finding(
                "traced",
                BLOCKER,
                f"process {p.pid}",
                f"Process {p.pid} ({p.name}) is being traced by pid {p.tracer_pid} (debugger, strace).",
                f"Detach the tracer (pid {p.tracer_pid}), then retry.",
            )


@rule("sigtrap", BLOCKER, "Pending SIGTRAP", "let the signal be delivered")
def sigtrap(ctx: Context) -> Iterator[Finding]:
    """CRIU cannot save a pending SIGTRAP (it uses traps itself)."""
    for p in ctx.container.processes:
        if p.sigpnd_trap:
            yield Finding(
                "sigtrap",
                BLOCKER,
                f"process {p.pid}",
                f"Process {p.pid} ({p.name}) has a pending SIGTRAP.",
                "Wait until the signal is handled (usually a debugger event), then retry.",
            )


@rule("vfork", BLOCKER, "Parent blocked in vfork / tasks sharing memory without being threads")
def vfork(ctx: Context) -> Iterator[Finding]:
    """A vfork parent sleeps uninterruptibly until its child execs, so the freeze times
    out; CLONE_VM/FS/SIGHAND sharing between processes cannot be expressed in images."""
    for pid in ctx.facts.vfork_parents:
        yield Finding(
            "vfork",
            BLOCKER,
            f"process {pid}",
            f"Process {pid} is waiting in vfork() for a child that shares its memory; CRIU cannot freeze it.",
            "Wait until the child has exec'd or exited, then retry.",
        )
    for a, b, kind in ctx.facts.shared_mm:
        yield Finding(
            "vfork",
            BLOCKER,
            f"process {a}",
            f"Processes {a} and {b} share their {kind} without being threads (CLONE_{kind.upper()}).",
            "Not checkpointable with CRIU.",
        )


@rule("zombie-threads", INFO, "Zombies and stopped tasks")
def zombies(ctx: Context) -> Iterator[Finding]:
    """Whole-process zombies are fine; a zombie with threads is not."""
    for p in ctx.container.processes:
        if p.state == "Z" and p.threads > 1:
            yield Finding(
                "zombie-threads",
                BLOCKER,
                f"process {p.pid}",
                f"Process {p.pid} is a zombie with {p.threads} threads, which CRIU does not support.",
                "Have its parent reap it (or wait), then retry.",
            )


@rule("sysv-shm", BLOCKER, "SysV shared memory without an own IPC namespace", "own IPC namespace")
def sysv_shm(ctx: Context) -> Iterator[Finding]:
    """SysV IPC objects are dumped with the IPC namespace; attached to the host's, CRIU
    refuses ('doesn't live in IPC ns')."""
    if ctx.container.has_own("ipc"):
        return
    for pid in ctx.facts.sysv_shm_pids:
        yield Finding(
            "sysv-shm",
            BLOCKER,
            f"process {pid}",
            f"Process {pid} has SysV shared memory attached, but shares the host's IPC namespace.",
            "Run the container in its own IPC namespace.",
        )


@rule("device-mapping", BLOCKER, "Device memory mapped into a process")
def device_mappings(ctx: Context) -> Iterator[Finding]:
    """Mappings of device memory (VmFlags io/pf) cannot be saved without a device plugin."""
    for pid, what in ctx.facts.device_map_pids:
        yield Finding(
            "device-mapping",
            BLOCKER,
            f"process {pid}",
            f"Process {pid} maps device memory ({what}); CRIU has no plugin for it here.",
            "Not checkpointable (needs a CRIU device plugin such as amdgpu/cuda).",
        )


# --------------------------------------------------------------------------- sockets


def _unix_external(ctx: Context, s: Socket) -> bool:
    if s.family != "unix" or s.peer_elsewhere:  # a peer CRIU cannot even find: unix-peer-netns
        return False
    if s.external is not None:
        return True
    inodes = {x.inode for x in ctx.container.sockets}
    return bool(s.peer_inode) and s.peer_inode not in inodes


@rule("unix-stream-external", NEEDS_RULE, "UNIX stream/seqpacket socket with a peer outside", "rule unix")
def unix_stream_external(ctx: Context) -> Iterator[Finding]:
    """Observed with CRIU 4.2.1 here: plain dump -> 'External socket is used'; with
    ext_unix_sk -> 'Can't dump half of stream unix connection'; with external
    unix[INO] the dump succeeds, and restore works with inherit_fd socket:[INO] (the
    restored task gets the socket the client hands in). Without it restore fails."""
    for s in ctx.container.sockets:
        if s.type in ("stream", "seqpacket") and _unix_external(ctx, s):
            peer = s.peer_holder or (s.external.holder if s.external else "") or "a process outside"
            yield Finding(
                "unix-stream-external",
                NEEDS_RULE,
                _subject("socket", f"socket:[{s.inode}]", s.holders),
                f"UNIX {s.type} socket {s.inode} is connected to {peer}"
                + (f" via {s.peer_path or s.path}" if (s.peer_path or s.path) else "")
                + ". CRIU can save this half only as an external socket.",
                f"Add a 'unix' rule: dump external unix[{s.inode}] (ctconsole adds it), and on restore "
                f"hand in a connected socket as inherit_fd socket:[{s.inode}].",
                dump={"external": [f"unix[{s.inode}]"]},
                needs=(f"socket:[{s.inode}]",),
                needs_on="restore",
                rule_kind="unix",
            )


@rule("unix-dgram-external", AUTO, "UNIX datagram socket with a peer outside", "ext_unix_sk")
def unix_dgram_external(ctx: Context) -> Iterator[Finding]:
    """A datagram peer that has a name can be reconnected by name on restore
    (ext_unix_sk); a nameless one can only be declared external (unix[INO])."""
    for s in ctx.container.sockets:
        if s.type != "dgram" or not _unix_external(ctx, s):
            continue
        subj = _subject("socket", f"socket:[{s.inode}]", s.holders)
        if s.peer_path:
            yield Finding(
                "unix-dgram-external",
                AUTO,
                subj,
                f"UNIX datagram socket {s.inode} sends to {s.peer_path}, bound by a process outside the container.",
                "ctconsole sets ext_unix_sk; on restore the socket reconnects to "
                f"{s.peer_path}, which must exist on the destination.",
                dump={"ext_unix_sk": True},
                restore={"ext_unix_sk": True},
            )
        else:
            yield Finding(
                "unix-dgram-external",
                NEEDS_RULE,
                subj,
                f"UNIX datagram socket {s.inode} is connected to an unnamed socket outside the container.",
                f"Add a 'unix' rule: external unix[{s.inode}] on dump, inherit_fd socket:[{s.inode}] on restore.",
                dump={"external": [f"unix[{s.inode}]"]},
                needs=(f"socket:[{s.inode}]",),
                needs_on="restore",
                rule_kind="unix",
            )


@rule("unix-peer-netns", BLOCKER, "UNIX socket connected to a socket in another network namespace")
def unix_peer_netns(ctx: Context) -> Iterator[Finding]:
    """sk-unix.c dump_one_unix_fd looks the peer up among the sockets it collected with
    sock_diag in the dumped tree's network namespaces, *before* any external-socket handling:
    a peer that lives in another netns (a host daemon's /dev/log seen from a container with its
    own netns) fails with 'Unix socket N without peer M' whatever the options (ext_unix_sk and
    external unix[N] never get a say)."""
    for s in ctx.container.sockets:
        if s.family != "unix" or not s.peer_elsewhere:
            continue
        peer = s.peer_holder or "a process outside"
        yield Finding(
            "unix-peer-netns",
            BLOCKER,
            _subject("socket", f"socket:[{s.inode}]", s.holders),
            f"UNIX {s.type} socket {s.inode} is connected to socket {s.peer_inode}"
            + (f" ({s.peer_path})" if s.peer_path else "")
            + f" of {peer}, which lives in another network namespace; CRIU finds peers only in the "
            "container's own namespace and refuses the dump ('Unix socket without peer'), with any option.",
            "Close the socket in the workload (e.g. log to a socket created inside the container, or to "
            "stdout), or run the peer inside the container's network namespace.",
        )


@rule("unix-in-flight", BLOCKER, "UNIX connections queued on a listener that CRIU cannot replay")
def unix_in_flight(ctx: Context) -> Iterator[Finding]:
    """A connection not accepted yet is re-made on restore from the client's side, which works only
    while nothing was sent on it: sk-unix.c refuses a listener whose queue holds a connection whose
    client already closed ('Found a closed in-flight socket', its data cannot be read) and an
    in-flight client with unsent data ('Non-empty write queue on an in-flight socket')."""
    for s in ctx.container.sockets:
        if s.family != "unix":
            continue
        subj = _subject("socket", f"socket:[{s.inode}]", s.holders)
        if s.state == "LISTEN" and 0 in s.icons:
            closed = s.icons.count(0)
            yield Finding(
                "unix-in-flight",
                BLOCKER,
                subj,
                f"UNIX listener {s.inode}{' (' + s.path + ')' if s.path else ''} has {closed} queued "
                "connection(s) whose client already closed (possibly after sending data); CRIU cannot "
                "save them.",
                "Let the workload accept() its pending connections (or close the listener), then retry.",
            )
        elif s.in_flight and s.wqueue:
            yield Finding(
                "unix-in-flight",
                BLOCKER,
                subj,
                f"UNIX socket {s.inode} is connected to a listener that has not accepted it yet and has "
                f"{s.wqueue} byte(s) of unsent data; CRIU cannot get data out of such a queue.",
                "Let the server accept() the connection, then retry.",
            )


@rule("unix-state", BLOCKER, "UNIX socket in a state or type CRIU does not handle")
def unix_state(ctx: Context) -> Iterator[Finding]:
    """sk-unix.c accepts stream/dgram/seqpacket in LISTEN, ESTABLISHED or CLOSE only."""
    for s in ctx.container.sockets:
        if s.family != "unix":
            continue
        if s.type not in ("stream", "dgram", "seqpacket", ""):
            yield Finding(
                "unix-state",
                BLOCKER,
                _subject("socket", f"socket:[{s.inode}]", s.holders),
                f"UNIX socket {s.inode} has type {s.type}, which CRIU cannot dump.",
                "Close it in the workload.",
            )


def _criu_inet_broken(ctx: Context) -> bool:
    return ctx.criu_version < (4, 2, 0) and ctx.kernel >= (6, 16)


@rule("criu-kernel-inet", BLOCKER, "CRIU < 4.2 on kernel >= 6.16 with network sockets", "CRIU >= 4.2")
def criu_kernel_inet(ctx: Context) -> Iterator[Finding]:
    """Linux 6.16 restricted SO_PASSCRED/SO_PASSSEC to unix/netlink; CRIU < 4.2 reads them
    on every inet/packet socket and fails (criu #2705)."""
    if not _criu_inet_broken(ctx):
        return
    for s in ctx.container.sockets:
        if s.family in ("inet", "inet6", "packet"):
            yield Finding(
                "criu-kernel-inet",
                BLOCKER,
                _subject("socket", f"{s.family} {s.local or s.inode}", s.holders),
                "This CRIU (< 4.2) cannot dump network sockets on kernel >= 6.16.",
                "Install CRIU >= 4.2 (scripts/install-criu).",
            )


TCP_CONNECTED = frozenset(
    {"ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2", "CLOSE_WAIT", "LAST_ACK", "CLOSING"}
)


@rule("tcp-established", AUTO, "Connected TCP sockets", "tcp_established (or tcp_close by rule)")
def tcp_connected(ctx: Context) -> Iterator[Finding]:
    """Connected TCP needs TCP_REPAIR (tcp_established) or to be dropped (tcp_close);
    the destination must own the same local address."""
    closed = set(ctx.facts.closed_tcp_peers)
    for s in ctx.container.sockets:
        if s.family not in ("inet", "inet6") or s.type != "stream":
            continue
        if s.inode in closed:  # sk-inet.c: a TCP entry with a destination port is restored as a connection
            yield Finding(
                "tcp-established",
                AUTO,
                _subject("socket", f"tcp socket:[{s.inode}]", s.holders),
                f"TCP socket {s.inode} was connected and is closed now (e.g. reset by its peer); CRIU saves "
                "its peer address and restores it only as a connection.",
                "ctconsole sets tcp_established on dump and restore (the socket comes back closed, as it was).",
                dump={"tcp_established": True},
                restore={"tcp_established": True},
            )
            continue
        if s.state.upper() in TCP_CONNECTED:
            yield Finding(
                "tcp-established",
                AUTO,
                _subject("socket", f"tcp {s.local} -> {s.remote}", s.holders),
                f"TCP connection {s.local} -> {s.remote} ({s.state}) is open.",
                "ctconsole sets tcp_established (the connection survives; the destination must own "
                f"{s.local.rsplit(':', 1)[0] or 'the same address'}). A rule may choose tcp_close instead.",
                dump={"tcp_established": True},
                restore={"tcp_established": True},
            )


@rule("tcp-in-flight", AUTO, "TCP listeners with connections not accepted yet", "tcp_skip_in_flight")
def tcp_in_flight(ctx: Context) -> Iterator[Finding]:
    """sk-inet.c refuses a listener with a non-empty accept queue ('In-flight connection (l)')
    unless told to skip them; the clients of those connections see them reset and reconnect."""
    for s in ctx.container.sockets:
        if s.family in ("inet", "inet6") and s.type == "stream" and s.state.upper() == "LISTEN" and s.rqueue:
            yield Finding(
                "tcp-in-flight",
                AUTO,
                _subject("socket", f"tcp listen {s.local}", s.holders),
                f"TCP listener on {s.local} has {s.rqueue} connection(s) waiting to be accepted.",
                "ctconsole sets tcp_skip_in_flight: those connections are dropped (their clients see a reset).",
                dump={"tcp_skip_in_flight": True},
            )


@rule("udp-corked", BLOCKER, "Corked UDP sockets (UDP_CORK)")
def udp_corked(ctx: Context) -> Iterator[Finding]:
    """sk-inet.c reads UDP_CORK on every UDP/UDPlite socket and refuses a corked one ('Can't dump
    corked dgram socket'): the datagram being assembled cannot be read back."""
    corked = set(ctx.facts.corked_udp)
    for s in ctx.container.sockets:
        if s.inode in corked:
            yield Finding(
                "udp-corked",
                BLOCKER,
                _subject("socket", f"udp {s.local or s.inode}", s.holders),
                f"UDP socket {s.local or s.inode} is corked (UDP_CORK set"
                + (f", {s.wqueue} byte(s) pending" if s.wqueue else "")
                + "); CRIU cannot dump a corked datagram socket.",
                "Let the workload uncork it (setsockopt UDP_CORK 0 flushes the datagram), then retry.",
            )


@rule("netlink-socket", BLOCKER, "Netlink sockets CRIU cannot save (unread data, many groups)")
def netlink_sockets(ctx: Context) -> Iterator[Finding]:
    """sk-netlink.c dumps netlink sockets (bound or not) but refuses one with data waiting to be
    read ('The socket has data to read'), one in multicast groups above 32 ('has more than 32
    groups', judged on the kernel's group bitmap the way CRIU reads it) and one in groups without
    a port id."""
    for s in ctx.container.sockets:
        if s.family != "netlink":
            continue
        subj = _subject("socket", f"netlink {s.protocol} socket:[{s.inode}]", s.holders)
        why = ""
        if s.rqueue:
            why = f"has {s.rqueue} byte(s) of unread messages"
            fix = "Let the workload read its netlink socket empty (or close it), then retry."
        elif s.group_words > 1:
            why = "is subscribed to a multicast group above 32 (CRIU saves only the first 32)"
            fix = "Leave the groups above 32 in the workload, or close the socket."
        elif s.groups and s.state == "unbound":
            why = "is in multicast groups without a port id"
            fix = "Bind the socket before joining groups, or close it."
        if why:
            yield Finding("netlink-socket", BLOCKER, subj, f"Netlink socket {s.inode} {why}.", fix)


@rule("tcp-listen", INFO, "Listening TCP sockets and UDP sockets")
def inet_listen(ctx: Context) -> Iterator[Finding]:
    """Listeners and UDP sockets are dumped as they are; queued UDP data is dropped."""
    for s in ctx.container.sockets:
        if s.family not in ("inet", "inet6"):
            continue
        if s.type == "stream" and s.state.upper() == "LISTEN":
            yield Finding(
                "tcp-listen",
                INFO,
                _subject("socket", f"tcp listen {s.local}", s.holders),
                f"TCP listener on {s.local}: dumped and restored as is.",
                "Nothing to do; the address must exist on the destination.",
            )
        elif s.type == "dgram":
            yield Finding(
                "tcp-listen",
                INFO,
                _subject("socket", f"udp {s.local}", s.holders),
                f"UDP socket {s.local}: restored; datagrams queued at dump time are dropped.",
                "Nothing to do.",
            )


INET_PROTOCOLS_OK = frozenset({"", "0", "tcp", "udp", "udplite", "ip", "icmp", "6", "17", "136", "1", "58"})


@rule("socket-family", BLOCKER, "Socket families and protocols CRIU does not know")
def socket_family(ctx: Context) -> Iterator[Finding]:
    """Only unix, inet/inet6 (TCP, UDP, UDPlite, raw), packet and netlink are dumped;
    vsock, alg, xdp, bluetooth, can... hit 'Unknown socket collected'; SCTP/MPTCP/ping
    hit 'Unsupported proto'."""
    for s in ctx.container.sockets:
        subj = _subject("socket", f"socket:[{s.inode}]", s.holders)
        if s.family in ("unix", "netlink", "packet"):
            continue
        if s.family in ("inet", "inet6"):
            proto = s.protocol.lower()
            if s.type == "raw" or proto in INET_PROTOCOLS_OK:
                continue
            yield Finding(
                "socket-family",
                BLOCKER,
                subj,
                f"{s.family} socket {s.inode} uses protocol {s.protocol}, which CRIU cannot dump.",
                "Close it in the workload (SCTP, MPTCP and ICMP sockets are not supported).",
            )
            continue
        yield Finding(
            "socket-family",
            BLOCKER,
            subj,
            f"Socket {s.inode} is of family {s.protocol or s.family}, which CRIU cannot checkpoint "
            "(it dumps unix, inet, inet6, packet and netlink sockets only).",
            "Close it in the workload (vsock, alg, xdp, bluetooth... have no CRIU support).",
        )


@rule("packet-socket", INFO, "Packet and netlink sockets")
def packet_sockets(ctx: Context) -> Iterator[Finding]:
    """Packet sockets (with rings) and netlink sockets are supported."""
    for s in ctx.container.sockets:
        if s.family == "packet" and s.group_words > 1:
            yield Finding(
                "packet-socket",
                BLOCKER,
                _subject("socket", f"packet socket:[{s.inode}]", s.holders),
                f"Packet socket {s.inode} holds a multicast membership added {s.group_words} times; CRIU "
                "saves each membership once ('Multiple MC membership not supported').",
                "Drop the duplicate PACKET_ADD_MEMBERSHIP in the workload, or close the socket.",
            )
        elif s.family == "packet" and not _criu_inet_broken(ctx):
            yield Finding(
                "packet-socket",
                INFO,
                _subject("socket", f"packet socket:[{s.inode}]", s.holders),
                f"Packet socket {s.inode}: supported (a socket in several multicast groups is not).",
                "Nothing to do; the interface it is bound to must exist after restore.",
            )


# --------------------------------------------------------------------------- ttys


PTS_MAJORS = range(136, 144)
PTMX_MAJORS = range(128, 136)


def _pts_index(t: Tty) -> int:
    major, minor = os.major(t.rdev), os.minor(t.rdev)
    if major in PTS_MAJORS:
        return (major - 136) * 256 + minor
    return t.index


def _is_pts_slave(t: Tty) -> bool:
    return os.major(t.rdev) in PTS_MAJORS or (t.kind == "pts" and not t.rdev)


@rule("tty-external-master", AUTO, "Terminal whose master is outside the container", "orphan_pts_master")
def tty_external_master(ctx: Context) -> Iterator[Finding]:
    """A pts slave without its ptmx master in the tree: CRIU accepts one such slave with
    orphan_pts_master (RPC only; the client receives a new master on restore and must
    keep it open). Several unpaired slaves cannot all be satisfied."""
    pids = ctx.pids
    masters = {t.index for t in ctx.container.ttys if t.kind == "ptmx" and t.index >= 0}
    orphans: dict[int, Tty] = {}
    for t in ctx.container.ttys:
        if not _is_pts_slave(t):
            continue
        idx = _pts_index(t)
        holder_pid = _pid_of_holder(t.master_holder)
        inside = idx in masters or (holder_pid and holder_pid in pids)
        if inside and t.external is None:
            continue
        orphans.setdefault(idx, t)
    if not orphans:
        return
    if len(orphans) > 1:
        yield Finding(
            "tty-external-master",
            BLOCKER,
            f"ttys {', '.join(sorted({t.path for t in orphans.values()}))}",
            f"{len(orphans)} terminals used in the container have their masters outside it; CRIU "
            "can take over only one (orphan_pts_master).",
            "Give the workload at most one outside terminal (e.g. lxc.tty.max=0, console none).",
        )
        return
    t = next(iter(orphans.values()))
    holder = t.master_holder or (t.external.holder if t.external else "") or "a process outside"
    private_devpts = ctx.container.has_own("mnt") and any(m.fstype == "devpts" for m in ctx.container.mounts)
    # a master nobody holds any more (closed: zdtm's pty04) frees the index with the dumped slaves
    master_open = bool(t.master_holder or (t.external.holder if t.external else ""))
    if ctx.dest_local and not private_devpts and master_open:
        yield Finding(
            "tty-index-busy",
            BLOCKER,
            _subject("tty", t.path, t.holders),
            f"{t.path} belongs to the host's devpts and its master stays open in {holder} after the "
            "dump, so CRIU cannot recreate that pts index on this host (observed: 'Unable to open "
            "dev/pts/ptmx with specified index').",
            f"Close the terminal held by {holder} after the dump, restore on another host, or start "
            "the workload without a terminal (stdio on /dev/null or pipes).",
        )
    yield Finding(
        "tty-external-master",
        AUTO,
        _subject("tty", t.path, t.holders),
        f"Terminal {t.path} is used in the container but its master is held by {holder}.",
        "ctconsole sets orphan_pts_master + notify_scripts (and shell_job on restore): the restored "
        "workload gets a new terminal whose master ctconsole keeps. Output to the old terminal stops.",
        dump={"orphan_pts_master": True, "notify_scripts": True},
        restore={"orphan_pts_master": True, "notify_scripts": True, "shell_job": True},
    )


@rule("tty-serial", BLOCKER, "Serial ports CRIU cannot reopen (ttyS*)")
def tty_serial(ctx: Context) -> Iterator[Finding]:
    """tty.c handles pty, vt (4:1-63), USB serial (188) and 204 only; ttyS (4:64+) fails."""
    for t in ctx.container.ttys:
        major, minor = os.major(t.rdev), os.minor(t.rdev)
        if (t.kind == "serial" and major not in (188, 204)) or (major == 4 and minor >= 64):
            yield Finding(
                "tty-serial",
                BLOCKER,
                _subject("tty", t.path, t.holders),
                f"Serial port {t.path} is open; CRIU cannot checkpoint it.",
                "Close it in the workload.",
            )


# --------------------------------------------------------------------------- devices and special fds


def _char_supported(major: int, minor: int) -> bool | None:
    """True: CRIU dumps it; False: 'Can't dump file of that type'; None: tty (other rule)."""
    if major == 1:  # mem class: null, zero, full, random, urandom, kmsg
        return True
    if major in (5, 188, 204) or major in PTS_MAJORS or major in PTMX_MAJORS:
        return None
    if major == 4:
        return None if minor < 64 else False
    return major == 10 and minor in (200, 235)  # tun, autofs


@rule("device", BLOCKER, "Device fds CRIU cannot dump (kvm, fuse, dri, snd, block...)")
def devices(ctx: Context) -> Iterator[Finding]:
    """files.c sends char devices by major to the tty code or reopens the mem class by path;
    any other char device, and every block device, is 'Can't dump file of that type'."""
    for d in ctx.container.devices:
        subj = _subject("device", d.path, d.holders)
        if d.kind == "block":
            yield Finding(
                "device",
                BLOCKER,
                subj,
                f"Block device {d.path} ({d.major}:{d.minor}) is open; CRIU cannot checkpoint block device fds.",
                "Close it in the workload (use the filesystem on it instead).",
            )
            continue
        ok = _char_supported(d.major, d.minor)
        if ok is None:
            continue
        if d.major == 10 and d.minor == 200 and not ctx.container.has_own("net"):
            yield Finding(
                "device",
                BLOCKER,
                subj,
                f"{d.path} (tun/tap) is open but the container shares the host network namespace.",
                "Run the container in its own network namespace (CRIU dumps tun links only there).",
            )
        elif not ok:
            yield Finding(
                "device",
                BLOCKER,
                subj,
                f"Character device {d.path} ({d.major}:{d.minor}) is open; CRIU has no support for it "
                "(and no device plugin is installed).",
                "Close it in the workload, or stop the program that holds it.",
            )


@rule("unsupported-fd", BLOCKER, "io_uring, perf_event, bpf, userfaultfd, memfd_secret fds")
def special_fds(ctx: Context) -> Iterator[Finding]:
    """Anonymous-inode kinds without a dumper in files.c (and no plugin) fail the dump."""
    for f in ctx.container.fds:
        kind = f.kind
        if kind == "bpf" or "bpf" in f.target:
            kind = "bpf"
        what = UNSUPPORTED_FDS.get(kind)
        if what is None and not f.supported and kind not in ("inotify", "fanotify", "pidfd"):
            what = f"an fd of kind {f.kind} ({f.target})"
        if what is None:
            continue
        yield Finding(
            "unsupported-fd",
            BLOCKER,
            _subject("fd", f.target, f.holders),
            f"The container holds {what}; CRIU cannot checkpoint it.",
            "Close it in the workload, or stop the program that holds it.",
        )


@rule("pidfd", BLOCKER, "pidfds of threads or of processes outside the container")
def pidfd_rule(ctx: Context) -> Iterator[Finding]:
    """pidfd.c refuses a thread pidfd ('PIDFD_THREAD flag is currently not supported') and a
    pidfd whose process is not in the dumped tree ('is not a part of process tree'): it re-creates
    pidfds only for processes it restores. A pidfd of a process that already exited is fine."""
    pids = ctx.pids
    for pid, fd, target, thread in ctx.facts.pidfds:
        subj = f"fd pidfd (pid {pid} fd {fd})"
        if thread:
            yield Finding(
                "pidfd",
                BLOCKER,
                subj,
                f"Process {pid} holds a pidfd of thread {target} (PIDFD_THREAD); CRIU cannot dump thread pidfds.",
                "Open the pidfd on the process (thread group leader) instead, or close it.",
            )
        elif target > 0 and target not in pids:
            yield Finding(
                "pidfd",
                BLOCKER,
                subj,
                f"Process {pid} holds a pidfd of process {target}, which is not in the container; CRIU "
                "restores pidfds only for processes it restores.",
                "Close the pidfd, or checkpoint a tree that includes that process.",
            )


@rule("creds-rlimit", BLOCKER, "Tasks CRIU may not read the rlimits of (no CAP_SYS_RESOURCE)")
def creds_rlimit(ctx: Context) -> Iterator[Finding]:
    """CRIU saves every task's rlimits with prlimit(); the kernel allows it on a task with other
    uids/gids only to a caller with CAP_SYS_RESOURCE (kernel/sys.c check_prlimit_permission), so
    where ctconsole and CRIU run without that capability (a restricted container) the dump fails
    with 'Can't get rlimit 0: Operation not permitted'."""
    for pid, creds in ctx.facts.foreign_creds[:1]:
        more = len(ctx.facts.foreign_creds) - 1
        yield Finding(
            "creds-rlimit",
            BLOCKER,
            f"process {pid}",
            f"Process {pid} runs as {creds}{f' (and {more} more)' if more else ''}, and CRIU runs here without "
            "CAP_SYS_RESOURCE, so it may not read its resource limits.",
            "Run ctconsole (and so CRIU) with CAP_SYS_RESOURCE, e.g. outside the restricted container or "
            "with that capability added to its bounding set.",
        )


@rule("external-pipe", AUTO, "Pipes whose other end is outside the container (runtime stdio)")
def external_pipes(ctx: Context) -> Iterator[Finding]:
    """CRIU dumps the container's end of a pipe, but on restore it can only rebuild the pipe
    from the tree: the peer a runtime held outside (containerd-shim, conmon) is gone, so
    stdout hits a pipe without readers (SIGPIPE) and stdin reads EOF. runc passes new pipes
    as ``inherit_fd pipe:[INO]`` (descriptors.json); ctconsole migrate does the same and
    its restore parent keeps the other ends (migrate/pipes.py, migrate/keeper.py)."""
    for f in ctx.container.fds:
        if f.kind != "pipe" or f.external is None:
            continue
        yield Finding(
            "external-pipe",
            AUTO,
            _subject("pipe", f.target, f.holders),
            f"{f.target} is shared with {f.external.holder or 'a process'} outside the container; a plain "
            "restore would leave the container's end without its peer.",
            f"ctconsole migrate re-creates it: a new pipe on the destination passed as inherit_fd {f.target}; "
            "the restore parent logs what the container writes to it (or holds it open for reading).",
        )


@rule("notify-fd", INFO, "inotify / fanotify watches")
def notify_fds(ctx: Context) -> Iterator[Finding]:
    """Watches are re-added by path; pending events are dropped, and watches on unlinked
    files need link_remap (added when such files are seen)."""
    seen = 0
    for f in ctx.container.fds:
        if f.kind in ("inotify", "fanotify"):
            seen += 1
            if seen == 1:
                yield Finding(
                    "notify-fd",
                    INFO,
                    _subject("fd", f.target, f.holders),
                    f"{f.kind} watches are re-created by path; events pending at dump time are lost.",
                    "Nothing to do (if CRIU cannot name a watch, force_irmap helps).",
                )


# --------------------------------------------------------------------------- files


@rule("file-lock", AUTO, "File locks and leases held", "file_locks")
def file_locks(ctx: Context) -> Iterator[Finding]:
    """CRIU refuses to dump held locks unless told to save them ('Some file locks are
    hold'); restore needs the same option to take them again."""
    locked = [f for f in ctx.container.files if f.locked]
    if locked:
        f = locked[0]
        more = f" and {len(locked) - 1} more" if len(locked) > 1 else ""
        yield Finding(
            "file-lock",
            AUTO,
            _subject("file", f.path, f.holders),
            f"A lock is held on {f.path}{more}.",
            "ctconsole sets file_locks on dump and restore (nobody else may take the lock meanwhile).",
            dump={"file_locks": True},
            restore={"file_locks": True},
        )


@rule("lease-breaking", BLOCKER, "File leases in the middle of being broken")
def lease_breaking(ctx: Context) -> Iterator[Finding]:
    """file-lock.c restores a lease caught in BREAKING state by taking it again and breaking it once
    more (restore_breaking_file_lease), with the lease signal blocked only around that call: the
    process is sent the lease-break signal a second time for a break it already handled (zdtm's
    file_lease02-04 see 'Unexpected fd'). A break ends by itself (lease-break-time)."""
    seen: set[int] = set()
    for pid, ino in ctx.facts.breaking_leases:
        if ino in seen:
            continue
        seen.add(ino)
        f = next((x for x in ctx.container.files if x.inode == ino), None)
        what = f.path if f else f"inode {ino}"
        yield Finding(
            "lease-breaking",
            BLOCKER,
            _subject("file", what, f.holders if f else ()),
            f"Process {pid} holds a lease on {what} that is being broken; CRIU would restore it by breaking it "
            "again, and the process would get the lease-break signal a second time.",
            "Wait until the break has finished (the holder releases or downgrades the lease, at the latest after "
            "/proc/sys/fs/lease-break-time seconds), then retry.",
        )


@rule("deleted-file", AUTO, "Open files that were deleted", "ghost_limit")
def deleted_files(ctx: Context) -> Iterator[Finding]:
    """An unlinked open file (nlink 0) is copied into the image if its allocated blocks
    fit ghost_limit (1 MiB by default); ctconsole sizes the limit to the largest one."""
    ghosts = [f for f in ctx.container.files if f.deleted and f.nlink == 0]
    if not ghosts:
        return
    biggest = max(ghosts, key=lambda f: f.allocated)
    size = biggest.allocated
    # headroom: a file still being written (or a sparse one whose extent blocks ext4 allocates at
    # writeback) grows between the check and the dump; zdtm's ghost_multi_hole grew 16 KiB past 4 MiB
    need = size + size // 8 + (64 << 10)
    if need > DEFAULT_GHOST_LIMIT:
        limit = ((need + MIB - 1) // MIB) * MIB
        yield Finding(
            "deleted-file",
            AUTO,
            _subject("file", biggest.path, biggest.holders),
            f"{len(ghosts)} deleted file(s) are still open; the largest ({biggest.path}) has "
            f"{size} bytes allocated, near or above CRIU's 1 MiB ghost limit.",
            f"ctconsole sets ghost_limit={limit} (with room for it to grow; the images grow by its size).",
            dump={"ghost_limit": limit},
        )
    else:
        yield Finding(
            "deleted-file",
            INFO,
            _subject("file", biggest.path, biggest.holders),
            f"{len(ghosts)} deleted file(s) are still open; CRIU copies them into the image.",
            "Nothing to do.",
        )


@rule("unlinked-linked-file", AUTO, "Open files renamed/unlinked but still linked elsewhere", "link_remap")
def link_remap(ctx: Context) -> Iterator[Finding]:
    """A path that is gone while the inode still has links: CRIU needs link_remap to make
    a temporary hard link it can reopen ('Can't create link remap')."""
    for f in ctx.container.files:
        if f.deleted and f.nlink > 0:
            yield Finding(
                "unlinked-linked-file",
                AUTO,
                _subject("file", f.path, f.holders),
                f"{f.path} was unlinked or renamed but its inode still has {f.nlink} link(s).",
                "ctconsole sets link_remap (CRIU creates a temporary hard link while dumping).",
                dump={"link_remap": True},
            )
            return


@rule("external-file", NEEDS_RULE, "Files open from mounts the container cannot see", "rule file")
def external_files(ctx: Context) -> Iterator[Finding]:
    """With an own mount namespace, a file whose mnt_id is not in the container's
    mountinfo cannot be reopened ('Can't lookup mount'); it must be external."""
    c = ctx.container
    if not c.has_own("mnt"):
        return
    seen: set[str] = set()
    items: list[tuple[str, int, int, tuple[FdRef, ...]]] = []
    for pid, fd, path, mnt_id, ino in ctx.facts.foreign_mount_fds:
        items.append((path, mnt_id, ino, (FdRef(pid, fd),)))
    if c.mounts:
        mnt_ids = {m.mount_id for m in c.mounts}
        for f in c.files:
            ext = f.external is not None and "file[" in f.external.remedy
            if (f.mnt_id and f.mnt_id not in mnt_ids) or ext:
                items.append((f.path, f.mnt_id, f.inode, f.holders))
    for path, mnt_id, ino, holders in items:
        key = f"file[{mnt_id:x}:{ino:x}]"
        if key in seen:
            continue
        seen.add(key)
        yield Finding(
            "external-file",
            NEEDS_RULE,
            _subject("file", path, holders),
            f"{path} is open from a mount outside the container's mount namespace (mount {mnt_id}), "
            "e.g. inherited from the process that started it.",
            f"Add a 'file' rule (source = \"{path}\", destination = the file to open on the destination): "
            f"ctconsole dumps it as external {key} and hands CRIU the destination as inherit_fd {key} on "
            "restore. Or close/reopen it inside the container (e.g. stdio on a pipe).",
            dump={"external": [key]},
            needs=(key,),
            needs_on="restore",  # the key is also the dump external: only an inherited fd remedies it
            rule_kind="file",
        )


# --------------------------------------------------------------------------- mounts


def _is_fuse(m: Mount) -> bool:
    return m.fstype == "fuse" or m.fstype.startswith(("fuse.", "fuseblk"))


def _sub_path(path: str, base: str) -> bool:
    base = base.rstrip("/")
    return path == base or path.startswith(base + "/") or base == ""


def _external_mount_key(m: Mount) -> tuple[str, ...]:
    return (f"mnt[{m.mountpoint}]",)


@rule("fuse-mount", NEEDS_RULE, "FUSE mounts", "rule mount (external mnt)")
def fuse_mounts(ctx: Context) -> Iterator[Finding]:
    """CRIU never dumps FUSE mounts itself (always_fail); with the server outside the
    container the mount can only be declared external and re-bound on restore."""
    if not ctx.container.has_own("mnt"):
        return
    for m in ctx.container.mounts:
        if not _is_fuse(m):
            continue
        server = m.fuse_server or (m.external.holder if m.external else "") or "a process outside"
        server_pid = _pid_of_holder(server)
        if server_pid and server_pid in ctx.pids:
            yield Finding(
                "fuse-mount",
                BLOCKER,
                f"mount {m.mountpoint}",
                f"FUSE mount {m.mountpoint} is served by {server} inside the container (holds /dev/fuse).",
                "Not checkpointable: stop the FUSE server and unmount it first.",
            )
            continue
        yield Finding(
            "fuse-mount",
            NEEDS_RULE,
            f"mount {m.mountpoint}",
            f"FUSE mount {m.mountpoint} ({m.fstype}) is served by {server}; CRIU cannot dump FUSE mounts.",
            f"Add a 'mount' rule making it external (mnt[{m.mountpoint}]:COOKIE on dump, "
            "mnt[COOKIE]:HOSTPATH on restore) with a server running on the destination.",
            needs=_external_mount_key(m),
            rule_kind="mount",
        )


@rule("bind-mount-external", NEEDS_RULE, "Bind mounts from outside the container", "rule mount")
def bind_mounts(ctx: Context) -> Iterator[Finding]:
    """A bind mount (root != '/') whose filesystem has no root mount inside the container:
    CRIU cannot find its source ('doesn't have a proper root mount')."""
    c = ctx.container
    if not c.has_own("mnt"):
        return
    # mount.c validate_mounts: a bind is fine when a mount of the same superblock shows the
    # fs root, or when the container's root mount is of that superblock and contains its root.
    roots = {(m.major, m.minor) for m in c.mounts if m.root == "/"}
    top = [m for m in c.mounts if m.mountpoint == "/"]
    for m in c.mounts:
        if m.mountpoint == "/" or _is_fuse(m) or m.root in ("", "/"):
            continue
        if m.external is None and (
            (m.major, m.minor) in roots
            or any((t.major, t.minor) == (m.major, m.minor) and _sub_path(m.root, t.root) for t in top)
        ):
            continue
        yield Finding(
            "bind-mount-external",
            NEEDS_RULE,
            f"mount {m.mountpoint}",
            f"{m.mountpoint} is a bind mount of {m.root} from a {m.fstype} filesystem outside the container.",
            f"Add a 'mount' rule: external mnt[{m.mountpoint}]:COOKIE on dump and mnt[COOKIE]:HOSTPATH "
            "on restore (HOSTPATH on the destination).",
            needs=_external_mount_key(m),
            rule_kind="mount",
        )


@rule("mount-fstype", NEEDS_RULE, "Whole filesystems CRIU cannot recreate", "rule mount (dev/mnt external)")
def mount_fstype(ctx: Context) -> Iterator[Finding]:
    """A filesystem mounted at its root whose type CRIU does not know (ext4, xfs, btrfs,
    nfs...) cannot be recreated: 'FS mnt ... unsupported' unless external."""
    c = ctx.container
    if not c.has_own("mnt"):
        return
    for m in c.mounts:
        if m.mountpoint == "/" or m.root != "/" or _is_fuse(m) or m.fstype in KNOWN_FS:
            continue
        yield Finding(
            "mount-fstype",
            NEEDS_RULE,
            f"mount {m.mountpoint}",
            f"{m.mountpoint} is a whole {m.fstype} filesystem ({m.source}); CRIU cannot mount it itself.",
            f"Add a 'mount' rule: external mnt[{m.mountpoint}]:COOKIE (or dev[{m.major}/{m.minor}]:NAME) "
            "and the matching path on restore.",
            needs=(*_external_mount_key(m), f"dev[{m.major}/{m.minor}]"),
            rule_kind="mount",
        )


# --------------------------------------------------------------------------- network devices


@rule("veth-external", NEEDS_RULE, "veth whose peer is outside the container", "rule veth")
def veth(ctx: Context) -> Iterator[Finding]:
    """CRIU dumps only this end of a veth. Restoring without a mapping 'succeeds' but puts
    the peer inside the container (connectivity lost), so a mapping is required."""
    if not ctx.container.has_own("net"):
        return
    names = {i.name for i in ctx.container.interfaces}
    for i in ctx.container.interfaces:
        if i.kind != "veth":
            continue
        if i.peer_ifname and i.peer_ifname in names and not i.peer_netns:
            continue  # both ends inside
        where = f"{i.peer_ifname or '?'} in {i.peer_netns or 'another netns'}"
        if i.bridge:
            where += f" on bridge {i.bridge}"
        yield Finding(
            "veth-external",
            NEEDS_RULE,
            f"interface {i.name}",
            f"veth {i.name} connects to {where}; CRIU recreates the pair on restore only with a mapping.",
            f"Add a 'veth' rule: veth[{i.name}]:HOSTIF[@BRIDGE] (or netdev[{i.name}]:PRECREATED) naming "
            "the host end and bridge on the destination.",
            needs=(f"veth[{i.name}]", f"netdev[{i.name}]"),
            rule_kind="veth",
        )


@rule("macvlan", NEEDS_RULE, "macvlan needs its parent on the destination", "rule netdev")
def macvlan(ctx: Context) -> Iterator[Finding]:
    """macvlan is dumped, but restore needs the parent device named ('a macvlan parent
    for X is required')."""
    if not ctx.container.has_own("net"):
        return
    for i in ctx.container.interfaces:
        if i.kind == "macvlan":
            yield Finding(
                "macvlan",
                NEEDS_RULE,
                f"interface {i.name}",
                f"macvlan {i.name} (parent {i.parent or '?'}) needs a parent device on the destination.",
                f"Add a 'netdev' rule: macvlan[{i.name}]:PARENT (the parent on the destination).",
                needs=(f"macvlan[{i.name}]", f"netdev[{i.name}]"),
                rule_kind="netdev",
            )


@rule("netdev-kind", BLOCKER, "Network devices CRIU cannot dump (vlan, vxlan, ipvlan, physical...)")
def netdev_kind(ctx: Context) -> Iterator[Finding]:
    """net.c dumps loopback, veth, macvlan, tun, bridge, sit and venet; everything else
    (including physical NICs and SR-IOV VFs, which have no link kind) is 'Unsupported link'."""
    if not ctx.container.has_own("net"):
        return
    for i in ctx.container.interfaces:
        if i.kind in NATIVE_LINKS or i.name in IGNORED_LINK_NAMES:
            continue
        fb = i.name in ("tunl0", "ip6tnl0", "ip6gre0", "erspan0", "ip_vti0", "ip6_vti0")
        yield Finding(
            "netdev-kind",
            BLOCKER,
            f"interface {i.name}",
            f"Interface {i.name} is a {i.kind} device, which CRIU cannot checkpoint"
            + (" (a fallback tunnel device the kernel creates in every netns)" if fb else "")
            + ".",
            "Set net.core.fb_tunnels_only_for_init_net=2 on the host before creating the container."
            if fb
            else "Move it out of the container (ip link set DEV netns 1) or replace it with a veth/macvlan.",
        )


@rule("route-linkdown", BLOCKER, "Routes over a link without carrier (peer down)")
def route_linkdown(ctx: Context) -> Iterator[Finding]:
    """Observed with CRIU 4.2.1: a route saved with the linkdown flag (e.g. a veth whose
    host end is down) makes restore fail ('Invalid rtm_flags - can not contain DEAD or
    LINKDOWN', 'IP tool failed on route restore')."""
    for route in ctx.facts.linkdown_routes:
        dev = route.rsplit(" dev ", 1)[-1]
        yield Finding(
            "route-linkdown",
            BLOCKER,
            f"interface {dev}",
            f"Route {route} is marked linkdown (the link has no carrier, e.g. the veth's host end is "
            "down); CRIU dumps it but cannot restore it.",
            f"Bring the link up on both ends (ip link set HOST-END up) or set {dev} down before checkpointing.",
        )


@rule("tun", INFO, "tun/tap devices")
def tun(ctx: Context) -> Iterator[Finding]:
    """tun/tap links are dumped with the netns together with their /dev/net/tun fds."""
    for i in ctx.container.interfaces:
        if i.kind in ("tun", "tap") and ctx.container.has_own("net"):
            yield Finding(
                "tun",
                INFO,
                f"interface {i.name}",
                f"{i.kind} {i.name} is dumped with the container's network namespace.",
                "Nothing to do.",
            )


# --------------------------------------------------------------------------- container-wide


@rule("lsm", INFO, "LSM labels (AppArmor/SELinux)", "rule lsm (lsm_profile)")
def lsm(ctx: Context) -> Iterator[Finding]:
    """CRIU restores the LSM label recorded in the image; the destination must know that
    profile or a rule must override it (lsm_profile)."""
    label = ctx.container.lsm_label.strip()
    if not label or label in ("unconfined", "none", "kernel"):
        return
    yield Finding(
        "lsm",
        INFO if ctx.dest_local else NEEDS_RULE,
        "container",
        f"The container runs under the security label {label}.",
        "The destination must have the same profile loaded, or a 'lsm' rule sets lsm_profile "
        "(e.g. 'none:' on a kernel without that LSM).",
        needs=() if ctx.dest_local else ("lsm_profile",),
        rule_kind="" if ctx.dest_local else "lsm",
    )


@rule("cgroups", INFO, "cgroup handling")
def cgroups(ctx: Context) -> Iterator[Finding]:
    """By default CRIU dumps cgroup membership and properties in SOFT mode: it recreates
    missing cgroups on restore and leaves existing ones alone."""
    if ctx.container.cgroups:
        paths = sorted(set(ctx.container.cgroups.values()))
        yield Finding(
            "cgroups",
            INFO,
            "container",
            f"The container is in cgroup(s) {', '.join(paths[:3])}{' ...' if len(paths) > 3 else ''}.",
            "CRIU uses manage_cgroups SOFT: missing cgroups are created on restore, existing ones kept.",
        )


@rule("host-pidns", INFO, "Container shares the host pid namespace")
def host_pidns(ctx: Context) -> Iterator[Finding]:
    """Without an own pid ns every pid is restored as it was, so all of them must be free
    on the destination."""
    if ctx.container.processes and not ctx.container.has_own("pid"):
        yield Finding(
            "host-pidns",
            INFO,
            "container",
            f"The container shares the host pid namespace: its {len(ctx.container.processes)} pid(s) "
            "must be free on the destination.",
            "Nothing to do when restoring after the source is gone; otherwise use a pid namespace.",
        )
