"""Feasibility check: can CRIU checkpoint this container, and with which options?

Why before anything is frozen: operators used to learn it from a CRIU log after
a failed dump. :func:`check` runs the static rules over the inventory
(:mod:`ctconsole.feasibility.checks`), the CRIU/kernel checks on source and
destination (:mod:`.host`), optionally a real leave-running trial dump
(:mod:`.trial`), merges the operator's remap rules, and returns a
:class:`Report` with a verdict and the exact CRIU dump/restore options.

Public API::

    from ctconsole.feasibility import check, Report, Finding
    report = check(container, dest=None, rules=None, trial=False)
    report.verdict            # "feasible" | "no-known-blockers" | "needs-rules" | "infeasible"
    report.verified           # True only when a trial dump confirmed it (then "feasible")
    report.options["dump"]    # criu_opts dict for ctconsole.criu.client
    report.to_dict()          # JSON-ready
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

from ctconsole.agent.channel import parse_destination
from ctconsole.agent.connect import Unreachable, unreachable_hints
from ctconsole.errors import CtError, UsageError
from ctconsole.feasibility.catalogue import CATALOGUE, Context, HostFacts, describe, run_all
from ctconsole.feasibility.findings import (
    AUTO,
    BLOCKER,
    FEASIBLE,
    GO_VERDICTS,
    INFEASIBLE,
    INFO,
    NEEDS_RULE,
    NEEDS_RULES,
    NO_KNOWN_BLOCKERS,
    CriuInfo,
    Finding,
    Report,
    TrialResult,
    merge_options,
    satisfies,
    verdict_of,
)
from ctconsole.model import Container
from ctconsole.remap.compile import CompiledOptions
from ctconsole.remap.compile import compile_rules as compile_remap
from ctconsole.remap.parse import load as load_rules

__all__ = [
    "AUTO",
    "BLOCKER",
    "CATALOGUE",
    "FEASIBLE",
    "GO_VERDICTS",
    "INFEASIBLE",
    "INFO",
    "NEEDS_RULE",
    "NEEDS_RULES",
    "NO_KNOWN_BLOCKERS",
    "CriuInfo",
    "Finding",
    "Report",
    "TrialResult",
    "check",
    "compile_rules",
    "describe",
    "static_findings",
]

SEVERITY_ORDER = {BLOCKER: 0, NEEDS_RULE: 1, AUTO: 2, INFO: 3}


def _flatten(obj: Any, out: list[str]) -> list[str]:
    """Every string (and dict key) inside compiled rules, to test needs-rule keys against."""
    if isinstance(obj, str):
        out.append(obj)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.append(str(k))
            _flatten(v, out)
    elif isinstance(obj, list | tuple | set):
        for v in obj:
            _flatten(v, out)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            _flatten(getattr(obj, f.name), out)
    return out


def compile_rules(rules: Any, container: Container, dest: str | None) -> Any:
    """The one compile of remap rules for ``container`` going to ``dest`` (``None``/``"local"`` = here).

    Accepts a rules file path, a remap RuleSet, or already compiled options
    (returned as they are): the migration engine compiles once, with its
    destination, and hands the result to :func:`check`, so the check judges
    exactly the options the migration sends (``to = DEST`` selectors included).
    """
    if rules is None:
        return None
    if isinstance(rules, CompiledOptions):
        return rules
    if isinstance(rules, dict) and ("dump" in rules or "restore" in rules):
        return rules
    if isinstance(rules, str | Path):
        path = Path(rules)
        if not path.exists():
            raise UsageError(f"rules file {path} does not exist")
        rules = load_rules(path)
    return compile_remap(rules, container, dest)


def _part(compiled: Any, name: str) -> dict[str, Any]:
    val = compiled.get(name, {}) if isinstance(compiled, dict) else getattr(compiled, name, {})
    return dict(val or {})


def _inherit_keys(compiled: Any) -> list[str]:
    """The inherit_fd keys compiled rules supply, in any of the shapes ``check`` accepts:
    ``CompiledOptions.inherit`` (InheritSpec with ``via="inherit_fd"``), its JSON form
    (``"inherit_fd"`` at the top) or a restore ``inherit_fd`` list of ``{"key": ...}``.
    Only the keys: free text next to them (paths, why) must not satisfy a need."""
    items: list[Any] = []
    if isinstance(compiled, dict):
        items += list(compiled.get("inherit_fd") or []) + list(compiled.get("inherit") or [])
    else:
        items += list(getattr(compiled, "inherit", None) or [])
    items += list(_part(compiled, "restore").get("inherit_fd") or [])
    keys: list[str] = []
    for item in items:
        key = item.get("key") if isinstance(item, dict) else getattr(item, "key", None)
        via = item.get("via", "inherit_fd") if isinstance(item, dict) else getattr(item, "via", "inherit_fd")
        if isinstance(key, str) and via == "inherit_fd":
            keys.append(key)
    return keys


def _inherit_specs(compiled: Any) -> list[tuple[str, str, str, str]]:
    """``(key, how, path, mode)`` of every fd the destination must open for the restore
    (``via="inherit_fd"``), from a CompiledOptions or its JSON form: the unix rule's
    socket and the file rule's file live on the destination and are checked there."""
    items: list[Any] = []
    if isinstance(compiled, dict):
        items += list(compiled.get("inherit_fd") or []) + list(compiled.get("inherit") or [])
    else:
        items += list(getattr(compiled, "inherit", None) or [])
    out = []
    for item in items:
        get = item.get if isinstance(item, dict) else (lambda k, d="", _i=item: getattr(_i, k, d))
        if get("via", "inherit_fd") == "inherit_fd" and isinstance(get("path", ""), str):
            out.append((str(get("key", "")), str(get("how", "")), str(get("path", "")), str(get("mode", "") or "")))
    return out


