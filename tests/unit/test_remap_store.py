"""Comment-preserving edits and atomic saves of rules files."""

from __future__ import annotations

import os
import stat
import textwrap
from pathlib import Path

import pytest

from ctconsole.errors import CtError
from ctconsole.remap import store
from ctconsole.remap.model import Rule, RuleRef, Selector
from ctconsole.remap.parse import parse_text

ORIG = textwrap.dedent('''\
    # Remap rules for rack 7 -- maintained by ops, do not reorder
    version = 1


    [defaults]
    tcp = "keep"      # clients reconnect slowly

    [[container]]
    # the web tier
    match = { name = "web-*", runtime = "lxc" }  # all web containers

      # eth0 goes to the DMZ bridge
      [[container.rule]]
      kind = "veth"
      interface = "eth0"   # inside name
      # host side
      host_name = "vweb0"
      bridge = "br-dmz"    # see ticket OPS-12

      [[container.rule]]
      kind = "mount"
      mountpoint = "/srv"
      path = "/export/web"

    # db tier
    [[container]]
    match = { name = "db" }
    [[container.rule]]
    kind = "tcp"
    mode = "close"
    ''')


def comments(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if "#" in ln]


def test_replace_rule_keeps_every_comment_and_untouched_lines() -> None:
    new = store.replace_rule(ORIG, RuleRef(0, 0), Rule("veth", {"interface": "eth0", "host_name": "vweb9",
                                                                  "bridge": "br-new"}))
    assert [c.split("#", 1)[1] for c in comments(new)] == [c.split("#", 1)[1] for c in comments(ORIG)]
    assert '  bridge = "br-new"    # see ticket OPS-12' in new
    assert '  host_name = "vweb9"' in new
    assert '  interface = "eth0"   # inside name' in new
    assert "  # host side" in new
    changed = [(a, b) for a, b in zip(ORIG.splitlines(), new.splitlines(), strict=True) if a != b]
    assert len(changed) == 2  # only the two changed values
    rs, problems = parse_text(new)
    assert problems == [] and rs.containers[0].rules[0].get("bridge") == "br-new"


def test_replace_rule_adds_and_removes_keys() -> None:
    new = store.replace_rule(ORIG, RuleRef(0, 0), Rule("veth", {"interface": "eth0", "host_name": "vweb0"}))
    assert "br-dmz" not in new and "# host side" in new
    new2 = store.replace_rule(new, RuleRef(0, 1), Rule("mount", {"mountpoint": "/srv", "path": "/x",
                                                               "key": "web"}))
    rs, _ = parse_text(new2)
    assert rs.containers[0].rules[1].fields == {"mountpoint": "/srv", "path": "/x", "key": "web"}
    assert '  key = "web"' in new2.splitlines()


def test_replace_defaults_shorthand_keeps_comment_spacing() -> None:
    new = store.replace_rule(ORIG, RuleRef(None, 0), Rule("tcp", {"mode": "close"}))
    assert 'tcp = "close"      # clients reconnect slowly' in new
    # a non-shorthand change turns it into a [[defaults.rule]] table
    new2 = store.replace_rule(ORIG, RuleRef(None, 0), Rule("tcp", {"mode": "close", "comment": "x"}))
    rs, _ = parse_text(new2)
    assert [(r.kind, r.fields, r.shorthand) for r in rs.defaults.rules] == [("tcp", {"mode": "close",
                                                                                     "comment": "x"}, "")]


def test_add_and_delete_rule_round_trip_is_identity() -> None:
    added = store.add_rule(ORIG, 0, Rule("tcp", {"mode": "close"}), header_comment=["web resets"])
    rs, _ = parse_text(added)
    assert [r.kind for r in rs.containers[0].rules] == ["veth", "mount", "tcp"]
    assert "  # web resets" in added
    assert store.delete_rule(added, RuleRef(0, 2)) == ORIG


def test_delete_rule_takes_its_attached_comment() -> None:
    new = store.delete_rule(ORIG, RuleRef(0, 0))
    assert "eth0 goes to the DMZ bridge" not in new
    assert "# the web tier" in new and "# all web containers" in new
    rs, _ = parse_text(new)
    assert [r.kind for r in rs.containers[0].rules] == ["mount"]


