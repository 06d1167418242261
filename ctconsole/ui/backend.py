"""The one door between the console and the core, and the console's view state.

Why a door: every screen talks to an abstract :class:`Backend`, so the
snapshot tests, the benchmark and the demo run against
:class:`ctconsole.ui.fake.FakeBackend`, which fakes the *host* (containers,
CRIU, the clock) and nothing else. Both backends speak the core's own types:
feasibility :class:`~ctconsole.feasibility.findings.Report` and ``Finding``,
remap :class:`~ctconsole.remap.model.Rule` and its ``KINDS``/validation/
compile, and the events of :mod:`ctconsole.migrate.events`. The console keeps
no copies of them; what it defines here is view state derived from them
(:class:`MigrationState`, a pure fold of events) and the words it shows.

No textual or rich import here: this module is also what a test double or a
headless benchmark uses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ctconsole import remap
from ctconsole.commands.destinations import Destination
from ctconsole.errors import CtError
from ctconsole.feasibility.findings import AUTO, BLOCKER, INFO, NEEDS_RULE, Finding, Report
from ctconsole.migrate import events as ev
from ctconsole.migrate.journal import Summary
from ctconsole.model import Container
from ctconsole.remap import KindSpec, Rule

if TYPE_CHECKING:
    from ctconsole.remap.compile import CompiledOptions
    from ctconsole.ui.remote import RemoteHost

LOCAL_HOST = "local"

# ----------------------------------------------------------------- words
#: The verdict words, exactly as ``ctconsole check`` prints them.
VERDICT_WORDS = {
    "feasible": "FEASIBLE",
    "no-known-blockers": "NO KNOWN BLOCKERS",
    "needs-rules": "NEEDS RULES",
    "infeasible": "INFEASIBLE",
}

#: A needs-rule finding the rules already satisfy is shown in its own group.
SATISFIED = "satisfied"
#: The groups of the report screen, worst first.
GROUPS = (BLOCKER, NEEDS_RULE, SATISFIED, AUTO, INFO)


def verdict_word(verdict: str) -> str:
    return VERDICT_WORDS.get(verdict, verdict.upper())


def finding_group(f: Finding) -> str:
    """The group a finding is shown in: its severity, or ``satisfied`` for a needs-rule the rules satisfy."""
    return SATISFIED if f.severity == NEEDS_RULE and f.satisfied else f.severity


def grouped(report: Report) -> list[tuple[str, list[Finding]]]:
    """Findings by group, worst first; unknown severities last."""
    groups: dict[str, list[Finding]] = {}
    for f in report.findings:
        groups.setdefault(finding_group(f), []).append(f)
    order = [g for g in GROUPS if g in groups] + sorted(g for g in groups if g not in GROUPS)
    return [(g, groups[g]) for g in order]


def fmt_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(fmt_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={fmt_value(v)}" for k, v in sorted(value.items())) + "}"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def option_lines(dump: dict[str, Any], restore: dict[str, Any]) -> list[str]:
    """``phase: field = value`` lines in a stable order (previews and snapshots)."""
    out: list[str] = []
    for phase, opts in (("dump", dump), ("restore", restore)):
        if not opts:
            out.append(f"{phase}: (defaults)")
        for key in sorted(opts):
            out.append(f"{phase}: {key} = {fmt_value(opts[key])}")
    return out


def rule_summary(rule: Rule) -> str:
    """``mountpoint=/srv, path=/export`` for a table cell (the form's strings)."""
    return ", ".join(f"{k}={v}" for k, v in remap.rule_to_form(rule).items() if k != "kind" and v)


def rules_label(path: str) -> str:
    """How the rules file in use is named on screen: ``none`` or the path (home as ``~``)."""
    if not path:
        return "none"
    home = str(Path.home())
    return "~" + path[len(home) :] if path.startswith(home + "/") else path


# ------------------------------------------------------------------ migration
@runtime_checkable
class MigrationHandle(Protocol):
    """What :meth:`Backend.start_migration` returns: something the console can abort."""

    def abort(self) -> None: ...


# The engine's phases (libvirt v3 style); sub-phases and "rollback" are inserted when they happen.
DEFAULT_PHASES = ("begin", "prepare", "perform", "finish", "confirm")
HIDDEN_PHASES = ("done",)
LOG_TAIL = 200
RATE_HISTORY = 120


@dataclass(frozen=True)
class MigrationState:
    """Everything the progress view shows, folded from the engine's events.

    Why a snapshot: progress messages can then replace one another when the
    UI is busy (``can_replace``) without losing anything: each snapshot
    holds the whole picture, including the log tail and the rate history.
    ``transfers`` keeps the latest event of each step (kind, round), so the
    view can say per kind how many bytes were linked, copied or streamed.
    """

    phase: str = ""
    phases: tuple[str, ...] = DEFAULT_PHASES
    done_phases: tuple[str, ...] = ()
    failed_phase: str = ""  # the phase a rollback interrupted
    rounds: tuple[ev.RoundProgress, ...] = ()
    final: ev.FinalDump | None = None
    transfers: tuple[ev.Transfer, ...] = ()
    rates: tuple[float, ...] = ()
    frozen: float | None = None  # seconds, CRIU's
    restore: float | None = None
    downtime: float | None = None
    log_tail: tuple[str, ...] = ()
    log_count: int = 0
    done: ev.Done | None = None

    @property
    def transfer(self) -> ev.Transfer | None:
        """The step moving now (or the last one)."""
        return self.transfers[-1] if self.transfers else None

    @property
    def fraction(self) -> float | None:
        t = self.transfer
        return t.fraction if t is not None else None

    def bytes_by_kind(self) -> list[tuple[str, int]]:
        """Bytes per transfer kind over every step, in the order kinds first appeared."""
        out: dict[str, int] = {}
        for t in self.transfers:
            out[t.kind] = out.get(t.kind, 0) + t.done
        return list(out.items())


def fold(state: MigrationState, event: ev.Event) -> MigrationState:
    """Pure: the state after one event (unit-testable without a UI)."""
    rep = dataclasses.replace
    if isinstance(event, ev.PhaseChanged):
        if event.phase in HIDDEN_PHASES:
            return state
        phases = state.phases
        if event.phase not in phases:
            # a sub-phase (transfer, restore...) goes right after the phase it runs in
            at = phases.index(state.phase) + 1 if state.phase in phases and event.phase != "rollback" else len(phases)
            phases = (*phases[:at], event.phase, *phases[at:])
        done = state.done_phases
        failed = state.failed_phase
        if event.phase == "rollback":
            failed = state.phase  # interrupted, not completed
        elif state.phase and state.phase not in done and state.phase != event.phase:
            done = (*done, state.phase)
        state = rep(state, phase=event.phase, phases=phases, done_phases=done, failed_phase=failed)
        if event.detail:
            state = _log(state, f"[{event.phase}] {event.detail}")
        return state
    if isinstance(event, ev.RoundProgress):
        return rep(state, rounds=(*state.rounds, event))
    if isinstance(event, ev.FinalDump):
        return rep(state, final=event)
    if isinstance(event, ev.Transfer):
        kept = tuple(t for t in state.transfers if (t.kind, t.round) != (event.kind, event.round))
        rates = (*state.rates, event.rate)[-RATE_HISTORY:] if event.rate > 0 else state.rates
        return rep(state, transfers=(*kept, event), rates=rates)
    if isinstance(event, ev.FrozenTime):
        return rep(state, frozen=event.seconds)
    if isinstance(event, ev.RestoreTime):
        return rep(state, restore=event.seconds)
    if isinstance(event, ev.Downtime):
        return rep(state, downtime=event.seconds)
    if isinstance(event, ev.LogLine):
        line = event.text if event.level in ("info", "") else f"{event.level.upper()}: {event.text}"
        return _log(state, line)
    if isinstance(event, ev.Done):
        done_phases = state.done_phases
        if event.result in ("migrated", "rolled-back") and state.phase and state.phase not in done_phases:
            done_phases = (*done_phases, state.phase)  # the last phase (confirm, or the rollback) completed
        downtime = event.downtime if event.downtime is not None else state.downtime
        frozen = event.frozen if event.frozen is not None else state.frozen
        return rep(state, done=event, done_phases=done_phases, downtime=downtime, frozen=frozen)
    return state


def _log(state: MigrationState, line: str) -> MigrationState:
    return dataclasses.replace(
        state, log_tail=(*state.log_tail, line)[-LOG_TAIL:], log_count=state.log_count + 1
    )


NEXT_STEPS = {
    "migrated": ("Check the service from outside, then remove the images if you keep them.",),
    "rolled-back": ("Open Troubleshooting (t) to read CRIU's log and the explanations, fix, and retry.",),
    "failed": (
        "Open Troubleshooting (t) for the log and the journal; `ctconsole history` resolves what was left open.",
    ),
}

#: What the outcome says about the source, by ``Done.source``.
SOURCE_WORDS = {
    "released": "the source copy was stopped: the container runs only on the destination",
    "running": "the source container is still running where it was: nothing changed for its users",
    "restored-locally": "the source container was restored here from the images and runs again",
    "untouched": "the source container was never frozen: it is still running",
    "lost": "THE SOURCE CONTAINER IS GONE: it runs neither here nor on the destination",
}


def source_sentence(done: ev.Done) -> str:
    """Whether the source survived, in words (an unknown state says so)."""
    return SOURCE_WORDS.get(done.source, "whether the source still runs is unknown: check the container list")


# ---------------------------------------------------------------- interface
class Backend(ABC):
    """Everything the console asks of the core. Methods may block: call them from workers."""

    name = "backend"

    def hosts(self, requested: Sequence[str]) -> list[str]:
        """Hosts to show: ``local`` first, then the ``--host`` values in order."""
        out = [LOCAL_HOST]
        out.extend(h for h in requested if h not in out)
        return out

    def is_remote(self, host: str) -> bool:
        """Whether ``host`` is another machine (or namespace) reached through its agent.

        Why the screens ask: rules, previews and migrations run where the
        source container is; the console can only start them for ``local``.
        """
        return host != LOCAL_HOST

    @abstractmethod
    def list_containers(self, host: str = LOCAL_HOST) -> list[Container]:
        """Containers on a host (a fresh scan)."""

    @abstractmethod
    def container_detail(self, ref: str, host: str = LOCAL_HOST) -> Container:
        """One container, fully inventoried."""

    @abstractmethod
    def check(self, ref: str, dest: str | None = None, rules_file: str = "", host: str = LOCAL_HOST) -> Report:
        """Feasibility report for ``dest`` with the rules of ``rules_file`` ("" = none), computed on ``host``."""

    # ---------------------------------------------------------------- rules (the real remap)
    def rule_kinds(self) -> tuple[KindSpec, ...]:
        """The kinds of rules the editor offers: remap's own."""
        return remap.KINDS

    def validate_rule(self, rule: Rule) -> list[str]:
        """Problems with one rule, as sentences ([] when valid). Fast: called per keystroke."""
        return remap.validate_rule(rule)

    def compile_rules(self, ref: str, rules: Sequence[Rule], dest: str | None = None) -> CompiledOptions:
        """The CRIU options these rules produce for ``dest`` (raises CtError when they do not compile)."""
        rs = remap.RuleSet(containers=(remap.Scope(remap.Selector(name="*"), tuple(rules), index=0),), path="<editor>")
        return remap.compile_rules(rs, self.container_detail(ref), dest)

    def suggest_rules(self, ref: str, dest: str | None = None) -> list[Rule]:
        """Draft rules for every external item that needs one (the operator reviews them)."""
        from ctconsole.remap.suggest import suggest_rules

        return [rule for rule, _why, _comments in suggest_rules(self.container_detail(ref), dest)]

    def form_defaults(self, ref: str, rule: Rule) -> dict[str, str]:
        """Values for the blank fields of a rule being added: what remap would suggest for that item.

        Why: the destination's host path of a mount is the source's path in
        most cases, and the suggester already knows it; the form shows it
        instead of a placeholder (the operator can still change it).
        """
        form = remap.rule_to_form(rule)
        key = {"mount": "mountpoint", "veth": "interface", "netdev": "interface", "unix": "peer"}.get(rule.kind)
        out: dict[str, str] = {}
        if key and form.get(key):
            with contextlib.suppress(CtError, OSError):
                for s in self.suggest_rules(ref):
                    sf = remap.rule_to_form(s)
                    if s.kind == rule.kind and sf.get(key) == form[key]:
                        out = {k: v for k, v in sf.items() if k != "kind" and not form.get(k)}
                        break
        if rule.kind == "file" and not form.get("destination") and (src := form.get("source") or form.get("fd_path")):
            out.setdefault("destination", src)
        if rule.kind == "mount" and not form.get("path") and not out.get("path") and form.get("mountpoint"):
            with contextlib.suppress(CtError, OSError):
                c = self.container_detail(ref)
                m = next((m for m in c.mounts if m.mountpoint == form["mountpoint"]), None)
                if m is not None and m.root.startswith("/"):
                    out["path"] = m.root
        return out

    @abstractmethod
    def default_rules_file(self) -> str:
        """The rules file the editor saves to by default."""

    @abstractmethod
    def load_rules(self, ref: str, rules_file: str) -> list[Rule]:
        """The rules of the block written for this container in ``rules_file`` ([] when none)."""

    @abstractmethod
    def save_rules(self, ref: str, rules: Sequence[Rule], rules_file: str) -> str:
        """Persist the rules as this container's block; returns where they went."""

    # ---------------------------------------------------------------- migration
    def strategies(self) -> tuple[str, ...]:
        """Strategy names, the first being the default."""
        return ("auto", "stop-copy", "pre-copy", "post-copy")

    @abstractmethod
    def destinations(self, hosts: Sequence[str]) -> list[Destination]:
        """Known destinations (lab hosts, ``--host``, past ones, ssh config), last used first."""

    @abstractmethod
    def preview_migration(self, ref: str, dest: str, strategy: str, rules_file: str) -> list[str]:
        """Lines describing what the migration will do (phases, rules file, options)."""

    @abstractmethod
    def start_migration(
        self, ref: str, dest: str, strategy: str, rules_file: str, on_event: Callable[[ev.Event], None]
    ) -> MigrationHandle:
        """Start a migration and return promptly with a handle to abort it.

        Events arrive on ``on_event`` from any thread and end with one :class:`~ctconsole.migrate.events.Done`.
        """

    @abstractmethod
    def history(self) -> list[Summary]:
        """Past migrations from the journal, newest first: the journal's own summaries (``ctconsole history``)."""

    @abstractmethod
    def history_log(self, entry: Summary) -> str:
        """The log to open for one past migration ("" when it kept none)."""

    @abstractmethod
    def read_log(self, path: str) -> list[str]:
        """The lines of a CRIU log."""

    def explain(self, line: str) -> str | None:
        """Explanation for a CRIU log line (ctconsole.criu.errors)."""
        from ctconsole.criu.errors import explain

        return explain(line)

    def close(self) -> None:  # noqa: B027 - optional hook: most backends hold nothing open
        """Release what the backend holds open (agent channels); called when the console exits."""

    def default_log(self) -> str:
        """The log the troubleshooting screen opens first ("" when none)."""
        return next((log for e in self.history() if (log := self.history_log(e))), "")


# ---------------------------------------------------------------- real core
class RealBackend(Backend):
    """Calls the core; each heavy module is imported on first use (start-up time)."""

    name = "real"

    def __init__(self) -> None:
        self._cache: dict[str, Container] = {}
        self._lock = threading.Lock()
        self._remotes: dict[str, RemoteHost] = {}
        self._remote_cache: dict[str, dict[str, Container]] = {}

    # ------------------------------------------------------------ remote hosts
    def remote(self, host: str) -> RemoteHost:
        """The agent channel of ``host``, created on first use and kept for the session.

        A malformed ``--host`` raises UsageError here (shown for that host only),
        so one typo does not keep the console from starting.
        """
        from ctconsole.ui.remote import RemoteHost  # protobuf and the channel only when a --host is used

        with self._lock:
            r = self._remotes.get(host)
            if r is None:
                r = self._remotes[host] = RemoteHost(host)
            return r

    def close(self) -> None:
        with self._lock:
            remotes, self._remotes = list(self._remotes.values()), {}
        for r in remotes:
            with contextlib.suppress(Exception):  # exiting: a dead agent must not make it noisy
                r.close()

    def _remote_list(self, host: str) -> list[Container]:
        found = self.remote(host).inventory()
        with self._lock:
            self._remote_cache[host] = {c.id: c for c in found}
        return found

    def _remote_container(self, ref: str, host: str) -> Container:
        with self._lock:
            known = self._remote_cache.get(host, {})
            c = known.get(ref) or next((x for x in known.values() if x.name == ref), None)
        if c is None:
            c = next((x for x in self._remote_list(host) if ref in (x.id, x.name)), None)
        if c is None:
            raise CtError(f"no container {ref!r} on {host} (it may have stopped; r rescans)")
        return c

    # ------------------------------------------------------------ inventory
    def list_containers(self, host: str = LOCAL_HOST) -> list[Container]:
        if self.is_remote(host):
            return self._remote_list(host)
        from ctconsole import inventory

        found = inventory.scan(full=True)  # externals are only known from a full scan
        with self._lock:
            self._cache = {c.id: c for c in found}
        return found

    def container_detail(self, ref: str, host: str = LOCAL_HOST) -> Container:
        if self.is_remote(host):
            return self._remote_container(ref, host)  # the agent's inventory is already a full one
        from ctconsole import inventory

        with self._lock:
            known = self._cache.get(ref)
        c = inventory.detail(known) if known is not None else inventory.resolve(ref)
        with self._lock:
            self._cache[c.id] = c
        return c

    # ------------------------------------------------------------ feasibility
    def check(self, ref: str, dest: str | None = None, rules_file: str = "", host: str = LOCAL_HOST) -> Report:
        if self.is_remote(host):
            # the agent checks with that host's own rules and CRIU: ``dest``/``rules`` are the local side's
            cid = self._remote_container(ref, host).id
            return Report.from_dict(self.remote(host).check(cid))
        from ctconsole import feasibility

        rules = rules_file if rules_file and Path(rules_file).is_file() else None
        return feasibility.check(self.container_detail(ref), dest=dest or None, rules=rules)

    # ------------------------------------------------------------ rules
    def default_rules_file(self) -> str:
        return str(remap.default_rules_path())

    def load_rules(self, ref: str, rules_file: str) -> list[Rule]:
        if not rules_file or not Path(rules_file).is_file():
            return []
        return [remap.rule_from_form(d) for d in remap.load_rules(self.container_detail(ref), rules_file)]

    def save_rules(self, ref: str, rules: Sequence[Rule], rules_file: str) -> str:
        return remap.save_rules(self.container_detail(ref), list(rules), rules_file or self.default_rules_file())

    # ------------------------------------------------------------ migration
    def strategies(self) -> tuple[str, ...]:
        from ctconsole.migrate.engine import STRATEGIES

        return tuple(STRATEGIES)

    def destinations(self, hosts: Sequence[str]) -> list[Destination]:
        from ctconsole.commands.destinations import known_destinations

        return known_destinations(hosts)

    def preview_migration(self, ref: str, dest: str, strategy: str, rules_file: str) -> list[str]:
        from ctconsole.migrate.options import migration_options

        container = self.container_detail(ref)
        rules = rules_file if rules_file and Path(rules_file).is_file() else None
        opts = migration_options(container, dest, rules, container.id)
        dump, restore, notes = opts.dump, opts.restore, opts.notes
        return [
            f"{container.name} ({container.runtime}, init {container.init_pid}) -> {dest}",
            f"strategy {strategy}: begin, prepare, perform, finish, confirm",
            f"rules file: {rules_label(rules or '')}",
            "on failure before confirm: CRIU resumes the source (rollback)",
            *[f"note: {n}" for n in notes],
            *option_lines(dump, restore),
        ]

    def start_migration(
        self, ref: str, dest: str, strategy: str, rules_file: str, on_event: Callable[[ev.Event], None]
    ) -> MigrationHandle:
        from ctconsole.migrate.engine import Migration, MigrationRequest

        container = self.container_detail(ref)
        rules = rules_file if rules_file and Path(rules_file).is_file() else None
        req = MigrationRequest(ref=container.id, dest=dest, strategy=strategy, rules=rules)
        migration = Migration(req, emit=on_event)
        journal = str(migration.journal.path)

        def run() -> None:
            try:
                migration.run()  # emits Done itself
            except CtError as exc:
                on_event(ev.Done("failed", exc.message, errors=tuple(exc.details), journal=journal))
            except Exception as exc:  # the console must get an outcome whatever happens
                on_event(ev.Done("failed", f"{type(exc).__name__}: {exc}", journal=journal))

        threading.Thread(target=run, name=f"migrate-{container.name}", daemon=True).start()
        return migration

    def history(self) -> list[Summary]:
        from ctconsole.migrate import journal

        return [journal.summarize(path) for path in reversed(journal.journals())]

    def history_log(self, entry: Summary) -> str:
        from ctconsole.migrate import journal

        path = journal.journal_dir() / f"{entry.id}.jsonl"
        return str(path) if path.exists() else ""

    def read_log(self, path: str) -> list[str]:
        if path.endswith(".jsonl"):
            return _journal_lines(Path(path))
        try:
            return Path(path).read_text(errors="replace").splitlines()
        except OSError as exc:
            raise CtError(f"cannot read log {path}: {exc.strerror}") from exc


def _journal_lines(path: Path) -> list[str]:
    """A journal as log lines; error records expand to their detail lines (CRIU's Error lines)."""
    from ctconsole.migrate import journal

    lines = []
    for rec in journal.read_records(path):
        ts = time.strftime("%H:%M:%S", time.localtime(float(rec.get("ts", 0))))
        kind = rec.get("kind", "?")
        rest = {k: v for k, v in rec.items() if k not in ("ts", "kind", "details")}
        lines.append(f"{ts} {kind} " + " ".join(f"{k}={v}" for k, v in rest.items()))
        lines.extend(f"    {d}" for d in rec.get("details", []) or [])
    return lines


def make_backend(fake: bool | None = None) -> Backend:
    """The backend the console uses: the fake one when ``CTCONSOLE_FAKE`` is set (demo, tests)."""
    import os

    if fake is None:
        fake = os.environ.get("CTCONSOLE_FAKE", "") not in ("", "0")
    if fake:
        from ctconsole.ui.fake import FakeBackend

        n = int(os.environ.get("CTCONSOLE_FAKE_N", "12") or 12)
        speed = float(os.environ.get("CTCONSOLE_FAKE_SPEED", "1") or 1)
        return FakeBackend(n_containers=n, speed=speed)
    return RealBackend()
