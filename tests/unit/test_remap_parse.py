"""Parsing rules files: values from tomllib, line numbers from the scanner."""

from __future__ import annotations

import textwrap

from ctconsole.remap.parse import decode_error_line, parse_text, scan_lines

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


def test_scanner_ignores_headers_inside_strings_and_arrays() -> None:
    lm = scan_lines(SAMPLE)
    names = [(b.name, b.start) for b in lm.blocks]
    assert ("container.rule", 27) not in names
    assert lm.rule_blocks(0)[1].keys["vf_pool"] == (23, 25)
    assert lm.rule_blocks(0)[1].keys["comment"] == (26, 28)


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


def test_decode_error_line_from_message() -> None:
    import tomllib

    try:
        tomllib.loads("a = 1\nb = = 2\n")
    except tomllib.TOMLDecodeError as exc:
        assert decode_error_line(exc) == 2