def provided_by(compiled: Any) -> dict[str, list[str]]:
    """Every option string compiled rules provide, per side (restore includes inherit_fd keys)."""
    restore = {k: v for k, v in _part(compiled, "restore").items() if k != "inherit_fd"}
    return {
        "dump": _flatten(_part(compiled, "dump"), []),
        "restore": _flatten(restore, []) + _inherit_keys(compiled),
    }


def static_findings(container: Container, ctx: Context | None = None) -> list[Finding]:
    """Only the static rules (no CRIU runs): what the benchmark and unit tests time."""
    return run_all(ctx or Context(container))


def _sorted(findings: list[Finding]) -> tuple[Finding, ...]:
    return tuple(sorted(findings, key=lambda f: (SEVERITY_ORDER.get(f.severity, 9), f.rule, f.subject)))


# CRIU error families (ctconsole.criu.errors rule ids) -> the static rules that predict them
_TRIAL_COVERS = {
    "unix-external": {"unix-stream-external", "unix-dgram-external"},
    "unix-stream-external": {"unix-stream-external"},
    "unix-dgram-external": {"unix-dgram-external"},
    "unsupported-fd": {"unsupported-fd", "device"},
    "traced": {"traced", "vfork"},
    "tty-external-master": {"tty-external-master"},
    "bind-mount-external": {"bind-mount-external", "fuse-mount"},
    "mount-fstype": {"mount-fstype", "fuse-mount"},
    "external-file": {"external-file"},
}


def _reconcile(static: list[Finding], trial: list[Finding]) -> list[Finding]:
    """A trial error that a pending needs-rule finding already predicts is not a new blocker:
    the dump failed only because the operator's rule is missing. Anything else stays a
    blocker (the static rules missed it, and CRIU is the judge)."""
    pending = {f.rule for f in static if f.severity == NEEDS_RULE and not f.satisfied}
    out = []
    for f in trial:
        fam = f.rule.split(":", 1)[1]
        if _TRIAL_COVERS.get(fam, {fam}) & pending:
            f = dataclasses.replace(f, severity=INFO, remedy="Confirms the needs-rule finding: " + f.remedy)
        out.append(f)
    return out