def test_defaults_rule_added_before_containers() -> None:
    new = store.add_rule(ORIG, None, Rule("cgroup", {"mode": "soft"}))
    rs, _ = parse_text(new)
    assert [r.kind for r in rs.defaults.rules] == ["tcp", "cgroup"]
    assert new.index("[[defaults.rule]]") < new.index("[[container]]")
    assert "# Remap rules for rack 7" in new and "\n\n\n[defaults]" in new  # operator's double blank kept


def test_container_edits() -> None:
    new = store.set_match(ORIG, 0, Selector(name="web-*", runtime="runc"))
    assert 'match = { name = "web-*", runtime = "runc" }  # all web containers' in new
    new = store.add_container(new, Selector(name="cache"), [Rule("tcp", {"mode": "keep"})],
                              header_comment=["cache tier"])
    rs, _ = parse_text(new)
    assert [s.selector.name for s in rs.containers if s.selector] == ["web-*", "db", "cache"]
    new = store.delete_container(new, 1)
    rs, _ = parse_text(new)
    assert [s.selector.name for s in rs.containers if s.selector] == ["web-*", "cache"]
    assert "# db tier" not in new
    assert "# the web tier" in new


def test_render_value_round_trips() -> None:
    import tomllib

    values = {"s": 'a "q" \\ \n\t\x01 é', "b": True, "i": -3, "f": 1.5, "l": [1, "x", [2]],
              "t": {"pf": "p", "weird key": 1}}
    text = "\n".join(f"{k} = {store.render_value(v)}" for k, v in values.items())
    assert tomllib.loads(text) == values


def test_atomic_save_keeps_mode_and_leaves_no_temp(tmp_path: Path) -> None:
    f = tmp_path / "rules.toml"
    f.write_text(ORIG)
    os.chmod(f, 0o640)
    doc = store.RulesDocument.open(f)
    doc2 = doc.add_rule(0, Rule("tcp", {"mode": "close"})).save()
    assert not doc2.dirty
    assert f.read_text() == doc2.text
    assert stat.S_IMODE(f.stat().st_mode) == 0o640
    assert sorted(os.listdir(tmp_path)) == ["rules.toml"]
    assert comments(ORIG) == comments(f.read_text())


def test_save_refuses_when_file_changed_on_disk(tmp_path: Path) -> None:
    f = tmp_path / "rules.toml"
    f.write_text(ORIG)
    doc = store.RulesDocument.open(f).delete_rule(RuleRef(1, 0))
    f.write_text(ORIG + "# someone else\n")
    with pytest.raises(CtError, match="changed on disk"):
        doc.save()
    assert f.read_text().endswith("# someone else\n")


