"""Read a rules file: tomllib for the values, a line scanner for the positions.

Why two passes: tomllib is the only TOML reader we may depend on and it gives
no positions, yet every problem must name its line. TOML keeps arrays of tables
in file order, so the n-th ``[[container]]`` header in the text is
``container[n]`` in the parsed data, and the ``[[container.rule]]`` headers
that follow it are its rules, in order. The scanner understands just enough
TOML (strings, multi-line strings, comments, bracket depth) not to be fooled by
a ``[[`` inside a string or a nested array.

``parse_text`` never raises: structural problems (wrong types, unknown
top-level keys, a TOML syntax error with its line) come back as
:class:`~ctconsole.remap.model.Problem` values so the validator can list them
all at once. ``load`` is the strict form for the compiler and the CLI.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctconsole.errors import UsageError
from ctconsole.remap.model import SCHEMA_VERSION, Problem, Rule, RuleSet, Scope, Selector

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


@dataclass
class Block:
    """One ``[table]`` or ``[[array]]`` header and the lines up to the next header.

    ``start`` is the header's line (1-based; 0 for the implicit root block),
    ``end`` the last line of the block's content (trailing blank lines and
    comments that precede the next header are left to the next block), and
    ``keys`` maps each top-level key of the block to ``(first, last)`` lines of
    its ``key = value`` (``last`` > ``first`` for multi-line arrays/strings).
    """

    name: str
    array: bool
    start: int
    end: int = 0
    keys: dict[str, tuple[int, int]] = field(default_factory=dict)
    indent: str = ""  # leading whitespace of the header line (kept when editing)


@dataclass
class LineMap:
    """Blocks of a file in order, plus the header lines for the parts we care about."""

    blocks: list[Block]
    lines: list[str]

    def find(self, name: str, array: bool | None = None) -> list[Block]:
        return [b for b in self.blocks if b.name == name and (array is None or b.array == array)]

    def container_blocks(self) -> list[Block]:
        return self.find("container", array=True)

    def rule_blocks(self, container: int | None) -> list[Block]:
        """The ``[[...rule]]`` blocks of container ``container`` (None = defaults), in order."""
        if container is None:
            return self.find("defaults.rule", array=True)
        out: list[Block] = []
        current = -1
        for b in self.blocks:
            if b.name == "container" and b.array:
                current += 1
            elif b.name == "container.rule" and b.array and current == container:
                out.append(b)
        return out

    def subtables_of_container(self, container: int) -> list[Block]:
        """Every block that belongs to container ``container`` (its header, sub-tables, rules)."""
        out: list[Block] = []
        current = -1
        inside = False
        for b in self.blocks:
            if b.name == "container" and b.array:
                current += 1
                inside = current == container
            elif not b.name.startswith("container."):
                inside = False
            if inside:
                out.append(b)
        return out


def _normalize_key(raw: str) -> str:
    """Dotted header name without quotes or spaces: ``[ "container" . rule ]`` -> ``container.rule``."""
    parts: list[str] = []
    for part in re.findall(r'"(?:[^"\\]|\\.)*"|\'[^\']*\'|[^.\s]+', raw):
        if part[:1] in "\"'":
            part = part[1:-1]
        parts.append(part)
    return ".".join(parts)


def _scan_line(line: str, state: dict[str, Any]) -> tuple[str, int]:
    """Strip strings and comments from one line, updating multi-line string and bracket state.

    Returns the "code" left on the line (string contents replaced by ``""``)
    and the bracket depth at the *start* of the line. ``state`` carries
    ``ml`` (the open multi-line delimiter or "") and ``depth`` across lines.
    """
    depth_at_start = state["depth"]
    out: list[str] = []
    i, n = 0, len(line)
    while i < n:
        ml = state["ml"]
        if ml:
            j = line.find(ml, i)
            if j < 0:
                return "".join(out), depth_at_start
            # a run of more quotes closes on the last three (TOML allows up to 2 extra)
            k = j + 3
            while k < n and line[k] == ml[0] and k - j < 5:
                k += 1
            state["ml"] = ""
            out.append('""')
            i = k
            continue
        c = line[i]
        if c == "#":
            break
        if line.startswith('"""', i) or line.startswith("'''", i):
            state["ml"] = line[i:i + 3]
            i += 3
            continue
        if c == '"':
            j = i + 1
            while j < n and line[j] != '"':
                j += 2 if line[j] == "\\" else 1
            out.append('""')
            i = j + 1
            continue
        if c == "'":
            j = line.find("'", i + 1)
            out.append('""')
            i = n if j < 0 else j + 1
            continue
        if c in "[{":
            state["depth"] += 1
        elif c in "]}":
            state["depth"] = max(0, state["depth"] - 1)
        out.append(c)
        i += 1
    return "".join(out), depth_at_start


