"""A deterministic in-memory backend.

Why: snapshot tests need byte-identical screens, benchmarks need 200
containers on demand, and the console had to be built before the core
existed. Everything here is computed from the container index, never from
the clock or the host (the migration's pacing uses ``speed``, its data does not).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from ctconsole.errors import CtError, NotFound
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
from ctconsole.ui.backend import (
    DEFAULT_PHASES,
    LOCAL_HOST,
    NEXT_STEPS,
    Backend,
    CriuOptions,
    Done,
    Finding,
    Frozen,
    HistoryEntry,
    LogLine,
    Metric,
    MigrationHandle,
    PhaseChanged,
    Report,
    RoundDone,
    Rule,
    Transfer,
    UiEvent,
    _fallback_explain,
    _local_validate,
)

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
                    "unix-socket rule (ext_unix_sk)",
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
                    "tty rule (inherit_fd) or orphan_pts_master",
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
    """A scripted migration run in a thread; ``abort`` makes it roll back."""

    def __init__(self, ref: str, dest: str, strategy: str, on_event: Callable[[UiEvent], None], speed: float):
        self.ref, self.dest, self.strategy = ref, dest, strategy
        self.on_event = on_event
        self.speed = speed
        self._abort = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"fake-migrate-{ref}", daemon=True)

    def abort(self) -> None:
        self._abort.set()

    def _sleep(self, seconds: float) -> bool:
        """Wait (scaled by speed); True when aborted meanwhile."""
        return self._abort.wait(seconds / self.speed if self.speed > 0 else 0)

    def _run(self) -> None:
        """begin, prepare, perform (pre-copy rounds, final dump, transfer), finish (restore), confirm."""
        emit = self.on_event
        total = 512 * 1024 * 1024
        sent = 0
        rounds = 6 if self.strategy in ("auto", "pre-copy") else 1
        emit(PhaseChanged("begin", DEFAULT_PHASES, f"{self.ref} -> {self.dest}"))
        if self._sleep(0.2):
            return self._rollback("begin")
        emit(PhaseChanged("prepare", DEFAULT_PHASES, f"agent on {self.dest}: CRIU 4.2, same kernel"))
        if self._sleep(0.2):
            return self._rollback("prepare")
        emit(PhaseChanged("perform", DEFAULT_PHASES, f"strategy {self.strategy}"))
        for r in range(1, rounds + 1):
            pages = max(1000, 65536 >> r)
            for step in range(10):
                sent += pages * 4096 // 10
                rate = 200e6 + 50e6 * ((r * 10 + step) % 7)
                eta = max(0.0, (total - sent) / rate)
                emit(Transfer(sent, total, rate, eta))
                if self._sleep(0.05):
                    return self._rollback("perform")
            emit(RoundDone(r, pages, pages * 4096))
            emit(LogLine(f"round {r}: {pages} pages written"))
        emit(LogLine("final dump: source frozen"))
        if self._sleep(0.3):
            return self._rollback("perform")
        emit(Frozen(40.0))
        emit(Transfer(total, total, 300e6, 0.0))
        emit(PhaseChanged("finish", DEFAULT_PHASES, "restoring on the destination"))
        if self._sleep(0.3):
            return self._rollback("finish")
        emit(Metric("restore_ms", 95.0))
        emit(Metric("downtime_ms", 180.0))
        emit(PhaseChanged("confirm", DEFAULT_PHASES, "destination reports the container running"))
        emit(Done("migrated", f"{self.ref} now runs on {self.dest}", 180.0, FAKE_LOG, NEXT_STEPS["migrated"]))
        return None

    def _rollback(self, phase: str) -> None:
        self.on_event(PhaseChanged("rollback", (), "aborted by the operator"))
        self.on_event(
            Done(
                "rolled-back",
                f"aborted during {phase}; {self.ref} was resumed on the source",
                None,
                FAKE_LOG,
                NEXT_STEPS["rolled-back"],
            )
        )


class FakeBackend(Backend):
    """Deterministic data; ``speed`` scales the fake migration's pacing (tests use a large one)."""

    name = "fake"

    def __init__(self, n_containers: int = 12, speed: float = 1.0, real_explain: bool = False) -> None:
        """``real_explain``: use ctconsole.criu.errors for log explanations (demo) instead of
        the built-in fallback texts (tests and snapshots, which must not change with that module)."""
        self.containers = [make_container(i) for i in range(n_containers)]
        self.speed = speed
        self.rules: dict[str, list[Rule]] = (
            {self.containers[0].id: [Rule("unix-socket", {"inode": "70001", "path": "/dev/log"})]}
            if self.containers
            else {}
        )
        self.saved: dict[str, list[Rule]] = {}
        self.migrations: list[FakeMigration] = []
        self.calls: list[str] = []  # what the console asked, for tests
        self.real_explain = real_explain

    def explain(self, line: str) -> str | None:
        return super().explain(line) if self.real_explain else _fallback_explain(line)

    def hosts(self, requested: Sequence[str]) -> list[str]:
        return [LOCAL_HOST, *[h for h in requested if h != LOCAL_HOST]]

    def list_containers(self, host: str = LOCAL_HOST) -> list[Container]:
        self.calls.append(f"list:{host}")
        if host == LOCAL_HOST:
            return list(self.containers)
        # another host: a couple of containers of its own
        return [make_container(i + 50) for i in range(2)]

    def container_detail(self, ref: str, host: str = LOCAL_HOST) -> Container:
        for c in [*self.containers, *(make_container(i + 50) for i in range(2))]:
            if ref in (c.id, c.name):
                return c
        raise NotFound(f"no container matches {ref!r}")

    def check(
        self, ref: str, dest: str | None = None, rules: Sequence[Rule] | None = None, host: str = LOCAL_HOST
    ) -> Report:
        self.calls.append(f"check:{ref}")
        c = self.container_detail(ref)
        rules = list(rules) if rules is not None else self.load_rules(c.id)
        handled = {r.kind for r in rules}
        findings: list[Finding] = []
        kind_of = {"sockets": "unix-socket", "ttys": "tty", "mounts": "mount", "interfaces": "veth"}
        for cat, item in c.externals():
            ext = item.external
            subject = getattr(item, "path", "") or getattr(item, "name", "") or getattr(item, "mountpoint", "")
            if cat == "sockets":
                subject = f"unix socket {item.inode} -> {item.peer_path}"
            if cat == "mounts":
                subject = item.mountpoint
            kind = kind_of.get(cat, "")
            if ext.remedy.startswith("none"):
                sev = "blocker"
            elif kind in handled:
                sev = "info"
            else:
                sev = "error"
            findings.append(Finding(f"external-{cat}", sev, subject, ext.reason, ext.remedy, kind))
        findings.append(
            Finding("tcp-established", "warning", "0.0.0.0:8080", "listening TCP socket", "tcp rule", "tcp")
        )
        findings.append(Finding("criu-version", "info", "criu", "CRIU 4.2 supports every feature needed", ""))
        if any(f.severity == "blocker" for f in findings):
            verdict = "blocked"
        elif any(f.severity == "error" for f in findings):
            verdict = "needs-rules"
        else:
            verdict = "ok"
        return Report(c.id, verdict, tuple(findings), self.compile_rules(c.id, rules), verdict)

    def load_rules(self, ref: str) -> list[Rule]:
        c = self.container_detail(ref)
        return list(self.saved.get(c.id, self.rules.get(c.id, [])))

    def validate_rule(self, rule: Rule) -> list[str]:
        problems = _local_validate(rule, self.rule_kinds())
        v = rule.values
        if rule.kind == "unix-socket" and v.get("inode") and not v["inode"].isdigit():
            problems.append("Socket inode must be a number")
        path = v.get("mountpoint") or v.get("path")
        if rule.kind in ("mount", "tty", "file") and path and not path.startswith("/"):
            problems.append("paths must be absolute")
        if rule.kind == "tcp" and v.get("mode") not in (None, "", "established", "close"):
            problems.append("mode must be established or close")
        if rule.kind == "option" and v.get("phase") not in (None, "", "dump", "restore", "both"):
            problems.append("phase must be dump, restore or both")
        return problems

    def compile_rules(self, ref: str, rules: Sequence[Rule]) -> CriuOptions:
        c = self.container_detail(ref)
        dump: dict[str, object] = {"pid": c.init_pid, "manage_cgroups_mode": "SOFT", "log_level": 4}
        restore: dict[str, object] = {"manage_cgroups_mode": "SOFT", "log_level": 4, "root": c.root_path}
        ext_d: list[str] = []
        ext_r: list[str] = []
        for r in rules:
            bad = self.validate_rule(r)
            if bad:
                raise CtError(f"rule {r.kind} ({r.summary()}) does not compile", bad)
            v = r.values
            if r.kind == "unix-socket":
                ext_d.append(f"unix[{v['inode']}]")
            elif r.kind == "tty":
                ext_d.append(f"tty[{v['path']}]")
                restore.setdefault("inherit_fd", []).append(f"{v['key']}:{v['path']}")  # type: ignore[attr-defined]
            elif r.kind == "mount":
                ext_d.append(f"mnt[{v['mountpoint']}]:{v['key']}")
                ext_r.append(f"mnt[{v['key']}]:{v.get('source') or v['mountpoint']}")
            elif r.kind == "veth":
                out = v["outside"] + (f"@{v['bridge']}" if v.get("bridge") else "")
                ext_r.append(f"veth[{v['inside']}]:{out}")
            elif r.kind in ("device", "file"):
                ext_d.append(f"file[{v['path']}]:{v['key']}")
                restore.setdefault("inherit_fd", []).append(f"{v['key']}:{v['path']}")  # type: ignore[attr-defined]
            elif r.kind == "tcp":
                dump["tcp_established"] = restore["tcp_established"] = v.get("mode", "established") != "close"
                if v.get("mode") == "close":
                    dump["tcp_close"] = True
            elif r.kind == "option":
                value: object = {"true": True, "false": False}.get(v["value"], v["value"])
                if v.get("phase", "both") in ("dump", "both"):
                    dump[v["name"]] = value
                if v.get("phase", "both") in ("restore", "both"):
                    restore[v["name"]] = value
        if ext_d:
            dump["external"] = ext_d
        if ext_r:
            restore["external"] = ext_r
        return CriuOptions(dump, restore)

    def save_rules(self, ref: str, rules: Sequence[Rule]) -> str:
        c = self.container_detail(ref)
        self.compile_rules(c.id, rules)
        self.saved[c.id] = list(rules)
        return f"/etc/ctconsole/rules/{c.name}.toml"

    def suggest_rules(self, ref: str, dest: str | None = None) -> list[Rule]:
        c = self.container_detail(ref)
        out: list[Rule] = []
        for cat, item in c.externals():
            if cat == "sockets":
                out.append(Rule("unix-socket", {"inode": str(item.inode), "path": item.peer_path}))
            elif cat == "ttys":
                out.append(Rule("tty", {"path": item.path, "key": "console"}))
            elif cat == "mounts":
                key = item.mountpoint.strip("/").split("/")[-1]
                out.append(Rule("mount", {"mountpoint": item.mountpoint, "key": key, "source": item.root}))
            elif cat == "interfaces":
                out.append(Rule("veth", {"inside": item.name, "outside": item.peer_ifname, "bridge": item.bridge}))
        return out

    def preview_migration(self, ref: str, dest: str, strategy: str) -> list[str]:
        c = self.container_detail(ref)
        opts = self.compile_rules(c.id, self.load_rules(c.id))
        rounds = "up to 6 pre-copy rounds, then " if strategy in ("auto", "pre-copy") else ""
        return [
            f"{c.name} ({c.runtime}, init {c.init_pid}) -> {dest}",
            f"strategy {strategy}: {rounds}freeze, dump, send, restore, confirm",
            "on failure before confirm: CRIU resumes the source (rollback)",
            *opts.lines(),
        ]

    def start_migration(
        self,
        ref: str,
        dest: str,
        strategy: str,
        rules: Sequence[Rule] | None,
        on_event: Callable[[UiEvent], None],
    ) -> MigrationHandle:
        self.calls.append(f"migrate:{ref}:{dest}:{strategy}")
        c = self.container_detail(ref)
        m = FakeMigration(c.name, dest, strategy, on_event, self.speed)
        self.migrations.append(m)
        m.thread.start()
        return m

    def history(self) -> list[HistoryEntry]:
        return [
            HistoryEntry("0003", "web-1", "netns:dst", "pre-copy", "2026-11-25 17:02", "rolled-back", None, FAKE_LOG),
            HistoryEntry("0002", "db", "ssh://node2", "stop-copy", "2026-11-24 11:40", "migrated", 230.0, ""),
            HistoryEntry("0001", "cache", "netns:dst", "post-copy", "2026-11-23 09:15", "failed", None, ""),
        ]

    def read_log(self, path: str) -> list[str]:
        if path == FAKE_LOG:
            return list(_LOG_LINES)
        raise CtError(f"cannot read log {path}: no such file")
