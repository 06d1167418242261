"""Read a rules file: tomlkit for values *and* positions, in one linear pass.

Why tomlkit: it is the round-trip TOML library the writer (``store``) needs
anyway, so one parser serves reading and editing and the two can never
disagree about what the file says. It gives no positions for semantic errors,
so :class:`_Parser` (a small subclass) notes the source offset at which each
``key = value`` and each ``[table]``/``[[array]]`` header starts, while it
parses; offsets become ``line`` (and ``column``) through one table of line
starts. Nothing is rescanned, so the cost is linear in the file's size
(``benchmarks/rules.py``: 3.3-3.9 us of CPU per byte from 16 KB to 4 MB,
10-19x ``tomllib``; the line scanner it replaces was quadratic, 4.2 s at 1 MB,
and faster than this below ~1 MB). At :data:`MAX_BYTES` that is ~4 s; a real
rules file of a few KB takes tens of milliseconds.

A rules file is hostile input (its author must not become root on the
destination, issue #10): it is refused above :data:`MAX_BYTES`, values nested
deeper than :data:`MAX_DEPTH` are a syntax error (no ``RecursionError``), and
``parse_text`` never raises: structural problems (wrong types, unknown
top-level keys, a TOML syntax error with its line and column) come back as
:class:`~ctconsole.remap.model.Problem` values so the validator can list them
all at once. ``load`` is the strict form for the compiler and the CLI.
"""

from __future__ import annotations

import bisect
import gc
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctconsole.errors import UsageError
from ctconsole.remap.model import SCHEMA_VERSION, Problem, Rule, RuleSet, Scope, Selector

if TYPE_CHECKING:
    from tomlkit.toml_document import TOMLDocument

#: Largest rules file read (bytes). Real files are a few KB; parsing costs ~3 us per byte.
MAX_BYTES = 1 << 20
#: Deepest nesting of arrays / inline tables / dotted key parts accepted.
MAX_DEPTH = 16
#: Most [[container]] blocks and rules per block (a file at MAX_BYTES holds fewer anyway).
MAX_RULES_PER_BLOCK = 1024


@dataclass
class Positions:
    """Where the parser saw each item: ``id(item) -> offset`` plus the line-start table."""

    keys: dict[int, int] = field(default_factory=dict)  # value item -> offset of its key
    tables: dict[int, int] = field(default_factory=dict)  # table -> offset of its header
    line_starts: list[int] = field(default_factory=lambda: [0])
    keep: list[Any] = field(default_factory=list)  # items kept alive so their ids stay unique

    def line(self, offset: int | None) -> int:
        """1-based line of a source offset (0 when unknown)."""
        if offset is None:
            return 0
        return bisect.bisect_right(self.line_starts, offset)

    def column(self, offset: int) -> int:
        return offset - self.line_starts[self.line(offset) - 1] + 1

    def key_line(self, item: Any, default: int = 0) -> int:
        return self.line(self.keys.get(id(item))) or default

    def table_line(self, item: Any, default: int = 0) -> int:
        return self.line(self.tables.get(id(item))) or default


def _line_starts(text: str) -> list[int]:
    """Offsets at which lines start (LF only, as TOML counts them: U+2028 inside a string is not a line)."""
    return [0, *(m.end() for m in re.finditer("\n", text))]


def _parser_class() -> type:
    """The position-recording tomlkit parser (built on first use: tomlkit costs ~40 ms to import,
    which the destination agent, importing remap.compile, should not pay)."""
    global _PARSER
    if _PARSER is not None:
        return _PARSER
    from tomlkit.items import AoT, Table
    from tomlkit.parser import Parser

    class _Parser(Parser):
        MAX_NESTING_DEPTH = MAX_DEPTH

        def __init__(self, text: str, pos: Positions) -> None:
            super().__init__(text)
            self.pos = pos

        def _parse_key_value(self, parse_comment: bool = False) -> Any:
            start = self._idx
            key, val = super()._parse_key_value(parse_comment)
            self.pos.keys[id(val)] = start
            self.pos.keep.append(val)
            return key, val

        def _parse_table(self, parent_name: Any = None, parent: Any = None) -> Any:
            start = self._idx
            _, full = self._peek_table()
            key, result = super()._parse_table(parent_name, parent)
            # the table this header made: under a fresh super table for a dotted name
            rel = [k.key for k in full][len(list(parent_name)) if parent_name else 0:]
            node: Any = result
            for part in rel[1:]:
                node = node.value.item(part) if isinstance(node, Table) and part in node.value else None
                if isinstance(node, AoT) and node.body:
                    node = node.body[-1]
            if isinstance(node, AoT) and node.body:
                node = node.body[0]
            if isinstance(node, Table):
                self.pos.tables[id(node)] = start
                self.pos.keep.append(node)
            return key, result

    _PARSER = _Parser
    return _Parser


