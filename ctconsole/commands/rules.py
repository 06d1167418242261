"""``ctconsole rules validate|compile|suggest``: remap rules from the command line.

Why lazy imports: ``register`` runs for every ``ctconsole`` invocation, so it
only declares arguments; the handlers import the remap package (and the
inventory) when they run.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ctconsole.errors import CtError, UsageError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "rules",
        help="check, preview and draft remap rules (what changes on the destination)",
        description="Remap rules say what changes on the destination: veth bridges, devices, unix "
        "socket peers, consoles, mounts, LSM labels, cgroups, TCP. Format: docs/remap.md.",
    )
    sub = p.add_subparsers(dest="rules_command", metavar="ACTION")
    sub.required = True

    v = sub.add_parser("validate", help="list every problem in a rules file (never modifies it)")
    v.add_argument("file", metavar="FILE")
    v.add_argument("--no-host-checks", action="store_true",
                   help="skip checks against this host (paths exist, free VFs, MCS pairs, bridges): "
                   "use when this host is not the destination")
    v.add_argument("--json", action="store_true", help="problems as JSON")
    v.set_defaults(func=_validate)

    c = sub.add_parser("compile", help="show the exact CRIU dump/restore options the rules produce")
    c.add_argument("file", metavar="FILE")
    c.add_argument("--container", required=True, metavar="REF", help="container id, name, pid:N or tree:N")
    c.add_argument("--to", metavar="DEST", help="destination (ssh://host, netns:NAME, local)")
    c.add_argument("--json", action="store_true", help="machine-readable output")
    c.set_defaults(func=_compile)

    s = sub.add_parser("suggest", help="print a draft rules file for a container's external items")
    s.add_argument("container", metavar="REF")
    s.add_argument("--to", metavar="DEST", help="destination the draft is for")
    s.add_argument("-o", "--output", metavar="FILE", help="write to FILE (refuses to overwrite) instead of stdout")
    s.set_defaults(func=_suggest)


def _resolve_container(ref: str) -> Any:
    from ctconsole import inventory

    return inventory.resolve(ref)


def _validate(args: argparse.Namespace) -> int:
    from ctconsole.remap.validate import validate_file

    problems = validate_file(args.file, host_checks=not args.no_host_checks)
    if args.json:
        print(json.dumps({"file": args.file, "ok": not problems,
                          "problems": [{"file": p.file, "line": p.line, "rule": p.rule, "message": p.message}
                                       for p in problems]}, indent=2))
        return 1 if problems else 0
    if not problems:
        print("ok")
        return 0
    for p in problems:
        print(str(p))
    print(f"{len(problems)} problem(s)", file=sys.stderr)
    return 1


def _compile(args: argparse.Namespace) -> int:
    from ctconsole.remap.compile import compile_rules
    from ctconsole.remap.parse import load

    rs = load(args.file)  # UsageError (exit 2) with every problem when the file is broken
    container = _resolve_container(args.container)
    out = compile_rules(rs, container, args.to)
    if args.json:
        print(json.dumps(out.to_json(), indent=2))
        return 0
    print(f"# {container.name} ({container.runtime}) -> {args.to or 'local'}, rules {args.file}")
    for title, opts in (("dump", out.dump), ("restore", out.restore)):
        print(f"{title}:")
        if not opts:
            print("  (nothing)")
        for k, val in opts.items():
            if isinstance(val, list):
                print(f"  {k}:")
                for item in val:
                    print(f"    - {json.dumps(item) if not isinstance(item, str) else item}")
            else:
                print(f"  {k}: {json.dumps(val)}")
    if out.inherit:
        print("inherit_fd:")
        for i in out.inherit:
            src = f" {i.path}" if i.path else ""
            if i.mode:  # open-file: how ctconsole opens it, and bits if it creates it
                src += f" ({i.mode}" + (f", created {i.perm:04o}" if i.perm >= 0 else "") + ")"
            print(f"  - {i.key} <- {i.how}{src} (via {i.via}, line {i.line})")
    if out.setup_ns_actions:
        print("setup-namespaces:")
        for a in out.setup_ns_actions:
            vfs = "any" if a.vfs is None else ",".join(map(str, a.vfs))
            print(f"  - {a.action} {a.interface} from {a.pf} VFs {vfs}"
                  + (f" (would pick {a.preview} here)" if a.preview else "") + f" (line {a.line})")
    if out.carry:
        print("carry (copied to the destination when missing there):")
        for c in out.carry:
            print(f"  - {c.path} (mount {c.mountpoint}, line {c.line})")
    if out.notes:
        print("notes:")
        for n in out.notes:
            print(f"  - {n}")
    return 0


def _static_findings(container: Any, dest: str | None) -> list[Any]:
    """The feasibility check's findings without CRIU runs, so the draft also covers what the
    inventory does not list (an fd on a foreign mount seen only in /proc). Best effort: a
    draft without them is still useful, so a failing check only loses those rules."""
    from ctconsole.feasibility import check

    try:
        return list(check(container, dest, hosts=False).findings)
    except CtError:
        return []


def _suggest(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ctconsole.remap.store import save_text
    from ctconsole.remap.suggest import suggest, undecided

    container = _resolve_container(args.container)
    text = suggest(container, args.to, findings=_static_findings(container, args.to))
    for decision in undecided(text):  # also in the draft, as a comment above the rule
        print(f"rules suggest: {decision}", file=sys.stderr)
    if args.output:
        if Path(args.output).exists():
            raise UsageError(f"{args.output} exists; not overwriting it (edit it, or choose another name)")
        save_text(args.output, text)
        print(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    return 0
