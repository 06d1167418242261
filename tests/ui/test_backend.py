"""The console's view state folded from the core's events and reports; themes, keymap, config."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctconsole.feasibility.findings import AUTO, BLOCKER, INFO, NEEDS_RULE, CriuInfo, Finding, Report
from ctconsole.migrate import events as ev
from ctconsole.ui import keymap
from ctconsole.ui.backend import MigrationState, fold, grouped, verdict_word
from ctconsole.ui.fake import FakeBackend
from ctconsole.ui.theming import (
    ThemeFileError,
    load_themes,
    read_user_config,
    resolve_theme,
    theme_dirs,
    theme_from_dict,
    write_user_config,
)


def test_folds_the_engine_events() -> None:
    """The console folds the engine's own events: no adapter, no copies."""
    seq: list[ev.Event] = [
        ev.PhaseChanged("begin", "web -> netns:dst"),
        ev.PhaseChanged("perform"),
        ev.RoundProgress(1, 1000, 800, 200),
        ev.Transfer("copied", 800 * 4096, 800 * 4096, 2e6, 0.0, round=1),
        ev.FinalDump(1, 300, 100, 200),
        ev.FrozenTime(0.04),
        ev.Transfer("streamed", 1 << 20, 4 << 20, 2e6, 1.5),
        ev.Downtime(0.2),
        ev.LogLine("error", "Error (criu/cr-dump.c:1): boom"),
        ev.PhaseChanged("done"),
        ev.Done("migrated", "ok", {"id": "x"}, source="released"),
    ]
    state = MigrationState()
    for e in seq:
        state = fold(state, e)
    assert state.phase == "perform" and "done" not in state.phases
    assert len(state.rounds) == 1 and state.final is not None and state.final.rounds == 1  # final dump: no round
    assert state.fraction == 0.25 and state.transfer is not None and state.transfer.eta == 1.5
    assert state.bytes_by_kind() == [("copied", 800 * 4096), ("streamed", 1 << 20)]
    assert state.rates == (2e6, 2e6)
    assert state.frozen == pytest.approx(0.04) and state.downtime == pytest.approx(0.2)
    assert state.done is not None and state.done.migrated and state.done.source_survived is False
    assert any("ERROR: Error (criu" in ln for ln in state.log_tail)
    assert state.done_phases == ("begin", "perform")


def test_linked_transfer_is_whole_at_the_end() -> None:
    """Images hard-linked on the destination: the bytes made available, 100 %, not "sent 0 B, 0 %"."""
    s = fold(MigrationState(), ev.Transfer("linked", 6 << 20, 6 << 20))
    assert s.fraction == 1.0 and s.bytes_by_kind() == [("linked", 6 << 20)]


def test_done_says_whether_the_source_survived() -> None:
    assert ev.Done("rolled-back", "m", source="running").source_survived is True
    assert ev.Done("failed", "m", source="lost").source_survived is False
    assert ev.Done("failed", "m").source_survived is None
    assert ev.to_json(ev.Done("failed", "m", source="untouched"))["source"] == "untouched"


def test_fold_rollback_and_log_tail() -> None:
    s = MigrationState()
    s = fold(s, ev.PhaseChanged("begin"))
    s = fold(s, ev.PhaseChanged("rollback", "aborted"))
    assert s.phases[-1] == "rollback" and s.failed_phase == "begin" and "begin" not in s.done_phases
    for n in range(300):
        s = fold(s, ev.LogLine("info", f"l{n}"))
    assert len(s.log_tail) == 200 and s.log_count == 301 and s.log_tail[-1] == "l299"
    done = ev.Done("rolled-back", "m", source="running")
    s = fold(s, done)
    assert s.done == done and "rollback" in s.done_phases


def test_sub_phases_go_after_the_phase_they_run_in() -> None:
    """The engine's transfer/restore came last on the real lab ("confirm, transfer, restore")."""
    s = MigrationState()
    for p in ("begin", "prepare", "perform", "transfer", "restore", "finish", "confirm"):
        s = fold(s, ev.PhaseChanged(p))
    assert s.phases == ("begin", "prepare", "perform", "transfer", "restore", "finish", "confirm")


def test_groups_worst_first_and_satisfied_apart() -> None:
    fs = tuple(Finding("r", sev, "s", "m", "") for sev in (INFO, AUTO, NEEDS_RULE, BLOCKER))
    fs += (Finding("ok", NEEDS_RULE, "s", "m", "", needs=("x",), satisfied=True),)
    r = Report("c", "infeasible", fs, CriuInfo(), {})
    assert [g for g, _ in grouped(r)] == ["blocker", "needs-rule", "satisfied", "auto", "info"]


