"""migrate.options: the rules are compiled once, for the migration's destination, and merged the check's way.

A real process (``sleep``) is the container; the rules file names it and a
destination (``to = "DEST"``, what ``rules suggest --to`` writes). The
options must follow the destination the migration goes to, and they must be
exactly what ``ctconsole check --to DEST --rules FILE`` reports.
"""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctconsole import feasibility, inventory
from ctconsole.errors import UsageError
from ctconsole.migrate.options import Refusal, migration_options, refuse_blockers
from ctconsole.model import Container

DEST = "netns:ctt-optdst"


@pytest.fixture
def tree() -> Iterator[Container]:
    p = subprocess.Popen(["sleep", "60"])
    try:
        yield inventory.resolve(f"tree:{p.pid}")
    finally:
        p.kill()
        p.wait()


def _rules(tmp_path: Path, c: Container, to: str, body: str) -> Path:
    f = tmp_path / "r.toml"
    f.write_text(f'version = 1\n\n[[container]]\nmatch = {{ id = "{c.id}", to = "{to}" }}\n\n{body}')
    return f


def test_rules_for_the_destination_apply_to_it_only(tmp_path: Path, tree: Container) -> None:
    f = _rules(tmp_path, tree, DEST, '  [[container.rule]]\n  kind = "tcp"\n  mode = "close"\n')
    there = migration_options(tree, DEST, f, tree.id)
    assert there.dump["tcp_close"] is True and there.restore["tcp_close"] is True
    assert there.dump["pid"] == tree.init_pid and there.dump["log_level"] == 4
    elsewhere = migration_options(tree, "local", f, tree.id)
    assert "tcp_close" not in elsewhere.dump and "tcp_close" not in elsewhere.restore


def test_options_are_what_the_check_reports(tmp_path: Path, tree: Container) -> None:
    f = _rules(tmp_path, tree, DEST, '  [[container.rule]]\n  kind = "tcp"\n  mode = "close"\n')
    opts = migration_options(tree, DEST, f, tree.id)
    report = feasibility.check(tree, dest=DEST, rules=str(f), hosts=False)
    assert opts.report.verdict == report.verdict
    for side, got in (("dump", opts.dump), ("restore", opts.restore)):
        for key, value in report.options[side].items():
            assert got[key] == value, (side, key)


def test_missing_rules_file_is_refused_before_anything(tmp_path: Path, tree: Container) -> None:
    with pytest.raises(UsageError, match=r"nope\.toml"):
        migration_options(tree, DEST, tmp_path / "nope.toml", tree.id)


def test_unmatched_needs_are_refused(tmp_path: Path, tree: Container) -> None:
    """A report that says needs-rules (or infeasible) never reaches the freeze."""
    bad = dataclasses.replace(feasibility.check(tree, dest=DEST, hosts=False), verdict=feasibility.NEEDS_RULES)
    with pytest.raises(Refusal, match="needs remap rules"):
        refuse_blockers(bad, tree.id)
    refuse_blockers(feasibility.check(tree, dest=DEST, hosts=False), tree.id)  # a plain sleep: nothing to refuse
