"""``ctconsole check REF``: can this container be checkpointed, and with which CRIU options?

Why: answers before anything is frozen. Exit 0 = feasible, 1 = needs rules or
infeasible, 2 = bad usage or unknown REF. ``register`` only declares the
arguments; the handler imports the inventory and checker when it runs.

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
VERDICT_TEXT = {
    "feasible": "FEASIBLE: CRIU will succeed with the options below.",
    "needs-rules": "NEEDS RULES: add remap rules for the items below (ctconsole rules suggest REF).",
    "infeasible": "INFEASIBLE: CRIU cannot checkpoint this container as it is.",
}


def register(sub: Any) -> None:
    p = sub.add_parser(
        "check",
        help="check whether a container can be checkpointed (and how)",
        description="Explain every obstacle to checkpointing REF with CRIU before anything is frozen, "
        "and print the CRIU dump and restore options ctconsole would use. Exit status: 0 feasible, "
        "1 needs rules or infeasible (an unreachable destination included), 2 bad usage or unknown REF.",
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
        help="also do a real leave-running dump into a private temp dir (removed afterwards)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    from ctconsole import inventory
    from ctconsole.feasibility import check

    container = inventory.resolve(args.ref)
    report = check(container, dest=args.dest, rules=args.rules, trial=args.trial)
    if args.json:
        json.dump(report.to_dict(), sys.stdout, indent=2, sort_keys=False)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render(report, container_name=f"{container.name} ({container.runtime})"))
    return 0 if report.feasible else 1


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