_HEADER = re.compile(r"^\s*(\[\[?)\s*(.+?)\s*(\]\]?)\s*$")
_KEY = re.compile(r'^\s*("(?:[^"\\]|\\.)*"|\'[^\']*\'|[A-Za-z0-9_.-]+(?:\s*\.\s*[A-Za-z0-9_-]+)*)\s*=')


def split_lines(text: str) -> list[str]:
    """Lines split on LF only (as TOML counts them): ``str.splitlines`` would also split on
    U+0085, U+2028, form feeds... which may sit inside a TOML string."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


def scan_lines(text: str) -> LineMap:
    """Find table headers and top-level keys with their line numbers (1-based)."""
    lines = split_lines(text)
    root = Block(name="", array=False, start=0)
    blocks = [root]
    state: dict[str, Any] = {"ml": "", "depth": 0}
    current = root
    open_key: str | None = None
    for idx, line in enumerate(lines, start=1):
        in_ml_before = bool(state["ml"])
        raw_line = line
        code, depth = _scan_line(raw_line, state)
        if in_ml_before or depth > 0:
            # continuation of a multi-line string or array: extend the open key
            if open_key is not None and open_key in current.keys:
                first, _ = current.keys[open_key]
                current.keys[open_key] = (first, idx)
            if code.strip() or in_ml_before:
                current.end = idx
            continue
        stripped = code.strip()
        if not stripped:
            continue
        # headers are detected on the raw line minus comments (string contents are irrelevant)
        m = _HEADER.match(code)
        if m and code.lstrip().startswith("[") and "=" not in code:
            array = m.group(1) == "[[" and m.group(3) == "]]"
            # the header's brackets changed depth; reset (headers never leave it open)
            state["depth"] = 0
            hm = _HEADER.match(_strip_comment(raw_line))
            name = _normalize_key(hm.group(2) if hm else m.group(2))
            current = Block(name=name, array=array, start=idx, end=idx,
                            indent=raw_line[: len(raw_line) - len(raw_line.lstrip())])
            blocks.append(current)
            open_key = None
            continue
        km = _KEY.match(_strip_comment(raw_line))
        if km:
            key = _normalize_key(km.group(1))
            current.keys.setdefault(key, (idx, idx))
            open_key = key
        current.end = idx
    # blocks whose content never got a line end at their header
    for b in blocks:
        if b.end < b.start:
            b.end = b.start
    return LineMap(blocks=blocks, lines=lines)


def _strip_comment(line: str) -> str:
    """The line without a trailing ``# comment`` (quotes respected)."""
    i, n = 0, len(line)
    quote = ""
    while i < n:
        c = line[i]
        if quote:
            if c == "\\" and quote == '"':
                i += 2
                continue
            if c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
        elif c == "#":
            return line[:i].rstrip()
        i += 1
    return line.rstrip()


_TOML_POS = re.compile(r"at line (\d+)")


def decode_error_line(exc: tomllib.TOMLDecodeError) -> int:
    """The 1-based line of a TOML syntax error (``lineno`` on 3.14+, else from the message)."""
    lineno = getattr(exc, "lineno", None)
    if isinstance(lineno, int):
        return lineno
    m = _TOML_POS.search(str(exc))
    return int(m.group(1)) if m else 0


