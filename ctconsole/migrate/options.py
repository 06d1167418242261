"""The options a migration sends: the rules compiled once, with the destination, merged one way.

Why one place: the engine used to run the feasibility check without the
destination and then compile the rules a second time itself, so a rule that
matched ``to = "DEST"`` (what ``ctconsole rules suggest --to`` writes)
satisfied ``ctconsole check --to DEST`` but not the migration, and its own
option merger disagreed with the check's (``ghost_limit``, booleans). Now the
rules are compiled here once, for this container and this destination; the
check judges exactly that compile, and its options (findings' remedies plus
rules, merged by :func:`~ctconsole.feasibility.findings.merge_options`) are
what CRIU gets, so ``ctconsole check --to DEST --rules F --json`` previews
exactly what ``ctconsole migrate --to DEST --rules F`` sends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctconsole.errors import CtError
from ctconsole.feasibility import BLOCKER, INFEASIBLE, NEEDS_RULE, NEEDS_RULES, Report, check, compile_rules
from ctconsole.feasibility.findings import merge_options
from ctconsole.migrate.restoreenv import RestoreEnv
from ctconsole.model import Container


class Refusal(CtError):
    """The migration was refused before anything was frozen."""


@dataclass
class MigrationOptions:
    """Everything CRIU and the destination get for one migration, decided before the freeze."""

    dump: dict[str, Any]
    restore: dict[str, Any]
    env: RestoreEnv
    report: Report
    notes: list[str] = field(default_factory=list)
    #: bind-mount sources that follow the container when the destination lacks them (carry = true)
    carry: list[str] = field(default_factory=list)


def refuse_blockers(report: Report, ref: str) -> None:
    """Raise :class:`Refusal` when the check says the container cannot move (yet)."""
    blocking = [f for f in report.findings
                if f.severity == BLOCKER or (f.severity == NEEDS_RULE and not f.satisfied)]
    lines = [f"{f.subject}: {f.message} -> {f.remedy}" for f in blocking]
    if report.verdict == INFEASIBLE:
        raise Refusal("CRIU cannot checkpoint this container (feasibility: infeasible)", lines)
    if report.verdict == NEEDS_RULES:
        raise Refusal("this container needs remap rules before it can move (feasibility: needs-rules)",
                      [*lines, f"see: ctconsole check {ref}; ctconsole rules suggest {ref}"])


def migration_options(container: Container, dest: str, rules: str | Path | None, ref: str) -> MigrationOptions:
    """Compile the rules for ``dest``, check the container against that compile, and build the options.

    Host probes are skipped in this check: the engine asks both CRIUs itself
    (FEATURE_CHECK here, hello there), and CRIU's own dump is the final word.
    """
    compiled = compile_rules(rules, container, dest) if rules else None
    report = check(container, dest=dest, rules=compiled, hosts=False)
    refuse_blockers(report, ref)
    root = container.processes[0] if container.processes else None
    dump: dict[str, Any] = {"pid": container.init_pid, "log_level": 4}
    restore: dict[str, Any] = {"log_level": 4}
    if root and root.sid != container.init_pid:
        dump["shell_job"] = restore["shell_job"] = True
    if container.has_own("mnt") and container.root_path:
        restore["root"] = container.root_path
    merge_options(dump, dict(report.options.get("dump", {})))
    merge_options(restore, dict(report.options.get("restore", {})))
    try:
        env = RestoreEnv.build(container, compiled)
    except CtError as exc:
        raise Refusal(exc.message, exc.details) from exc
    notes = list(compiled.notes) if compiled is not None else []
    if env.setup_ns:
        restore["notify_scripts"] = True  # the VF moves happen in the setup-namespaces notify
    dump["pid"] = container.init_pid
    if dump.get("orphan_pts_master"):
        restore["orphan_pts_master"] = True
    return MigrationOptions(dump, restore, env, report, [*notes, *env.notes],
                            carry=compiled.carry_paths() if compiled is not None else [])