def check(
    container: Container,
    dest: str | None = None,
    rules: Any = None,
    trial: bool = False,
    probe: Any = None,
    dest_probe: Any = None,
    hosts: bool = True,
    use_rpc: bool = True,
) -> Report:
    """Check ``container`` for a checkpoint to ``dest`` (``None``/``"local"`` = this host).

    ``rules``: a rules file path, a remap RuleSet or compiled options; rules that
    provide what a needs-rule finding asks for satisfy it, and their options are
    merged (they win over ctconsole's own, e.g. tcp_close over tcp_established).
    ``trial``: also run a real leave-running dump (root only). ``hosts=False``
    skips the CRIU/kernel probes (pure static check), the destination included.

    A remote ``dest`` (``netns:NAME``, ``ssh://...``) is asked through its agent
    (:class:`~ctconsole.feasibility.remote.RemoteProbe`); the resources the rules
    name (bridges, mount paths, sockets) are looked up there, and the answers
    land in ``report.destination``. An unreachable destination is a
    ``destination-unreachable`` blocker, not an exception: the answer to
    "can it move there?" is no. A malformed ``dest`` raises UsageError.
    """
    from ctconsole.feasibility.host import probe_for

    same_host = dest in (None, "", "local")
    src = probe
    if src is None and hosts:
        src = probe_for(None)
    own_dst: Any = None
    if dest_probe is not None:
        dst = dest_probe
    elif same_host:
        dst = src
    elif hosts:
        dst = own_dst = probe_for(dest)  # an agent session: closed below
    else:
        dst = None
    try:
        return _check(container, dest, rules, trial, src, dst, hosts, use_rpc, same_host)
    finally:
        close = getattr(own_dst, "close", None)
        if callable(close):
            close()


def policy_asks(compiled: Any) -> tuple[list[Any], list[Any]]:
    """The inherited fds (with perm) and setup-namespaces actions the destination's policy must allow."""
    from ctconsole.proto import agent_pb2

    inherit = [agent_pb2.InheritFd(key=i.key, how=i.how, path=i.path, mode=i.mode or "append", perm=i.perm)
               for i in getattr(compiled, "inherit", None) or []
               if getattr(i, "via", "inherit_fd") == "inherit_fd" and i.how in ("open-file", "connect-unix")]
    setup_ns = [agent_pb2.SetupNsAction(action=a.action, interface=a.interface, pf=a.pf)
                for a in getattr(compiled, "setup_ns_actions", None) or []]
    return inherit, setup_ns


def policy_findings(refusals: list[tuple[str, str]], dest: str) -> list[Finding]:
    """One blocker per refusal, naming the policy key that refused (docs/security.md)."""
    return [Finding("dest-policy", BLOCKER, f"destination:{dest}", message,
                    f"change the rules, or the destination's /etc/ctconsole/agent.toml ({key}); "
                    "`ctconsole doctor` there prints the policy in force", source="host")
            for key, message in refusals]


def _unreachable(dest: str, exc: CtError) -> Finding:
    """The finding for a destination whose agent could not be started or stopped answering."""
    reasons = exc.reasons if isinstance(exc, Unreachable) else [exc.message, *exc.details]
    extra = [d for d in reasons[1:] if d.strip()][-3:]
    msg = reasons[0] + (": " + " / ".join(extra) if extra else "")
    remedy = " ".join(unreachable_hints(parse_destination(dest)))
    return Finding(
        "destination-unreachable",
        BLOCKER,
        f"destination:{dest}",
        f"destination unreachable: {msg}",
        remedy,
        source="host",
    )


