"""Parsing rules files: values and line numbers from one tomlkit pass."""

from __future__ import annotations

import textwrap

from ctconsole.remap.parse import MAX_BYTES, MAX_DEPTH, parse_text

SAMPLE = textwrap.dedent('''\
    # operator header comment
    version = 1

    [defaults]
    tcp = "keep"   # keep connections

    [[defaults.rule]]
    kind = "lsm"
    apparmor = "lxc-default"

    [[container]]
    match = { name = "web-*", runtime = "lxc" }
      # the veth
      [[container.rule]]
      kind = "veth"
      interface = "eth0"
      host_name = "vweb0"
      bridge = "br0"

      [[container.rule]]
      kind = "netdev"
      interface = "eth1"
      vf_pool = { pf = "enp1s0f0", vfs = [
         0, 1, "4-5",
      ] }
      comment = """ a string that looks like a header:
    [[container.rule]]
    """

    [[container]]
    match = { name = "db" }
    [[container.rule]]
    kind = "mount"
    mountpoint = "/srv"
    path = "/data/db"
    ''')


def test_rules_and_scopes_with_lines() -> None:
    rs, problems = parse_text(SAMPLE, "f.toml")
    assert problems == []
    assert rs.version == 1
    d = rs.defaults.rules
    assert [(r.kind, r.line, r.shorthand) for r in d] == [("tcp", 5, "tcp"), ("lsm", 7, "")]
    assert d[0].fields == {"mode": "keep"}
    web, db = rs.containers
    assert web.selector is not None and web.selector.name == "web-*" and web.selector.runtime == "lxc"
    assert web.line == 11 and db.line == 30
    assert [(r.kind, r.line) for r in web.rules] == [("veth", 14), ("netdev", 20)]
    assert web.rules[0].line_of("bridge") == 18
    assert web.rules[1].line_of("vf_pool") == 23
    assert web.rules[1].get("vf_pool") == {"pf": "enp1s0f0", "vfs": [0, 1, "4-5"]}
    assert [(r.kind, r.line) for r in db.rules] == [("mount", 32)]
    assert db.rules[0].line_of("path") == 35


def test_headers_inside_strings_and_arrays_are_not_headers() -> None:
    rs, _ = parse_text(SAMPLE)
    web = rs.containers[0]
    assert [r.line for r in web.rules] == [14, 20]  # no rule at line 27 (inside the string)
    assert web.rules[1].line_of("vf_pool") == 23 and web.rules[1].line_of("comment") == 26
    assert web.rules[1].get("comment").startswith(" a string that looks like a header:")


def test_quoted_and_spaced_headers() -> None:
    text = 'version = 1\n[[ container ]]\nmatch = {name="a"}\n[[ "container" . rule ]]\nkind = "tcp"\nmode = "close"\n'
    rs, problems = parse_text(text)
    assert problems == []
    assert rs.containers[0].rules[0].line == 4


def test_malformed_toml_reports_its_line() -> None:
    rs, problems = parse_text('version = 1\n\n[[container]]\nmatch = { name = "x" \n', "bad.toml")
    assert len(problems) == 1
    assert problems[0].line == 4
    assert problems[0].message.startswith("malformed TOML")
    assert rs.containers == ()


def test_structural_problems_all_reported() -> None:
    text = textwrap.dedent('''\
        version = 2
        colour = "blue"
        [defaults]
        tpc = "keep"
        [[container]]
        [[container.rule]]
        kind = "tcp"
        mode = "keep"
        [[container]]
        match = { name = 3, color = "x" }
        ''')
    _, problems = parse_text(text, "f")
    msgs = [(p.line, p.message.split(" (")[0].split(":")[0]) for p in problems]
    assert (1, "unsupported version 2") in msgs
    assert any(line == 2 and "unknown top-level key 'colour'" in m for line, m in msgs)
    assert any(line == 4 and "tpc" in m for line, m in msgs)
    assert any(line == 5 and "missing 'match" in m for line, m in msgs)
    assert any(line == 10 and "match.name must be a string" in m for line, m in msgs)
    assert any(line == 10 and "unknown selector 'color'" in m for line, m in msgs)


def test_missing_version() -> None:
    _, problems = parse_text("[defaults]\ntcp = 'keep'\n")
    assert any("missing 'version = 1'" in p.message for p in problems)


def test_syntax_error_names_line_and_column() -> None:
    _, problems = parse_text("a = 1\nb = = 2\n", "f.toml")
    assert [(p.line, p.message.startswith("malformed TOML")) for p in problems] == [(2, True)]
    assert "column 5" in problems[0].message


def test_too_big_and_too_deep_are_problems_not_exceptions() -> None:
    big = "version = 1\n" + "# " + "x" * MAX_BYTES + "\n"
    _, problems = parse_text(big, "big.toml")
    assert len(problems) == 1 and f"more than the {MAX_BYTES}" in problems[0].message
    for deep in ("x = " + "[" * 100_000, "x = " + "{a=" * 100_000, "[" + "a." * 100_000 + "a]\n",
                 "x = " + "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1) + "\n"):
        _, problems = parse_text("version = 1\n" + deep, "deep.toml")
        assert len(problems) == 1 and problems[0].line == 2, (deep[:20], problems)
    ok = "version = 1\nx = " + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1) + "\n"
    _, problems = parse_text(ok)
    assert [p.message for p in problems] == ["unknown top-level key 'x' (expected one of: version, defaults, "
                                             "container)"]


def test_positions_of_every_kind_of_line() -> None:
    text = ('version = 1\r\n[[container]]\r\nmatch = { name = "a" }\r\n\r\n'
            '  [[ container . rule ]]  # c\r\n  kind = "tcp"\r\n  "mode" = "keep"\r\n'
            '  s = """\u2028\r\nx"""\r\n  z = 1\r\n')
    rs, problems = parse_text(text)
    assert problems == []
    r = rs.containers[0].rules[0]
    assert (r.line, r.line_of("kind"), r.line_of("mode"), r.line_of("s"), r.line_of("z")) == (5, 6, 7, 8, 10)


def test_the_agent_side_of_remap_does_not_import_tomlkit() -> None:
    """The destination agent imports remap.compile for inherited fds; tomlkit (~40 ms) loads on first parse."""
    import subprocess
    import sys

    code = "import sys, ctconsole.remap.compile; print('tomlkit' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
