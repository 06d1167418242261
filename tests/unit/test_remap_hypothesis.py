"""Property tests: the validator never crashes, edits never break a file."""

from __future__ import annotations

import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctconsole.remap import store
from ctconsole.remap.model import RULE_KINDS, Problem, Rule, RuleRef
from ctconsole.remap.parse import parse_text
from ctconsole.remap.validate import validate_text

KEYS = ["kind", "interface", "host_name", "bridge", "device", "vf_pool", "connect", "peer", "inode", "path",
        "mountpoint", "key", "source", "target", "selinux", "mcs", "apparmor", "mode", "root", "roots",
        "comment", "pf", "vfs", "name", "junk"]
scalars = st.one_of(st.text(max_size=20), st.integers(-5, 2**40), st.booleans(),
                    st.sampled_from([*RULE_KINDS, "keep", "close", "auto", "/", "/tmp", "s0:c1,c2", "a" * 16, ".",
                                     "eth0", "4-7", "x\x85y", "\u2028"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(st.sampled_from(KEYS), inner,
                                                                         max_size=3)), max_leaves=6)


def render_table(d: dict[str, object]) -> list[str]:
    return [f"{store.render_key(k)} = {store.render_value(v)}" for k, v in d.items()]


@st.composite
def rules_files(draw: st.DrawFn) -> str:
    lines: list[str] = []
    if draw(st.booleans()):
        lines.append(f"version = {store.render_value(draw(st.one_of(st.just(1), scalars)))}")
    if draw(st.booleans()):
        lines.append("[defaults]")
        lines += render_table(draw(st.dictionaries(st.sampled_from(["tcp", "cgroup_mode", "x"]), scalars,
                                                   max_size=2)))
        for _ in range(draw(st.integers(0, 2))):
            lines.append("[[defaults.rule]]")
            lines += render_table(draw(st.dictionaries(st.sampled_from(KEYS), values, max_size=5)))
    for _ in range(draw(st.integers(0, 3))):
        lines.append("[[container]]")
        if draw(st.booleans()):
            lines.append(f"match = {store.render_value(draw(st.dictionaries(st.sampled_from(['name', 'runtime', 'id', 'to', 'x']), scalars, max_size=3)))}")  # noqa: E501
        for _ in range(draw(st.integers(0, 4))):
            lines.append("  [[container.rule]]")
            lines += ["  " + ln for ln in render_table(draw(st.dictionaries(st.sampled_from(KEYS), values,
                                                                            max_size=6)))]
    if draw(st.booleans()):  # corrupt it: drop, duplicate or mangle a line
        junk = draw(st.text(alphabet=string.printable, max_size=12))
        pos = draw(st.integers(0, len(lines)))
        lines.insert(pos, junk)
    return "\n".join(lines) + "\n"


def check(problems: list[Problem]) -> None:
    assert isinstance(problems, list)
    for p in problems:
        assert isinstance(p, Problem) and isinstance(p.line, int) and p.message
        assert "cannot check" not in p.message, p  # would hide a validator bug


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules_files())
def test_validator_never_crashes_on_generated_files(text: str) -> None:
    check(validate_text(text, "gen.toml", host_checks=True))
    check(validate_text(text, "gen.toml", host_checks=False))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_validator_never_crashes_on_arbitrary_text(text: str) -> None:
    check(validate_text(text, "junk.toml"))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules_files(), st.sampled_from(list(RULE_KINDS)),
       st.dictionaries(st.sampled_from(KEYS[1:]), values, max_size=4))
def test_store_edits_keep_files_loadable(text: str, kind: str, fields: dict[str, object]) -> None:
    rs, problems = parse_text(text)
    if problems and problems[0].message.startswith("malformed"):
        return
    rule = Rule(kind=kind, fields=fields)
    for ci, scope in enumerate(rs.containers):
        if scope.selector is None:
            continue
        n = len(scope.rules)
        added = store.add_rule(text, ci, rule)
        rs2, _ = parse_text(added)
        assert len(rs2.containers[ci].rules) == n + 1
        assert rs2.containers[ci].rules[-1].fields == fields
        if n:
            replaced = store.replace_rule(text, RuleRef(ci, 0), rule)
            rs3, _ = parse_text(replaced)
            assert rs3.containers[ci].rules[0].fields == fields
            deleted = store.delete_rule(text, RuleRef(ci, 0))
            rs4, _ = parse_text(deleted)
            assert len(rs4.containers[ci].rules) == n - 1


