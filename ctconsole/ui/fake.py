"""A deterministic in-memory backend.

Why: snapshot tests need byte-identical screens and benchmarks need 200
containers on demand. Only the host is faked: the containers, CRIU (no
probes, a scripted migration) and the clock; checks, rules (kinds,
validation, compile, suggestions) and events are the core's own. Everything
here is computed from the container index, never from the clock or the host
(the migration's pacing uses ``speed``, its data does not).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Sequence

from ctconsole import feasibility, remap
from ctconsole.commands.destinations import Destination, merge, ordered
from ctconsole.errors import CtError, NotFound
from ctconsole.feasibility.findings import Report
from ctconsole.migrate import events as ev
from ctconsole.migrate.journal import Summary
from ctconsole.model import (
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
from ctconsole.remap import Rule
from ctconsole.ui.backend import LOCAL_HOST, Backend, MigrationHandle, option_lines, rules_label

RUNTIMES = ("libvirt-lxc", "lxc", "runc", "nspawn", "namespaces")
FAKE_LOG = "/var/lib/ctconsole/migrations/0003/dump.log"

_LOG_LINES = (
    "(00.000010) Version: 4.2 (gitid 0)",
    "(00.000120) Running on host Linux 6.1.0 x86_64",
    "(00.001200) Dumping processes (pid: 4101)",
    "(00.002001) Seized task 4101, state 1",
    "(00.003400) Error (criu/sk-unix.c:684): unix: External socket is used. Consider using --ext-unix-sk option.",
    "(00.003410) Error (criu/cr-dump.c:1767): Dump files (pid: 4101) failed with -1",
    "(00.004000) Unfreezing tasks into 1",
    "(00.004100) Error (criu/cr-dump.c:2204): Dumping FAILED.",
)


def _ext(reason: str, remedy: str, holder: str = "") -> External:
    return External(reason, remedy, holder)


def make_container(i: int) -> Container:
    """Container number ``i``: the first three are rich demo containers, the rest simple."""
    runtime = RUNTIMES[i % len(RUNTIMES)]
    names = ("web-1", "db", "console-vm", "cache", "worker")
    name = names[i] if i < len(names) else f"ct-{i:03d}"
    init = 4101 + i * 100
    nprocs = 2 + (i * 7) % 5
    procs = [
        Process(init, 4000 + i, 1, "init", "/sbin/init", "S", 0, init, init),
    ]
    for j in range(1, nprocs):
        pid = init + j
        parent = init if j < 3 else init + 1
        procs.append(Process(pid, parent, j + 1, f"worker{j}", f"/usr/bin/worker{j} --serve", "S", 1000, init, pid))
    sockets: list[Socket] = [
        Socket("inet", "stream", 70000 + i * 10, "LISTEN", local="0.0.0.0:8080", holders=(FdRef(init + 1, 3),)),
    ]
    ttys: list[Tty] = []
    devices: list[Device] = [Device("/dev/null", "char", 1, 3, True, (FdRef(init, 0),))]
    fds: list[SpecialFd] = [SpecialFd("eventfd", "anon_inode:[eventfd]", (FdRef(init, 5),))]
    files: list[OpenFile] = [OpenFile("/var/log/app.log", 30 + i, 900 + i, 4096, 4096, holders=(FdRef(init, 6),))]
    mounts: list[Mount] = [
        Mount(30 + i, 1, "/", "/", "ext4", "/dev/sda1", 8, 1, "rw,relatime", "shared:1"),
        Mount(31 + i, 30 + i, "/proc", "/", "proc", "proc", 0, 20, "rw"),
    ]
    ifaces: list[NetIface] = [
        NetIface("lo", "loopback", 1, "00:00:00:00:00:00", 65536, True, ("127.0.0.1/8",)),
    ]
    if i % 3 == 0:
        sockets.append(
            Socket(
                "unix",
                "dgram",
                70001 + i * 10,
                "ESTABLISHED",
                peer_inode=555,
                peer_path="/dev/log",
                peer_holder="systemd-journal[301]",
                holders=(FdRef(init, 4),),
                external=_ext(
                    "connected to the host's syslog socket /dev/log",
                    "unix rule (connect on the destination)",
                    "systemd-journal[301]",
                ),
            )
        )
    if i % 3 == 1:
        ttys.append(
            Tty(
                "/dev/pts/3",
                "pts",
                34816 + 3,
                3,
                master_holder=f"libvirt_lxc[{3900 + i}]",
                holders=(FdRef(init, 0), FdRef(init, 1)),
                external=_ext(
                    "the console's master end is held by the runtime outside",
                    "tty rule (a new PTY on the destination)",
                    f"libvirt_lxc[{3900 + i}]",
                ),
            )
        )
    if i % 5 == 2:
        devices.append(
            Device(
                "/dev/kvm",
                "char",
                10,
                232,
                False,
                (FdRef(init + 1, 7),),
                _ext("KVM state cannot be checkpointed", "none: cannot be checkpointed"),
            )
        )
    if i % 2 == 0:
        mounts.append(
            Mount(
                40 + i,
                30 + i,
                "/proc/meminfo",
                "/proc/meminfo",
                "fuse.lxcfs",
                "lxcfs",
                0,
                45,
                "ro",
                fuse_server="lxcfs[220]",
                external=_ext("a FUSE file served by lxcfs on the host", "mount rule (external mnt)", "lxcfs[220]"),
            )
        )
    if runtime != "namespaces":
        ifaces.append(
            NetIface(
                "eth0",
                "veth",
                2,
                f"52:54:00:00:{i // 256:02x}:{i % 256:02x}",
                1500,
                True,
                (f"10.0.{i // 250}.{i % 250 + 2}/16",),
                peer_ifname=f"veth{i}",
                peer_netns="host",
                bridge="br0",
                external=_ext("its peer lives in the host's network namespace", "veth rule (veth_pairs)"),
            )
        )
    own = ("pid", "mnt", "net", "uts", "ipc") if runtime != "namespaces" else ("pid", "mnt")
    return Container(
        id=f"{runtime}/{name}",
        name=name,
        runtime=runtime,
        init_pid=init,
        namespaces=tuple(Namespace(k, 4026531836 + n + i * 8, k not in own) for n, k in enumerate(own)),
        cgroups={"0": f"/machine.slice/{name}"},
        root_path=f"/var/lib/machines/{name}",
        controller_pid=3900 + i,
        controller=f"{runtime.split('-')[0]}[{3900 + i}]",
        processes=tuple(procs),
        sockets=tuple(sockets),
        ttys=tuple(ttys),
        devices=tuple(devices),
        fds=tuple(fds),
        files=tuple(files),
        mounts=tuple(mounts),
        interfaces=tuple(ifaces),
        own_namespaces=own,
    )


class FakeMigration:
    """A scripted migration run in a thread, emitting the engine's own events; ``abort`` rolls it back.

    Only the host is faked (no CRIU, a scaled clock): the events, their order
    and their fields are what :mod:`ctconsole.migrate.engine` emits, so the
    console's fold and views are tested on the real vocabulary. Pre-copy
    rounds stream their pages (``copied``); the final images are ``linked``
    on a ``netns:`` destination (shared filesystem) and ``streamed`` otherwise;
    an ``ssh://`` destination shares no storage, so the container's root is
    carried (``storage``: a full copy while it runs, the delta while frozen),
    as the engine does for an isolated host. With ``backend.lose_source`` a
    rollback finds the source gone (``Done.source == "lost"``).
    """

    def __init__(
        self,
        backend: FakeBackend,
        container: Container,
        dest: str,
        strategy: str,
        on_event: Callable[[ev.Event], None],
        fail_at: str = "",
    ):
        self.backend = backend
        self.container = container
        self.dest, self.strategy = dest, strategy
        self.on_event = on_event
        self.fail_at = fail_at
        self._abort = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"fake-migrate-{container.name}", daemon=True)

    def abort(self) -> None:
        self._abort.set()

    def _sleep(self, seconds: float) -> bool:
        """Wait (scaled by speed); True when aborted meanwhile."""
        speed = self.backend.speed
        return self._abort.wait(seconds / speed if speed > 0 else 0)

    def _stop(self, phase: str) -> bool:
        return self._sleep(0.2) or self.fail_at == phase

    def _run(self) -> None:
        """begin, prepare, perform (pre-copy rounds, final dump, transfer), finish (restore), confirm."""
        emit = self.on_event
        name = self.container.name
        rounds = 3 if self.strategy in ("auto", "pre-copy") else 0
        emit(ev.PhaseChanged("begin", f"{name} -> {self.dest}"))
        if self._stop("begin"):
            return self._rollback()
        emit(ev.PhaseChanged("prepare", f"agent on {self.dest}: CRIU 4.2, same kernel"))
        if self._stop("prepare"):
            return self._rollback()
        carry = STORAGE_BYTES if self.dest.startswith("ssh://") else 0
        if carry:
            emit(ev.PhaseChanged("prepare", f"copying the container's storage ({carry >> 20} MiB) while it runs"))
            for step in range(1, 5):
                emit(ev.Transfer("storage", carry * step // 4, carry, 80e6))
                if self._sleep(0.05):
                    return self._rollback()
        emit(ev.PhaseChanged("perform", f"strategy {self.strategy}"))
        for r in range(1, rounds + 1):
            pages = 65536 >> r
            total = pages * 4096
            for step in range(1, 11):
                rate = 200e6 + 50e6 * ((r * 10 + step) % 7)
                done = total * step // 10
                emit(ev.Transfer("copied", done, total, rate, (total - done) / rate, round=r))
                if self._sleep(0.05):
                    return self._rollback()
            emit(ev.RoundProgress(r, pages * 2, pages, pages))
        emit(ev.LogLine("info", "final dump: source frozen"))
        if self._stop("perform"):
            return self._rollback()
        emit(ev.FinalDump(rounds, 4096, 1024, 3072))
        emit(ev.FrozenTime(0.040))
        images = 6 * 1024 * 1024
        if self.dest.startswith("netns:"):
            emit(ev.Transfer("linked", images, images))
        else:
            for step in range(1, 5):
                emit(ev.Transfer("streamed", images * step // 4, images, 120e6, (4 - step) * 0.01))
        if carry:  # the delta since the full copy, inside post-dump: the engine reports the whole root again
            emit(ev.Transfer("storage", carry, carry, 80e6))
        emit(ev.PhaseChanged("restore", "restoring on the destination"))
        if self._stop("restore"):
            return self._rollback()
        emit(ev.RestoreTime(0.095))
        emit(ev.PhaseChanged("finish", f"restored pid {self.container.init_pid + 7} on {self.dest}"))
        emit(ev.PhaseChanged("confirm"))
        emit(ev.Downtime(0.180))
        self.backend.moved(self.container, self.dest)
        emit(
            ev.Done(
                "migrated",
                f"{name} now runs on {self.dest} as pid {self.container.init_pid + 7}",
                source="released",
                downtime=0.180,
                frozen=0.040,
                restored_pid=self.container.init_pid + 7,
                journal=FAKE_LOG,
            )
        )
        return None

    def _rollback(self) -> None:
        why = "aborted by the operator" if self._abort.is_set() else "CRIU restore failed on the destination"
        self.on_event(ev.PhaseChanged("rollback", why))
        if self.backend.lose_source:  # the engine's words when the source did not survive its rollback
            self.backend.lost(self.container)
            self.on_event(
                ev.Done(
                    "failed",
                    f"rolled back: {why}; the source IS GONE",
                    source="lost",
                    errors=(RESTORE_ERROR,),
                    journal=FAKE_LOG,
                )
            )
            return
        self.on_event(
            ev.Done(
                "rolled-back",
                f"rolled back: {why}; the source is running",
                source="running",
                errors=() if self._abort.is_set() else (RESTORE_ERROR,),
                journal=FAKE_LOG,
            )
        )


FAKE_RULES = "/etc/ctconsole/rules.toml"
#: the root carried to an ``ssh://`` destination
STORAGE_BYTES = 48 * 1024 * 1024
RESTORE_ERROR = "(00.004100) Error (criu/cr-restore.c:2204): Restoring FAILED."
#: what recovery writes when the destination does not answer (migrate/recovery.py)
UNRESOLVED = "unresolved: destination unreachable (ssh://node2: ssh: connect to host node2 port 22: No route to host)"


class FakeBackend(Backend):
    """Fakes the host (containers, CRIU, rules files, the clock); the core does the rest.

    Checks are the real feasibility checks without host probes
    (``hosts=False``: no CRIU here), over fake containers and the rules compiled by
    the real remap; ``speed`` scales the fake migration's pacing (tests use a large one).
    """

    name = "fake"

    def __init__(self, n_containers: int = 12, speed: float = 1.0) -> None:
        local = [make_container(i) for i in range(n_containers)]
        self.placed: dict[str, list[Container]] = {LOCAL_HOST: local}
        self.speed = speed
        # what the operator saved, per rules file and container id
        self.files: dict[str, dict[str, list[Rule]]] = {FAKE_RULES: {}}
        if local:
            self.files[FAKE_RULES][local[0].id] = [
                remap.rule_from_form({"kind": "mount", "mountpoint": "/proc/meminfo", "path": "/proc/meminfo"})
            ]
        self.migrations: list[FakeMigration] = []
        self.fail_at = ""  # tests: the phase in which the next migration fails (rolls back)
        self.lose_source = False  # tests: a rollback finds the source gone
        self.calls: list[str] = []  # what the console asked, for tests
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ host
    def list_containers(self, host: str = LOCAL_HOST) -> list[Container]:
        self.calls.append(f"list:{host}")
        with self._lock:
            if host not in self.placed:
                # another host: a couple of containers of its own
                self.placed[host] = [
                    dataclasses.replace(c, id=f"{c.id}@{host}") for c in (make_container(i + 50) for i in range(2))
                ]
            return list(self.placed[host])

    def container_detail(self, ref: str, host: str = LOCAL_HOST) -> Container:
        for c in self.list_containers(host):
            if ref in (c.id, c.name):
                return c
        raise NotFound(f"no container matches {ref!r}")

    def moved(self, c: Container, dest: str) -> None:
        """The fake host after a migration: gone from here, running on ``dest`` under a new id."""
        self.list_containers(dest)
        with self._lock:
            self.placed[LOCAL_HOST] = [x for x in self.placed[LOCAL_HOST] if x.id != c.id]
            new = dataclasses.replace(c, id=f"{c.runtime}/{c.name}@{dest}", init_pid=c.init_pid + 7)
            self.placed[dest] = [*self.placed[dest], new]

    def lost(self, c: Container) -> None:
        """The fake host after a rollback that lost the source: it runs nowhere."""
        with self._lock:
            self.placed[LOCAL_HOST] = [x for x in self.placed[LOCAL_HOST] if x.id != c.id]

    # ------------------------------------------------------------------ checks
    def check(self, ref: str, dest: str | None = None, rules_file: str = "", host: str = LOCAL_HOST) -> Report:
        self.calls.append(f"check:{ref}:{dest or ''}:{rules_file}")
        c = self.container_detail(ref, host)
        rules = self.files.get(rules_file, {}).get(c.id) if rules_file else None
        compiled = self.compile_rules(c.id, rules, dest) if rules else None
        return dataclasses.replace(feasibility.check(c, dest=dest, rules=compiled, hosts=False), elapsed=0.0)

    # ------------------------------------------------------------------ rules files
    def default_rules_file(self) -> str:
        return FAKE_RULES

    def load_rules(self, ref: str, rules_file: str) -> list[Rule]:
        c = self.container_detail(ref)
        return list(self.files.get(rules_file, {}).get(c.id, []))

    def save_rules(self, ref: str, rules: Sequence[Rule], rules_file: str) -> str:
        c = self.container_detail(ref)
        self.compile_rules(c.id, rules)  # as the real save: refuse what does not compile
        path = rules_file or FAKE_RULES
        self.files.setdefault(path, {})[c.id] = list(rules)
        return path

    # ------------------------------------------------------------------ migration
    def destinations(self, hosts: Sequence[str]) -> list[Destination]:
        now = time.time()  # shown as "2 h ago": the picture does not depend on the date
        known = [
            Destination("netns:ctlab-dst", "lab", "dst", True, now - 7250, "198.19.1.2"),
            Destination("ssh://node2", "journal", "", False, now - 60, "last: migrated",
                        "node2:22: connection refused"),
            Destination("netns:ctlab-spare", "lab", "spare", True, 0.0, "198.19.2.2"),
            Destination("ssh://db1", "ssh-config", "db1", None, 0.0, "10.0.0.21"),
        ]
        given = [Destination(h, "host", reachable=True) for h in hosts if h != LOCAL_HOST]
        return ordered(merge([given, known]))

    def preview_migration(self, ref: str, dest: str, strategy: str, rules_file: str) -> list[str]:
        c = self.container_detail(ref)
        report = self.check(c.id, dest, rules_file)
        rounds = "up to 3 pre-copy rounds, then " if strategy in ("auto", "pre-copy") else ""
        return [
            f"{c.name} ({c.runtime}, init {c.init_pid}) -> {dest}",
            f"strategy {strategy}: {rounds}freeze, dump, send, restore, confirm",
            f"rules file: {rules_label(rules_file)}",
            "on failure before confirm: CRIU resumes the source (rollback)",
            *option_lines(report.dump_options, report.restore_options),
        ]

    def start_migration(
        self, ref: str, dest: str, strategy: str, rules_file: str, on_event: Callable[[ev.Event], None]
    ) -> MigrationHandle:
        self.calls.append(f"migrate:{ref}:{dest}:{strategy}:{rules_file}")
        c = self.container_detail(ref)
        m = FakeMigration(self, c, dest, strategy, on_event, self.fail_at)
        self.migrations.append(m)
        m.thread.start()
        return m

    def history(self) -> list[Summary]:
        """The journal's summaries of four past migrations (fixed times: the screens never depend on the date)."""
        day = 1795600000.0  # 2026-11-25
        return [
            Summary("0004", "ns-4026532180", "ssh://node2", "stop-copy/handover", day + 7200, None, "unresolved",
                    UNRESOLVED, ["begin", "prepare", "perform"], name="cache"),
            Summary("0003", "lxc/web-1", "netns:ctlab-dst", "pre-copy/handover", day, day + 3,
                    "rolled-back", "rolled back: CRIU restore failed on the destination; the source is running",
                    errors=[RESTORE_ERROR], name="web-1"),
            Summary("0002", "lxc/db", "ssh://node2", "stop-copy/handover", day - 86400, day - 86398, "migrated",
                    "db now runs on ssh://node2 as pid 4308", downtime=0.230, name="db"),
            Summary("0001", "runc/cache", "netns:ctlab-dst", "post-copy/sequential", day - 2 * 86400,
                    day - 2 * 86400 + 5, "failed",
                    "rollback failed: restore: no such file; images kept for manual restore", name="cache"),
        ]

    def history_log(self, entry: Summary) -> str:
        return FAKE_LOG if entry.id == "0003" else ""

    def read_log(self, path: str) -> list[str]:
        if path == FAKE_LOG:
            return list(_LOG_LINES)
        raise CtError(f"cannot read log {path}: no such file")