def _check(
    container: Container,
    dest: str | None,
    rules: Any,
    trial: bool,
    src: Any,
    dst: Any,
    hosts: bool,
    use_rpc: bool,
    same_host: bool,
) -> Report:
    from ctconsole.feasibility.host import (
        dest_subject,
        destination_needs,
        inherit_kind_checks,
        kernel_tuple,
        resource_checks,
    )

    t0 = time.monotonic()
    unreachable: Finding | None = None
    if hosts and not same_host and dst is not None and callable(getattr(dst, "connect", None)):
        try:
            dst.connect()
        except CtError as exc:
            unreachable = _unreachable(str(dest), exc)
    local = os.path.exists(f"/proc/{container.init_pid}") if container.init_pid else False
    facts = HostFacts()
    if local:
        from ctconsole.feasibility.facts import gather

        facts = gather(container)
    findings: list[Finding] = []
    criu = CriuInfo()
    if hosts and src is not None:
        from ctconsole.feasibility.host import host_checks

        try:
            criu, host_findings = host_checks(container, src, None if unreachable else dst, facts, same_host)
        except CtError as exc:  # the destination's agent died half-way: the source's answers stay
            if same_host:
                raise
            unreachable = _unreachable(str(dest), exc)
            criu, host_findings = host_checks(container, src, None, facts, same_host)
        findings.extend(host_findings)
    ver = criu.version_tuple if criu.version_tuple != (0, 0, 0) else (4, 2, 1)
    kern = kernel_tuple(criu.kernel or os.uname().release)
    ctx = Context(container, criu_version=ver, kernel=kern, facts=facts, dest_local=same_host)
    findings.extend(run_all(ctx))
    if dest and not same_host:  # needs only the destination's kind: also in migrate's own check (hosts=False)
        from ctconsole.feasibility.conflicts import shared_locks

        findings.extend(shared_locks(container, str(dest), f"destination:{dest}"))

    # ctconsole's own options: everything the static findings contribute
    dump: dict[str, Any] = {"pid": container.init_pid}
    restore: dict[str, Any] = {}
    if container.has_own("mnt") and container.root_path:
        restore["root"] = container.root_path
    for f in findings:
        merge_options(dump, f.dump)
        merge_options(restore, f.restore)

    compiled = compile_rules(rules, container, dest)
    if compiled is not None:
        provided = provided_by(compiled)
        findings = [
            dataclasses.replace(f, satisfied=True) if f.needs and satisfies(f.needs, f.needs_on, provided) else f
            for f in findings
        ]
        for target, part in ((dump, _part(compiled, "dump")), (restore, _part(compiled, "restore"))):
            if part.get("tcp_close"):
                target.pop("tcp_established", None)
            merge_options(target, part)
        if hosts and dst is not None and unreachable is None:
            needs = destination_needs(_part(compiled, "restore"), _inherit_specs(compiled))
            try:
                findings.extend(resource_checks(needs, dst, dest_subject(dst, same_host)))
                findings.extend(inherit_kind_checks(container, _inherit_specs(compiled), dst,
                                                    dest_subject(dst, same_host)))
            except CtError as exc:
                if same_host:
                    raise
                unreachable = _unreachable(str(dest), exc)
    if hosts and not same_host and dst is not None and unreachable is None:
        from ctconsole.feasibility.conflicts import destination_conflicts

        try:  # names, pids, ports and cgroups already taken there: found before the freeze
            findings.extend(destination_conflicts(container, restore, dst, str(dest), dest_subject(dst, same_host)))
        except CtError as exc:
            unreachable = _unreachable(str(dest), exc)
        policy_refusals = getattr(dst, "policy_refusals", None)
        if callable(policy_refusals) and unreachable is None:
            try:  # the destination's own policy on this restore (agent/policy.py): refused before the freeze
                findings.extend(policy_findings(policy_refusals(restore, *policy_asks(compiled)), str(dest)))
            except CtError as exc:
                unreachable = _unreachable(str(dest), exc)
    if unreachable is not None:
        findings.append(unreachable)
    destination: dict[str, Any] | None = None
    if hosts and not same_host:
        summary = getattr(dst, "summary", None)
        destination = summary() if callable(summary) else {"dest": dest, "reachable": unreachable is None}
        if unreachable is not None:
            destination["reachable"] = False
            destination["error"] = unreachable.message.removeprefix("destination unreachable: ")

    trial_result: TrialResult | None = None
    if trial:
        from ctconsole.feasibility.trial import trial_dump, trial_findings

        trial_result = trial_dump(container.init_pid, {k: v for k, v in dump.items() if k != "pid"}, use_rpc)
        findings.extend(_reconcile(findings, trial_findings(trial_result)))

    verified = trial_result is not None and trial_result.ok
    return Report(
        container=container.id or container.name,
        verdict=verdict_of(findings, verified),
        verified=verified,
        findings=_sorted(findings),
        criu=criu,
        options={"dump": dump, "restore": restore},
        dest=dest or "local",
        trial=trial_result,
        destination=destination,
        elapsed=time.monotonic() - t0,
    )