def _label(scope: Scope, idx: int, rule: Rule) -> str:
    return f"{scope.describe()} rule #{idx + 1} ({rule.describe()})"


def rule_label(scope: Scope, idx: int) -> str:
    """The label problems use for rule ``idx`` (0-based) of ``scope``."""
    return _label(scope, idx, scope.rules[idx])


def _rule_from(table: Any, block: Block | None, fallback_line: int) -> Rule:
    if not isinstance(table, dict):
        return Rule(kind="<not a table>", fields={}, line=block.start if block else fallback_line)
    kind = table.get("kind", "")
    fields = {k: v for k, v in table.items() if k != "kind"}
    key_lines = {k: v[0] for k, v in block.keys.items()} if block else {}
    return Rule(
        kind=kind if isinstance(kind, str) else repr(kind),
        fields=fields,
        line=block.start if block else fallback_line,
        key_lines=key_lines,
    )


_TOP_KEYS = ("version", "defaults", "container")
_DEFAULT_KEYS = ("tcp", "cgroup_mode", "rule", "comment")
_CONTAINER_KEYS = ("match", "rule", "comment")
_MATCH_KEYS = ("name", "runtime", "id", "to")


def parse_text(text: str, path: str = "<rules>") -> tuple[RuleSet, list[Problem]]:
    """Parse rules text; return the rule set and every structural problem found (never raises)."""
    problems: list[Problem] = []

    def problem(line: int, message: str, rule: str = "") -> None:
        problems.append(Problem(file=path, line=line, rule=rule, message=message))

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc)) or "invalid TOML"
        problem(decode_error_line(exc), f"malformed TOML: {msg}")
        return RuleSet(path=path), problems
    lm = scan_lines(text)
    root = lm.blocks[0]

    def key_line(block: Block | None, key: str, default: int = 1) -> int:
        if block is not None and key in block.keys:
            return block.keys[key][0]
        return block.start if block is not None and block.start else default

    version = data.get("version")
    if version is None:
        problem(1, f"missing 'version = {SCHEMA_VERSION}' at the top of the file")
        version = SCHEMA_VERSION
    elif version != SCHEMA_VERSION or isinstance(version, bool):
        problem(key_line(root, "version"), f"unsupported version {version!r}: this ctconsole reads "
                f"version {SCHEMA_VERSION}")
    for key in data:
        if key not in _TOP_KEYS:
            blk = next((b for b in lm.blocks if b.name == key or b.name.startswith(key + ".")), None)
            problem(key_line(root, key, blk.start if blk else 1),
                    f"unknown top-level key {key!r} (expected one of: {', '.join(_TOP_KEYS)})")

    # ---- defaults
    dblock = next(iter(lm.find("defaults", array=False)), None)
    drules_blocks = lm.rule_blocks(None)
    dline = dblock.start if dblock else (drules_blocks[0].start if drules_blocks else 0)
    raw_defaults = data.get("defaults", {})
    drules: list[Rule] = []
    dcomment = ""
    if not isinstance(raw_defaults, dict):
        problem(key_line(root, "defaults"), "'defaults' must be a table ([defaults])")
        raw_defaults = {}
    for key, _value in raw_defaults.items():
        if key not in _DEFAULT_KEYS:
            problem(key_line(dblock, key, dline), f"unknown key {key!r} in [defaults] "
                    f"(expected: {', '.join(_DEFAULT_KEYS)})", "defaults")
    if "tcp" in raw_defaults:
        ln = key_line(dblock, "tcp", dline)
        drules.append(Rule(kind="tcp", fields={"mode": raw_defaults["tcp"]}, line=ln, key_lines={"mode": ln},
                           shorthand="tcp"))
    if "cgroup_mode" in raw_defaults:
        ln = key_line(dblock, "cgroup_mode", dline)
        drules.append(Rule(kind="cgroup", fields={"mode": raw_defaults["cgroup_mode"]}, line=ln,
                           key_lines={"mode": ln}, shorthand="cgroup_mode"))
    if isinstance(raw_defaults.get("comment"), str):
        dcomment = raw_defaults["comment"]
    raw_drules = raw_defaults.get("rule", [])
    if not isinstance(raw_drules, list):
        problem(key_line(dblock, "rule", dline), "'defaults.rule' must be an array of tables "
                "([[defaults.rule]])", "defaults")
        raw_drules = []
    for i, table in enumerate(raw_drules):
        blk = drules_blocks[i] if i < len(drules_blocks) else None
        drules.append(_rule_from(table, blk, key_line(dblock, "rule", dline)))
    defaults = Scope(selector=None, rules=tuple(drules), line=dline, index=-1, comment=dcomment)

    # ---- containers
    cblocks = lm.container_blocks()
    raw_containers = data.get("container", [])
    scopes: list[Scope] = []
    if not isinstance(raw_containers, list):
        problem(key_line(root, "container"), "'container' must be an array of tables ([[container]])")
        raw_containers = []
    for ci, raw in enumerate(raw_containers):
        cblk = cblocks[ci] if ci < len(cblocks) else None
        cline = cblk.start if cblk else key_line(root, "container")
        label = f"container[{ci}]"
        if not isinstance(raw, dict):
            problem(cline, "each [[container]] entry must be a table", label)
            continue
        for key in raw:
            if key not in _CONTAINER_KEYS:
                problem(key_line(cblk, key, cline), f"unknown key {key!r} in [[container]] "
                        f"(expected: {', '.join(_CONTAINER_KEYS)})", label)
        match = raw.get("match")
        sel_fields: dict[str, str] = {}
        match_line = key_line(cblk, "match", cline)
        if match is None:
            problem(cline, "missing 'match = { name = \"...\" }': which containers does this block "
                    "apply to? (use name = \"*\" for all)", label)
        elif not isinstance(match, dict):
            problem(match_line, "'match' must be an inline table, e.g. match = { name = \"web-*\" }", label)
        else:
            for k, v in match.items():
                if k not in _MATCH_KEYS:
                    problem(match_line, f"unknown selector {k!r} in match (expected: "
                            f"{', '.join(_MATCH_KEYS)})", label)
                elif not isinstance(v, str):
                    problem(match_line, f"match.{k} must be a string (a glob), not {type(v).__name__}",
                            label)
                else:
                    sel_fields[k] = v
            if not match:
                problem(match_line, "empty match: say name = \"*\" to match every container", label)
        rblocks = lm.rule_blocks(ci)
        raw_rules = raw.get("rule", [])
        rules: list[Rule] = []
        if not isinstance(raw_rules, list):
            problem(key_line(cblk, "rule", cline), "'rule' must be an array of tables "
                    "([[container.rule]])", label)
            raw_rules = []
        for ri, table in enumerate(raw_rules):
            blk = rblocks[ri] if ri < len(rblocks) else None
            rules.append(_rule_from(table, blk, key_line(cblk, "rule", cline)))
        comment = raw.get("comment", "")
        scopes.append(Scope(selector=Selector(**sel_fields), rules=tuple(rules), line=cline, index=ci,
                            comment=comment if isinstance(comment, str) else ""))
    return RuleSet(version=int(version) if isinstance(version, int) else SCHEMA_VERSION,
                   defaults=defaults, containers=tuple(scopes), path=path), problems


def read_text(path: str | Path) -> str:
    """Read a rules file as text, turning OS errors into an operator-readable UsageError."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"rules file {path} does not exist") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"rules file {path} is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    except OSError as exc:
        raise UsageError(f"cannot read rules file {path}: {exc.strerror}") from None


def load(path: str | Path) -> RuleSet:
    """Parse a rules file strictly: any structural problem raises UsageError listing all of them."""
    text = read_text(path)
    rules, problems = parse_text(text, str(path))
    if problems:
        raise UsageError(f"rules file {path} has {len(problems)} problem(s); "
                         f"run 'ctconsole rules validate {path}'", [str(p) for p in problems])
    return rules