def test_verdict_words_are_the_clis() -> None:
    from ctconsole.commands.check import VERDICT_TEXT

    for verdict, text in VERDICT_TEXT.items():
        assert text.startswith(verdict_word(verdict)), verdict


def test_model_round_trips_through_the_agent_json() -> None:
    import json

    from ctconsole.model import Container, from_dict, to_dict

    for c in FakeBackend(n_containers=6).list_containers():
        back = from_dict(Container, json.loads(json.dumps(to_dict(c))))
        assert back == c and len(back.externals()) == len(c.externals())
    # unknown keys (a newer agent) are ignored, missing ones take defaults (an older one)
    assert from_dict(Container, {"id": "x", "name": "n", "runtime": "tree", "init_pid": 1, "new": 1}).processes == ()


def test_host_labels_fit_the_hosts_list() -> None:
    from ctconsole.ui.screens.containers import host_label

    assert host_label("local").plain == "local\nthis host"
    assert host_label("netns:ctlab-ctui").plain == "ctlab-ctui\nnetns"
    assert host_label("ssh://root@db1:2222").plain == "db1\nssh root@ :2222"
    assert host_label("ssh://[::1]:22").plain == "[::1]\nssh :22"
    assert host_label("ssh://db1").plain == "db1\nssh"


def test_fake_uses_the_real_remap() -> None:
    """The editor offers remap's own kinds and the fake's rules compile through remap."""
    from ctconsole import remap

    fake = FakeBackend(3)
    assert fake.rule_kinds() == remap.KINDS
    assert fake.validate_rule(remap.rule_from_form({"kind": "veth", "interface": "eth 0", "host_name": "v"}))
    opts = fake.compile_rules("web-1", fake.load_rules("web-1", fake.default_rules_file()))
    assert "mnt[/proc/meminfo]:proc-meminfo" in opts.dump["external"]


def test_fake_is_deterministic() -> None:
    a, b = FakeBackend(200), FakeBackend(200)
    assert a.list_containers() == b.list_containers()
    assert a.check("web-1") == b.check("web-1")


def test_shipped_themes_load() -> None:
    loaded = load_themes(theme_dirs()[:2])
    assert loaded.errors == []
    assert {"ctconsole-dark", "ctconsole-light", "ctconsole-high-contrast"} <= set(loaded.themes)
    assert resolve_theme("light", loaded.themes) == "ctconsole-light"
    assert resolve_theme("nope", loaded.themes) is None


@pytest.mark.parametrize(
    "data, problem",
    [
        ({"primary": "#fff"}, "name"),
        ({"name": "x"}, "primary"),
        ({"name": "x", "primary": "blurple"}, "not a colour"),
        ({"name": "x", "primary": "#fff", "wat": 1}, "unknown keys"),
        ({"name": "x", "primary": "#fff", "variables": {"a": 1}}, "variables"),
    ],
)
def test_bad_theme_tables(data: dict, problem: str) -> None:
    with pytest.raises(ThemeFileError, match=problem):
        theme_from_dict(data)


def test_config_written_atomically(tmp_path: Path) -> None:
    write_user_config({"theme": "ctconsole-light", "keys": {"containers.check": "k"}})
    assert read_user_config() == {"theme": "ctconsole-light", "keys": {"containers.check": "k"}}
    leftovers = [p for p in Path(tmp_path / "config").iterdir() if p.name != "config.toml"]
    assert leftovers == []


def test_keymap_ids_unique_and_validated() -> None:
    ids = [a.id for a in keymap.ACTIONS]
    assert len(ids) == len(set(ids))
    km, warnings = keymap.keymap_from_config({"keys": {"containers.check": "k", "x.y": "z", "rules.add": ""}})
    assert km == {"containers.check": "k"} and len(warnings) == 2


def test_packaged_themes_match_the_checkout() -> None:
    """ctconsole/themes/ (package data, for installs) must be a copy of themes/ (the checkout's)."""
    root = Path(__file__).resolve().parents[2]
    shipped = {p.name: p.read_text() for p in (root / "themes").glob("*.toml")}
    packaged = {p.name: p.read_text() for p in (root / "ctconsole" / "themes").glob("*.toml")}
    assert shipped and packaged == shipped, "copy themes/*.toml to ctconsole/themes/"
