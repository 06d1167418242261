"""The one door between the console and the core.

Why: the inventory, feasibility, remap and migration modules are written in
parallel with the console and their APIs may move. Every screen talks to an
abstract :class:`Backend`; :class:`RealBackend` adapts whatever the core
exposes (imported lazily, degrading with an operator-readable
:class:`~ctconsole.errors.CtError` when a module is missing) and
:class:`ctconsole.ui.fake.FakeBackend` gives deterministic data for tests,
snapshots, benchmarks and development.

The types here are plain data the UI renders. The engine's own event objects
are *adapted* into them (:func:`adapt_event`) by duck typing, so the console
only expects the shape described by the ``*Like`` protocols, not a class.

No textual or rich import here: this module is also what a test double or a
headless benchmark uses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol, cast, runtime_checkable

from ctconsole.errors import CtError
from ctconsole.model import Container

if TYPE_CHECKING:
    from ctconsole.ui.remote import RemoteHost

LOCAL_HOST = "local"

# Severity order used to group findings, worst first. The checker's own are blocker,
# needs-rule, auto and info (ctconsole.feasibility.findings); error/warning are other cores'.
SEVERITIES = ("blocker", "error", "needs-rule", "warning", "auto", "info")


# --------------------------------------------------------------------- checks
@dataclass(frozen=True)
class Finding:
    """One feasibility finding as the console shows it."""

    rule: str
    severity: str  # blocker | error | warning | info (others sort last)
    subject: str
    message: str
    remedy: str = ""
    rule_kind: str = ""  # remap rule kind that fixes it, "" when none


@dataclass(frozen=True)
class CriuOptions:
    """Compiled CRIU options: ``criu_opts`` field name -> value, for dump and restore."""

    dump: dict[str, Any] = field(default_factory=dict)
    restore: dict[str, Any] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """Human-readable ``phase: field = value`` lines, stable order (for previews and snapshots)."""
        out: list[str] = []
        for phase, opts in (("dump", self.dump), ("restore", self.restore)):
            if not opts:
                out.append(f"{phase}: (defaults)")
            for key in sorted(opts):
                out.append(f"{phase}: {key} = {_fmt_value(opts[key])}")
        return out


def _fmt_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_fmt_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={_fmt_value(v)}" for k, v in sorted(value.items())) + "}"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


@dataclass(frozen=True)
class Report:
    """A feasibility report: verdict, findings, and the options that will be sent."""

    container_id: str
    verdict: str  # ok | needs-rules | blocked (raw core verdicts are normalised)
    findings: tuple[Finding, ...] = ()
    options: CriuOptions = field(default_factory=CriuOptions)
    raw_verdict: str = ""

    def grouped(self) -> list[tuple[str, list[Finding]]]:
        """Findings grouped by severity, worst first; unknown severities last."""
        groups: dict[str, list[Finding]] = {}
        for f in self.findings:
            groups.setdefault(f.severity, []).append(f)
        order = [s for s in SEVERITIES if s in groups] + sorted(s for s in groups if s not in SEVERITIES)
        return [(s, groups[s]) for s in order]


def normalise_verdict(raw: Any) -> str:
    """Map whatever the core calls its verdict onto the three badges the console shows."""
    text = str(getattr(raw, "value", getattr(raw, "name", raw))).lower()
    if any(w in text for w in ("infeas", "block", "impossible", "no-go", "fail")):
        return "blocked"
    if any(w in text for w in ("remed", "rule", "warn", "condition", "needs")):
        return "needs-rules"
    if text in ("ok", "feasible", "go", "yes", "true", "pass", "passed"):
        return "ok"
    return text or "unknown"


# ---------------------------------------------------------------------- rules
@dataclass(frozen=True)
class FieldSpec:
    """One input of a rule form."""

    name: str
    label: str
    placeholder: str = ""
    required: bool = True


@dataclass(frozen=True)
class RuleKind:
    """A kind of remap rule and the fields its form asks for."""

    name: str
    title: str
    fields: tuple[FieldSpec, ...]
    help: str = ""


@dataclass(frozen=True)
class Rule:
    """One remap rule as the editor holds it (values are strings, as typed)."""

    kind: str
    values: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.values.items() if v)


# Kinds the editor offers when the remap module does not publish its own schema.
DEFAULT_RULE_KINDS: tuple[RuleKind, ...] = (
    RuleKind(
        "unix-socket",
        "External unix socket",
        (FieldSpec("inode", "Socket inode", "12345"), FieldSpec("path", "Peer path", "/dev/log", False)),
        "Dump the connection as external; it is reconnected on restore.",
    ),
    RuleKind(
        "tty",
        "External terminal",
        (FieldSpec("path", "TTY path", "/dev/pts/3"), FieldSpec("key", "Inherit key", "console")),
        "Hand the terminal over with inherit_fd on restore.",
    ),
    RuleKind(
        "mount",
        "External mount",
        (
            FieldSpec("mountpoint", "Mountpoint inside", "/proc/meminfo"),
            FieldSpec("key", "Key", "meminfo"),
            FieldSpec("source", "Source on destination", "/var/lib/lxcfs/proc/meminfo", False),
        ),
        "Treat a bind mount from the host as external and re-bind it on restore.",
    ),
    RuleKind(
        "veth",
        "Veth pair",
        (
            FieldSpec("inside", "Name inside", "eth0"),
            FieldSpec("outside", "Name outside", "veth-web1"),
            FieldSpec("bridge", "Bridge on destination", "br0", False),
        ),
        "Recreate the veth on restore and plug the outer end into a bridge.",
    ),
    RuleKind(
        "device",
        "External device",
        (FieldSpec("path", "Device path", "/dev/fuse"), FieldSpec("key", "Key", "fuse")),
        "Treat an open device as external (it must exist on the destination).",
    ),
    RuleKind(
        "file",
        "Inherited file",
        (FieldSpec("path", "File path", "/var/log/app.log"), FieldSpec("key", "Key", "applog")),
        "Pass a file that is open outside the container as an inherited fd.",
    ),
    RuleKind(
        "tcp",
        "TCP connections",
        (FieldSpec("mode", "established | close", "established"),),
        "Keep established TCP connections (tcp_established) or close them.",
    ),
    RuleKind(
        "option",
        "Raw CRIU option",
        (
            FieldSpec("phase", "dump | restore | both", "both"),
            FieldSpec("name", "criu_opts field", "shell_job"),
            FieldSpec("value", "Value", "true"),
        ),
        "Set any criu_opts field directly (escape hatch).",
    ),
)


# ------------------------------------------------------------------ migration
class PhaseEventLike(Protocol):
    """The engine says a new phase began (``phase`` is its name)."""

    phase: str


class RoundEventLike(Protocol):
    """One pre-copy round finished: its number and the pages it wrote."""

    round: int
    pages: int


class TransferEventLike(Protocol):
    """Bytes moved so far (plus optional total, rate in B/s, ETA in s)."""

    bytes_sent: int


class DoneEventLike(Protocol):
    """The migration ended: ``result`` is migrated | rolled-back | failed."""

    result: str


@runtime_checkable
class MigrationHandle(Protocol):
    """What :meth:`Backend.start_migration` returns: something the console can abort."""

    def abort(self) -> None: ...


@dataclass(frozen=True)
class PhaseChanged:
    phase: str
    phases: tuple[str, ...] = ()
    detail: str = ""


@dataclass(frozen=True)
class RoundDone:
    round: int
    pages: int
    bytes: int = 0


@dataclass(frozen=True)
class Transfer:
    """Bytes moved so far; ``rate``/``eta`` None when this event does not carry them."""

    bytes_sent: int
    bytes_total: int = 0
    rate: float | None = None  # bytes/s
    eta: float | None = None  # seconds


@dataclass(frozen=True)
class Metric:
    """One figure: ``rate`` (B/s), ``eta`` (s), ``frozen_ms``, ``downtime_ms``, ``restore_ms``."""

    name: str
    value: float


@dataclass(frozen=True)
class Frozen:
    frozen_ms: float


@dataclass(frozen=True)
class LogLine:
    line: str
    level: str = "info"


@dataclass(frozen=True)
class Done:
    result: str  # migrated | rolled-back | failed
    message: str = ""
    downtime_ms: float | None = None
    log_path: str = ""
    next_steps: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()


UiEvent = PhaseChanged | RoundDone | Transfer | Metric | Frozen | LogLine | Done
_UI_EVENTS = (PhaseChanged, RoundDone, Transfer, Metric, Frozen, LogLine, Done)

# The engine's phases (libvirt v3 style); "rollback" is appended when it happens.
DEFAULT_PHASES = ("begin", "prepare", "perform", "finish", "confirm")
HIDDEN_PHASES = ("done",)


def _get(ev: Any, *names: str, default: Any = None) -> Any:
    for n in names:
        if isinstance(ev, dict) and n in ev:
            return ev[n]
        if not isinstance(ev, dict) and hasattr(ev, n):
            return getattr(ev, n)
    return default


def _snake(name: str) -> str:
    return "".join("_" + ch.lower() if ch.isupper() else ch for ch in name).lstrip("_")


def adapt_event(ev: Any) -> UiEvent | None:
    """Turn an engine event (any object or dict) into a UI event by its shape.

    Why duck typing: the migration engine owns its event classes
    (``ctconsole.migrate.events``); matching on the class name (or an
    ``event``/``kind`` key) and attribute names lets the engine add fields or
    events without breaking the console. Unknown events give None.
    """
    if isinstance(ev, _UI_EVENTS):
        return ev
    hint = _snake(str(_get(ev, "event", "kind", default=type(ev).__name__))).lower()
    if hint in ("done", "finished", "result") or _get(ev, "result") is not None:
        res = str(getattr(_get(ev, "result"), "value", _get(ev, "result") or "failed")).lower().replace("_", "-")
        details = _get(ev, "details", default={}) or {}
        steps = _get(ev, "next_steps", default=None) or _get(details, "next_steps", default=()) or ()
        errors = _get(ev, "errors", default=None) or _get(details, "errors", default=()) or ()
        down = _num(_get(ev, "downtime_ms")) or _ms(_get(details, "downtime", "downtime_s"))
        return Done(
            result=res,
            message=str(_get(ev, "message", default="") or ""),
            downtime_ms=down,
            log_path=str(_get(ev, "log_path", default="") or _get(details, "log_path", "journal", default="") or ""),
            next_steps=(steps,) if isinstance(steps, str) else tuple(str(x) for x in steps),
            errors=(errors,) if isinstance(errors, str) else tuple(str(x) for x in errors),
        )
    if hint == "log_line" or (_get(ev, "line", "text") is not None and _get(ev, "phase") is None):
        return LogLine(str(_get(ev, "line", "text", default="")).rstrip("\n"), str(_get(ev, "level", default="info")))
    if hint in ("round_progress", "round_done") or _get(ev, "round") is not None:
        return RoundDone(
            round=int(_get(ev, "round", default=0)),
            pages=int(_get(ev, "pages_written", "pages", default=0) or 0),
            bytes=int(_get(ev, "bytes", default=0) or 0),
        )
    if hint in ("bytes_sent", "transfer") or _get(ev, "bytes_sent", "sent") is not None:
        return Transfer(
            bytes_sent=int(_get(ev, "bytes_sent", "sent", default=0) or 0),
            bytes_total=int(_get(ev, "bytes_total", "total", default=0) or 0),
            rate=_num(_get(ev, "rate")),
            eta=_num(_get(ev, "eta")),
        )
    if hint == "rate":
        return Metric("rate", float(_get(ev, "bytes_per_second", "value", default=0.0)))
    if hint == "eta":
        return Metric("eta", float(_get(ev, "seconds", "value", default=0.0)))
    if hint in ("frozen_time", "frozen"):
        v = _num(_get(ev, "frozen_ms"))
        return Frozen(v if v is not None else float(_get(ev, "seconds", default=0.0)) * 1000)
    if hint == "downtime":
        return Metric("downtime_ms", float(_get(ev, "seconds", default=0.0)) * 1000)
    if hint == "restore_time":
        return Metric("restore_ms", float(_get(ev, "seconds", default=0.0)) * 1000)
    phase = _get(ev, "phase")
    if phase is not None:
        phases = _get(ev, "phases", default=()) or ()
        return PhaseChanged(
            str(getattr(phase, "value", phase)).lower(),
            tuple(str(p) for p in phases),
            str(_get(ev, "detail", default="") or ""),
        )
    return None


def _num(v: Any) -> float | None:
    try:
        return None if v is None else float(v)
    except (TypeError, ValueError):
        return None


def _ms(seconds: Any) -> float | None:
    v = _num(seconds)
    return None if v is None else v * 1000


@dataclass(frozen=True)
class MigrationState:
    """Everything the progress view shows, folded from events.

    Why a snapshot: progress messages can then replace one another when the
    UI is busy (``can_replace``) without losing anything — each snapshot
    holds the whole picture, including the log tail and the rate history.
    """

    phase: str = ""
    phases: tuple[str, ...] = DEFAULT_PHASES
    done_phases: tuple[str, ...] = ()
    failed_phase: str = ""  # the phase a rollback interrupted
    rounds: tuple[RoundDone, ...] = ()
    bytes_sent: int = 0
    bytes_total: int = 0
    rate: float = 0.0
    rates: tuple[float, ...] = ()
    eta: float | None = None
    frozen_ms: float | None = None
    downtime_ms: float | None = None
    restore_ms: float | None = None
    log_tail: tuple[str, ...] = ()
    log_count: int = 0
    done: Done | None = None

    @property
    def fraction(self) -> float | None:
        if self.bytes_total > 0:
            return min(1.0, self.bytes_sent / self.bytes_total)
        return None


LOG_TAIL = 200
RATE_HISTORY = 120


def fold(state: MigrationState, ev: UiEvent) -> MigrationState:
    """Pure: the state after one event (unit-testable without a UI)."""
    rep = dataclasses.replace
    if isinstance(ev, PhaseChanged):
        if ev.phase in HIDDEN_PHASES:
            return state
        phases = ev.phases or state.phases
        if ev.phase not in phases:
            # a sub-phase the engine reports (transfer, restore...) goes right after the phase it
            # runs in: appended, the timeline read "confirm, transfer, restore" on a real migration
            at = phases.index(state.phase) + 1 if state.phase in phases and ev.phase != "rollback" else len(phases)
            phases = (*phases[:at], ev.phase, *phases[at:])
        done = state.done_phases
        failed = state.failed_phase
        if ev.phase == "rollback":
            failed = state.phase  # interrupted, not completed
        elif state.phase and state.phase not in done and state.phase != ev.phase:
            done = (*done, state.phase)
        state = rep(state, phase=ev.phase, phases=phases, done_phases=done, failed_phase=failed)
        if ev.detail:
            state = fold(state, LogLine(f"[{ev.phase}] {ev.detail}"))
        return state
    if isinstance(ev, RoundDone):
        return rep(state, rounds=(*state.rounds, ev))
    if isinstance(ev, Transfer):
        state = rep(state, bytes_sent=ev.bytes_sent, bytes_total=ev.bytes_total or state.bytes_total)
        if ev.rate is not None:
            state = fold(state, Metric("rate", ev.rate))
        if ev.eta is not None:
            state = rep(state, eta=ev.eta)
        return state
    if isinstance(ev, Metric):
        if ev.name == "rate":
            return rep(state, rate=ev.value, rates=(*state.rates, ev.value)[-RATE_HISTORY:])
        if ev.name == "eta":
            return rep(state, eta=ev.value)
        if ev.name == "frozen_ms":
            return rep(state, frozen_ms=ev.value)
        if ev.name == "downtime_ms":
            return rep(state, downtime_ms=ev.value)
        if ev.name == "restore_ms":
            return rep(state, restore_ms=ev.value)
        return state
    if isinstance(ev, Frozen):
        return rep(state, frozen_ms=ev.frozen_ms)
    if isinstance(ev, LogLine):
        line = ev.line if ev.level in ("info", "") else f"{ev.level.upper()}: {ev.line}"
        return rep(state, log_tail=(*state.log_tail, line)[-LOG_TAIL:], log_count=state.log_count + 1)
    if isinstance(ev, Done):
        done_phases = state.done_phases
        if ev.result in ("migrated", "rolled-back") and state.phase and state.phase not in done_phases:
            done_phases = (*done_phases, state.phase)  # the last phase (confirm, or the rollback) completed
        if ev.downtime_ms is None and state.downtime_ms is not None:
            ev = dataclasses.replace(ev, downtime_ms=state.downtime_ms)
        return rep(state, done=ev, done_phases=done_phases, downtime_ms=ev.downtime_ms)
    return state


NEXT_STEPS = {
    "migrated": (
        "The container runs on the destination; the source copy was killed.",
        "Check the service from outside, then remove the images if you keep them.",
    ),
    "rolled-back": (
        "The source container was resumed: nothing changed for its users.",
        "Open Troubleshooting (t) to read CRIU's log and the explanations, fix, and retry.",
    ),
    "failed": (
        "The migration failed; check whether the source still runs (Containers, r to refresh).",
        "Open Troubleshooting (t) for the log; the journal lets `ctconsole migrate --recover` finish or undo.",
    ),
}


@dataclass(frozen=True)
class HistoryEntry:
    """One migration from the journal."""

    id: str
    container: str
    dest: str
    strategy: str
    started: str
    result: str
    downtime_ms: float | None = None
    log_path: str = ""


# ---------------------------------------------------------------- interface
class Backend(ABC):
    """Everything the console asks of the core. Methods may block: call them from workers."""

    name = "backend"

    @abstractmethod
    def hosts(self, requested: Sequence[str]) -> list[str]:
        """Hosts to show: ``local`` first, then the ``--host`` values in order."""

    @abstractmethod
    def list_containers(self, host: str = LOCAL_HOST) -> list[Container]:
        """Containers on a host (a fresh scan)."""

    @abstractmethod
    def container_detail(self, ref: str, host: str = LOCAL_HOST) -> Container:
        """One container, fully inventoried."""

    @abstractmethod
    def check(
        self, ref: str, dest: str | None = None, rules: Sequence[Rule] | None = None, host: str = LOCAL_HOST
    ) -> Report:
        """Feasibility report (with the compiled options that will be sent), computed on ``host``."""

    def is_remote(self, host: str) -> bool:
        """Whether ``host`` is another machine (or namespace) reached through its agent.

        Why the screens ask: rules, previews and migrations run where the
        source container is; the console can only start them for ``local``.
        """
        return host != LOCAL_HOST

    def rule_kinds(self) -> tuple[RuleKind, ...]:
        """The kinds of rules the editor offers."""
        return DEFAULT_RULE_KINDS

    @abstractmethod
    def load_rules(self, ref: str) -> list[Rule]:
        """The saved rules of a container."""

    @abstractmethod
    def validate_rule(self, rule: Rule) -> list[str]:
        """Problems with one rule, as sentences ([] when valid). Must be fast: called per keystroke."""

    @abstractmethod
    def compile_rules(self, ref: str, rules: Sequence[Rule]) -> CriuOptions:
        """The CRIU options these rules produce (raises CtError when they do not compile)."""

    @abstractmethod
    def save_rules(self, ref: str, rules: Sequence[Rule]) -> str:
        """Persist the rules; returns where they went."""

    def suggest_rules(self, ref: str, dest: str | None = None) -> list[Rule]:
        """Draft rules for every external item that needs one (the operator reviews them)."""
        return []

    def strategies(self) -> tuple[str, ...]:
        """Strategy names, the first being the default."""
        return ("auto", "stop-copy", "pre-copy", "post-copy")

    @abstractmethod
    def preview_migration(self, ref: str, dest: str, strategy: str) -> list[str]:
        """Lines describing what the migration will do (phases, options)."""

    @abstractmethod
    def start_migration(
        self,
        ref: str,
        dest: str,
        strategy: str,
        rules: Sequence[Rule] | None,
        on_event: Callable[[UiEvent], None],
    ) -> MigrationHandle:
        """Start a migration and return promptly with a handle to abort it.

        Events arrive on ``on_event`` from any thread and end with one :class:`Done`.
        """

    @abstractmethod
    def history(self) -> list[HistoryEntry]:
        """Past migrations from the journal, newest first."""

    @abstractmethod
    def read_log(self, path: str) -> list[str]:
        """The lines of a CRIU log."""

    def explain(self, line: str) -> str | None:
        """Explanation for a CRIU log line, from ``ctconsole.criu.errors`` when present."""
        try:
            from ctconsole.criu.errors import explain  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            return _fallback_explain(line)
        try:
            res = explain(line)
        except Exception:
            return None
        return res if res is not None else _fallback_explain(line)

    def close(self) -> None:  # noqa: B027 - optional hook: most backends hold nothing open
        """Release what the backend holds open (agent channels); called when the console exits."""

    def default_log(self) -> str:
        """The log the troubleshooting screen opens first ("" when none)."""
        entries = self.history()
        return entries[0].log_path if entries else ""


_FALLBACK = (
    ("External socket", "A socket is connected outside the container: add an external unix-socket rule."),
    ("tty", "A terminal is shared with the host: add a tty rule (inherit_fd) or use shell_job."),
    ("mnt", "A mount has no known source on restore: add an external mount rule."),
    ("Can't dump ghost", "A deleted file is too large: raise ghost_limit or close the file."),
    ("veth", "The network interface could not be recreated: add a veth rule naming the outside end."),
    ("Connection refused", "The page server or agent on the destination is not reachable."),
)


def _fallback_explain(line: str) -> str | None:
    """A few built-in explanations, used until ``ctconsole.criu.errors`` lands."""
    if "Error" not in line:
        return None
    for needle, text in _FALLBACK:
        if needle.lower() in line.lower():
            return text
    return None


# ---------------------------------------------------------------- real core
def _core(modname: str, what: str) -> ModuleType:
    """Import a core module or raise a CtError saying which part is missing."""
    try:
        return importlib.import_module(modname)
    except ImportError as exc:
        raise CtError(
            f"{what} is not available in this build ({modname}: {exc})",
            ["This part of ctconsole is still being built; the console works with what is there."],
        ) from exc


def _first(mod: ModuleType, names: Iterable[str], what: str) -> Callable[..., Any]:
    """The first of ``names`` that ``mod`` defines (the core's API may still be settling)."""
    for n in names:
        fn = getattr(mod, n, None)
        if callable(fn):
            return fn
    raise CtError(f"{what}: {mod.__name__} has none of {', '.join(names)}")


class RealBackend(Backend):
    """Calls the core modules; each one imported on first use.

    Core entry points used (all looked up by name so a renamed function gives a
    clear message instead of an ImportError at start-up):

    - ``ctconsole.inventory``: ``scan(full=True)``, ``resolve(ref)``, ``detail(container)``
    - ``ctconsole.feasibility``: ``check(container, dest=, rules=)``
    - ``ctconsole.remap``: ``KINDS``, ``load_rules(container)``, ``validate_rule(form)``,
      ``from_dicts(forms)``, ``compile_rules(ruleset, container)``, ``save_rules(container, ruleset)``
    - ``ctconsole.migrate.engine``: ``STRATEGIES``, ``MigrationRequest``, ``Migration(req, emit).run()/.abort()``,
      ``compile_options(container, req)`` for the preview
    - ``ctconsole.migrate.journal``: ``journals()``, ``summarize(path)``, ``read_records(path)``
    """

    name = "real"

    def __init__(self) -> None:
        self._cache: dict[str, Container] = {}
        self._lock = threading.Lock()
        self._remotes: dict[str, RemoteHost] = {}
        self._remote_cache: dict[str, dict[str, Container]] = {}

    def hosts(self, requested: Sequence[str]) -> list[str]:
        out = [LOCAL_HOST]
        out.extend(h for h in requested if h not in out)
        return out

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
        inv = _core("ctconsole.inventory", "the inventory")
        scan = _first(inv, ("scan",), "inventory")
        try:
            found = list(scan(full=True))  # externals are only known from a full scan
        except TypeError:
            found = list(scan())
        with self._lock:
            self._cache = {c.id: c for c in found}
        return found

    def container_detail(self, ref: str, host: str = LOCAL_HOST) -> Container:
        if self.is_remote(host):
            return self._remote_container(ref, host)  # the agent's inventory is already a full one
        inv = _core("ctconsole.inventory", "the inventory")
        with self._lock:
            known = self._cache.get(ref)
        detail = getattr(inv, "detail", None)
        if known is not None and callable(detail):
            c: Container = detail(known)
        else:
            c = _first(inv, ("resolve",), "inventory")(ref)
        with self._lock:
            self._cache[c.id] = c
        return c

    def _container(self, ref: str) -> Container:
        with self._lock:
            c = self._cache.get(ref)
        return c or self.container_detail(ref)

    # ------------------------------------------------------------ feasibility
    def check(
        self, ref: str, dest: str | None = None, rules: Sequence[Rule] | None = None, host: str = LOCAL_HOST
    ) -> Report:
        if self.is_remote(host):
            # the agent checks with that host's own rules and CRIU: ``dest``/``rules`` are the local side's
            cid = self._remote_container(ref, host).id
            return self._adapt_report(cid, self.remote(host).check(cid))
        feas = _core("ctconsole.feasibility", "the feasibility checker")
        container = self._container(ref)
        compiled = self._core_rules(rules) if rules else None
        raw = _first(feas, ("check",), "feasibility")(container, dest=dest, rules=compiled)
        report = self._adapt_report(container.id, raw)
        if not report.options.dump and not report.options.restore:
            # the checker did not say which options it would use: show what remap compiles
            with contextlib.suppress(CtError):
                report = dataclasses.replace(report, options=self.compile_rules(container.id, self.load_rules(ref)))
        return report

    def _adapt_report(self, cid: str, raw: Any) -> Report:
        kinds = {k.name for k in self.rule_kinds()}
        findings = []
        for f in _get(raw, "findings", default=()) or ():
            sev_raw = _get(f, "severity", default="info")
            sev = str(getattr(sev_raw, "value", sev_raw)).lower()
            remedy = str(_get(f, "remedy", default="") or "")
            kind = str(_get(f, "rule_kind", "kind", default="") or "")
            if kind not in kinds:
                kind = next((k for k in sorted(kinds, key=len, reverse=True) if k in remedy.split()), "")
            findings.append(
                Finding(
                    rule=str(_get(f, "rule", default="")),
                    severity=sev,
                    subject=str(_get(f, "subject", default="")),
                    message=str(_get(f, "message", default="")),
                    remedy=remedy,
                    rule_kind=kind,
                )
            )
        opts = _get(raw, "options")
        options = CriuOptions(
            dump=dict(_get(opts, "dump", default={}) or {}),
            restore=dict(_get(opts, "restore", default={}) or {}),
        )
        verdict = _get(raw, "verdict", default="unknown")
        verdict = getattr(verdict, "value", verdict)
        return Report(cid, normalise_verdict(verdict), tuple(findings), options, str(verdict))

    # ------------------------------------------------------------ rules
    def rule_kinds(self) -> tuple[RuleKind, ...]:
        try:
            remap = importlib.import_module("ctconsole.remap")
        except ImportError:
            return DEFAULT_RULE_KINDS
        kinds = getattr(remap, "KINDS", None)
        if not kinds:
            return DEFAULT_RULE_KINDS
        out = []
        for k in kinds.values() if isinstance(kinds, dict) else kinds:
            fields = tuple(
                FieldSpec(
                    str(_get(f, "name")),
                    str(_get(f, "label", "name")),
                    str(_get(f, "placeholder", "example", default="") or ""),
                    bool(_get(f, "required", default=True)),
                )
                for f in _get(k, "fields", default=()) or ()
            )
            out.append(
                RuleKind(
                    str(_get(k, "name")), str(_get(k, "title", "name")), fields, str(_get(k, "help", default="") or "")
                )
            )
        return tuple(out) or DEFAULT_RULE_KINDS

    def _remap(self) -> ModuleType:
        return _core("ctconsole.remap", "the rules engine (remap)")

    def _core_rules(self, rules: Sequence[Rule] | None) -> Any:
        """Editor rules -> the remap module's RuleSet (one block)."""
        remap = self._remap()
        build = _first(remap, ("from_dicts",), "remap")
        return build([{"kind": r.kind, **r.values} for r in rules or ()])

    def load_rules(self, ref: str) -> list[Rule]:
        remap = self._remap()
        loaded = _first(remap, ("load_rules", "load"), "remap")(self._container(ref))
        out = []
        for r in _get(loaded, "rules", default=loaded) or []:
            if isinstance(r, dict):
                d = r
            elif dataclasses.is_dataclass(r) and not isinstance(r, type):
                d = dataclasses.asdict(r)
            else:
                d = dict(vars(r))
            out.append(
                Rule(str(d.get("kind", "")), {k: "" if v is None else str(v) for k, v in d.items() if k != "kind"})
            )
        return out

    def validate_rule(self, rule: Rule) -> list[str]:
        local = _local_validate(rule, self.rule_kinds())
        if local:
            return local
        try:
            remap = importlib.import_module("ctconsole.remap")
        except ImportError:
            return []
        fn = getattr(remap, "validate_rule", None)
        if not callable(fn):
            return []
        try:
            res = fn({"kind": rule.kind, **rule.values})
        except CtError as exc:
            return [exc.message, *exc.details]
        except (ValueError, TypeError, KeyError) as exc:
            return [str(exc)]
        return [str(x) for x in res or ()]

    def compile_rules(self, ref: str, rules: Sequence[Rule]) -> CriuOptions:
        remap = self._remap()
        compiled = _first(remap, ("compile_rules", "compile"), "remap")(self._core_rules(rules), self._container(ref))
        return CriuOptions(
            dump=dict(_get(compiled, "dump", default={}) or {}),
            restore=dict(_get(compiled, "restore", default={}) or {}),
        )

    def save_rules(self, ref: str, rules: Sequence[Rule]) -> str:
        remap = self._remap()
        where = _first(remap, ("save_rules", "save"), "remap")(self._container(ref), self._core_rules(rules))
        return str(where or "the rules file")

    def suggest_rules(self, ref: str, dest: str | None = None) -> list[Rule]:
        remap = self._remap()
        suggest = _core("ctconsole.remap.suggest", "rule suggestions")
        drafts = _first(suggest, ("suggest_rules",), "remap.suggest")(self._container(ref), dest)
        to_form = _first(remap, ("rule_to_form",), "remap")
        out = []
        for d in drafts:
            rule = d[0] if isinstance(d, tuple) else d
            form = dict(to_form(rule))
            out.append(Rule(str(form.pop("kind", "")), {k: str(v) for k, v in form.items()}))
        return out

    # ------------------------------------------------------------ migration
    def _engine(self) -> ModuleType:
        return _core("ctconsole.migrate.engine", "the migration engine")

    def strategies(self) -> tuple[str, ...]:
        try:
            return tuple(self._engine().STRATEGIES)
        except (CtError, AttributeError):
            return super().strategies()

    def _rules_file(self) -> str | None:
        """The rules file the editor saves to, when it exists (the engine takes rules as a path)."""
        try:
            path = Path(_first(self._remap(), ("default_rules_path",), "remap")())
        except CtError:
            return None
        return str(path) if path.is_file() else None

    def _request(self, eng: ModuleType, container: Container, dest: str, strategy: str) -> Any:
        make = _first(eng, ("MigrationRequest",), "migrate")
        return make(ref=container.id, dest=dest, strategy=strategy, rules=self._rules_file())

    def preview_migration(self, ref: str, dest: str, strategy: str) -> list[str]:
        eng = self._engine()
        container = self._container(ref)
        req = self._request(eng, container, dest, strategy)
        dump, restore, notes = _first(eng, ("compile_options",), "migrate")(container, req)
        lines = [
            f"{container.name} ({container.runtime}, init {container.init_pid}) -> {dest}",
            f"strategy {strategy}: begin, prepare, perform, finish, confirm",
            "on failure before confirm: CRIU resumes the source (rollback)",
            *[f"note: {n}" for n in notes],
            *CriuOptions(dict(dump), dict(restore)).lines(),
        ]
        return lines

    def start_migration(
        self,
        ref: str,
        dest: str,
        strategy: str,
        rules: Sequence[Rule] | None,
        on_event: Callable[[UiEvent], None],
    ) -> MigrationHandle:
        eng = self._engine()
        container = self._container(ref)
        req = self._request(eng, container, dest, strategy)
        journal_path = ""

        def forward(ev: Any) -> None:
            ui = adapt_event(ev)
            if isinstance(ui, Done) and not ui.log_path and journal_path:
                ui = dataclasses.replace(ui, log_path=journal_path)
            if ui is not None:
                on_event(ui)

        migration = _first(eng, ("Migration",), "migrate")(req, emit=forward)
        with contextlib.suppress(Exception):
            journal_path = str(migration.journal.path)

        def run() -> None:
            try:
                migration.run()  # emits Done itself
            except CtError as exc:
                on_event(Done("failed", exc.message, errors=tuple(exc.details), log_path=journal_path))
            except Exception as exc:  # the console must get an outcome whatever happens
                on_event(Done("failed", f"{type(exc).__name__}: {exc}", log_path=journal_path))

        threading.Thread(target=run, name=f"migrate-{container.name}", daemon=True).start()
        return cast(MigrationHandle, migration)

    def history(self) -> list[HistoryEntry]:
        try:
            journal = importlib.import_module("ctconsole.migrate.journal")
        except ImportError:
            return []
        out = []
        for path in reversed(list(_first(journal, ("journals",), "journal")())):
            s = _first(journal, ("summarize",), "journal")(path)
            started = _get(s, "started", default=0) or 0
            out.append(
                HistoryEntry(
                    id=str(_get(s, "id", default=path.stem)),
                    container=str(
                        _get(s, "name", default="") or _journal_name(path) or _get(s, "container", default="")
                    ),
                    dest=str(_get(s, "dest", default="")),
                    strategy=str(_get(s, "strategy", default="")),
                    started=time.strftime("%Y-%m-%d %H:%M", time.localtime(float(started))) if started else "",
                    result=str(_get(s, "result", default="")),
                    downtime_ms=_ms(_get(s, "downtime")),
                    log_path=str(path),
                )
            )
        return out

    def read_log(self, path: str) -> list[str]:
        if path.endswith(".jsonl"):
            return self._journal_lines(Path(path))
        try:
            return Path(path).read_text(errors="replace").splitlines()
        except OSError as exc:
            raise CtError(f"cannot read log {path}: {exc.strerror}") from exc

    def _journal_lines(self, path: Path) -> list[str]:
        """A journal as log lines; error records expand to their detail lines (CRIU's Error lines)."""
        journal = _core("ctconsole.migrate.journal", "the migration journal")
        lines = []
        for rec in _first(journal, ("read_records",), "journal")(path):
            ts = time.strftime("%H:%M:%S", time.localtime(float(rec.get("ts", 0))))
            kind = rec.get("kind", "?")
            rest = {k: v for k, v in rec.items() if k not in ("ts", "kind", "details")}
            lines.append(f"{ts} {kind} " + " ".join(f"{k}={v}" for k, v in rest.items()))
            lines.extend(f"    {d}" for d in rec.get("details", []) or [])
        return lines


def _journal_name(path: Path) -> str:
    """The container's name from a journal's ``begin`` record (the summary only has its id).

    Why: ids such as ``ns-4026532184`` mean nothing in the history list; the
    name is in one of the first records, so only those are read.
    """
    import json

    try:
        with path.open() as fh:
            for _ in range(5):
                line = fh.readline()
                if not line:
                    break
                rec = json.loads(line)
                if isinstance(rec, dict) and rec.get("kind") == "begin":
                    return str(rec.get("name", "") or "")
    except (OSError, ValueError):
        pass
    return ""


class _ThreadedRun:
    """Handle for an engine call running in its own thread; aborts through the engine's handle."""

    def __init__(self) -> None:
        self.inner: MigrationHandle | None = None

    def abort(self) -> None:
        if self.inner is None:
            raise CtError(
                "this migration cannot be aborted from the console",
                ["The engine did not return an abortable handle; CRIU rolls back on failure by itself."],
            )
        self.inner.abort()


def _local_validate(rule: Rule, kinds: Sequence[RuleKind]) -> list[str]:
    """Checks any rule must pass whatever the core says: known kind, required fields present."""
    spec = next((k for k in kinds if k.name == rule.kind), None)
    if spec is None:
        return [f"unknown rule kind {rule.kind!r}"]
    return [f"{f.label} is required" for f in spec.fields if f.required and not rule.values.get(f.name, "").strip()]


def make_backend(fake: bool | None = None) -> Backend:
    """The backend the console uses: the fake one when ``CTCONSOLE_FAKE`` is set (demo, tests)."""
    import os

    if fake is None:
        fake = os.environ.get("CTCONSOLE_FAKE", "") not in ("", "0")
    if fake:
        from ctconsole.ui.fake import FakeBackend

        n = int(os.environ.get("CTCONSOLE_FAKE_N", "12") or 12)
        speed = float(os.environ.get("CTCONSOLE_FAKE_SPEED", "1") or 1)
        return FakeBackend(n_containers=n, speed=speed, real_explain=True)
    return RealBackend()
