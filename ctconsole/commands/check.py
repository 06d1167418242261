"""``ctconsole check REF``: can this container be checkpointed, and with which CRIU options?

Why: answers before anything is frozen. By default only the static rules
speak, so the best answer is ``no-known-blockers`` (unverified, exit 3): the
promise is "before anything is frozen", and a trial dump freezes the
container. ``--trial`` asks CRIU itself (a leave-running dump); only then can
the verdict be ``feasible`` (exit 0, ``"verified": true`` in the JSON).
Exit 1 = needs rules or infeasible, 2 = bad usage or unknown REF.
``register`` only declares the arguments; the handler imports the inventory
and checker when it runs.

``--to netns:NAME`` / ``ssh://...`` asks the destination through the migration
agent. A destination that cannot be reached is exit 1 with the verdict
``infeasible`` and a ``destination-unreachable`` finding (the honest answer to
"can it move there?" is no, and scripts get the reason in the JSON); only a
*malformed* DEST is bad usage (exit 2).
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ctconsole.feasibility import Report

WIDTH = 80
HEADINGS = (
    ("blocker", "BLOCKERS (CRIU will refuse)"),
    ("needs-rule", "NEEDS A RULE (your decision)"),
    ("auto", "HANDLED BY CTCONSOLE (options set automatically)"),
    ("info", "INFO"),
)
#: exit status per verdict (2 is bad usage)
EXIT = {"feasible": 0, "needs-rules": 1, "infeasible": 1, "no-known-blockers": 3}
VERDICT_TEXT = {
    "feasible": "FEASIBLE (verified: a trial dump succeeded with the options below).",
    "no-known-blockers": "NO KNOWN BLOCKERS (unverified): the rules found nothing CRIU refuses; "
    "--trial has CRIU confirm it (a trial dump freezes the container briefly).",
    "needs-rules": "NEEDS RULES: add remap rules for the items below (ctconsole rules suggest REF).",
    "infeasible": "INFEASIBLE: CRIU cannot checkpoint this container as it is.",
}


def register(sub: Any) -> None:
    p = sub.add_parser(
        "check",
        help="check whether a container can be checkpointed (and how)",
        description="Explain every obstacle to checkpointing REF with CRIU before anything is frozen, "
        "and print the CRIU dump and restore options ctconsole would use. Exit status: 0 feasible "
        "(verified by --trial), 3 no known blockers (static rules only, unverified), 1 needs rules or "
        "infeasible (an unreachable destination included), 2 bad usage or unknown REF.",
    )
    p.add_argument("ref", metavar="REF", help="container id, name, pid:N or tree:N")
    p.add_argument(
        "--to",
        dest="dest",
        default="local",
        metavar="DEST",
        help="destination: local (default), netns:NAME or ssh://[user@]host[:port]; "
        "a remote one is checked through the migration agent",
    )
    p.add_argument("--rules", metavar="FILE", help="remap rules file whose rules satisfy needs-rule findings")
    p.add_argument(
        "--trial",
        action="store_true",
        help="also do a real leave-running dump into a private temp dir (removed afterwards): the only "
        "way to a verified 'feasible'; it freezes the container for the dump",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    from ctconsole import inventory
    from ctconsole.feasibility import check
    from ctconsole.feasibility.host import probe_for
    from ctconsole.feasibility.remote import RemoteProbe

    container = inventory.resolve(args.ref)
    remote = args.dest not in (None, "", "local")
    probe = probe_for(args.dest) if remote else None
    try:
        report = check(container, dest=args.dest, rules=args.rules, trial=args.trial, dest_probe=probe)
        if isinstance(probe, RemoteProbe) and report.destination and report.destination.get("reachable"):
            report = with_storage(report, container, args.dest, args.rules, probe)
    finally:
        if isinstance(probe, RemoteProbe):
            probe.close()
    if args.json:
        json.dump(report.to_dict(), sys.stdout, indent=2, sort_keys=False)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render(report, container_name=f"{container.name} ({container.runtime})"))
    return EXIT.get(report.verdict, 1)


def with_storage(report: Report, container: Any, dest: str, rules: Any, probe: Any) -> Report:
    """Add what the container's storage would need on the destination (migrate/storage.py, a dry
    run there: nothing is created): its root (own mount namespace) and the mount sources rules
    mark ``carry``. Not enough room there is a blocker; what would be carried is info. Here and
    not in ``feasibility`` because storage belongs to the migration layer above it."""
    import dataclasses

    from ctconsole.errors import CtError
    from ctconsole.feasibility import compile_rules, policy_asks, policy_findings
    from ctconsole.feasibility.findings import BLOCKER, INFO, Finding, verdict_of
    from ctconsole.migrate import storage
    from ctconsole.remap.compile import CompiledOptions

    root = container.root_path if container.has_own("mnt") else ""
    compiled = compile_rules(rules, container, dest) if rules else None
    carry = compiled.carry_paths() if isinstance(compiled, CompiledOptions) else []
    if not storage.items_for(root, carry):
        return report
    subject = f"destination:{dest}"
    try:
        plan = storage.preview(probe.channel, root, carry)
    except CtError as exc:
        found = [Finding("dest-storage", INFO, subject, f"The destination could not say where the container's "
                         f"storage would go: {exc.message}", "Nothing to do for a shared filesystem; otherwise "
                         "update ctconsole on the destination.", source="host")]
        info: dict[str, Any] = {"error": exc.message}
    else:
        found = [Finding("dest-storage", BLOCKER, subject, p, "Free space on the destination, or keep the storage "
                         "on a filesystem both hosts share (--storage shared).", source="host") for p in plan.problems]
        found += [Finding("dest-storage", INFO, subject, line, "Nothing to do.", source="host")
                  for line in plan.summary()]
        info = {"carried_bytes": plan.carried_bytes, "free_bytes": plan.free_bytes, "problems": list(plan.problems),
                "summary": plan.summary()}
        if plan.carried and any(f.rule == "dest-policy" for f in report.findings):
            # the policy judged the source's paths; the migration restores from where the destination
            # puts the carried copy (as the engine asks it, after the carry): judge those instead
            kept = [f for f in report.findings if f.rule != "dest-policy"]
            restore = storage.rewrite_restore_opts(report.restore_options, plan.items, plan.targets)
            refusals = probe.policy_refusals(restore, *policy_asks(compiled))
            report = dataclasses.replace(report, findings=(*kept, *policy_findings(refusals, dest)))
    findings = (*report.findings, *found)
    destination = dict(report.destination or {})
    destination["storage"] = info
    return dataclasses.replace(report, findings=findings, verdict=verdict_of(findings, report.verified),
                               destination=destination)


def _wrap(text: str, indent: str) -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent=indent, subsequent_indent=indent) or [indent]


def _opts_lines(title: str, opts: dict[str, Any]) -> list[str]:
    lines = [f"{title}:"]
    if not opts:
        return [*lines, "  (none)"]
    for k, v in opts.items():
        if isinstance(v, list):
            for item in v:
                lines.extend(_wrap(f"{k} = {json.dumps(item) if not isinstance(item, str) else item}", "  "))
        else:
            lines.extend(_wrap(f"{k} = {v}", "  "))
    return lines


def render(report: Report, container_name: str = "") -> str:
    """Human output grouped by severity, 80 columns."""
    out: list[str] = []
    crit = report.criu
    head = f"Container {container_name or report.container} -> {report.dest}"
    out.extend(_wrap(head, ""))
    if crit.version:
        feats = ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in crit.features.items())
        out.extend(_wrap(f"CRIU {crit.version} on kernel {crit.kernel}; {feats}", ""))
    dst = report.destination
    if dst is not None:
        if dst.get("reachable") and dst.get("version") is not None:
            feats = ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in (dst.get("features") or {}).items())
            host = f" ({dst['hostname']})" if dst.get("hostname") else ""
            out.extend(
                _wrap(
                    f"Destination {dst.get('dest')}{host}: CRIU {dst.get('version') or 'missing'} "
                    f"on kernel {dst.get('kernel')}; {feats}",
                    "",
                )
            )
        else:
            out.extend(_wrap(f"Destination {dst.get('dest')}: UNREACHABLE", ""))
    out.append("")
    out.extend(_wrap(VERDICT_TEXT.get(report.verdict, report.verdict), ""))
    for sev, title in HEADINGS:
        items = report.by_severity(sev)
        if not items:
            continue
        out.append("")
        out.append(f"{title} [{len(items)}]")
        for f in items:
            mark = " (satisfied by your rules)" if f.satisfied else ""
            first, *rest = textwrap.wrap(f"{f.subject}: {f.message}{mark}", WIDTH - 4) or [""]
            out.append(f"  - {first}")
            out.extend(_wrap(" ".join(rest), "    ") if rest else [])
            out.extend(_wrap(f"fix: {f.remedy}", "    "))
            out.append(f"    [{f.rule}]")
    if report.trial is not None:
        out.append("")
        t = report.trial
        out.append(f"TRIAL DUMP: {'succeeded' if t.ok else 'FAILED'} in {t.elapsed:.2f} s")
        for line in t.explanations:
            out.extend(_wrap(f"- {line}", "  "))
    out.append("")
    out.extend(_opts_lines("CRIU dump options", report.dump_options))
    out.extend(_opts_lines("CRIU restore options", report.restore_options))
    return "\n".join(out) + "\n"
