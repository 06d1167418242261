"""Edit and save rules files without losing the operator's comments, and save atomically.

Why a hand-written editor: tomllib reads but cannot write, and a dump of the
parsed data would drop every comment and the operator's layout. Programs (the
TUI editor, ``rules suggest``) only ever add, replace or delete whole rule
tables or container blocks, so we edit *lines*: the parser's line map says
where each ``[[...rule]]`` block and each ``key = value`` lives, and we splice
text there. Replacing a rule rewrites only the lines of keys whose value
changed, keeping their trailing ``# comments``, and the comments between keys.
Every edit is re-parsed before it is returned, so a bug here can never write a
file that does not load.

Saving writes a temporary file in the same directory, fsyncs it, renames it
over the original (keeping its mode and owner) and fsyncs the directory:
after a crash there is either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import tempfile
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ctconsole.errors import CtError, UsageError
from ctconsole.remap.model import Rule, RuleRef, RuleSet, Selector
from ctconsole.remap.parse import Block, LineMap, parse_text, read_text, scan_lines, split_lines

RULE_INDENT = "  "
_BARE = re.compile(r"^[A-Za-z0-9_-]+$")

# ---------------------------------------------------------------- rendering


def render_key(key: str) -> str:
    return key if _BARE.match(key) else render_value(key)


def render_value(value: Any) -> str:
    """A TOML inline value (strings, bools, ints, floats, lists, inline tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        out = ['"']
        for ch in value:
            if ch == '"':
                out.append('\\"')
            elif ch == "\\":
                out.append("\\\\")
            elif ch == "\n":
                out.append("\\n")
            elif ch == "\t":
                out.append("\\t")
            elif ch == "\r":
                out.append("\\r")
            elif ord(ch) < 0x20 or ord(ch) == 0x7F:
                out.append(f"\\u{ord(ch):04x}")
            else:
                out.append(ch)
        out.append('"')
        return "".join(out)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(render_value(v) for v in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{render_key(str(k))} = {render_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _rule_items(rule: Rule) -> list[tuple[str, Any]]:
    return [("kind", rule.kind), *((k, v) for k, v in rule.fields.items())]


def render_rule(rule: Rule, *, defaults: bool = False, indent: str = RULE_INDENT,
                comments: dict[str, str] | None = None, header_comment: list[str] | None = None) -> list[str]:
    """Lines of one ``[[container.rule]]`` (or ``[[defaults.rule]]``) table.

    ``comments`` adds ``# text`` after a key's value; ``header_comment`` adds
    ``# lines`` above the header (say *why* the rule is there).
    """
    ind = "" if defaults else indent
    out = [f"{ind}# {c}" if c else f"{ind}#" for c in (header_comment or [])]
    out.append(f"{ind}[[{'defaults' if defaults else 'container'}.rule]]")
    for k, v in _rule_items(rule):
        line = f"{ind}{render_key(k)} = {render_value(v)}"
        if comments and comments.get(k):
            line += f"  # {comments[k]}"
        out.append(line)
    return out


def render_selector(sel: Selector) -> str:
    fields = {k: getattr(sel, k) for k in ("name", "runtime", "id", "to") if getattr(sel, k)}
    return f"match = {render_value(fields)}"


def render_container(sel: Selector, rules: list[Rule] | tuple[Rule, ...] = (),
                     header_comment: list[str] | None = None) -> list[str]:
    out = [f"# {c}" if c else "#" for c in (header_comment or [])]
    out += ["[[container]]", render_selector(sel)]
    for r in rules:
        out.append("")
        out += render_rule(r)
    return out


def render_ruleset(rs: RuleSet, header_comment: list[str] | None = None) -> str:
    """A whole new file (used when there is no file yet to preserve)."""
    out = [f"# {c}" if c else "#" for c in (header_comment or [])]
    out.append(f"version = {rs.version}")
    short = [r for r in rs.defaults.rules if r.shorthand]
    full = [r for r in rs.defaults.rules if not r.shorthand]
    if short:
        out += ["", "[defaults]"]
        out += [f"{r.shorthand} = {render_value(r.get('mode'))}" for r in short]
    for r in full:
        out.append("")
        out += render_rule(r, defaults=True)
    for scope in rs.containers:
        out.append("")
        out += render_container(scope.selector or Selector(name="*"), scope.rules)
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- editing


def _split(text: str) -> tuple[list[str], str]:
    """Lines (without endings) and the newline style of the file."""
    nl = "\r\n" if "\r\n" in text else "\n"
    return split_lines(text), nl


def _join(lines: list[str], nl: str) -> str:
    """Lines back to text, ending with exactly one newline (the rest of the layout is untouched)."""
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    return nl.join(lines) + nl if lines else ""


def _insert(lines: list[str], at: int, new: list[str]) -> None:
    """Insert ``new`` after line ``at`` (0 = top), separated from neighbours by one blank line."""
    block = list(new)
    if at > 0 and lines[at - 1].strip():
        block.insert(0, "")
    if at < len(lines) and lines[at].strip():
        block.append("")
    lines[at:at] = block


def _delete(lines: list[str], start: int, end: int) -> None:
    """Delete lines start..end (1-based, inclusive) without leaving a double blank line behind."""
    del lines[start - 1:end]
    i = start - 1
    if 0 < i < len(lines) and not lines[i].strip() and not lines[i - 1].strip():
        del lines[i]
    elif i == 0 and lines and not lines[0].strip():
        del lines[0]


def _attached_comment_start(lines: list[str], header_line: int) -> int:
    """First line (1-based) of the comment lines directly above a header (no blank line between)."""
    start = header_line
    while start - 1 >= 1 and lines[start - 2].lstrip().startswith("#"):
        start -= 1
    return start


def _resolve(rs: RuleSet, lm: LineMap, ref: RuleRef) -> tuple[Rule, Block | None]:
    """The rule at ``ref`` and its ``[[...rule]]`` block (None for a [defaults] shorthand key)."""
    if ref.container is None:
        rules = rs.defaults.rules
    else:
        if not 0 <= ref.container < len(rs.containers):
            raise UsageError(f"no container block #{ref.container}")
        rules = rs.containers[ref.container].rules
    if not 0 <= ref.rule < len(rules):
        raise UsageError(f"no rule #{ref.rule + 1} in that block")
    rule = rules[ref.rule]
    if rule.shorthand:
        return rule, None
    table_idx = sum(1 for r in rules[: ref.rule] if not r.shorthand)
    blocks = lm.rule_blocks(ref.container)
    if table_idx >= len(blocks):
        raise CtError("this rule is written inline (rule = [...]); edit it by hand")
    return rule, blocks[table_idx]


def _check(text: str, path: str) -> RuleSet:
    """Re-parse an edited text; an edit that breaks the file is a bug, never written."""
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CtError(f"internal error: editing {path} produced invalid TOML ({exc}); file not changed") from exc
    rs, _ = parse_text(text, path)
    return rs


def add_rule(text: str, container: int | None, rule: Rule, *, header_comment: list[str] | None = None,
             path: str = "<rules>") -> str:
    """Append ``rule`` to container block ``container`` (None = ``[[defaults.rule]]``)."""
    lines, nl = _split(text)
    lm = scan_lines(text)
    rs, _ = parse_text(text, path)
    if container is None:
        new = render_rule(rule, defaults=True, header_comment=header_comment)
        dblocks = lm.find("defaults.rule", array=True) or lm.find("defaults", array=False)
        if dblocks:
            at = max(b.end for b in dblocks)
        else:
            cblocks = lm.container_blocks()
            at = (_attached_comment_start(lines, cblocks[0].start) - 1) if cblocks else len(lines)
            # keep the version line and header comments above
            at = max(at, max((b.end for b in lm.blocks if b.name == ""), default=0))
        _insert(lines, at, new)
    else:
        if not 0 <= container < len(rs.containers):
            raise UsageError(f"no container block #{container}")
        blocks = lm.subtables_of_container(container)
        if not blocks:
            raise CtError("this container block is written inline; edit it by hand")
        indent = next((b.indent for b in lm.rule_blocks(container)), RULE_INDENT)
        new = render_rule(rule, indent=indent, header_comment=header_comment)
        at = max(b.end for b in blocks)
        _insert(lines, at, new)
    out = _join(lines, nl)
    _check(out, path)
    return out


def _value_extent(lines: list[str], first: int, last: int) -> tuple[str, str]:
    """For a key spanning lines first..last: (text before the value's '=', trailing comment or "")."""
    head = lines[first - 1]
    eq = head.index("=")
    tail = lines[last - 1]
    comment = ""
    # a trailing comment on the last line of the value, outside strings
    from ctconsole.remap.parse import _strip_comment

    code = _strip_comment(tail)
    if len(code) < len(tail.rstrip()):
        comment = tail[len(code):].rstrip()  # keeps the operator's spacing before '#'
    return head[: eq + 1], comment


def replace_rule(text: str, ref: RuleRef, rule: Rule, *, path: str = "<rules>") -> str:
    """Replace the rule at ``ref`` in place, keeping comments and the order of unchanged keys.

    Keys whose value is unchanged are left byte-for-byte alone; changed keys
    get a new value with their trailing comment kept; removed keys are deleted;
    new keys are appended after the table's last key.
    """
    lines, nl = _split(text)
    lm = scan_lines(text)
    rs, _ = parse_text(text, path)
    old, block = _resolve(rs, lm, ref)
    if block is None:  # [defaults] shorthand: tcp = "keep" / cgroup_mode = "soft"
        if rule.kind != old.kind or set(rule.fields) - {"mode"} or "mode" not in rule.fields:
            # not expressible as the shorthand: drop it and add a full table
            out = delete_rule(text, ref, path=path)
            return add_rule(out, None, rule, path=path)
        ln = old.line
        head, comment = _value_extent(lines, ln, ln)
        lines[ln - 1] = f"{head} {render_value(rule.get('mode'))}" + comment
        out = _join(lines, nl)
        _check(out, path)
        return out
    new_items = dict(_rule_items(rule))
    old_items = {"kind": old.kind, **old.fields}
    indent = block.indent
    edits: list[tuple[int, int, list[str]]] = []  # (first, last, replacement) 1-based inclusive
    for key, (first, last) in block.keys.items():
        if key not in new_items:
            edits.append((first, last, []))
        elif key not in old_items or old_items[key] != new_items[key]:
            head, comment = _value_extent(lines, first, last)
            edits.append((first, last, [f"{head} {render_value(new_items[key])}" +
                                        comment]))
    added = [k for k in new_items if k not in block.keys]
    last_key_line = max((last for _, last in block.keys.values()), default=block.start)
    key_indent = indent
    if block.keys:
        first_line = lines[min(f for f, _ in block.keys.values()) - 1]
        key_indent = first_line[: len(first_line) - len(first_line.lstrip())]
    if added:
        edits.append((last_key_line + 1, last_key_line,
                      [f"{key_indent}{render_key(k)} = {render_value(new_items[k])}" for k in added]))
    for first, last, repl in sorted(edits, key=lambda e: e[0], reverse=True):
        lines[first - 1:last] = repl
    out = _join(lines, nl)
    new_rs = _check(out, path)
    try:
        got, _ = _resolve(new_rs, scan_lines(out), ref)
    except CtError:
        got = None
    if got is None or got.kind != rule.kind or got.fields != rule.fields:
        raise CtError("internal error: replacing the rule did not produce the expected table; file not changed")
    return out


def delete_rule(text: str, ref: RuleRef, *, path: str = "<rules>") -> str:
    """Delete the rule at ``ref`` and the comment lines directly above its header."""
    lines, nl = _split(text)
    lm = scan_lines(text)
    rs, _ = parse_text(text, path)
    old, block = _resolve(rs, lm, ref)
    if block is None:
        start = end = old.line
    else:
        start, end = _attached_comment_start(lines, block.start), block.end
    _delete(lines, start, end)
    out = _join(lines, nl)
    _check(out, path)
    return out


def add_container(text: str, selector: Selector, rules: list[Rule] | tuple[Rule, ...] = (), *,
                  header_comment: list[str] | None = None, path: str = "<rules>") -> str:
    """Append a new ``[[container]]`` block (with rules) at the end of the file."""
    lines, nl = _split(text)
    if not text.strip():
        lines = ["version = 1"]
    while lines and not lines[-1].strip():
        lines.pop()
    _insert(lines, len(lines), render_container(selector, rules, header_comment))
    out = _join(lines, nl)
    _check(out, path)
    return out


def set_match(text: str, container: int, selector: Selector, *, path: str = "<rules>") -> str:
    """Rewrite the ``match = {...}`` line of a container block (comment after it kept)."""
    lines, nl = _split(text)
    lm = scan_lines(text)
    blocks = lm.container_blocks()
    if not 0 <= container < len(blocks):
        raise UsageError(f"no container block #{container}")
    blk = blocks[container]
    fields = {k: getattr(selector, k) for k in ("name", "runtime", "id", "to") if getattr(selector, k)}
    if "match" in blk.keys:
        first, last = blk.keys["match"]
        head, comment = _value_extent(lines, first, last)
        lines[first - 1:last] = [f"{head} {render_value(fields)}" + comment]
    else:
        lines[blk.start:blk.start] = [f"match = {render_value(fields)}"]
    out = _join(lines, nl)
    _check(out, path)
    return out


def delete_container(text: str, container: int, *, path: str = "<rules>") -> str:
    """Delete a whole ``[[container]]`` block with its rules and the comments directly above it."""
    lines, nl = _split(text)
    lm = scan_lines(text)
    blocks = lm.subtables_of_container(container)
    if not blocks:
        raise UsageError(f"no container block #{container}")
    start = _attached_comment_start(lines, blocks[0].start)
    end = max(b.end for b in blocks)
    _delete(lines, start, end)
    out = _join(lines, nl)
    _check(out, path)
    return out


# ---------------------------------------------------------------- saving


def save_text(path: str | Path, text: str, *, expected: str | None = None) -> None:
    """Atomically replace ``path`` with ``text``.

    ``expected``: the text the caller loaded; if the file changed on disk since
    (another editor, another operator), refuse rather than silently clobber.
    """
    p = Path(path)
    if expected is not None:
        try:
            current = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            current = ""
        if current != expected:
            raise CtError(f"{p} changed on disk since it was loaded; reload it and redo the edit")
    _check(text, str(p))
    directory = p.parent if str(p.parent) else Path(".")
    try:
        st = p.stat()
    except FileNotFoundError:
        st = None
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if st is not None:
            os.chmod(tmp, st.st_mode & 0o7777)
            if os.geteuid() == 0:
                os.chown(tmp, st.st_uid, st.st_gid)
        else:
            os.chmod(tmp, 0o644 & ~_umask())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _umask() -> int:
    cur = os.umask(0)
    os.umask(cur)
    return cur


# ---------------------------------------------------------------- a document for editors


@dataclass(frozen=True)
class RulesDocument:
    """An open rules file for an editor: its text, the parsed rules, and edits that return new documents.

    Immutable on purpose: the TUI keeps the previous document for undo, and
    ``save()`` refuses to overwrite changes someone made on disk meanwhile.
    """

    path: str
    text: str
    rules: RuleSet
    original: str  # the text as loaded from disk (for the changed-on-disk check)

    @classmethod
    def open(cls, path: str | Path) -> RulesDocument:
        """Load ``path``; a missing file opens as an empty ``version = 1`` document."""
        p = str(path)
        try:
            text = read_text(path)
            original = text
        except UsageError:
            if Path(path).exists():
                raise
            text, original = "version = 1\n", ""
        rs, _ = parse_text(text, p)
        return cls(path=p, text=text, rules=rs, original=original)

    def _with(self, text: str) -> RulesDocument:
        rs, _ = parse_text(text, self.path)
        return replace(self, text=text, rules=rs)

    @property
    def dirty(self) -> bool:
        return self.text != self.original

    def add_rule(self, container: int | None, rule: Rule, header_comment: list[str] | None = None
                 ) -> RulesDocument:
        return self._with(add_rule(self.text, container, rule, header_comment=header_comment, path=self.path))

    def replace_rule(self, ref: RuleRef, rule: Rule) -> RulesDocument:
        return self._with(replace_rule(self.text, ref, rule, path=self.path))

    def delete_rule(self, ref: RuleRef) -> RulesDocument:
        return self._with(delete_rule(self.text, ref, path=self.path))

    def add_container(self, selector: Selector, rules: list[Rule] | tuple[Rule, ...] = (),
                      header_comment: list[str] | None = None) -> RulesDocument:
        return self._with(add_container(self.text, selector, rules, header_comment=header_comment,
                                        path=self.path))

    def set_match(self, container: int, selector: Selector) -> RulesDocument:
        return self._with(set_match(self.text, container, selector, path=self.path))

    def delete_container(self, container: int) -> RulesDocument:
        return self._with(delete_container(self.text, container, path=self.path))

    def save(self) -> RulesDocument:
        """Write atomically (refusing if the file changed on disk); the saved document is clean."""
        save_text(self.path, self.text, expected=self.original)
        return replace(self, original=self.text)