def test_failed_write_leaves_original(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "rules.toml"
    f.write_text(ORIG)

    def boom(fd: int) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(store.os, "fsync", boom)
    with pytest.raises(OSError):
        store.save_text(f, "version = 1\n")
    assert f.read_text() == ORIG
    assert sorted(os.listdir(tmp_path)) == ["rules.toml"]


def test_save_rejects_invalid_toml(tmp_path: Path) -> None:
    f = tmp_path / "r.toml"
    with pytest.raises(CtError):
        store.save_text(f, "version = = 1\n")
    assert not f.exists()


def test_open_missing_file_is_empty_document(tmp_path: Path) -> None:
    doc = store.RulesDocument.open(tmp_path / "new.toml")
    doc = doc.add_container(Selector(name="x"), [Rule("tcp", {"mode": "keep"})]).save()
    rs, problems = parse_text((tmp_path / "new.toml").read_text())
    assert problems == [] and rs.containers[0].rules[0].kind == "tcp"


def test_render_ruleset_parses_back() -> None:
    rs, _ = parse_text(ORIG)
    again, problems = parse_text(store.render_ruleset(rs))
    assert problems == []
    assert [(r.kind, r.fields) for s in again.scopes() for r in s.rules] == \
        [(r.kind, r.fields) for s in rs.scopes() for r in s.rules]


def test_editor_facade_round_trip(tmp_path: Path) -> None:
    from ctconsole import remap
    from ctconsole.model import Container

    f = tmp_path / "rules.toml"
    f.write_text(ORIG)
    web = Container(id="1", name="web-7", runtime="lxc", init_pid=1)
    assert remap.load_rules(web, f) == []  # only a glob block matches: nothing of its own
    forms = [{"kind": "veth", "interface": "eth0", "host_name": "v7", "bridge": ""},
             {"kind": "netdev", "interface": "eth1", "vf_pool": "pf0:0-3,5"},
             {"kind": "unix", "inode": "42", "connect": "/run/x.sock"}]
    assert remap.save_rules(web, remap.from_dicts(forms), f) == str(f)
    loaded = remap.load_rules(web, f)
    assert loaded == [{"kind": "veth", "interface": "eth0", "host_name": "v7"},
                      {"kind": "netdev", "interface": "eth1", "vf_pool": "pf0:0-3,5"},
                      {"kind": "unix", "inode": "42", "connect": "/run/x.sock"}]
    text = f.read_text()
    assert comments(ORIG) == [c for c in comments(text) if "written by the ctconsole rules editor" not in c]
    # edit again: one rule changed, one removed; the glob block and comments stay
    assert remap.save_rules(web, [forms[0] | {"host_name": "v8"}], f)
    assert remap.load_rules(web, f) == [{"kind": "veth", "interface": "eth0", "host_name": "v8"}]
    assert "# see ticket OPS-12" in f.read_text()
    assert remap.validate_rule({"kind": "veth", "interface": "a b", "host_name": "x"})
    assert remap.validate_rule({"kind": "tcp", "mode": "keep"}) == []
    assert [k.name for k in remap.KINDS] == ["veth", "netdev", "unix", "tty", "mount", "device", "lsm", "cgroup",
                                           "tcp", "file"]


# ---------------------------------------------------------------- tomlkit edits: layouts around the edit


def test_delete_only_rule_and_first_container_keep_the_rest_byte_for_byte() -> None:
    new = store.delete_rule(ORIG, RuleRef(1, 0))  # the db block's only rule
    rs, problems = parse_text(new)
    assert problems == [] and rs.containers[1].rules == ()
    assert new == ORIG.replace('[[container.rule]]\nkind = "tcp"\nmode = "close"\n', "")
    first = store.delete_container(ORIG, 0)
    assert first.startswith(ORIG[: ORIG.index("[[container]]")].rstrip("\n") + "\n\n# db tier\n[[container]]")
    rs, _ = parse_text(first)
    assert [s.selector.name for s in rs.containers if s.selector] == ["db"]


def test_crlf_files_stay_crlf() -> None:
    crlf = ORIG.replace("\n", "\r\n")
    new = store.add_rule(crlf, 1, Rule("mount", {"mountpoint": "/m", "path": "/srv/m"}))
    assert "\n" not in new.replace("\r\n", "")
    rs, problems = parse_text(new)
    assert problems == [] and [r.kind for r in rs.containers[1].rules] == ["tcp", "mount"]
    assert store.delete_rule(new, RuleRef(1, 1)) == crlf


def test_defaults_rules_are_made_when_the_file_has_none() -> None:
    text = 'version = 1\n\n[[container]]\nmatch = { name = "a" }\n'
    new = store.add_rule(text, None, Rule("tcp", {"mode": "keep"}))
    rs, problems = parse_text(new)
    assert problems == [] and [r.kind for r in rs.defaults.rules] == ["tcp"]
    assert store.delete_rule(new, RuleRef(None, 0)).strip() == text.strip()


def test_a_layout_tomlkit_would_reorder_is_refused_not_rewritten() -> None:
    split = 'version = 1\n[[container]]\nmatch = { name = "a" }\n[defaults]\ntcp = "keep"\n' \
            '[[container]]\nmatch = { name = "b" }\n'
    assert parse_text(split)[1] == []  # it is a valid file; only editing it would move [defaults]
    with pytest.raises(CtError, match="cannot be edited without reordering"):
        store.add_rule(split, 0, Rule("tcp", {"mode": "close"}))


def test_edits_are_linear_in_the_file_size() -> None:
    """8x the blocks must cost about 8x, not 64x (the old line map was quadratic): a ratio, so a busy
    machine slows both sides alike."""
    import time

    block = '[[container]]\nmatch = { name = "c%d" }\n  [[container.rule]]\n  kind = "tcp"\n  mode = "keep"\n\n'

    def edit(n: int) -> float:
        text = "version = 1\n\n" + "".join(block % i for i in range(n))
        t0 = time.perf_counter()
        new = store.add_rule(text, n - 1, Rule("mount", {"mountpoint": "/m", "path": "/srv/m"}))
        elapsed = time.perf_counter() - t0
        assert parse_text(new)[0].containers[n - 1].rules[-1].kind == "mount"
        return elapsed

    small = min(edit(250) for _ in range(3))
    big = min(edit(2000) for _ in range(2))
    assert big < 20 * small, (small, big)