_PARSER: type | None = None


class TomlSyntaxError(Exception):
    """A TOML syntax error with its 1-based line and column."""

    def __init__(self, message: str, line: int, column: int) -> None:
        super().__init__(message)
        self.message, self.line, self.column = message, line, column


def too_big(text: str) -> str | None:
    """Why ``text`` is refused for its size, or None."""
    n = len(text) if len(text) * 4 <= MAX_BYTES else len(text.encode("utf-8", "surrogatepass"))
    if n > MAX_BYTES:
        return (f"file is {n} bytes, more than the {MAX_BYTES} a rules file may have "
                "(split it, or remove generated blocks)")
    return None


def parse_document(text: str) -> tuple[TOMLDocument, Positions]:
    """tomlkit document + positions. Raises :class:`TomlSyntaxError` (never anything else) when the
    text is not TOML, too deep, or too big."""
    why = too_big(text)
    if why:
        raise TomlSyntaxError(why, 0, 0)
    pos = Positions(line_starts=_line_starts(text))
    parser = _parser_class()(text, pos)
    gc_was_on = gc.isenabled()
    gc.disable()  # a parse only allocates (no cycles to free): collections cost ~25% and grow with the tree
    try:
        doc = parser.parse()
    except Exception as exc:  # tomlkit's ParseError and anything unexpected from hostile input
        line, col = getattr(exc, "line", None), getattr(exc, "col", None)
        if not isinstance(line, int) or not isinstance(col, int):
            off = min(int(getattr(parser, "_idx", 0) or 0), len(text))
            line, col = pos.line(off), pos.column(off)
        else:
            col += 1  # tomlkit counts columns from 0
        msg = re.sub(r"\s*at line \d+ col \d+$", "", str(exc)) or type(exc).__name__
        if isinstance(exc, RecursionError):
            msg = f"nested more than {MAX_DEPTH} levels deep"
        raise TomlSyntaxError(msg, line, col) from None
    finally:
        if gc_was_on:
            gc.enable()
    return doc, pos


def _label(scope: Scope, idx: int, rule: Rule) -> str:
    return f"{scope.describe()} rule #{idx + 1} ({rule.describe()})"


def rule_label(scope: Scope, idx: int) -> str:
    """The label problems use for rule ``idx`` (0-based) of ``scope``."""
    return _label(scope, idx, scope.rules[idx])


def _entries(container: Any) -> list[tuple[str, Any]]:
    """Keyed items of a tomlkit container in file order (comments and blank lines skipped)."""
    body = container.body if hasattr(container, "body") else container.value.body
    return [(k.key, v) for k, v in body if k is not None]


def _plain(item: Any) -> Any:
    """A tomlkit item as plain Python data (the types tomllib would give)."""
    return item.unwrap() if hasattr(item, "unwrap") else item


def _rule_from(table: Any, pos: Positions, fallback_line: int) -> Rule:
    from tomlkit.items import Table

    line = pos.table_line(table, fallback_line)
    if not isinstance(table, Table):
        return Rule(kind="<not a table>", fields={}, line=line)
    fields: dict[str, Any] = {}
    key_lines: dict[str, int] = {}
    kind: Any = ""
    for k, v in _entries(table.value):
        if k == "kind":
            kind = _plain(v)
        else:
            fields[k] = _plain(v)
        key_lines[k] = pos.key_line(v, line)
    return Rule(kind=kind if isinstance(kind, str) else repr(kind), fields=fields, line=line, key_lines=key_lines)


def _tables_of(item: Any) -> list[Any] | None:
    """The tables of an array of tables (``[[x]]``), or None when ``item`` is something else."""
    from tomlkit.items import AoT

    return list(item.body) if isinstance(item, AoT) else None