# ---------------------------------------------------------------- pathological sizes (issue #10)


@st.composite
def pathological_files(draw: st.DrawFn) -> str:
    """Big, deep or repetitive files a hostile author could write: never a crash, time bounded."""
    shape = draw(st.sampled_from(["blocks", "deep-array", "deep-table", "deep-header", "vf", "long-string",
                                  "wide-inline", "many-rules"]))
    n = draw(st.integers(1, 4000))
    head = "version = 1\n"
    if shape == "blocks":
        one = '[[container]]\nmatch = { name = "c" }\n  [[container.rule]]\n  kind = "tcp"\n  mode = "keep"\n'
        return head + one * n
    if shape == "deep-array":
        return head + "x = " + "[" * (n * 50) + "]" * draw(st.integers(0, n * 50)) + "\n"
    if shape == "deep-table":
        return head + "x = " + "{ a = " * (n * 20) + "1" + " }" * draw(st.integers(0, n * 20)) + "\n"
    if shape == "deep-header":
        return head + "[" + ".".join(["a"] * (n * 10)) + "]\nb = 1\n"
    if shape == "vf":
        items = ", ".join([draw(st.sampled_from(['"0-4095"', '"4000-99999"', "7", '"x"', "-1"]))] * min(n, 400))
        return head + ('[[container]]\nmatch = { name = "c" }\n[[container.rule]]\nkind = "netdev"\n'
                       f'interface = "e"\nvf_pool = {{ pf = "p", vfs = [{items}] }}\n')
    if shape == "long-string":
        return head + f'[defaults]\ncomment = "{"x" * (n * 300)}"\n'
    if shape == "wide-inline":
        return head + "[[container]]\nmatch = { " + ", ".join(f"k{i} = {i}" for i in range(n)) + " }\n"
    rule = '[[container.rule]]\nkind = "mount"\nmountpoint = "/m"\npath = "/"\n'
    return head + '[[container]]\nmatch = { name = "c" }\n' + rule * n


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(pathological_files())
def test_pathological_files_are_bounded_and_never_crash(text: str) -> None:
    import time

    t0 = time.monotonic()
    problems = validate_text(text, "evil.toml", host_checks=False)
    elapsed = time.monotonic() - t0
    check(problems)
    assert elapsed < 8, (len(text), elapsed)
    if len(text.encode()) > 1 << 20:
        assert any("bytes" in p.message for p in problems)


def _content(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules_files(), st.sampled_from(list(RULE_KINDS)),
       st.dictionaries(st.sampled_from(KEYS[1:]), values, max_size=4))
def test_store_add_then_delete_gives_the_file_back(text: str, kind: str, fields: dict[str, object]) -> None:
    """Round trip through tomlkit: every comment and line of the operator's file comes back (blank lines
    between blocks may differ where the file had none); replacing a rule by itself changes nothing."""
    from ctconsole.errors import CtError

    rs, problems = parse_text(text)
    if problems and (problems[0].message.startswith("malformed") or problems[0].line == 0):
        return
    for ci, scope in enumerate(rs.containers):
        try:
            added = store.add_rule(text, ci, Rule(kind=kind, fields=fields))
        except CtError:  # an inline rule array ("rule = [...]"): refused, never rewritten
            continue
        n = len(parse_text(added)[0].containers[ci].rules)
        assert _content(store.delete_rule(added, RuleRef(ci, n - 1))) == _content(text)
        if scope.rules and scope.rules[0].kind:  # (a table without kind comes back with kind = "")
            same = store.replace_rule(text, RuleRef(ci, 0), scope.rules[0])
            assert _content(same) == _content(text)
