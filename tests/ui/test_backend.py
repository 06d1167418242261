"""The UI-side adapters: engine events -> UI events -> state, themes, keymap, config."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctconsole.ui import keymap
from ctconsole.ui.backend import (
    DEFAULT_PHASES,
    Done,
    LogLine,
    Metric,
    MigrationState,
    PhaseChanged,
    RoundDone,
    Transfer,
    adapt_event,
    fold,
    normalise_verdict,
)
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


def test_adapts_the_engine_events() -> None:
    ev = pytest.importorskip("ctconsole.migrate.events")
    seq = [
        ev.PhaseChanged("begin", "web -> netns:dst"),
        ev.PhaseChanged("perform"),
        ev.RoundProgress(1, 1000, 800, 200),
        ev.BytesSent(1 << 20, 4 << 20),
        ev.Rate(2e6),
        ev.Eta(1.5),
        ev.FrozenTime(0.04),
        ev.Downtime(0.2),
        ev.LogLine("error", "Error (criu/cr-dump.c:1): boom"),
        ev.PhaseChanged("done"),
        ev.Done("migrated", "ok", {"id": "x"}),
    ]
    ui = [adapt_event(e) for e in seq]
    assert None not in ui
    assert isinstance(ui[2], RoundDone) and ui[2].pages == 800
    assert isinstance(ui[3], Transfer) and ui[3].bytes_total == 4 << 20
    assert ui[4] == Metric("rate", 2e6)
    state = MigrationState()
    for u in ui:
        assert u is not None
        state = fold(state, u)
    assert state.phase == "perform" and "done" not in state.phases
    assert state.fraction == 0.25
    assert state.rates == (2e6,) and state.eta == 1.5
    assert state.frozen_ms == pytest.approx(40.0)
    assert state.done is not None and state.done.downtime_ms == pytest.approx(200.0)
    assert any("ERROR: Error (criu" in ln for ln in state.log_tail)
    assert state.done_phases == ("begin", "perform")


def test_adapts_dicts_and_unknowns() -> None:
    assert adapt_event({"event": "phase_changed", "phase": "prepare"}) == PhaseChanged("prepare")
    assert adapt_event({"event": "done", "result": "rolled_back", "message": "m"}).result == "rolled-back"
    assert adapt_event(object()) is None


def test_fold_rollback_and_log_tail() -> None:
    s = MigrationState()
    s = fold(s, PhaseChanged("begin", DEFAULT_PHASES))
    s = fold(s, PhaseChanged("rollback", (), "aborted"))
    assert s.phases[-1] == "rollback" and s.failed_phase == "begin" and "begin" not in s.done_phases
    for n in range(300):
        s = fold(s, LogLine(f"l{n}"))
    assert len(s.log_tail) == 200 and s.log_count == 301 and s.log_tail[-1] == "l299"
    s = fold(s, Done("rolled-back"))
    assert s.done == Done("rolled-back") and "rollback" in s.done_phases


def test_sub_phases_go_after_the_phase_they_run_in() -> None:
    """The engine's transfer/restore came last on the real lab ("confirm, transfer, restore")."""
    s = MigrationState()
    for p in ("begin", "prepare", "perform", "transfer", "restore", "finish", "confirm"):
        s = fold(s, PhaseChanged(p))
    assert s.phases == ("begin", "prepare", "perform", "transfer", "restore", "finish", "confirm")


def test_checker_severities_sort_before_info() -> None:
    from ctconsole.ui.backend import Finding, Report

    r = Report(
        "c", "needs-rules", tuple(Finding("r", sev, "s", "m") for sev in ("info", "auto", "needs-rule", "blocker"))
    )
    assert [sev for sev, _ in r.grouped()] == ["blocker", "needs-rule", "auto", "info"]


def test_model_round_trips_through_the_agent_json() -> None:
    import json

    from ctconsole.model import Container, from_dict, to_dict

    for c in FakeBackend(n_containers=6).containers:
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


def test_prefill_strips_the_subject_words() -> None:
    from ctconsole.ui.backend import Finding
    from ctconsole.ui.screens.report import prefill_for

    mount = Finding("bind-mount-external", "needs-rule", "mount /share", "m", rule_kind="mount")
    assert prefill_for(mount)["mountpoint"] == "/share"
    unix = Finding("u", "needs-rule", "socket socket:[2063507] (pid 19164 fd 3 (+1))", "m", rule_kind="unix")
    assert prefill_for(unix)["inode"] == "2063507"
    veth = Finding("veth-external", "needs-rule", "interface eth0", "m", rule_kind="veth")
    assert prefill_for(veth)["interface"] == "eth0"


def test_verdicts_normalised() -> None:
    assert normalise_verdict("feasible") == "ok"
    assert normalise_verdict("feasible-with-remedies") == "needs-rules"
    assert normalise_verdict("infeasible") == "blocked"


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