_TOP_KEYS = ("version", "defaults", "container")
_DEFAULT_KEYS = ("tcp", "cgroup_mode", "rule", "comment")
_CONTAINER_KEYS = ("match", "rule", "comment")
_MATCH_KEYS = ("name", "runtime", "id", "to")


def parse_text(text: str, path: str = "<rules>") -> tuple[RuleSet, list[Problem]]:
    """Parse rules text; return the rule set and every structural problem found (never raises)."""
    try:
        doc, pos = parse_document(text)
    except TomlSyntaxError as exc:
        where = f" (column {exc.column})" if exc.column else ""
        msg = exc.message if exc.line == 0 else f"malformed TOML: {exc.message}{where}"
        return RuleSet(path=path), [Problem(file=path, line=exc.line, rule="", message=msg)]
    return build_ruleset(doc, pos, path)


def build_ruleset(doc: Any, pos: Positions, path: str) -> tuple[RuleSet, list[Problem]]:
    """The rule set of a parsed document and its structural problems (never raises)."""
    try:
        return _build(doc, pos, path)
    except Exception as exc:  # a hostile shape the builder did not foresee: a problem, never a traceback
        return RuleSet(path=path), [Problem(path, 0, "", f"cannot read this file's structure "
                                           f"({type(exc).__name__})")]


