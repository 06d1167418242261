"""Findings, options and the report: the checker's output objects.

Why frozen dataclasses with a ``to_dict``: the CLI prints them, the TUI renders
them and the migration engine sends the ``options`` to CRIU. None of them may
recompute anything, so everything they need is in here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

BLOCKER = "blocker"  # nothing ctconsole or a rule can do makes CRIU succeed
NEEDS_RULE = "needs-rule"  # a decision only the operator can make (remap rule)
AUTO = "auto"  # ctconsole sets a CRIU option itself
INFO = "info"  # worth knowing; changes nothing

SEVERITIES = (BLOCKER, NEEDS_RULE, AUTO, INFO)

FEASIBLE = "feasible"  # nothing blocks, and a trial dump (CRIU itself) confirmed it: verified
NO_KNOWN_BLOCKERS = "no-known-blockers"  # the static rules found nothing, but CRIU was not asked yet
NEEDS_RULES = "needs-rules"
INFEASIBLE = "infeasible"
#: verdicts that let a migration go ahead (the unverified one included: CRIU's dump is the final word)
GO_VERDICTS = (FEASIBLE, NO_KNOWN_BLOCKERS)


@dataclass(frozen=True)
class Finding:
    """One obstacle (or notable fact) and what removes it.

    ``dump``/``restore`` are CRIU ``criu_opts`` fragments this finding contributes
    (merged by :func:`merge_options`). ``needs`` lists option-string prefixes a
    remap rule must provide (e.g. ``socket:[123]`` for an inherit_fd key); once the
    compiled rules contain one, ``satisfied`` is True and the finding no longer
    holds the verdict back. ``needs_on`` says where the rule must provide it:
    ``""`` anywhere in the compiled options, ``"dump"`` or ``"restore"`` (the
    restore options or an inherited fd's key) only there. Why: for keys that
    are spelled the same on both sides (``file[MNT:INO]`` is the dump external
    *and* the inherit_fd key) the dump half alone is not a remedy, and the dump
    half is added by the finding itself anyway.
    """

    rule: str
    severity: str
    subject: str
    message: str
    remedy: str
    dump: dict[str, Any] = field(default_factory=dict)
    restore: dict[str, Any] = field(default_factory=dict)
    needs: tuple[str, ...] = ()
    needs_on: str = ""  # "", "dump" or "restore": which side of the compiled rules must carry a need
    rule_kind: str = ""  # remap rule kind that satisfies a needs-rule finding (unix, veth, mount...)
    satisfied: bool = False
    source: str = "static"  # static, host, trial

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "rule": self.rule,
            "severity": self.severity,
            "subject": self.subject,
            "message": self.message,
            "remedy": self.remedy,
        }
        if self.dump:
            out["dump"] = self.dump
        if self.restore:
            out["restore"] = self.restore
        if self.rule_kind:
            out["rule_kind"] = self.rule_kind
        if self.needs:
            out["needs"] = list(self.needs)
            if self.needs_on:
                out["needs_on"] = self.needs_on
            out["satisfied"] = self.satisfied
        if self.source != "static":
            out["source"] = self.source
        return out


@dataclass(frozen=True)
class CriuInfo:
    """What the probes learned about CRIU and the kernel on one host."""

    version: str = ""
    version_tuple: tuple[int, int, int] = (0, 0, 0)
    kernel: str = ""
    features: dict[str, bool] = field(default_factory=dict)
    check_ok: bool | None = None
    lazy_pages_works: bool | None = None
    dest_version: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": self.version, "kernel": self.kernel, "features": dict(self.features)}
        if self.check_ok is not None:
            out["check"] = self.check_ok
        if self.lazy_pages_works is not None:
            out["lazy_pages_works"] = self.lazy_pages_works
        if self.dest_version:
            out["dest_version"] = self.dest_version
        return out


@dataclass(frozen=True)
class TrialResult:
    """Outcome of a real leave-running dump (``--trial``)."""

    ok: bool
    elapsed: float
    errors: tuple[str, ...] = ()
    explanations: tuple[str, ...] = ()
    log_tail: tuple[str, ...] = ()
    #: the root task's parent-death signal as CRIU dumped it (0: none); /proc does not show it
    pdeath_sig: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Report:
    """The verdict and everything that justifies it."""

    container: str
    verdict: str
    findings: tuple[Finding, ...]
    criu: CriuInfo
    options: dict[str, dict[str, Any]]  # {"dump": criu_opts, "restore": criu_opts}
    dest: str = "local"
    trial: TrialResult | None = None
    elapsed: float = 0.0
    #: True only when a trial dump (``trial=True``) succeeded: the verdict is CRIU's, not a prediction.
    #: A static check never says ``feasible``, only ``no-known-blockers`` (docs/feasibility.md, "Verified").
    verified: bool = False
    #: a remote destination's answers (``RemoteProbe.summary()``): dest, reachable, version, kernel,
    #: hostname, features, checks (criu_check, cpuinfo, images, paths, links); error when unreachable
    destination: dict[str, Any] | None = None

    @property
    def dump_options(self) -> dict[str, Any]:
        return self.options.get("dump", {})

    @property
    def restore_options(self) -> dict[str, Any]:
        return self.options.get("restore", {})

    @property
    def feasible(self) -> bool:
        """CRIU confirmed it (a trial dump succeeded and nothing else blocks)."""
        return self.verdict == FEASIBLE

    @property
    def go(self) -> bool:
        """Nothing known blocks it: ``feasible``, or ``no-known-blockers`` not yet confirmed by a trial."""
        return self.verdict in GO_VERDICTS

    def by_severity(self, severity: str) -> list[Finding]:
        return [f for f in self.findings if f.severity == severity]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "container": self.container,
            "dest": self.dest,
            "verdict": self.verdict,
            "verified": self.verified,
            "findings": [f.to_dict() for f in self.findings],
            "criu": self.criu.to_dict(),
            "options": {"dump": self.dump_options, "restore": self.restore_options},
            "elapsed": round(self.elapsed, 4),
        }
        if self.trial is not None:
            out["trial"] = self.trial.to_dict()
        if self.destination is not None:
            out["destination"] = self.destination
        return out

    @classmethod
    def from_dict(cls, data: Any) -> Report:
        """The inverse of :meth:`to_dict`, for a report another host's agent computed (``--host``).

        Why defensive: the JSON comes from a peer, so every field is type-checked and defaulted;
        unknown keys are ignored, and a verdict outside the four words reads as ``infeasible``
        (never a better answer than the peer can back). ``verified`` holds only with a trial
        that says ok.
        """
        d = data if isinstance(data, dict) else {}

        def text(v: Any) -> str:
            return v if isinstance(v, str) else ""

        def opts(v: Any) -> dict[str, Any]:
            return dict(v) if isinstance(v, dict) else {}

        findings = []
        for f in d.get("findings") or []:
            if not isinstance(f, dict):
                continue
            needs = f.get("needs")
            findings.append(
                Finding(
                    rule=text(f.get("rule")),
                    severity=f["severity"] if f.get("severity") in SEVERITIES else INFO,
                    subject=text(f.get("subject")),
                    message=text(f.get("message")),
                    remedy=text(f.get("remedy")),
                    dump=opts(f.get("dump")),
                    restore=opts(f.get("restore")),
                    needs=tuple(x for x in needs if isinstance(x, str)) if isinstance(needs, list) else (),
                    needs_on=text(f.get("needs_on")),
                    rule_kind=text(f.get("rule_kind")),
                    satisfied=f.get("satisfied") is True,
                    source=text(f.get("source")) or "static",
                )
            )
        c = opts(d.get("criu"))
        feats = opts(c.get("features"))
        criu = CriuInfo(
            version=text(c.get("version")),
            kernel=text(c.get("kernel")),
            features={str(k): v is True for k, v in feats.items()},
            check_ok=c["check"] if isinstance(c.get("check"), bool) else None,
            lazy_pages_works=c["lazy_pages_works"] if isinstance(c.get("lazy_pages_works"), bool) else None,
            dest_version=text(c.get("dest_version")),
        )
        trial = None
        t = d.get("trial")
        if isinstance(t, dict):
            def strs(v: Any) -> tuple[str, ...]:
                return tuple(x for x in v if isinstance(x, str)) if isinstance(v, list) else ()

            el = t.get("elapsed")
            pd = t.get("pdeath_sig")
            trial = TrialResult(
                ok=t.get("ok") is True,
                elapsed=float(el) if isinstance(el, int | float) else 0.0,
                errors=strs(t.get("errors")),
                explanations=strs(t.get("explanations")),
                log_tail=strs(t.get("log_tail")),
                pdeath_sig=pd if isinstance(pd, int) else 0,
            )
        verdict = text(d.get("verdict"))
        if verdict not in (FEASIBLE, NO_KNOWN_BLOCKERS, NEEDS_RULES, INFEASIBLE):
            verdict = INFEASIBLE
        verified = d.get("verified") is True and trial is not None and trial.ok
        if verdict == FEASIBLE and not verified:
            verdict = NO_KNOWN_BLOCKERS  # "feasible" is only ever a trial's word
        o = opts(d.get("options"))
        el = d.get("elapsed")
        dest_info = d.get("destination")
        return cls(
            container=text(d.get("container")),
            verdict=verdict,
            findings=tuple(findings),
            criu=criu,
            options={"dump": opts(o.get("dump")), "restore": opts(o.get("restore"))},
            dest=text(d.get("dest")) or "local",
            trial=trial,
            elapsed=float(el) if isinstance(el, int | float) else 0.0,
            destination=dict(dest_info) if isinstance(dest_info, dict) else None,
            verified=verified,
        )


def merge_options(into: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Merge one criu_opts fragment into another (in place, returned).

    Why these semantics: lists (``external``, ``inherit_fd``...) accumulate
    without duplicates, ``ghost_limit`` takes the maximum (one limit must fit the
    largest ghost), booleans are OR-ed and anything else is last-writer-wins.
    """
    for key, value in extra.items():
        old = into.get(key)
        if isinstance(value, list | tuple):
            merged = list(old) if isinstance(old, list | tuple) else []
            for v in value:
                if v not in merged:
                    merged.append(v)
            into[key] = merged
        elif key == "ghost_limit" and isinstance(old, int):
            into[key] = max(old, int(value))
        elif isinstance(value, bool) and isinstance(old, bool):
            into[key] = old or value
        else:
            into[key] = value
    return into


def satisfies(needs: tuple[str, ...], needs_on: str, provided: dict[str, list[str]]) -> bool:
    """Whether compiled rules provide one of ``needs`` (prefixes) on the side ``needs_on`` asks for.

    ``provided`` maps ``"dump"``/``"restore"`` to every option string of that
    side (restore includes inherited-fd keys); ``needs_on=""`` accepts either.
    """
    sides = (needs_on,) if needs_on else tuple(provided)
    return any(p.startswith(n) for side in sides for p in provided.get(side, ()) for n in needs)


def verdict_of(findings: list[Finding] | tuple[Finding, ...], verified: bool = False) -> str:
    """infeasible if any blocker; needs-rules if an unsatisfied needs-rule; else feasible when
    ``verified`` (a trial dump succeeded), no-known-blockers when only the static rules spoke."""
    if any(f.severity == BLOCKER for f in findings):
        return INFEASIBLE
    if any(f.severity == NEEDS_RULE and not f.satisfied for f in findings):
        return NEEDS_RULES
    return FEASIBLE if verified else NO_KNOWN_BLOCKERS
