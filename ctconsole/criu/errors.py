"""CRIU log lines -> sentences an operator understands, with the fix.

Why a table: CRIU's error strings are stable (they are what zdtm greps for),
and an operator who sees ``Unable to find a master for /4`` should not have to
read tty.c to learn that a terminal is held outside the container. Each entry
is (pattern, rule id, explanation). The rule ids are the feasibility
catalogue's, so a failed trial dump can be mapped back to the static rule that
should have predicted it (``rule_for``).

Patterns are regular expressions searched in the line; the explanation may use
``{name}`` placeholders filled from named groups.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# The message of a CRIU log error line, without "(00.012345) Error (criu/x.c:12): ".
_PREFIX = re.compile(r"^\s*\([\d.]+\)\s+(?:Error|Warn)\s+\([^)]*\):\s*")


@dataclass(frozen=True)
class _Entry:
    pattern: re.Pattern[str]
    rule: str
    text: str


def _e(pattern: str, rule: str, text: str) -> _Entry:
    return _Entry(re.compile(pattern), rule, text)


# Order matters: the first match wins, so specific patterns come first.
TABLE: tuple[_Entry, ...] = (
    _e(
        r"rlimit: Can't setup RLIMIT_NOFILE",
        "harmless",
        "Harmless: CRIU could not raise its own open-file limit (no CAP_SYS_RESOURCE); "
        "it logs this on every run, even successful ones.",
    ),
    _e(
        r"Can't lookup mount=(?P<mnt>\d+) for fd=(?P<fd>-?\d+) path=(?P<path>.*)",
        "external-file",
        "A file ({path}) is open from a mount the container cannot see (mount {mnt}). "
        "Give it to CRIU as an external file (remap rule 'file': external file[MNT:INO] on dump, "
        "inherit_fd on restore), or have the runtime pass a pipe instead of a host file.",
    ),
    _e(
        r"File (?P<path>.*) has bad mode 0?(?P<mode>[0-7]+) \(expect 0?(?P<want>[0-7]+)\)",
        "file-validation",
        "On restore the file {path} has mode {mode}, but the process had it open with mode {want}. "
        "For a 'file' rule's destination (path fd/N) give the file the original's permission bits "
        "(ctconsole creates a missing destination with them when the compile saw them); otherwise the "
        "destination's filesystem differs from the source's.",
    ),
    _e(
        r"File (?P<path>.*) has bad size (?P<size>\d+) \(expect (?P<want>\d+)\)",
        "file-validation",
        "On restore the file {path} is {size} bytes, but was {want} when dumped; CRIU refuses files that "
        "changed. For a 'file' rule's destination (path fd/N): only fds opened write-only with O_APPEND "
        "(logs) skip this check; give other fds a copy of the original file.",
    ),
    _e(
        r"Unable to find a master for (?P<pts>\S+)",
        "tty-external-master",
        "A terminal (pts {pts}) inside the container has its master outside it (console relay, "
        "runtime monitor, ssh). Use orphan_pts_master (ctconsole sets it via RPC) or a 'tty' rule.",
    ),
    _e(
        r"Found slave peer index (?P<idx>\d+) without correspond master peer",
        "tty-external-master",
        "The container uses /dev/pts/{idx}, whose master is held outside it. Use orphan_pts_master "
        "(RPC, with notify scripts) or shell_job so the restored task gets a new terminal.",
    ),
    _e(
        r"Unable to open \S*ptmx with specified index (?P<idx>\d+)",
        "tty-index-busy",
        "CRIU must recreate pts {idx}, but that index is still in use on this host (the old "
        "terminal's master is open). Close that terminal first, or restore on another host.",
    ),
    _e(
        r"Can't open master pty",
        "tty-index-busy",
        "CRIU could not recreate a terminal pair (see the line above).",
    ),
    _e(
        r"Invalid rtm_flags - can not contain DEAD or LINKDOWN|IP tool failed on route restore",
        "route-linkdown",
        "A saved route was marked linkdown (the link had no carrier at dump time, e.g. a veth "
        "whose host end was down); the kernel refuses it on restore. Bring the link up and dump again.",
    ),
    _e(
        r"Can't restore link: -17",
        "veth-external",
        "A network device with that name already exists on this host (the old namespace is not "
        "gone yet, or the veth rule's host name is taken). Wait for it to disappear or pick another name.",
    ),
    _e(
        r"doesn't have a proper root mount",
        "bind-mount-external",
        "A bind mount comes from a filesystem outside the container. Declare it external "
        "(remap rule 'mount': mnt[MOUNTPOINT]:COOKIE on dump, mnt[COOKIE]:HOSTPATH on restore).",
    ),
    _e(
        r"Unseizable non-zombie (?P<pid>\d+) found, state (?P<st>\S+)",
        "traced",
        "Process {pid} could not be frozen (state {st}): it is traced by a debugger or stuck "
        "(e.g. in vfork). Detach the tracer or wait for it to finish, then retry.",
    ),
    _e(
        r"Some file locks are hold by dumping tasks",
        "file-lock",
        "The container holds file locks. ctconsole adds file_locks on dump and restore.",
    ),
    _e(
        r"Can't dump ghost file (?P<path>\S+) of (?P<size>\d+) size, increase limit",
        "deleted-file",
        "A deleted file still open in the container ({path}, {size} bytes) is bigger than the "
        "ghost limit. ctconsole raises ghost_limit to its size.",
    ),
    _e(
        r"Can't dump ghost file",
        "deleted-file",
        "A deleted file still open in the container is bigger than the ghost limit; raise ghost_limit.",
    ),
    _e(
        r"Can't create link remap for (?P<path>.*?)\. Use link-remap option",
        "unlinked-linked-file",
        "A file was renamed or unlinked but is still linked elsewhere ({path}). ctconsole adds link_remap.",
    ),
    _e(
        r"Unsupported link (?P<idx>\d+) \(type (?P<type>\d+) kind (?P<kind>\S+)\)",
        "netdev-kind",
        "Network device {idx} of kind {kind} cannot be checkpointed by CRIU. Remove it from "
        "the container's network namespace (or use only veth/macvlan/tun/bridge).",
    ),
    _e(
        r"a macvlan parent for (?P<dev>\S+) is required",
        "macvlan",
        "macvlan {dev} needs its parent device named on restore (remap rule 'netdev': macvlan[IF]:PARENT).",
    ),
    _e(
        r"Unknown peer net namespace",
        "veth-external",
        "A veth's other end was outside the container and no mapping was given, so it was "
        "recreated inside the container: connectivity is lost. Give a 'veth' rule (veth[IF]:HOSTIF@BRIDGE).",
    ),
    _e(
        r"Can't dump half of stream unix connection",
        "unix-stream-external",
        "A UNIX stream socket is connected to a process outside the container; ext_unix_sk does "
        "not cover stream sockets. Declare it external (unix[INODE] on dump) and hand a socket "
        "back on restore (inherit_fd socket:[INODE]): remap rule 'unix'.",
    ),
    _e(
        r"External socket is used",
        "unix-external",
        "A UNIX socket is connected to a process outside the container. For a named datagram "
        "peer use ext_unix_sk; for stream sockets a 'unix' rule (unix[INODE] + inherit_fd).",
    ),
    _e(
        r"Can't dump name-less external socket",
        "unix-dgram-external",
        "A datagram socket talks to an unnamed socket outside the container: declare it "
        "external (unix[INODE]) with a 'unix' rule.",
    ),
    _e(
        r"External socket found in image",
        "unix-stream-external",
        "The image has a socket whose peer was outside: on restore give it a socket "
        "(inherit_fd socket:[INODE]) or use ext_unix_sk for named datagram peers.",
    ),
    _e(
        r"connected to external",
        "unix-external",
        "A socket is connected to something outside the container; see the 'unix' rule.",
    ),
    _e(
        r"Can't dump nested (?P<kind>\w+) namespace for (?P<pid>\d+)",
        "nested-namespace",
        "Process {pid} lives in a nested {kind} namespace, which CRIU cannot dump. Checkpoint "
        "the inner container on its own, or stop that process.",
    ),
    _e(
        r"Can't dump nested time namespace",
        "nested-namespace",
        "A process uses a nested time namespace, which CRIU cannot dump.",
    ),
    _e(
        r"Can't dump a pid namespace without the process init",
        "pidns-init",
        "The dump root is not the init (pid 1) of its pid namespace: dump the whole container from its init.",
    ),
    _e(
        r"Can't fork for (?P<pid>\d+): File exists",
        "pid-busy",
        "Pid {pid} is already in use on this host (often the old process not yet reaped). Wait "
        "until it is gone, or restore into a new pid namespace.",
    ),
    _e(
        r"The root process (?P<pid>\d+) is not a session leader",
        "session",
        "The container's first process is not a session leader: ctconsole adds shell_job.",
    ),
    _e(
        r"A session leader of (?P<pid>\S+) is outside of its pid namespace",
        "session",
        "The container's session leader is outside its pid namespace: use shell_job (ctconsole "
        "adds it), or start the container's init with setsid.",
    ),
    _e(
        r"Found dangling tty with sid",
        "session",
        "A terminal belongs to a session outside the container (started from a shell): shell_job.",
    ),
    _e(
        r"Unix socket (?P<ino>\d+) without peer (?P<peer>\d+)",
        "unix-peer-netns",
        "UNIX socket {ino} is connected to socket {peer}, which CRIU did not find among the sockets of the "
        "container's network namespace (it lives in another one, e.g. a host daemon's /dev/log). No CRIU "
        "option helps (ext_unix_sk and external unix[] are checked later): close that socket in the "
        "workload or have its peer live in the container's network namespace.",
    ),
    _e(
        r"Unix socket (?P<ino>\d+) with unreachable peer (?P<peer>\d+)",
        "unix-state",
        "UNIX socket {ino} sends to socket {peer}, which is connected elsewhere and has no name CRIU could "
        "reconnect to: not checkpointable; close the socket in the workload.",
    ),
    _e(
        r"Found a closed in-flight socket to (?P<ino>\S+)",
        "unix-in-flight",
        "A UNIX listener ({ino}) has a queued connection whose client already closed; CRIU cannot save it. "
        "Let the workload accept() its pending connections, then retry.",
    ),
    _e(
        r"Non-empty write queue on an in-flight socket (?P<ino>\S+)",
        "unix-in-flight",
        "UNIX socket {ino} sent data on a connection its server has not accepted yet; CRIU cannot get "
        "that data back. Let the server accept() the connection, then retry.",
    ),
    _e(
        r"In-flight connection on non-listening socket",
        "unix-in-flight",
        "A UNIX connection waits in the queue of a socket that no longer listens: not checkpointable.",
    ),
    _e(
        r"Dangling connection (?P<ino>\d+)",
        "unix-state",
        "UNIX stream socket {ino} is connected but its peer is gone and it was not shut down: close it "
        "in the workload (or shut it down), then retry.",
    ),
    _e(
        r"Can't dump corked dgram socket (?P<ino>\S+)",
        "udp-corked",
        "UDP socket {ino} is corked (UDP_CORK): CRIU cannot save a datagram being assembled. Let the "
        "workload uncork it (UDP_CORK 0 sends it), then retry.",
    ),
    _e(
        r"PIDFD_THREAD flag is currently not supported",
        "pidfd",
        "A process holds a pidfd of a thread (PIDFD_THREAD); CRIU cannot dump thread pidfds. Open it on "
        "the process instead, or close it.",
    ),
    _e(
        r"pidfd pid (?P<pid>\d+) is not a part of process tree",
        "pidfd",
        "A pidfd refers to process {pid}, which is not in the container; CRIU restores pidfds only for "
        "processes it restores. Close it, or checkpoint a tree that includes that process.",
    ),
    _e(
        r"The socket has data to read",
        "netlink-socket",
        "A netlink socket has unread messages; CRIU refuses it. Let the workload read it empty, then retry.",
    ),
    _e(
        r"The netlink socket (?P<ino>\S+) has more than 32 groups",
        "netlink-socket",
        "Netlink socket {ino} is in multicast groups above 32, which CRIU cannot save; close it or leave "
        "those groups.",
    ),
    _e(
        r"The netlink socket (?P<ino>\S+) is bound to groups but not to portid",
        "netlink-socket",
        "Netlink socket {ino} joined multicast groups without a port id; bind it first, or close it.",
    ),
    _e(
        r"Multiple MC membership not supported",
        "packet-socket",
        "A packet socket added the same multicast membership more than once; CRIU saves each once. Drop "
        "the duplicate membership or close the socket.",
    ),
    _e(
        r"Can't get rlimit (?P<res>\d+): Operation not permitted",
        "creds-rlimit",
        "CRIU may not read the resource limits of a process with other uids/gids: it runs here without "
        "CAP_SYS_RESOURCE. Run ctconsole (and CRIU) with that capability.",
    ),
    _e(
        r"In-flight connection \(l\)|In-flight connections can be ignored",
        "tcp-in-flight",
        "A listening TCP socket has connections not yet accepted: tcp_skip_in_flight (ctconsole sets it; "
        "those clients see a reset).",
    ),
    _e(
        r"Connected TCP socket in image",
        "tcp-established",
        "The images hold a TCP socket that was connected (possibly closed or reset since: CRIU keeps its "
        "peer address); restore it with tcp_established (or tcp_close), as ctconsole proposes.",
    ),
    _e(
        r"Connected TCP socket, consider using --tcp-established",
        "tcp-established",
        "The container has open TCP connections: tcp_established (keep them) or tcp_close (drop them).",
    ),
    _e(
        r"Can't get 1:(16|34) opt: Operation not supported",
        "criu-kernel-inet",
        "This CRIU cannot dump network sockets on kernels >= 6.16 (SO_PASSCRED change). Upgrade CRIU to >= 4.2.",
    ),
    _e(
        r"tun: Net namespace is required to dump tun link",
        "device",
        "A tun/tap fd is open but the container shares the host network namespace: give it its own netns.",
    ),
    _e(
        r"Can't dump file (?P<fd>\d+) of that type \[(?P<mode>\w+)\] \((?P<what>.*)\)",
        "unsupported-fd",
        "fd {fd} ({what}) is a kind of file CRIU cannot checkpoint (device, io_uring, perf, bpf, "
        "userfaultfd...). Close it in the workload or stop the program that holds it.",
    ),
    _e(
        r"send_fds failed|Can't retrieve FDs from socket",
        "unsupported-fd",
        "CRIU could not take an fd out of the process (typically io_uring): not checkpointable.",
    ),
    _e(
        r"Unknown socket collected \(family (?P<fam>\d+)\)",
        "socket-family",
        "A socket of address family {fam} (vsock, alg, xdp, bluetooth...) cannot be checkpointed.",
    ),
    _e(
        r"Unsupported proto (?P<proto>\d+) for socket",
        "socket-family",
        "A socket uses IP protocol {proto} (SCTP, MPTCP, ICMP...), which CRIU cannot checkpoint.",
    ),
    _e(
        r"Can't dump the (?P<pid>\d+) thread with a pending SIGTRAP",
        "sigtrap",
        "Thread {pid} has a pending SIGTRAP (a debugger event): let it be delivered, then retry.",
    ),
    _e(
        r"with SysVIPC shmem map .* doesn't live in IPC ns",
        "sysv-shm",
        "A process has SysV shared memory attached but shares the host IPC namespace: "
        "run the container in its own IPC namespace.",
    ),
    _e(
        r"FS mnt (?P<mp>\S+) dev (?P<dev>\S+) root (?P<root>\S+) unsupported",
        "mount-fstype",
        "Mount {mp} has a filesystem CRIU cannot recreate: declare it external (dev[]/mnt[] rule) or enable_fs.",
    ),
    _e(
        r"Open files on overmounted mounts are not supported",
        "overmounted",
        "A file is open on a mount that is now hidden under another mount: not checkpointable.",
    ),
    _e(
        r"BUG at criu/mem\.c",
        "mem-track",
        "CRIU aborted a pre-dump because this kernel has no soft-dirty tracking: pre-copy is "
        "impossible here; use stop-copy (ctconsole's auto strategy does).",
    ),
    _e(
        r"page-pipe: (?:tee|splice): .*(?:Operation not permitted|Bad file descriptor)",
        "lazy-pages",
        "The lazy-pages (post-copy) page server could not move pages on this host; post-copy does "
        "not work here although FEATURE_CHECK says it does. Use stop-copy.",
    ),
    _e(
        r"Lazy pages transfer FAILED",
        "lazy-pages",
        "The post-copy page transfer failed; the source tasks were resumed. Use stop-copy.",
    ),
    _e(
        r"Unable to detach from (?P<pid>\d+): No such process|Can't seize (?P<pid2>\d+)",
        "process-gone",
        "The process to dump does not exist (or exited during the dump).",
    ),
    _e(
        r"Tracking memory is not available",
        "mem-track",
        "This kernel has no soft-dirty tracking: pre-copy (track_mem / pre-dump) is impossible.",
    ),
    _e(
        r"Escaped/closed fd descriptor",
        "epoll",
        "An epoll watches an fd that the process already closed: CRIU cannot dump that epoll.",
    ),
    _e(
        r"apparmor LSM specified but apparmor not supported",
        "lsm",
        "The image asks for an AppArmor profile but this kernel has no AppArmor: set lsm_profile 'none:'.",
    ),
    _e(
        r"Failed to move_mount from",
        "mount-v2",
        "CRIU's new mount engine failed (e.g. a bind of a symlinked path): retry with mntns_compat_mode.",
    ),
    _e(
        r"Can't make (VM|FS|IO) id",
        "shared-mm",
        "Processes share memory/fs state without being threads (CLONE_VM/CLONE_FS): not checkpointable.",
    ),
    _e(
        r"Dump (files|core) \(pid: \d+\) failed|Unable to open fd=\d+ id=|killed by signal 9|Can't wait or bad status",
        "summary",
        "A consequence of the error above.",
    ),
    _e(
        r"Dumping FAILED|Restoring FAILED",
        "summary",
        "CRIU gave up; the lines above say why.",
    ),
)


def _message(line: str) -> str:
    return _PREFIX.sub("", line.rstrip("\n"))


def lookup(line: str) -> tuple[str, str] | None:
    """(rule id, explanation) for a CRIU log line, or None when nothing matches."""
    msg = _message(line)
    for entry in TABLE:
        m = entry.pattern.search(msg)
        if m:
            try:
                text = entry.text.format(**{k: (v or "").strip() for k, v in m.groupdict().items()})
            except (KeyError, IndexError):
                text = entry.text
            return entry.rule, text
    return None


def explain(line: str) -> str | None:
    """An operator sentence (with the fix) for one CRIU log line; None if unknown."""
    hit = lookup(line)
    return hit[1] if hit else None


def rule_for(line: str) -> str | None:
    """The feasibility rule id a CRIU log line belongs to (``harmless``/``summary`` for noise)."""
    hit = lookup(line)
    return hit[0] if hit else None


def is_harmless(line: str) -> bool:
    """True for error lines CRIU prints even when it succeeds (the RLIMIT_NOFILE one)."""
    return rule_for(line) == "harmless"


def error_lines(log_text: str) -> list[str]:
    """The ``Error (...)`` lines of a CRIU log, minus the harmless ones."""
    return [ln for ln in log_text.splitlines() if " Error (" in ln and not is_harmless(ln)]