def _build(doc: Any, pos: Positions, path: str) -> tuple[RuleSet, list[Problem]]:
    from tomlkit.items import InlineTable, Table

    problems: list[Problem] = []

    def problem(line: int, message: str, rule: str = "") -> None:
        problems.append(Problem(file=path, line=line, rule=rule, message=message))

    top: dict[str, Any] = {}
    top_line: dict[str, int] = {}
    for k, v in _entries(doc):
        top[k] = v
        top_line[k] = pos.key_line(v) or pos.table_line(v) or next(
            (pos.table_line(t) for t in (_tables_of(v) or [])), 1)

    version = _plain(top["version"]) if "version" in top else None
    if version is None:
        problem(1, f"missing 'version = {SCHEMA_VERSION}' at the top of the file")
        version = SCHEMA_VERSION
    elif version != SCHEMA_VERSION or isinstance(version, bool):
        problem(top_line["version"], f"unsupported version {version!r}: this ctconsole reads "
                f"version {SCHEMA_VERSION}")
    for key in top:
        if key not in _TOP_KEYS:
            problem(top_line[key], f"unknown top-level key {key!r} (expected one of: {', '.join(_TOP_KEYS)})")

    # ---- defaults
    raw_defaults = top.get("defaults")
    drules: list[Rule] = []
    dcomment = ""
    dline = 0
    if raw_defaults is not None and not isinstance(raw_defaults, Table):
        problem(top_line["defaults"], "'defaults' must be a table ([defaults])")
        raw_defaults = None
    if raw_defaults is not None:
        dline = pos.table_line(raw_defaults)
        dentries = _entries(raw_defaults.value)
        if not dline:  # only [[defaults.rule]] headers: the block starts at the first of them
            first = next((t for k, v in dentries if k == "rule" for t in (_tables_of(v) or [])), None)
            dline = pos.table_line(first, 1)
        for key, value in dentries:
            ln = pos.key_line(value, dline)
            if key not in _DEFAULT_KEYS:
                problem(ln, f"unknown key {key!r} in [defaults] (expected: {', '.join(_DEFAULT_KEYS)})", "defaults")
            elif key == "tcp":
                drules.append(Rule(kind="tcp", fields={"mode": _plain(value)}, line=ln, key_lines={"mode": ln},
                                   shorthand="tcp"))
            elif key == "cgroup_mode":
                drules.append(Rule(kind="cgroup", fields={"mode": _plain(value)}, line=ln,
                                   key_lines={"mode": ln}, shorthand="cgroup_mode"))
            elif key == "comment":
                c = _plain(value)
                dcomment = c if isinstance(c, str) else ""
        for key, value in dentries:
            if key != "rule":
                continue
            tables = _tables_of(value)
            if tables is None:
                problem(pos.key_line(value, dline) or pos.table_line(value, dline),
                        "'defaults.rule' must be an array of tables ([[defaults.rule]])", "defaults")
                continue
            for t in tables[:MAX_RULES_PER_BLOCK]:
                drules.append(_rule_from(t, pos, dline))
            if len(tables) > MAX_RULES_PER_BLOCK:
                problem(pos.table_line(tables[MAX_RULES_PER_BLOCK], dline),
                        f"more than {MAX_RULES_PER_BLOCK} rules in [defaults]", "defaults")
    defaults = Scope(selector=None, rules=tuple(drules), line=dline, index=-1, comment=dcomment)

    # ---- containers
    scopes: list[Scope] = []
    raw_containers: list[Any] = []
    if "container" in top:
        tables = _tables_of(top["container"])
        if tables is None:
            problem(top_line["container"], "'container' must be an array of tables ([[container]])")
        else:
            raw_containers = tables
    for ci, raw in enumerate(raw_containers):
        cline = pos.table_line(raw, top_line.get("container", 1))
        label = f"container[{ci}]"
        if not isinstance(raw, Table):
            problem(cline, "each [[container]] entry must be a table", label)
            continue
        entries = _entries(raw.value)
        keys = dict(entries)
        for key, value in entries:
            if key not in _CONTAINER_KEYS:
                problem(pos.key_line(value) or pos.table_line(value, cline),
                        f"unknown key {key!r} in [[container]] (expected: {', '.join(_CONTAINER_KEYS)})", label)
        match = keys.get("match")
        sel_fields: dict[str, str] = {}
        if match is None:
            problem(cline, "missing 'match = { name = \"...\" }': which containers does this block "
                    "apply to? (use name = \"*\" for all)", label)
        else:
            match_line = pos.key_line(match) or pos.table_line(match, cline)
            if not isinstance(match, InlineTable | Table):
                problem(match_line, "'match' must be an inline table, e.g. match = { name = \"web-*\" }", label)
            else:
                mentries = _entries(match.value)
                for k, item in mentries:
                    v = _plain(item)
                    if k not in _MATCH_KEYS:
                        problem(match_line, f"unknown selector {k!r} in match (expected: "
                                f"{', '.join(_MATCH_KEYS)})", label)
                    elif not isinstance(v, str):
                        problem(match_line, f"match.{k} must be a string (a glob), not {type(v).__name__}", label)
                    else:
                        sel_fields[k] = v
                if not mentries:
                    problem(match_line, "empty match: say name = \"*\" to match every container", label)
        rules: list[Rule] = []
        if "rule" in keys:
            rtables = _tables_of(keys["rule"])
            if rtables is None:
                problem(pos.key_line(keys["rule"], cline), "'rule' must be an array of tables "
                        "([[container.rule]])", label)
            else:
                rules = [_rule_from(t, pos, cline) for t in rtables[:MAX_RULES_PER_BLOCK]]
                if len(rtables) > MAX_RULES_PER_BLOCK:
                    problem(pos.table_line(rtables[MAX_RULES_PER_BLOCK], cline),
                            f"more than {MAX_RULES_PER_BLOCK} rules in one block", label)
        comment = _plain(keys["comment"]) if "comment" in keys else ""
        scopes.append(Scope(selector=Selector(**sel_fields), rules=tuple(rules), line=cline, index=ci,
                            comment=comment if isinstance(comment, str) else ""))
    return RuleSet(version=int(version) if isinstance(version, int) else SCHEMA_VERSION,
                   defaults=defaults, containers=tuple(scopes), path=path), problems


def read_text(path: str | Path) -> str:
    """Read a rules file as text (at most :data:`MAX_BYTES`), OS errors as an operator-readable UsageError."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise UsageError(f"rules file {path} does not exist") from None
    except IsADirectoryError:
        raise UsageError(f"rules file {path} is a directory") from None
    except OSError as exc:
        raise UsageError(f"cannot read rules file {path}: {exc.strerror}") from None
    if len(raw) > MAX_BYTES:
        raise UsageError(f"rules file {path} is larger than {MAX_BYTES} bytes; not reading it")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"rules file {path} is not UTF-8 text: {exc.reason} at byte {exc.start}") from None


def load(path: str | Path) -> RuleSet:
    """Parse a rules file strictly: any structural problem raises UsageError listing all of them."""
    text = read_text(path)
    rules, problems = parse_text(text, str(path))
    if problems:
        raise UsageError(f"rules file {path} has {len(problems)} problem(s); "
                         f"run 'ctconsole rules validate {path}'", [str(p) for p in problems])
    return rules
