"""``ctconsole doctor``: what this host's CRIU and kernel can and cannot do."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "doctor",
        help="report CRIU, kernel and feature support on this host",
        description="Probe the local CRIU (version, FEATURE_CHECK, `criu check`, CLI feature checks, "
        "the lazy-pages self-test) and list host quirks. Exit 0 when CRIU is usable.",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--selftest", choices=["cached", "run", "skip"], default="cached",
                   help="lazy-pages self-test: use the cached result (default; runs it once if none), "
                   "run it again, or skip it")
    p.set_defaults(func=run)


def _yn(v: bool | None) -> str:
    return {True: "yes", False: "no", None: "?"}[v]


def run(args: argparse.Namespace) -> int:
    from ctconsole.criu.probe import CLI_FEATURES, probe

    caps = probe(selftest=args.selftest)
    policy_lines, policy_error = _agent_policy()
    if args.json:
        print(json.dumps({**caps.to_dict(), "agent_policy": policy_lines, "agent_policy_error": policy_error},
                         indent=2))
        return 0 if caps.criu_ok else 1
    rows = [
        ("criu", caps.criu_path),
        ("version", caps.criu_version or "-"),
        ("kernel", caps.kernel),
        ("criu check", "passes" if caps.check_ok else "FAILS"),
    ]
    for name, val in caps.features.items():
        rows.append((f"feature {name}", _yn(val)))
    for name, val in caps.cli_features.items():
        rows.append((f"check {name}", _yn(val)))
    rows.append(("lazy-pages self-test", f"{_yn(caps.lazy_selftest)} {caps.lazy_selftest_reason}".strip()))
    rows.append(("stop-copy", _yn(caps.criu_ok)))
    rows.append(("pre-copy", _yn(caps.precopy) + ("" if caps.precopy else "  (no soft-dirty tracking)")))
    rows.append(("post-copy", _yn(caps.postcopy)))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    for name, why in CLI_FEATURES.items():
        if caps.cli_features and not caps.cli_features.get(name):
            print(f"  note: {name} missing: {why}")
    for q in caps.quirks:
        print(f"quirk: {q}")
    for line in caps.check_errors:
        print(f"  {line}")
    for p in caps.problems:
        print(f"PROBLEM: {p}")
    print("agent policy (what a console may ask this host's agent to do; docs/security.md):")
    for line in policy_lines:
        print(f"  {line}")
    if policy_error:
        print(f"PROBLEM: {policy_error}")
    return 0 if caps.criu_ok else 1


def _agent_policy() -> tuple[list[str], str]:
    """The destination policy in force here (agent/policy.py), or why the agent refuses everything."""
    from ctconsole.agent import policy

    try:
        return policy.load().summary(), ""
    except policy.PolicyError as exc:
        return [f"source: {policy.policy_path()}"], " ".join([exc.message, *exc.details]) + \
            " (the agent refuses every request until it is fixed)"
